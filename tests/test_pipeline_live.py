"""Live sources: newest frame wins with counted drops and bounded latency; network reconnects."""

from __future__ import annotations

import logging
import time

import pytest
from pipeline_helpers import (
    assert_fails_at_once,
    depthstream_threads,
    free_port,
    latency_bound_ms,
    slow_factory,
    total_drops,
    write_video,
)
from stream_server import StreamServer
from system_tools import needs_ffmpeg

from pipeline import Pipeline


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("live") / "clip.avi"), 60, 160, 120, "MJPG")


def test_live_source_faster_than_model_drops_oldest_and_keeps_latency_bounded(
    clip, tiny_checkpoint
):
    # 60 frames paced at 40 fps (1.5 s) into a model that needs >= 100 ms per frame: without
    # dropping, the last frame would wait ~4.5 s; with newest-wins about one model call.
    cfg = {
        "sources": [{"uri": clip, "id": "cam", "mode": "live", "pace": True, "fps": 40}],
        "model": {"checkpoint": tiny_checkpoint},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=slow_factory(tiny_checkpoint, 0.1))
    got = list(pipe)
    summary = pipe.summary()
    indices = [r.index for r in got]
    assert indices == sorted(set(indices))  # never reordered or repeated
    assert indices[-1] == 59  # the end of the stream is flushed
    assert 2 <= len(got) < 40  # at most ~1.5 s / 100 ms + the flushed last frame
    # every captured frame is either delivered or counted as dropped somewhere
    assert len(got) + total_drops(summary) == summary.stages["capture:cam"]["processed"] == 60
    assert summary.stages["preprocess"]["drops"].get("superseded", 0) > 0
    worst = max(r.latency_ms for r in got)
    assert worst < latency_bound_ms(summary, 25), f"latency grew to {worst:.0f} ms"
    assert summary.e2e_ms["max"] == pytest.approx(worst, abs=1)
    assert depthstream_threads() == []


@needs_ffmpeg
def test_network_stream_bounded_latency_and_reconnect_after_server_restart(
    clip, tiny_checkpoint, caplog
):
    caplog.set_level(logging.WARNING, logger="pipeline")
    server = StreamServer(clip).start()
    cfg = {
        "sources": [
            {
                "uri": server.url,
                "id": "net",
                "read_timeout_s": 1.0,
                "reconnect": {"max_attempts": 20, "initial_delay_s": 0.1, "max_delay_s": 0.5},
            }
        ],
        "model": {"checkpoint": tiny_checkpoint},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=slow_factory(tiny_checkpoint, 0.08))
    before, after = [], []
    restarted_at = None
    try:
        for r in pipe.results(timeout=30):
            if restarted_at is None:
                before.append(r)
                if len(before) == 5:
                    server.stop()  # the stream drops mid-way...
                    server = StreamServer(clip, port=server.port).start()  # ...and comes back
                    restarted_at = time.monotonic()
            elif r.t_capture > restarted_at:
                after.append(r)
                if len(after) == 5:
                    pipe.stop()
    finally:
        server.stop()
    summary = pipe.summary()
    assert summary.stopped_by == "stop()"
    assert len(after) == 5  # frames flow again after the restart
    events = summary.stages["capture:net"]["events"]
    assert events["reconnects"] >= 1 and events["disconnects"] >= 1
    warnings = [m for m in caplog.messages if "reconnecting in" in m]
    assert len(warnings) == events["reconnect_attempts"] >= 1
    assert all(server.url in w or "no frame" in w for w in warnings)
    # live: the stream runs at 25 fps, the model at ~10: frames are dropped, latency stays bounded
    assert total_drops(summary) > 0
    assert max(r.latency_ms for r in before + after) < latency_bound_ms(summary, 40)
    assert before[0].header["mode"] == "live" and before[0].header["source_shape"] == [120, 160]
    assert depthstream_threads() == []


def test_unreachable_stream_is_an_error_at_once(tiny_checkpoint, caplog):
    """It never worked: no reconnect attempts (their backoff would only delay the error)."""
    url = f"http://127.0.0.1:{free_port()}/s.ts"  # nothing listens there
    elapsed = assert_fails_at_once(url, tiny_checkpoint, caplog, 5.0, "connection refused")
    assert elapsed < 5, elapsed  # refused at once: the open timeout is not waited for


def test_live_and_lossless_sources_together(clip, tiny_checkpoint):
    """One model for both: the file loses nothing, the live stream only drops its own frames."""
    cfg = {
        "sources": [
            {"uri": clip, "id": "cam", "mode": "live", "pace": True, "fps": 40},
            {"uri": clip, "id": "file", "max_frames": 20},
        ],
        "model": {"checkpoint": tiny_checkpoint, "max_batch": 2},
        "metrics": {"interval_s": 0},
    }
    got = {"cam": [], "file": []}
    cam_during_file_backlog = 0
    pipe = Pipeline(cfg, engine_factory=slow_factory(tiny_checkpoint, 0.05))
    for r in pipe:
        got[r.stream].append(r.index)
        if r.stream == "cam" and len(got["file"]) < 20:
            cam_during_file_backlog += 1
    summary = pipe.summary()
    assert got["file"] == list(range(20))
    # The model is shared: the file's backlog does not starve the live stream.
    assert cam_during_file_backlog >= 5
    assert got["cam"] == sorted(set(got["cam"])) and got["cam"][-1] == 59
    assert len(got["cam"]) + total_drops(summary) == 60
    assert depthstream_threads() == []
