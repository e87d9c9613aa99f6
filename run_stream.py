#!/usr/bin/env python3
"""depthstream: metric depth (GLPN) from cameras, video files, network streams and image folders.

    python run_stream.py                 # the demo: bundled clip -> ./outputs/demo/
    python run_stream.py --source clip.mp4 --checkpoint checkpoints/glpn-kitti --save-depth out/
    python run_stream.py --config configs/multi_stream.yaml --checkpoint checkpoints/glpn-nyu

Settings come from a YAML config (default: configs/default.yaml); options given on the command line
override the file. Run with --help for every option and the exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import re
import signal
import sys
import time
import traceback
from typing import Any

# OpenMP (libgomp) worker threads spin while they wait for work. On a machine with few cores that
# steals the CPU from the pipeline's other threads: measured on 2 cores, each model call took
# 2-2.5x as long inside the pipeline as alone; with PASSIVE, about 1.1x. Read when torch loads,
# so it is set before torch is imported; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.yaml")
DEMO_CLIP = os.path.join(ROOT, "assets", "demo.mp4")
DEMO_OUTPUT = os.path.join("outputs", "demo")  # relative to the current directory

# Exit codes (also in --help): scripts can tell what kind of problem stopped a run.
EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error inside the pipeline (a bug, or a device failure)
EXIT_USAGE = 2  # bad command line or config file (unknown key, invalid value)
EXIT_SOURCE = 3  # a source is missing, cannot be opened or decoded, or a live source gave up
EXIT_MODEL = 4  # the checkpoint cannot be loaded, or the engine cannot run as asked
EXIT_OUTPUT = 5  # an output cannot be written or an endpoint cannot be bound
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # stopped by a signal (128 + its number)

PUBLISHED = (
    ("vinvino02/glpn-kitti", "checkpoints/glpn-kitti", "configs/kitti.yaml", "outdoor, up to 80 m"),
    ("vinvino02/glpn-nyu", "checkpoints/glpn-nyu", "configs/nyu.yaml", "indoor, up to 10 m"),
)

log = logging.getLogger("depthstream")


class CliError(Exception):
    """A user-facing problem: printed as one line, exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        from pipeline.errors import one_line

        super().__init__(one_line(message))  # one short line, whatever the cause says
        self.code = code


# ---- command line ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _input_size(text: str) -> tuple[int, int] | str:
    if text.lower() == "auto":
        return "auto"
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH (e.g. 352x1216) or auto")
    h, w = int(m[1]), int(m[2])
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"{h}x{w}: height and width must be multiples of 32")
    return h, w


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _video_path(text: str) -> str:
    if os.path.splitext(text)[1].lower() not in (".avi", ".mp4"):
        raise argparse.ArgumentTypeError(f"{text!r} must end in .avi (MJPG) or .mp4 (mp4v)")
    return text


def _endpoint(text: str) -> str:
    if not re.match(r"^(tcp|ipc)://.+", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a ZeroMQ endpoint another program can reach "
            "(tcp://HOST:PORT or ipc://PATH)"
        )
    return text


_SOURCE_ID = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]{0,63})=(.+)$")


def parse_source(text: str) -> dict[str, str]:
    """`URI` or `ID=URI` (a stream id of your choice, e.g. left=/dev/video0 or cam=0)."""
    m = _SOURCE_ID.match(text)
    if m and not os.path.exists(text):
        return {"id": m[1], "uri": m[2]}
    return {"uri": text}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="run_stream.py",
        description="Metric depth (GLPN) from cameras, video files, network streams and image "
        "folders, saved to files/video and published over ZeroMQ. Without arguments: the demo "
        "(bundled clip, random weights unless --checkpoint) writing to ./outputs/demo/. "
        "Options override the config file; [brackets] name the config key each one sets.",
        epilog="exit codes: 0 success; 1 unexpected failure; 2 bad command line or config; "
        "3 source missing or unreadable; 4 checkpoint or engine problem; 5 output cannot be "
        "written or endpoint cannot be bound; 130/143 stopped by Ctrl-C/SIGTERM (after a clean "
        "shutdown and the summary).",
    )
    # (flags, keyword arguments): one entry per option, help text last.
    options: list[tuple[str, dict[str, Any]]] = [
        ("--source", dict(action="append", metavar="SRC", help=(
            "camera index (0), video file, stream URL (rtsp://, http://, udp://, tcp://), image "
            "directory or glob; repeat for several streams. ID=SRC names the stream (default "
            "source0, source1, ...). Replaces the config's sources. [sources]"))),
        ("--checkpoint", dict(metavar="DIR", help=(
            "Hugging Face format checkpoint directory (config.json + model.safetensors), or a "
            "hub id such as vinvino02/glpn-kitti when huggingface_hub is installed and online. "
            "Without it (and without model.checkpoint in the config) the model has RANDOM "
            "weights. [model.checkpoint]"))),
        ("--config", dict(metavar="FILE", help=(
            "YAML config; every key is explained in configs/default.yaml (default: that file)"))),
        ("--backend", dict(help=(
            "inference backend: auto, eager, compile, onnx, tensorrt [model.backend]"))),
        ("--precision", dict(choices=("auto", "fp32", "bf16", "fp16"), help=(
            "numeric precision [model.precision]"))),
        ("--device", dict(help="auto, cpu, cuda or cuda:N [model.device]")),
        ("--batch", dict(type=_positive_int, metavar="N", help=(
            "most frames per model call [model.max_batch]"))),
        ("--input-size", dict(type=_input_size, metavar="HxW", help=(
            "model input size, multiples of 32 (e.g. 480x640), or auto: each source's size "
            "rounded down to multiples of 32 [model.input_size]"))),
        ("--mode", dict(choices=("live", "lossless"), help=(
            "live: newest frame wins, drops counted (default for cameras and URLs); lossless: "
            "every frame in order (default for files and images). For every source. "
            "[sources[*].mode]"))),
        ("--save-depth", dict(metavar="DIR", help=(
            "write per-frame depth: DIR/000000.npy, ... (float32 metres, source size); with "
            "several sources DIR/<stream id>/ [outputs.files.directory]"))),
        ("--depth-format", dict(choices=("npy", "png16", "both"), help=(
            "files of --save-depth: npy (default), png16 (uint16, depth*256, KITTI) or both "
            "[outputs.files.npy/png]"))),
        ("--save-video", dict(type=_video_path, metavar="FILE", help=(
            "colourised depth video, .avi (MJPG) or .mp4 (mp4v); several sources: FILE_<id>.ext, "
            "or put {stream} in the name [outputs.video.path]"))),
        ("--side-by-side", dict(action="store_true", help=(
            "video/window show the input next to the depth [postprocess.side_by_side]"))),
        ("--publish", dict(type=_endpoint, metavar="ENDPOINT", help=(
            "ZeroMQ PUB endpoint for other programs (pipeline.client.DepthSubscriber), e.g. "
            "tcp://127.0.0.1:5556; a loopback address unless the network should reach it "
            "[outputs.zmq.endpoint]"))),
        ("--display", dict(action="store_true", help=(
            "show the depth in a window (q or Esc stops) [outputs.window]"))),
        ("--max-frames", dict(type=_positive_int, metavar="N", help=(
            "stop each source after N frames [sources[*].max_frames]"))),
        ("--log-level", dict(default="info", choices=("debug", "info", "warning", "error"), help=(
            "logging detail (default info); debug also prints tracebacks"))),
        ("--metrics-interval", dict(type=_seconds, metavar="SEC", help=(
            "seconds between metrics log lines, 0: off [metrics.interval_s]"))),
        ("--summary-json", dict(metavar="FILE", help=(
            "also write the final summary (per-stage counts, drops, latencies) as JSON"))),
    ]  # fmt: skip
    for flag, kwargs in options:
        p.add_argument(flag, **kwargs)
    return p


# ---- config: file + command line -------------------------------------------------------------


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """data[name] as a dict to modify (created if absent; `true` means defaults)."""
    value = data.get(name)
    if value is None or value is True:
        value = {}
    if not isinstance(value, dict):
        raise CliError(f"{where}: config: {name} must be a mapping, got {value!r}")
    data[name] = value
    return value


def read_config_file(path: str) -> dict[str, Any]:
    """The config file's top-level mapping, read by the pipeline's own bounded reader."""
    from pipeline import config as schema

    try:
        return schema.read_config_file(path)
    except schema.ConfigError as e:
        raise CliError(str(e)) from None


def apply_options(data: dict[str, Any], args: argparse.Namespace, where: str) -> dict[str, Any]:
    """The config file's dict with every command-line option that was given written over it."""
    data = copy.deepcopy(data)
    if args.source:
        data["sources"] = [parse_source(s) for s in args.source]
    sources = data.get("sources")
    if isinstance(sources, (str, int, dict)) and not isinstance(sources, bool):
        sources = [sources]
    if isinstance(sources, list):  # per-source options; load_config reports other shapes
        sources = [{"uri": str(s)} if isinstance(s, (str, int)) else s for s in sources]
        for s in sources:
            if not isinstance(s, dict):
                continue
            if args.mode:
                s["mode"] = args.mode
            if args.max_frames:
                s["max_frames"] = args.max_frames
            if args.input_size is not None:
                s.pop("input_size", None)  # the command line's size is for every stream
        data["sources"] = sources

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

    if args.side_by_side:
        _section(data, "postprocess", where)["side_by_side"] = True
    if args.metrics_interval is not None:
        _section(data, "metrics", where)["interval_s"] = args.metrics_interval

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
    if args.publish is not None:
        pub = outputs.get("zmq")
        outputs["zmq"] = {**(pub if isinstance(pub, dict) else {}), "endpoint": args.publish}
    if args.display and not outputs.get("window"):
        outputs["window"] = {}
    return data


# ---- checkpoint ------------------------------------------------------------------------------


def how_to_get_checkpoints() -> str:
    lines = ["For real metric depth, download a published checkpoint and pass its directory:"]
    for hub_id, local, _, what in PUBLISHED:
        lines.append(f"    hf download {hub_id} --local-dir {local}   # {what}")
    lines += [
        "    (or: git clone https://huggingface.co/vinvino02/glpn-kitti checkpoints/glpn-kitti)",
        "    python run_stream.py --config configs/kitti.yaml --checkpoint checkpoints/glpn-kitti"
        " --source VIDEO",
    ]
    return "\n".join(lines)


def random_weights_warning() -> str:
    bar = "!" * 78
    return "\n".join(
        [
            bar,
            "WARNING: no checkpoint given (--checkpoint): the model has RANDOM weights.",
            "The depth this run writes is NOT meaningful. The random weights are spread",
            "(glpn.synthetic.spread_init_) only so that the output varies with the image.",
            how_to_get_checkpoints(),
            bar,
        ]
    )


def check_checkpoint(path: str) -> str:
    """The local checkpoint directory (hub ids fetched when possible); CliError if unusable.

    Only config.json is read here; the engine loads the weights and checks every key and shape.
    """
    from glpn import CheckpointError, GLPNConfig
    from glpn.checkpoint import resolve_checkpoint_dir
    from glpn.config import ConfigError as ModelConfigError

    try:
        directory = resolve_checkpoint_dir(path)
        GLPNConfig.from_pretrained(directory)
    except (CheckpointError, ModelConfigError, OSError) as e:
        raise CliError(f"bad checkpoint: {e}", EXIT_MODEL) from None
    return directory


def random_demo_model() -> Any:
    """The small default GLPN with spread random weights, built in memory (nothing is written,
    so nothing is left behind by a run that is killed).

    Seed 2 because its output visibly follows the demo scene's edges and boxes (several were looked
    at); it is still not depth.
    """
    from glpn import GLPNConfig, GLPNDepth
    from glpn.synthetic import spread_init_

    return spread_init_(GLPNDepth(GLPNConfig.preset("default")), seed=2)


# ---- outputs ---------------------------------------------------------------------------------


def _make_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create output directory {path}: {e.strerror or e}", EXIT_OUTPUT)


def prepare_outputs(config: Any) -> Any:
    """Create output directories now (a clear error before anything runs); a single stream's depth
    files go straight into the directory (outputs.files.layout: flat)."""
    import dataclasses

    files = config.outputs.files
    if files is not None:
        _make_dir(files.directory)
        if len(config.sources) == 1:
            files = dataclasses.replace(files, layout="flat")
            outputs = dataclasses.replace(config.outputs, files=files)
            config = dataclasses.replace(config, outputs=outputs)
        for folder in {files.folder(s) for s in config.stream_ids()}:
            old = os.listdir(folder) if os.path.isdir(folder) else []
            if any(n.endswith((".npy", ".png")) for n in old):
                log.warning(
                    "%s already holds depth files; this run replaces those with the same frame "
                    "index and leaves the others", folder,
                )  # fmt: skip
    video_dir = os.path.dirname(config.outputs.video.path) if config.outputs.video else ""
    if video_dir and "{stream}" not in video_dir:  # per-stream folders: the sink makes them
        _make_dir(video_dir)
    pub = config.outputs.zmq
    if pub is not None and re.match(r"tcp://(\*|0\.0\.0\.0|\[::\]):", pub.endpoint):
        log.warning("publishing on every network interface (%s)", pub.endpoint)
    return config


def output_lines(summary: Any, config: Any, endpoints: dict[str, str]) -> list[str]:
    """Where the results are, for the end of the run: only what this run wrote completely (a run
    stopped before its first frame, or whose video failed, lists none)."""
    lines = [f"{label}: {path}" for label, path in summary.outputs.items()]
    if config.outputs.zmq is not None:
        lines.append(f"published on: {endpoints.get('publish', config.outputs.zmq.endpoint)}")
    return lines


# ---- progress, status and logging -------------------------------------------------------------


def expected_frames(source: Any) -> int | None:
    """Frames a file or image source will deliver (for the progress bar); None if unknown."""
    import cv2

    from pipeline.sources import image_files, resolve_kind

    kind = resolve_kind(source)
    count = None
    if kind == "images":
        count = len(image_files(source.uri))
    elif kind == "file":
        path = source.uri[7:] if source.uri.lower().startswith("file://") else source.uri
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT) if cap.isOpened() else 0
        cap.release()
        count = int(n) if n and n > 0 else None
    if count is not None and source.max_frames:
        count = min(count, source.max_frames)
    return count


class Progress:
    """A tqdm bar over delivered frames: with a total and ETA when every source's length is known,
    else a live status line (frames, fps, end-to-end latency, drops). Updated in the sink thread;
    drawn only on a terminal (log lines carry the status elsewhere)."""

    def __init__(self, total: int | None, label: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            desc=label,
            unit="frame",
            dynamic_ncols=True,
            disable=not sys.stderr.isatty(),
            file=sys.stderr,
        )
        self.live = total is None
        self.pipe: Any = None
        self._next_status = 0.0

    def update(self, result: Any) -> None:
        self.bar.update(1)
        now = time.monotonic()
        if self.live and self.pipe is not None and now >= self._next_status:
            self._next_status = now + 0.5
            m = self.pipe.metrics()
            e2e = m.get("sink", {}).get("e2e_ms", {})
            dropped = sum(s["dropped"] for s in m.values())
            p50, p95 = e2e.get("p50", 0), e2e.get("p95", 0)
            self.bar.set_postfix_str(
                f"e2e p50 {p50:.0f} p95 {p95:.0f} ms, dropped {dropped}", refresh=False
            )

    def close(self) -> None:
        self.bar.close()


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(level: str) -> None:
    if level != "debug":
        # FFmpeg's own lines ("[tcp @ 0x...] Connection refused") repeat what the pipeline reports
        # in its words (read when OpenCV loads its FFmpeg backend, so before cv2 is imported).
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    import cv2

    handler = _TqdmHandler()
    fmt = "%(asctime)s %(levelname)s %(message)s"
    if level == "debug":
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    else:
        # OpenCV's own "[ WARN:0@..." lines repeat what the pipeline reports in its words.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


# ---- errors ----------------------------------------------------------------------------------


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception out of the pipeline."""
    import glpn
    import glpn.engine
    from pipeline import ConfigError, EndpointError, PipelineError, SourceError, StageError

    stage = exc.stage if isinstance(exc, StageError) else None
    inner = exc.error if isinstance(exc, StageError) else exc
    engine_error = getattr(glpn.engine, "EngineError", None)
    if isinstance(inner, ConfigError):
        code, text = EXIT_USAGE, str(inner)
    elif isinstance(inner, SourceError):
        code, text = EXIT_SOURCE, str(inner)
    elif isinstance(inner, (glpn.CheckpointError, glpn.ConfigError)):
        code, text = EXIT_MODEL, f"bad checkpoint: {inner}"
    elif engine_error is not None and isinstance(inner, engine_error):
        code, text = EXIT_MODEL, f"engine: {inner}"
    elif isinstance(inner, EndpointError) or (
        isinstance(inner, OSError) and stage in (None, "sink")  # a file the outputs write
    ):
        code, text = EXIT_OUTPUT, str(inner)
    elif isinstance(inner, PipelineError):
        code, text = EXIT_FAILURE, str(inner)
    elif stage is not None:
        code, text = EXIT_FAILURE, f"stage {stage!r} failed: {type(inner).__name__}: {inner}"
    else:
        code, text = EXIT_FAILURE, f"{type(inner).__name__}: {inner}"
    from pipeline.errors import one_line

    return code, one_line(text)


# ---- the run ---------------------------------------------------------------------------------


def build_config(args: argparse.Namespace) -> Any:
    """Config file (or the demo) + command-line options -> validated pipeline Config."""
    from pipeline import ConfigError, load_config

    demo = not args.source and not args.config
    config_path = args.config or DEFAULT_CONFIG
    data = read_config_file(config_path)
    if demo:
        if not os.path.isfile(DEMO_CLIP):
            raise CliError(
                f"the demo clip {DEMO_CLIP} is missing; recreate it with "
                "`python assets/make_demo.py`, or pass --source",
                EXIT_SOURCE,
            )
        data["sources"] = [{"id": "demo", "uri": DEMO_CLIP}]
        if not any((args.save_depth, args.save_video, args.publish, args.display)):
            args.save_depth = os.path.join(DEMO_OUTPUT, "depth")
            args.save_video = os.path.join(DEMO_OUTPUT, "depth.mp4")
            args.side_by_side = True
            data["outputs"] = {}  # the demo writes only to outputs/demo/
    data = apply_options(data, args, config_path)
    if "sources" not in data:
        raise CliError(f"{config_path}: no sources; give --source or set sources in the config")
    try:
        return load_config(data)
    except ConfigError as e:
        raise CliError(f"{config_path}: {e}") from None


def print_results(summary: Any, config: Any, endpoints: dict[str, str]) -> None:
    print(summary.format())
    captured = {
        sid: summary.stages.get(f"capture:{sid}", {}).get("processed", 0) for sid in summary.frames
    }
    print("frames per stream: " + ", ".join(
        f"{sid} {captured[sid]} in / {n} out" for sid, n in summary.frames.items()
    ))  # fmt: skip
    for line in output_lines(summary, config, endpoints):
        print(line)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    import dataclasses

    config = build_config(args)

    from glpn.hardware import tune_cpu_allocator
    from pipeline import Pipeline, PipelineError
    from pipeline.runner import default_engine_factory

    # Before any thread exists, so that every thread's allocations keep their freed memory
    # (see glpn.hardware: 20-30% of CPU inference time otherwise goes to page faults).
    tune_cpu_allocator()
    from pipeline.sources import check_source

    for source in config.sources:
        check_source(source)  # a missing file or empty folder: one clear line, before anything runs

    with contextlib.ExitStack() as cleanup:
        random_weights = not config.model.checkpoint
        engine_factory = None  # the pipeline's own: glpn.engine.load(model.checkpoint, ...)
        if random_weights:
            engine_factory = default_engine_factory(config, model=random_demo_model())
        else:
            checkpoint = check_checkpoint(config.model.checkpoint)
            config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, checkpoint=checkpoint)
            )
        config = prepare_outputs(config)
        if random_weights:
            print(random_weights_warning(), file=sys.stderr, flush=True)

        counts = [expected_frames(s) for s in config.sources]
        for s, n in zip(config.sources, counts):
            log.info("source %s: %s%s", s.id, s.uri, f" ({n} frames)" if n is not None else "")
        total = sum(counts) if all(c is not None for c in counts) else None
        several = len(config.sources) > 1
        progress = Progress(total, f"{len(counts)} streams" if several else config.sources[0].id)
        cleanup.callback(progress.close)

        pipe = Pipeline(  # its summary is printed below
            config, engine_factory=engine_factory, on_result=progress.update, log_summary=False
        )
        progress.pipe = pipe
        failure: BaseException | None = None
        try:
            summary = pipe.run()
        except (PipelineError, OSError) as e:
            failure = e
            summary = pipe.summary()
        except KeyboardInterrupt:  # a second Ctrl-C while stopping: stop waiting
            progress.close()
            print("interrupted", file=sys.stderr)
            return EXIT_SIGNAL["SIGINT"]
        progress.close()

        ran = summary.duration_s > 0 and (failure is None or sum(summary.frames.values()) > 0)
        if ran:
            print_results(summary, config, pipe.endpoints)
            if args.summary_json:
                import json

                from glpn.fileio import atomic_write

                text = json.dumps(summary.to_dict(), indent=2) + "\n"
                try:
                    atomic_write(args.summary_json, text.encode())
                except OSError as e:
                    raise CliError(f"--summary-json: {e}", EXIT_OUTPUT) from None
            if random_weights:
                print("note: RANDOM weights (no --checkpoint): the depth is not meaningful.",
                      file=sys.stderr)  # fmt: skip
        if summary.stopped_by in EXIT_SIGNAL:
            return EXIT_SIGNAL[summary.stopped_by]
        if failure is not None:
            raise failure
        return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return run(args)
    except CliError as e:
        if args.log_level == "debug":
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGNAL["SIGINT"]
    except Exception as e:  # pipeline errors, and anything unexpected: still one line
        if args.log_level == "debug":
            traceback.print_exc()
        code, text = classify(e)
        print(f"error: {text}", file=sys.stderr)
        return code


if __name__ == "__main__":
    # SIGTERM before the pipeline installs its handler (while loading): exit cleanly, same code.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_SIGNAL["SIGTERM"]))
    code = main()
    capture = sys.modules.get("pipeline.capture")
    if capture is not None and capture.opens_in_flight():
        # A stop left a camera/URL open running inside OpenCV, which cannot interrupt it: exit
        # now rather than wait for it (see pipeline.capture._wait_for_abandoned_opens).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
