"""Shutdown on end of input, signals, stop() and failures: no threads left, outputs valid."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time

import cv2
import numpy as np
import pytest
from pipeline_helpers import (
    FailingEngine,
    depthstream_threads,
    eager_factory,
    load_engine,
    read_video,
    write_images,
    write_video,
)

from pipeline import Pipeline, SourceError, StageError, Summary


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("clip") / "long.avi"), 300, 96, 64, "MJPG")


def config_for(uri, checkpoint, out=None, **extra):
    cfg = {
        "sources": [{"uri": uri, "id": "clip"}],
        "model": {"checkpoint": checkpoint, "max_batch": 2},
        "metrics": {"interval_s": 0},
    }
    if out is not None:
        cfg["outputs"] = {
            "files": {"directory": str(out / "files")},
            "video": {"path": str(out / "depth.avi")},
        }
    cfg.update(extra)
    return cfg


def assert_outputs_valid(out, delivered):
    """Every delivered frame is in the video and in complete files; nothing half-written."""
    assert len(read_video(str(out / "depth.avi"))) == delivered
    names = sorted(os.listdir(out / "files" / "clip"))
    assert len(names) == 2 * delivered and all(n.endswith((".npy", ".png")) for n in names)
    for name in names:
        if name.endswith(".npy"):
            assert np.load(out / "files" / "clip" / name).dtype == np.float32
    assert not [n for n in os.listdir(out) if "partial" in n]


def test_end_of_input_flushes_and_shuts_down(long_clip, tiny_checkpoint, tmp_path):
    cfg = config_for(long_clip, tiny_checkpoint, tmp_path, sources=[])
    cfg["sources"] = [{"uri": long_clip, "id": "clip", "max_frames": 25}]
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
    summary = pipe.run()
    assert summary.outcome == "finished" and summary.stopped_by is None
    assert summary.frames == {"clip": 25}
    assert_outputs_valid(tmp_path, 25)
    assert depthstream_threads() == []
    assert pipe.context.closed  # every socket was closed, or term() would have blocked
    assert "inference" in summary.format() and summary.to_dict()["frames"] == {"clip": 25}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_within_two_seconds_with_valid_outputs(
    long_clip, tiny_checkpoint, tmp_path, sig
):
    sent = {}

    def on_result(result):
        if result.index == 3 and not sent:
            sent["t"] = time.monotonic()
            os.kill(os.getpid(), sig)  # as Ctrl-C or `kill` would

    before = signal.getsignal(sig)
    pipe = Pipeline(
        config_for(long_clip, tiny_checkpoint, tmp_path),
        engine_factory=eager_factory(tiny_checkpoint),
        on_result=on_result,
    )
    summary = pipe.run()
    elapsed = time.monotonic() - sent["t"]
    # A model call in progress cannot be interrupted: on a machine so busy that one call of the
    # tiny model takes seconds, allow for it (on CI a call takes a few milliseconds).
    in_flight = summary.stages["inference"]["latency_ms"]["max"] / 1000
    assert elapsed < max(2.0, 2 * in_flight), f"stopping took {elapsed:.2f} s"
    assert summary.outcome == "stopped" and summary.stopped_by == sig.name
    assert 4 <= summary.frames["clip"] < 300
    assert_outputs_valid(tmp_path, summary.frames["clip"])
    assert depthstream_threads() == []
    assert signal.getsignal(sig) is before  # handlers restored


def test_stop_from_another_thread(long_clip, tiny_checkpoint):
    holder = {}

    def on_result(result):  # runs in the sink thread
        if result.index == 1:
            holder["pipe"].stop()

    pipe = holder["pipe"] = Pipeline(
        config_for(long_clip, tiny_checkpoint),
        engine_factory=eager_factory(tiny_checkpoint),
        on_result=on_result,
    )
    summary = pipe.run(handle_signals=False)
    assert summary.outcome == "stopped" and summary.stopped_by == "stop()"
    assert depthstream_threads() == []


def test_leaving_the_loop_early_stops_the_pipeline(long_clip, tiny_checkpoint):
    pipe = Pipeline(
        config_for(long_clip, tiny_checkpoint), engine_factory=eager_factory(tiny_checkpoint)
    )
    results = iter(pipe)
    first = [next(results), next(results)]
    results.close()
    assert [r.index for r in first] == [0, 1]
    assert pipe.summary().outcome == "stopped"
    assert depthstream_threads() == []


def test_engine_failure_stops_everything_and_names_the_stage(long_clip, tiny_checkpoint, tmp_path):
    def factory():
        return FailingEngine(load_engine(tiny_checkpoint), fail_at=3)

    pipe = Pipeline(config_for(long_clip, tiny_checkpoint, tmp_path), engine_factory=factory)
    with pytest.raises(StageError) as e:
        pipe.run()
    assert e.value.stage == "inference"
    assert "stage 'inference' failed: RuntimeError: device lost" in str(e.value)
    assert isinstance(e.value.__cause__, RuntimeError)
    summary = pipe.summary()
    assert summary.outcome == "failed" and "device lost" in summary.error
    assert_outputs_valid(tmp_path, summary.frames["clip"])  # video closed properly
    assert depthstream_threads() == []


def test_callback_failure_is_raised_from_iteration_naming_the_sink(long_clip, tiny_checkpoint):
    def on_result(result):
        if result.index == 2:
            raise ValueError("consumer bug")

    pipe = Pipeline(
        config_for(long_clip, tiny_checkpoint),
        engine_factory=eager_factory(tiny_checkpoint),
        on_result=on_result,
    )
    with pytest.raises(StageError, match="stage 'sink' failed: ValueError: consumer bug"):
        for _ in pipe:
            pass
    assert depthstream_threads() == []


def test_missing_file_is_one_clear_error_before_any_thread(tiny_checkpoint, tmp_path):
    missing = str(tmp_path / "nope.mp4")
    with pytest.raises(SourceError, match=f"video file not found: {missing}"):
        Pipeline(config_for(missing, tiny_checkpoint)).run()
    assert depthstream_threads() == []


def test_undecodable_video_is_one_clear_error(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF" + os.urandom(4000))
    pipe = Pipeline(
        config_for(str(broken), tiny_checkpoint), engine_factory=eager_factory(tiny_checkpoint)
    )
    with pytest.raises(StageError) as e:
        pipe.run()
    assert e.value.stage == "capture:clip"
    assert isinstance(e.value.error, SourceError)
    assert str(broken) in str(e.value) and "\n" not in str(e.value)
    assert depthstream_threads() == []


def test_undecodable_image_names_the_file(tiny_checkpoint, tmp_path):
    folder = tmp_path / "imgs"
    write_images(str(folder), 3, 40, 32)
    (folder / "img_001.png").write_bytes(b"not a png")
    pipe = Pipeline(
        config_for(str(folder), tiny_checkpoint), engine_factory=eager_factory(tiny_checkpoint)
    )
    with pytest.raises(StageError, match="cannot decode image file .*img_001.png"):
        pipe.run()
    assert pipe.summary().outcome == "failed"
    assert depthstream_threads() == []


def test_bad_checkpoint_fails_at_start_naming_inference(long_clip, tmp_path):
    pipe = Pipeline(config_for(long_clip, str(tmp_path / "no_checkpoint")))
    with pytest.raises(StageError) as e:
        pipe.start()
    assert e.value.stage == "inference" and "no_checkpoint" in str(e.value)
    assert depthstream_threads() == []


def test_publish_endpoint_in_use_names_the_endpoint(long_clip, tiny_checkpoint):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        endpoint = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        cfg = config_for(long_clip, tiny_checkpoint, outputs={"zmq": {"endpoint": endpoint}})
        pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
        with pytest.raises(
            StageError, match=f"stage 'sink' failed: outputs.zmq: cannot bind {endpoint}"
        ):
            pipe.run()
    assert depthstream_threads() == []


def test_ctrl_c_while_the_engine_loads_stops_cleanly(long_clip, tiny_checkpoint):
    def factory():
        os.kill(os.getpid(), signal.SIGINT)  # the user gives up while the model is loading
        return load_engine(tiny_checkpoint)

    summary = Pipeline(config_for(long_clip, tiny_checkpoint), engine_factory=factory).run()
    assert summary.outcome == "stopped" and summary.stopped_by == "SIGINT"
    assert summary.frames == {"clip": 0}
    assert summary.startup_s == summary.duration_s and summary.fps == 0  # it never got running
    assert depthstream_threads() == []


def test_headline_fps_is_over_the_running_time_and_start_up_is_shown_apart():
    summary = Summary("finished", None, duration_s=10.0, frames={"a": 12, "b": 8}, startup_s=8.0)
    assert summary.running_s == 2.0 and summary.fps == 10.0
    head = summary.format().splitlines()[0]
    assert head == "depthstream finished: 20 frames in 2.0 s (10.0 fps), start-up 8.0 s, engine: "
    d = summary.to_dict()
    assert (d["duration_s"], d["startup_s"], d["running_s"], d["fps"]) == (10.0, 8.0, 2.0, 10.0)


def test_start_up_ends_when_every_stage_is_ready(long_clip, tiny_checkpoint):
    """Start-up: start() until the engine is built and every stage ready; fps over the rest."""
    built = {}

    def factory():  # real work, timed from inside the inference thread
        t0 = time.monotonic()
        engine = load_engine(tiny_checkpoint)
        engine(np.zeros((1, 3, 64, 96), np.float32))  # a warm-up call, as compiled backends make
        built["s"] = time.monotonic() - t0
        return engine

    cfg = config_for(long_clip, tiny_checkpoint)
    cfg["sources"][0]["max_frames"] = 20
    summary = Pipeline(cfg, engine_factory=factory).run()
    assert summary.frames == {"clip": 20}
    assert built["s"] <= summary.startup_s < summary.duration_s
    assert summary.running_s == round(summary.duration_s - summary.startup_s, 3)
    assert summary.fps == pytest.approx(20 / summary.running_s)
    head = summary.format().splitlines()[0]
    assert f"20 frames in {summary.running_s:.1f} s ({summary.fps:.1f} fps)" in head
    assert f"start-up {summary.startup_s:.1f} s" in head


def test_periodic_metrics_line_and_final_summary_are_logged(long_clip, tiny_checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="pipeline")
    cfg = config_for(long_clip, tiny_checkpoint, metrics={"interval_s": 0.05})
    cfg["sources"][0]["max_frames"] = 30
    summary = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).run()
    lines = [m for m in caplog.messages if m.startswith("depthstream: out")]
    assert lines, "no periodic metrics line"
    assert "e2e p50" in lines[0] and "inference p95" in lines[0]
    assert any(m.startswith("depthstream finished: 30 frames") for m in caplog.messages)
    stages = summary.stages
    assert list(stages) == ["capture:clip", "preprocess", "inference", "postprocess", "sink"]
    for name, s in stages.items():
        assert s["processed"] == 30 and s["fps"] > 0, name
        assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p95"] <= s["latency_ms"]["max"]
        assert s["queue"] == 0  # everything drained at the end
    assert 0 < summary.e2e_ms["p50"] <= summary.e2e_ms["max"]


def test_mp4_video_and_window_without_display(
    long_clip, tiny_checkpoint, tmp_path, caplog, monkeypatch
):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    caplog.set_level(logging.WARNING, logger="pipeline")
    cfg = config_for(long_clip, tiny_checkpoint)
    cfg["sources"] = [
        {"uri": long_clip, "id": "a", "max_frames": 6},
        {"uri": long_clip, "id": "b", "max_frames": 4},
    ]
    cfg["outputs"] = {"video": {"path": str(tmp_path / "depth.mp4"), "fps": 12}, "window": True}
    summary = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).run()
    assert summary.frames == {"a": 6, "b": 4}
    assert any("no display" in m for m in caplog.messages)
    # several streams and no {stream} in the name: one file per stream
    assert len(read_video(str(tmp_path / "depth_a.mp4"))) == 6
    assert len(read_video(str(tmp_path / "depth_b.mp4"))) == 4
    cap = cv2.VideoCapture(str(tmp_path / "depth_a.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12, abs=0.5)
    cap.release()
