"""Command-line options -> config dict -> validated Config.

The config file (or the demo's) is read by the pipeline's own reader, its input paths resolved
against the file's folder; each option given is then written over the dict (options' paths stay
relative to the working directory), and the pipeline's schema validates the result.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import re
from typing import Any

from pipeline import config_file
from pipeline.config import Config
from pipeline.errors import ConfigError

from .exits import EXIT_SOURCE, CliError
from .resources import DEFAULT_CONFIG, DEMO_CLIP, DEMO_OUTPUT, config_path, named_configs

_SOURCE_ID = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]{0,63})=(.+)$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _clean(path: str) -> str:
    """A local path without `//` or `./` in it (what is printed is what was meant); URLs, camera
    indices and "" as they are."""
    if not path or path.isdigit() or _URL.match(path):
        return path
    return os.path.normpath(path)


def parse_source(text: str) -> dict[str, str]:
    """`URI` or `ID=URI` (a stream id of your choice, e.g. left=/dev/video0 or cam=0)."""
    m = _SOURCE_ID.match(text)
    if m and not os.path.exists(text):
        return {"id": m[1], "uri": _clean(m[2])}
    return {"uri": _clean(text)}


def read_config_file(path: str) -> dict[str, Any]:
    """The config file's top-level mapping, read by the pipeline's own bounded reader."""
    try:
        return config_file.read_config_file(path)
    except ConfigError as e:
        raise CliError(str(e)) from None


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """data[name] as a dict to modify (created if absent; `true` means defaults)."""
    value = data.get(name)
    if value is None or value is True:
        value = {}
    if not isinstance(value, dict):
        raise CliError(f"{where}: config: {name} must be a mapping, got {value!r}")
    data[name] = value
    return value


def source_options(args: argparse.Namespace) -> dict[str, Any]:
    """The per-source keys the command line sets for every source it reads: --mode, --pace,
    --max-frames (those given)."""
    given = {"mode": args.mode, "pace": args.pace or None, "max_frames": args.max_frames}
    return {key: value for key, value in given.items() if value}


def _apply_to_sources(data: dict[str, Any], args: argparse.Namespace) -> None:
    if args.source:
        data["sources"] = [parse_source(s) for s in args.source]
    elif args.remote:
        data["sources"] = []  # only the remote streams (added by _apply_network)
    sources = data.get("sources")
    if isinstance(sources, (str, int, dict)) and not isinstance(sources, bool):
        sources = [sources]
    if not isinstance(sources, list):  # load_config reports other shapes
        return
    sources = [{"uri": str(s)} if isinstance(s, (str, int)) else s for s in sources]
    for s in sources:
        if not isinstance(s, dict):
            continue
        s.update(source_options(args))
        if args.input_size is not None:
            s.pop("input_size", None)  # the command line's size is for every stream
    if args.intrinsics is not None:
        if len(sources) != 1 or not isinstance(sources[0], dict):
            raise CliError(f"--intrinsics is for a single source, got {len(sources)}; give "
                           "each its sources[*].intrinsics in a config file")  # fmt: skip
        sources[0].pop("hfov_deg", None)
        sources[0]["intrinsics"] = args.intrinsics
    data["sources"] = sources


def _apply_to_outputs(data: dict[str, Any], args: argparse.Namespace, where: str) -> None:
    outputs = _section(data, "outputs", where)
    if args.save_depth is not None or args.depth_format is not None:
        files = outputs.get("files")
        in_file = isinstance(files, dict)  # the config's own formats stand unless overridden
        files = dict(files) if in_file else {}
        if args.save_depth is not None:
            files["directory"] = args.save_depth
        elif "directory" not in files:
            raise CliError("--depth-format needs --save-depth DIR (or outputs.files in the config)")
        if args.depth_format is not None or not in_file:
            fmt = args.depth_format or "npy"
            files["npy"] = fmt in ("npy", "both")
            files["png"] = fmt in ("png16", "both")
        outputs["files"] = files
    if args.save_video is not None:
        video = outputs.get("video")
        outputs["video"] = {**(video if isinstance(video, dict) else {}), "path": args.save_video}
    if args.save_depth_video is not None:
        dv = outputs.get("depth_video")
        outputs["depth_video"] = {**(dv if isinstance(dv, dict) else {}),
                                  "path": args.save_depth_video}  # fmt: skip
    if args.publish is not None:
        pub = outputs.get("zmq")
        outputs["zmq"] = {**(pub if isinstance(pub, dict) else {}), "endpoint": args.publish}
    for name in ("foxglove", "web"):
        if getattr(args, name) is not None:
            section = outputs.get(name)
            section = dict(section) if isinstance(section, dict) else {}
            host, port = getattr(args, name)  # (None, None): the option alone, config's/defaults
            section.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
            outputs[name] = section
    if outputs.get("web") is True:  # `web: true` in the config: its defaults
        outputs["web"] = {}
    if args.side_by_side and isinstance(outputs.get("web"), dict):  # the web view's too
        outputs["web"] = {**outputs["web"], "side_by_side": True}
    if args.web_encoding is not None:
        if not isinstance(outputs.get("web"), dict):
            raise CliError("--web-encoding needs --web (or outputs.web in the config)")
        outputs["web"] = {**outputs["web"], "encoding": args.web_encoding}
    if args.record is not None:
        rec = outputs.get("record")
        outputs["record"] = {**(rec if isinstance(rec, dict) else {}), "path": args.record}
    if args.rerun is not None or args.rerun_connect is not None:
        rerun = outputs.get("rerun")
        rerun = dict(rerun) if isinstance(rerun, dict) else {}
        if args.rerun is not None:
            rerun["path"] = _clean(args.rerun)
        if args.rerun_connect is not None:
            rerun["connect"] = args.rerun_connect
        outputs["rerun"] = rerun
    if args.display and not outputs.get("window"):
        outputs["window"] = {}
    # printed at the end
    if args.save_points is not None:
        ply = outputs.get("points")
        outputs["points"] = {**(ply if isinstance(ply, dict) else {}),
                             "directory": args.save_points}  # fmt: skip
    for key, field in (("files", "directory"), ("video", "path"), ("depth_video", "path"),
                       ("record", "path"), ("points", "directory")):  # fmt: skip
        section = outputs.get(key)
        if isinstance(section, dict) and isinstance(section.get(field), str):
            outputs[key] = {**section, field: _clean(section[field])}


def apply_options(data: dict[str, Any], args: argparse.Namespace, where: str) -> dict[str, Any]:
    """The config file's dict with every command-line option that was given written over it."""
    data = copy.deepcopy(data)
    _apply_to_sources(data, args)
    model = _section(data, "model", where)
    for key, value in (
        ("checkpoint", args.checkpoint),
        ("backend", args.backend),
        ("precision", args.precision),
        ("device", args.device),
        ("max_batch", args.batch),
    ):
        if value is not None:
            model[key] = value
    if args.input_size is not None:
        model["input_size"] = None if args.input_size == "auto" else list(args.input_size)
    if args.simulate_ms is not None:
        model["simulate_ms"] = args.simulate_ms
    if args.side_by_side:
        _section(data, "postprocess", where)["side_by_side"] = True
    if args.stabilize:  # the config's temporal keys if it has them, else the defaults
        _section(_section(data, "postprocess", where), "temporal", where)
    if args.points_stride is not None:
        _section(_section(data, "postprocess", where), "points", where)["stride"] = (
            args.points_stride
        )
    if args.metrics_interval is not None:
        _section(data, "metrics", where)["interval_s"] = args.metrics_interval
    if args.metrics_port is not None:
        host, port = args.metrics_port
        _section(data, "metrics", where).update({"port": port, **({"host": host} if host else {})})
    _apply_to_outputs(data, args, where)
    _apply_network(data, args, where)
    return data


def _apply_network(data: dict[str, Any], args: argparse.Namespace, where: str) -> None:
    """--workers, --ingest, --remote and the CURVE options (for every endpoint the hub binds)."""
    if args.remote:
        remote = [{"id": r, "uri": f"remote:{r}", "kind": "external"} for r in args.remote]
        if args.mode:
            remote = [{**r, "mode": args.mode} for r in remote]
        data["sources"] = ([] if args.source is None else data.get("sources", [])) + remote
    if args.workers is not None:
        _section(data, "workers", where)["endpoint"] = args.workers
    if args.local_worker:
        _section(data, "workers", where)["local_worker"] = True
    if args.worker_wait is not None:
        _section(data, "workers", where)["wait_s"] = args.worker_wait
    if args.ingest is not None:
        _section(data, "ingest", where)["endpoint"] = args.ingest
    if args.remote and not data.get("ingest"):
        raise CliError("--remote needs --ingest tcp://ADDR:PORT (where the remote cameras connect)")
    curve = {k: v for k, v in (("secret", args.curve_secret), ("allow", args.curve_allow),
                               ("insecure", args.insecure or None)) if v is not None}  # fmt: skip
    if curve:
        for section in [data.get(k) for k in ("workers", "ingest")] + [
            data.get("outputs", {}).get("zmq") if isinstance(data.get("outputs"), dict) else None
        ]:
            if isinstance(section, dict):
                section["curve"] = {**(section.get("curve") or {}), **curve}


def _demo(data: dict[str, Any], args: argparse.Namespace) -> None:
    """The demo: the bundled clip; without other outputs, ./outputs/demo/ (depth + video)."""
    if not os.path.isfile(DEMO_CLIP):
        raise CliError(
            f"the demo clip {DEMO_CLIP} is missing; recreate it with "
            "`python assets/make_demo.py`, or pass --source",
            EXIT_SOURCE,
        )
    data["sources"] = [{"id": "demo", "uri": DEMO_CLIP}]
    if not any((args.save_depth, args.save_video, args.publish, args.display)) and not (
        args.foxglove
        or args.web  # the demo in the browser or the Foxglove app only, or only recorded
        or args.record
        or args.rerun
        or args.rerun_connect
        or args.save_points
        or args.save_depth_video
    ):
        args.save_depth = os.path.join(DEMO_OUTPUT, "depth")
        args.save_video = os.path.join(DEMO_OUTPUT, "depth.mp4")
        args.side_by_side = True
        data["outputs"] = {}  # the demo writes only to outputs/demo/


def build_config(args: argparse.Namespace) -> Config:
    """Config file (or the demo) + command-line options -> validated pipeline Config."""
    demo = not args.source and not args.config and not args.remote
    path = config_path(args.config) if args.config else DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise CliError(f"config file not found: {path} (named configs: "
                       f"{', '.join(named_configs())})")  # fmt: skip
    data = config_file.relative_to_file(read_config_file(path), path)
    if demo:
        _demo(data, args)
    data = apply_options(data, args, path)
    if "sources" not in data:
        raise CliError(f"{path}: no sources; give --source or set sources in the config")
    try:
        config = config_file.config_from_dict(data)
    except ConfigError as e:
        raise CliError(f"{path}: {e}") from None
    files = config.outputs.files
    if files is not None and len(config.sources) == 1:  # a single stream's files: DIR/000000.npy
        files = dataclasses.replace(files, layout="flat")
        outputs = dataclasses.replace(config.outputs, files=files)
        config = dataclasses.replace(config, outputs=outputs)
    ply = config.outputs.points
    if ply is not None and len(config.sources) == 1:  # likewise DIR/000000.ply
        flat = dataclasses.replace(ply, layout="flat")
        outputs = dataclasses.replace(config.outputs, points=flat)
        config = dataclasses.replace(config, outputs=outputs)
    return config
