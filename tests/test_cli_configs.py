"""configs/*.yaml and the command line (pipeline.cli) in-process: every file loads and is
documented, options win, named configs and file-relative paths, warnings and the progress bar."""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import re
import subprocess
import sys
import threading
import typing

import pytest
from test_cli import FRAMES, write_clip

from pipeline import cli, load_config
from pipeline import config as schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
KEY_LINE = re.compile(r"^\s*(- )?([A-Za-z_]+):")


def cli_config(*argv: str):
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


@pytest.mark.parametrize("name", ["default", "multi_stream"])
def test_default_input_size_is_the_reference_rule(name):
    """No fixed size: each source's size rounded down to multiples of 32, as GLPNImageProcessor
    does (the published model's depth); the bundled 240x320 clip still runs at 224x320."""
    config = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert config.model.input_size is None
    assert all(s.input_size is None for s in config.sources)
    assert cli_config().model.input_size is None  # the demo (no arguments)
    assert cli_config("--source", "a.mp4").model.input_size is None
    assert cli_config("--source", "a.mp4", "--input-size", "96x128").model.input_size == (96, 128)


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


# ---- named configs, paths relative to the file, options added by issue 10 ----------------------


@pytest.mark.parametrize("name", ["default", "kitti", "nyu", "multi_stream", "kitti.yaml"])
def test_named_configs_resolve_to_the_packaged_files(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of that name here
    path = os.path.join(cli.resources.CONFIG_DIR, name.removesuffix(".yaml") + ".yaml")
    assert os.path.samefile(path, os.path.join(ROOT, "configs", os.path.basename(path)))
    assert cli_config("--config", name) == load_config(path)


def test_a_file_of_that_name_wins_over_a_named_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kitti").write_text("sources: [mine.mp4]\n")
    assert cli_config("--config", "kitti").sources[0].uri == str(tmp_path / "mine.mp4")


def test_unknown_config_name_lists_the_named_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.CliError, match="config file not found: kity .*kitti, multi_stream"):
        cli_config("--config", "kity")


def test_paths_in_a_config_file_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    (folder / "ckpt").mkdir(parents=True)
    config = folder / "c.yaml"
    config.write_text(
        "sources: [clip.mp4, '0', 'rtsp://cam//stream', {uri: 'frames/*.png', id: imgs},\n"
        "          {uri: '/abs/x.mp4', id: abs}, {uri: 'file://rel.mp4', id: f}]\n"
        "model: {checkpoint: ckpt}\n"
        "outputs: {files: {directory: out}, video: {path: v/depth.mp4}}\n"
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: the file's paths must not depend on it
    here = os.path.realpath(folder)
    expected = [
        os.path.join(here, "clip.mp4"), "0", "rtsp://cam//stream",
        os.path.join(here, "frames", "*.png"), "/abs/x.mp4",
        "file://" + os.path.join(here, "rel.mp4"),
    ]  # fmt: skip
    for config_ in (load_config(config), cli_config("--config", str(config))):
        assert [s.uri for s in config_.sources] == expected
        assert config_.model.checkpoint == os.path.join(here, "ckpt")
        # Outputs are where the command runs (a packaged config must not write into the package).
        assert config_.outputs.files.directory == "out"
        assert config_.outputs.video.path == os.path.join("v", "depth.mp4")
    # A checkpoint that is not next to the file stays as written (a hub id, or relative to here).
    config.write_text("sources: [a.mp4]\nmodel: {checkpoint: vinvino02/glpn-nyu}\n")
    assert load_config(config).model.checkpoint == "vinvino02/glpn-nyu"
    # Command-line paths stay relative to the working directory.
    cmd = cli_config("--config", str(config), "--source", "b.mp4", "--save-depth", "d")
    assert cmd.sources[0].uri == "b.mp4" and cmd.outputs.files.directory == "d"


def test_printed_paths_have_no_double_slashes():
    config = cli_config(
        "--source", "clips//a.mp4", "--source", "rtsp://cam//s", "--save-depth", "out//d/",
        "--save-video", "video//x.mp4",
    )  # fmt: skip
    assert [s.uri for s in config.sources] == ["clips/a.mp4", "rtsp://cam//s"]  # a URL as is
    assert config.outputs.files.directory == "out/d" and config.outputs.video.path == "video/x.mp4"


def test_pace_option_sets_every_source():
    assert not any(s.pace for s in cli_config("--source", "a.mp4", "--source", "b.mp4").sources)
    config = cli_config("--source", "a.mp4", "--source", "b.mp4", "--pace")
    assert all(s.pace for s in config.sources)


@pytest.mark.parametrize("given, name", [("onnx", "onnxruntime"), ("onnxruntime", "onnxruntime"),
                                         ("eager", "eager")])  # fmt: skip
def test_backend_aliases(given, name):
    assert cli_config("--source", "a.mp4", "--backend", given).model.backend == name


def test_unknown_backend_is_refused_while_parsing():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), "--backend", "onnxx"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--backend" in lines[0] and "'onnxx'" in lines[0] and "onnxruntime" in lines[0]


def test_version_and_omp_wait_policy_before_torch():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), "--version"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and re.fullmatch(r"depthstream \d+\.\d+\.\d+\S*\n", proc.stdout)
    # The entry point sets OMP_WAIT_POLICY before torch is imported (it is read when torch loads).
    probe = (
        "import os, sys; import pipeline.cli; "
        "print('torch' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                         timeout=60, cwd=ROOT)  # fmt: skip
    assert out.stdout.split() == ["False", "PASSIVE"], out.stderr


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return write_clip(str(tmp_path_factory.mktemp("clip") / "clip.avi"), FRAMES)


def test_live_warning_only_for_unpaced_files(clip, caplog):
    from pipeline.cli.run import warn_live_files
    from pipeline.config import Config, SourceConfig

    quiet = [
        SourceConfig(uri=clip, mode="live", pace=True),
        SourceConfig(uri=clip, mode="lossless"),
        SourceConfig(uri="rtsp://127.0.0.1:9/x"),  # live by default, and not a file
    ]
    for source in quiet:
        warn_live_files(Config(sources=(source,)))
    assert not caplog.records
    warn_live_files(Config(sources=(SourceConfig(uri=clip, mode="live", id="a"),
                                    SourceConfig(uri=clip, mode="live", id="b"))))  # fmt: skip
    assert len(caplog.records) == 1 and "(a, b)" in caplog.records[0].getMessage()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counts_drops_and_starts_no_thread(clip, monkeypatch):
    """The bar's total is the frames that come in; delivered + dropped reach it. Made before the
    pipeline tunes the allocator, so it must not start tqdm's monitor thread."""
    from pipeline.cli.report import Progress
    from pipeline.config import Config, SourceConfig

    monkeypatch.setattr(sys, "stderr", _Terminal())
    threads = threading.active_count()
    progress = Progress(Config(sources=(SourceConfig(uri=clip, mode="live"),)))
    assert threading.active_count() == threads
    assert progress.counts == [FRAMES] and progress.bar.total == FRAMES

    class Finished:
        stages = {"capture:source0": {"dropped": 0}, "preprocess": {"dropped": 4}}

    progress.update(None)
    progress.update(None)  # 2 delivered, 4 dropped
    progress.close(Finished())
    assert progress.bar.n == FRAMES
