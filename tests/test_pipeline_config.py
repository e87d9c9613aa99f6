"""Typed config: loading from YAML, defaults, shorthands, and errors that name the key."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from pipeline.config import (
    Config,
    ModelConfig,
    SourceConfig,
    VideoSinkConfig,
    load_config,
    to_dict,
)
from pipeline.errors import ConfigError

FULL = """
sources:
  - uri: 0
    id: cam0
    reconnect: {max_attempts: 3, initial_delay_s: 0.1}
  - uri: clips/a.mp4
    mode: live
    pace: true
    input_size: [224, 320]
  - "frames/*.png"
model:
  checkpoint: ckpt
  backend: eager
  input_size: [352, 1216]
  max_batch: 4
  max_wait_ms: 10
postprocess:
  depth_range: [0.5, 80]
  colormap: turbo
  side_by_side: true
outputs:
  zmq: {endpoint: "tcp://127.0.0.1:6000", publish_view: true}
  files: {directory: out, png: false}
  video: {path: out/depth.avi}
  window: true
transport: {kind: tcp, hwm: 3}
metrics: {interval_s: 0}
"""


def test_full_yaml_file_loads_into_typed_config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(FULL)
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    cam, clip, images = cfg.sources
    assert (cam.uri, cam.id, cam.reconnect.max_attempts, cam.reconnect.initial_delay_s) == (
        "0",
        "cam0",
        3,
        0.1,
    )
    assert (clip.id, clip.mode, clip.pace, clip.input_size) == ("source1", "live", True, (224, 320))
    # A file's relative paths are relative to the file (images); cameras and URLs are not paths.
    images_uri = os.path.join(os.path.realpath(tmp_path), "frames", "*.png")
    assert (images.uri, images.kind, images.mode) == (images_uri, "auto", "auto")
    assert cfg.model.input_size == (352, 1216) and cfg.model.max_batch == 4
    assert cfg.model.max_wait_ms == 10.0 and isinstance(cfg.model.max_wait_ms, float)
    assert cfg.postprocess.depth_range == (0.5, 80.0) and cfg.postprocess.side_by_side
    assert cfg.outputs.zmq.endpoint == "tcp://127.0.0.1:6000" and cfg.outputs.zmq.publish_view
    assert cfg.outputs.files.png is False and cfg.outputs.files.npy is True
    assert cfg.outputs.window.title == "depthstream"
    assert cfg.transport.kind == "tcp" and cfg.transport.hwm == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.max_batch = 8  # type: ignore[misc]
    assert load_config(to_dict(cfg)) == cfg  # round trip through plain dicts


def test_defaults_and_single_source_shorthand():
    cfg = load_config({"sources": "video.mp4", "model": {"input_size": "auto"}})
    assert cfg.sources == (SourceConfig(uri="video.mp4", id="source0"),)
    assert cfg.model == ModelConfig()
    assert cfg.outputs.zmq is None and cfg.outputs.video is None
    assert cfg.transport.kind == "inproc" and cfg.metrics.interval_s == 5.0


@pytest.mark.parametrize(
    "data, key, valid",
    [
        ({"sources": ["a.mp4"], "modle": {}}, "modle", "sources, model, postprocess"),
        ({"sources": ["a.mp4"], "model": {"batch": 2}}, "model.batch", "max_batch"),
        ({"sources": [{"uri": "a.mp4", "rate": 5}]}, "sources[0].rate", "pace"),
        (
            {"sources": ["a"], "outputs": {"video": {"path": "x.avi", "codec": "h264"}}},
            "outputs.video.codec",
            "path, fps",
        ),
        (
            {"sources": ["a", {"uri": "b", "reconnect": {"tries": 1}}]},
            "sources[1].reconnect.tries",
            "max_attempts",
        ),
    ],
)
def test_unknown_key_names_dotted_path_and_lists_valid_keys(data, key, valid):
    with pytest.raises(ConfigError) as e:
        load_config(data)
    message = str(e.value)
    assert f"unknown key '{key}'" in message
    assert valid in message


@pytest.mark.parametrize(
    "data, key",
    [
        ({"sources": [{"uri": "a", "mode": "fast"}]}, "sources[0].mode"),
        ({"sources": [{"uri": "a", "kind": "webcam"}]}, "sources[0].kind"),
        ({"sources": ["a"], "model": {"max_batch": 0}}, "model.max_batch"),
        ({"sources": ["a"], "model": {"max_batch": "4"}}, "model.max_batch"),
        ({"sources": ["a"], "model": {"input_size": [480, 641]}}, "model.input_size"),
        ({"sources": ["a"], "model": {"input_size": [480]}}, "model.input_size"),
        ({"sources": ["a"], "postprocess": {"depth_range": [10, 1]}}, "postprocess.depth_range"),
        ({"sources": ["a"], "postprocess": {"colormap": "rainbowz"}}, "postprocess.colormap"),
        ({"sources": ["a"], "outputs": {"video": {"path": "x.mkv"}}}, "outputs.video.path"),
        ({"sources": ["a"], "outputs": {"zmq": {"endpoint": "localhost"}}}, "outputs.zmq.endpoint"),
        ({"sources": ["a"], "outputs": {"files": {}}}, "outputs.files.directory"),
        ({"sources": ["a"], "transport": {"kind": "udp"}}, "transport.kind"),
        ({"sources": ["a"], "metrics": {"interval_s": -1}}, "metrics.interval_s"),
        ({"sources": [{"uri": "a", "id": "x"}, {"uri": "b", "id": "x"}]}, "sources"),
        ({"sources": [{"uri": "a", "id": "bad id/../"}]}, "sources[0].id"),
        ({"sources": []}, "sources"),
        ({"model": {}}, "sources"),
    ],
)
def test_invalid_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=r"\b" + key.replace("[", r"\[").replace("]", r"\]")):
        load_config(data)


def test_config_files_that_cannot_be_read(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [a.mp4\nmodel: {")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"sources": ["a"], "model": {"max_wait_ms": "soon"}}))
    with pytest.raises(ConfigError, match=r"wrong.yaml.*model.max_wait_ms"):
        load_config(wrong)


def test_dataclasses_validate_when_built_in_python():
    with pytest.raises(ConfigError, match="max_batch"):
        ModelConfig(max_batch=0)
    with pytest.raises(ConfigError, match="path"):
        VideoSinkConfig(path="out.webm")
    cfg = Config(sources=(SourceConfig(uri="a.mp4"), SourceConfig(uri="b.mp4")))
    assert cfg.stream_ids() == ["source0", "source1"]
