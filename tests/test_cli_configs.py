"""configs/*.yaml and run_stream.py's options: every file loads and is documented, options win."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import subprocess
import sys
import typing

import pytest

from pipeline import config as schema
from pipeline import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
KEY_LINE = re.compile(r"^\s*(- )?([A-Za-z_]+):")


def load_cli():
    spec = importlib.util.spec_from_file_location("run_stream", os.path.join(ROOT, "run_stream.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_config(*argv: str):
    cli = load_cli()
    return cli.build_config(cli.build_parser().parse_args(list(argv)))


def schema_fields(cls=schema.Config, prefix: str = "") -> list[str]:
    """Dotted names of every key the config schema accepts."""
    names = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        names.append(prefix + f.name)
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
        for sub in [tp, *args]:
            if dataclasses.is_dataclass(sub):
                names += schema_fields(sub, f"{prefix}{f.name}.")
    return names


def test_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"default.yaml", "kitti.yaml", "nyu.yaml", "multi_stream.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_file_loads(path):
    config = load_config(path)
    assert config.sources
    # run_stream.py reads it the same way (its options layered on top change nothing here).
    assert cli_config("--config", path) == config


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_key_has_a_comment(path):
    undocumented = [
        line for line in open(path, encoding="utf-8") if KEY_LINE.match(line) and "#" not in line
    ]
    assert not undocumented, f"{path}: keys without a comment: {undocumented}"


def test_default_config_explains_every_key():
    text = open(os.path.join(ROOT, "configs", "default.yaml"), encoding="utf-8").read()
    missing = [
        name
        for name in schema_fields()
        if not re.search(rf"\b{re.escape(name.rsplit('.', 1)[-1])}\b", text)
    ]
    assert not missing, f"configs/default.yaml does not mention: {missing}"


@pytest.mark.parametrize(
    "name, size, far, hub_id",
    [
        ("kitti", (352, 1216), 80.0, "vinvino02/glpn-kitti"),
        ("nyu", (480, 640), 10.0, "vinvino02/glpn-nyu"),
    ],
)
def test_published_checkpoint_configs(name, size, far, hub_id):
    config = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    m = config.model
    assert (m.checkpoint, m.backend, m.precision, m.device) == (hub_id, "tensorrt", "fp16", "cuda")
    assert m.input_size == size
    assert config.postprocess.depth_range == (0.0, far)


def test_multi_stream_config():
    config = load_config(os.path.join(ROOT, "configs", "multi_stream.yaml"))
    assert len(config.sources) >= 2 and len(set(config.stream_ids())) == len(config.sources)
    assert config.outputs.zmq is not None and config.outputs.zmq.endpoint.startswith("tcp://127.")
    assert config.model.max_batch >= 2


def test_command_line_overrides_the_config_file(tmp_path):
    config = cli_config(
        "--config", os.path.join(ROOT, "configs", "kitti.yaml"),
        "--source", "left=a.mp4", "--source", "rtsp://cam/stream?x=1",
        "--checkpoint", "ckpt", "--backend", "eager", "--precision", "bf16", "--device", "cpu",
        "--batch", "3", "--input-size", "224x320", "--mode", "lossless", "--max-frames", "7",
        "--save-depth", "d", "--depth-format", "both", "--save-video", "v.avi",
        "--side-by-side", "--publish", "tcp://127.0.0.1:6001", "--metrics-interval", "0",
    )  # fmt: skip
    assert [(s.id, s.uri) for s in config.sources] == [
        ("left", "a.mp4"),
        ("source1", "rtsp://cam/stream?x=1"),
    ]
    assert all(s.mode == "lossless" and s.max_frames == 7 for s in config.sources)
    m = config.model
    assert (m.checkpoint, m.backend, m.precision, m.device) == ("ckpt", "eager", "bf16", "cpu")
    assert (m.max_batch, m.input_size) == (3, (224, 320))
    files = config.outputs.files
    assert (files.directory, files.npy, files.png) == ("d", True, True)
    assert config.outputs.video.path == "v.avi" and config.postprocess.side_by_side
    assert config.outputs.zmq.endpoint == "tcp://127.0.0.1:6001"
    assert config.metrics.interval_s == 0
    # Keys the command line does not touch keep the file's values.
    assert config.postprocess.depth_range == (0.0, 80.0)


def test_input_size_auto_clears_sizes_from_the_file(tmp_path):
    path = tmp_path / "sized.yaml"
    path.write_text(
        "sources:\n  - uri: a.mp4\n    input_size: [64, 64]\nmodel:\n  input_size: [96, 96]\n"
    )
    assert cli_config("--config", str(path)).sources[0].input_size == (64, 64)
    config = cli_config("--config", str(path), "--input-size", "auto")
    assert config.model.input_size is None and config.sources[0].input_size is None


def test_help_lists_every_option():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    for option in (
        "--source", "--checkpoint", "--config", "--backend", "--precision", "--device", "--batch",
        "--input-size", "--mode", "--save-depth", "--depth-format", "--save-video",
        "--side-by-side", "--publish", "--display", "--max-frames", "--log-level",
        "--metrics-interval",
    ):  # fmt: skip
        assert re.search(rf"^\s+{option}\b.*\S", proc.stdout, re.M), option
    assert "exit codes" in proc.stdout
