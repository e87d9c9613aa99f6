"""Network stream sources through the whole pipeline, each from a real server on 127.0.0.1.

tcp:// and udp:// are served by ffmpeg (MPEG-TS), rtsp:// by GStreamer's RTSP server (RTP/JPEG);
the pipeline reads them with OpenCV's FFmpeg backend, as it reads a network camera. (http:// is in
test_pipeline_live.py.)
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pytest
from pipeline_helpers import (
    LogWatch,
    assert_fails_at_once,
    depthstream_threads,
    eager_factory,
    free_port,
    latency_bound_ms,
    slow_factory,
    total_drops,
    write_video,
)
from stream_server import StreamServer
from system_tools import needs_ffmpeg, needs_rtsp

from pipeline import Pipeline, StageError

PROTOCOLS = [
    pytest.param("tcp", marks=needs_ffmpeg),
    pytest.param("udp", marks=needs_ffmpeg),
    pytest.param("rtsp", marks=needs_rtsp),
]
FPS = 25  # the clip's rate, which every server streams at in real time


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("network") / "clip.avi"
    return write_video(str(path), 60, 160, 120, "MJPG", fps=FPS)


def capture_events(pipe: Pipeline) -> dict[str, int]:
    return pipe.metrics()["capture:net"].get("events", {})


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stream_reaches_depth_with_bounded_latency_and_reconnects_after_server_restart(
    protocol, clip, tiny_checkpoint, caplog
):
    caplog.set_level(logging.WARNING, logger="pipeline")
    server = StreamServer(clip, protocol=protocol).start()
    cfg = {
        "sources": [
            {
                "uri": server.url,
                "id": "net",
                "open_timeout_s": 3.0,
                "read_timeout_s": 1.0,
                "reconnect": {"max_attempts": 20, "initial_delay_s": 0.1, "max_delay_s": 0.5},
            }
        ],
        "model": {"checkpoint": tiny_checkpoint},
        "metrics": {"interval_s": 0},
    }
    # ~80 ms per frame: the model keeps up with ~12 of the stream's 25 fps, so frames are dropped
    pipe = Pipeline(cfg, engine_factory=slow_factory(tiny_checkpoint, 0.08))
    got, after = [], []
    restarted_at = None
    # what the source logs when it notices the stream is gone, as it counts the disconnect
    gone = LogWatch("pipeline", "source net: no frame from")
    results = pipe.results(timeout=10)
    try:
        with gone:
            for r in results:
                got.append(r)
                if restarted_at is None and len(got) == 5:
                    server.stop()  # the stream goes away mid-way...
                    # ...long enough for the source to notice (for udp: a silence >
                    # read_timeout_s; a sender back sooner is just more datagrams, no reconnect
                    # needed)...
                    noticed = gone.seen.wait(30)
                    assert noticed, f"the {protocol} source did not notice the server is gone"
                    assert capture_events(pipe).get("disconnects", 0) >= 1
                    server = StreamServer(clip, port=server.port, protocol=protocol).start()
                    restarted_at = time.monotonic()  # ...and comes back on the same port
                elif restarted_at is not None and r.t_capture > restarted_at:
                    after.append(r)
                    if len(after) == 5:
                        pipe.stop()
    finally:
        results.close()  # on a failure: stops and joins the pipeline
        server.stop()
    summary = pipe.summary()
    assert summary.stopped_by == "stop()"
    assert len(after) == 5, "no frames after the server came back"
    # the whole pipeline ran on every frame: depth at the stream's size, in metres
    for r in got:
        assert r.stream == "net" and r.header["mode"] == "live"
        assert r.header["source_shape"] == [120, 160]
        assert r.depth.shape == (120, 160) and np.isfinite(r.depth).all()
        assert 0 <= r.depth.min() and r.depth.max() <= 10.0  # the tiny model's max depth
    # reconnected: the one disconnect we caused, reopened (warnings name the url or the read)
    events = summary.stages["capture:net"]["events"]
    assert events["disconnects"] == 1 and events["reconnects"] == 1  # no spurious ones
    warnings = [m for m in caplog.messages if "reconnecting in" in m]
    assert len(warnings) == events["reconnect_attempts"] >= 1
    assert all(server.url in w or "no frame" in w for w in warnings)
    # live: never reordered or repeated (across the reconnect too); every frame read and not
    # delivered is a counted drop; latency stays bounded although the model is slower
    indices = [r.index for r in got]
    assert indices == sorted(set(indices))
    skipped = (indices[-1] - indices[0] + 1) - len(indices)
    assert 0 < skipped <= total_drops(summary)
    assert summary.stages["capture:net"]["processed"] >= indices[-1] + 1
    worst = max(r.latency_ms for r in got)
    assert worst < latency_bound_ms(summary, 1000 / FPS), f"latency grew to {worst:.0f} ms"
    assert depthstream_threads() == []


@needs_ffmpeg
def test_silent_udp_port_is_an_error_after_one_open_timeout(tiny_checkpoint, caplog):
    """UDP has no connection to refuse: with no sender, only the open timeout ends the open."""
    url = f"udp://127.0.0.1:{free_port(udp=True)}"  # nothing sends there
    elapsed = assert_fails_at_once(url, tiny_checkpoint, caplog, 1.0, "timed out")
    # one open of 1 s (+ start-up), no reconnects; an open without a timeout never returns
    assert 1.0 <= elapsed < 5, elapsed


@needs_ffmpeg
def test_stream_that_worked_then_went_away_gives_up_after_the_reconnect_attempts_saying_why(
    clip, tiny_checkpoint, caplog
):
    caplog.set_level(logging.WARNING, logger="pipeline")
    server = StreamServer(clip, protocol="tcp").start()
    cfg = {
        "sources": [
            {
                "uri": server.url,
                "id": "net",
                "open_timeout_s": 3.0,
                "read_timeout_s": 1.0,
                "reconnect": {"max_attempts": 2, "initial_delay_s": 0.05},
            }
        ],
        "model": {"checkpoint": tiny_checkpoint},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
    got = 0
    gave_up = (
        f"gave up on {server.url} after 2 reconnect attempts "
        f"(cannot open stream {server.url}: connection refused)"
    )
    try:
        with pytest.raises(StageError, match=re.escape(gave_up)):
            for _ in pipe.results(timeout=20):
                got += 1
                if got == 3:
                    server.stop()  # for good: nothing listens on its port any more
    finally:
        server.stop()
    assert got >= 3
    events = pipe.summary().stages["capture:net"]["events"]
    assert events["disconnects"] == 1 and events["reconnect_attempts"] == 2
    assert events.get("reconnects", 0) == 0
    assert len([m for m in caplog.messages if "reconnecting in" in m]) == 2
    assert depthstream_threads() == []
