"""URLs read through PyAV (pipeline/source_av.py): per-source RTSP transport, opens that a stop
interrupts, presentation timestamps in the header, and OpenCV still reading where asked or where
`av` is missing.

Every server is real, on 127.0.0.1: GStreamer's RTSP server (one of them serving RTP interleaved
in the RTSP connection only), ffmpeg's MPEG-TS over TCP, a TCP server that accepts and never
answers, a UDP port nobody sends to.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pipeline_helpers import (
    depthstream_threads,
    eager_factory,
    frame_at,
    free_port,
    load_engine,
    wait_until,
    write_video,
)
from stream_server import StreamServer, TcpOnlyRtspServer
from system_tools import needs_ffmpeg, needs_rtsp
from test_cli import assert_one_error_line, env_without
from test_sources_fail_fast import TcpServer

from pipeline import ConfigError, Pipeline, SourceError
from pipeline.capture import opens_in_flight
from pipeline.config import SourceConfig, config_from_dict
from pipeline.source_av import PyAVReader, interruptible, use_pyav
from pipeline.sources import check_source, open_reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FPS = 25  # every server streams in real time at this rate
H, W, N = 120, 160, 60  # the clip: N distinct frames (frame_at), looped by the ffmpeg server


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("source_av") / "clip.avi"), N, W, H, "MJPG", FPS)


def frame_number(image: np.ndarray) -> int:
    """Which of the clip's frames `image` shows (the nearest, after MPEG-2 coding)."""
    errors = [np.abs(image.astype(np.int16) - frame_at(i, H, W)).mean() for i in range(N)]
    return int(np.argmin(errors))


def results_per_stream(pipe: Pipeline, want: int, streams: tuple[str, ...]) -> dict[str, list]:
    """Results until every stream has `want`; then the pipeline is stopped and joined."""
    got: dict[str, list] = {s: [] for s in streams}
    results = pipe.results(timeout=20)
    try:
        for r in results:
            got[r.stream].append(r)
            if all(len(v) >= want for v in got.values()):
                pipe.stop()
    finally:
        results.close()
    return got


def assert_pts_follow_the_frames(headers: list[dict]) -> None:
    """pts (s) rise with the capture index, one frame period per frame read (live: frames dropped
    after capture keep their index), and msec says the same in milliseconds."""
    first = headers[0]
    for h in headers:
        pos = h["position"]
        assert pos["msec"] == pytest.approx(pos["pts_s"] * 1000, abs=1e-3)
        frames = (pos["pts_s"] - first["position"]["pts_s"]) * FPS
        assert frames == pytest.approx(h["index"] - first["index"], abs=0.01), (h, first)


@needs_rtsp
def test_rtsp_transport_is_per_source_and_rtsp_over_tcp_works(clip, tiny_checkpoint):
    """Two RTSP sources in one process, one over TCP (from a server that refuses UDP), one over
    UDP: a process-wide option (OpenCV's) could not serve both. (The servers play a test pattern
    of the clip's size and rate.)"""
    with TcpOnlyRtspServer(clip) as tcp_only:
        with StreamServer(clip, protocol="rtsp") as any_transport:
            # what a UDP setup gets from the TCP-only server: one line that says so
            udp = SourceConfig(uri=tcp_only.url, rtsp_transport="udp", open_timeout_s=3.0)
            with pytest.raises(SourceError) as info:
                open_reader(udp, "url")
            assert str(info.value) == (
                f"cannot open stream {tcp_only.url}: the server offers no RTP over udp "
                "(rtsp_transport: udp)"
            )
            cfg = {
                "sources": [
                    {"uri": tcp_only.url, "id": "tcp", "rtsp_transport": "tcp"},
                    {"uri": any_transport.url, "id": "udp", "rtsp_transport": "udp"},
                ],
                "model": {"checkpoint": tiny_checkpoint},
                "metrics": {"interval_s": 0},
            }
            pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
            got = results_per_stream(pipe, 8, ("tcp", "udp"))
    assert pipe.summary().stopped_by == "stop()"
    for stream, results in got.items():
        assert len(results) >= 8, stream
        assert all(r.depth.shape == (H, W) and np.isfinite(r.depth).all() for r in results)
        assert_pts_follow_the_frames([r.header for r in results])
    assert depthstream_threads() == []


@needs_ffmpeg
def test_pts_match_the_frame_times_of_the_source(clip):
    """Each frame's pts is its time in the clip (frame k of the loop at k / 25 s)."""
    with StreamServer(clip, protocol="tcp") as server:
        reader = open_reader(SourceConfig(uri=server.url, open_timeout_s=5.0), "url")
        try:
            assert isinstance(reader, PyAVReader) and reader.fps == FPS
            frames = [reader.read() for _ in range(40)]
        finally:
            reader.close()
    assert all(f is not None and f.image.shape == (H, W, 3) for f in frames)
    pts = [f.position["pts_s"] for f in frames]
    numbers = [frame_number(f.image) for f in frames]
    for p, k in zip(pts, numbers):
        elapsed = round((p - pts[0]) * FPS)
        assert (p - pts[0]) * FPS == pytest.approx(elapsed, abs=0.01)  # on the frame grid
        assert elapsed % N == (k - numbers[0]) % N, (pts, numbers)  # the right frame at that time
    assert np.all(np.diff(pts) > 0)


def _udp_port_bound(port: int) -> bool:
    """Whether something binds 127.0.0.1:port/udp (read from /proc: FFmpeg's open does)."""
    with open("/proc/net/udp") as f:
        return any(row.split()[1].endswith(f":{port:04X}") for row in f.read().splitlines()[1:])


@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_a_stop_interrupts_a_blocked_open_itself(scheme, tiny_checkpoint):
    """The server never answers and the open timeout is 30 s: the stop returns within 2 s, and
    the open itself ends then too (its connection closed), rather than 30 s later."""
    assert interruptible(), "this PyAV's interrupt callback does not take our clock"
    server = TcpServer("hold") if scheme == "tcp" else None
    port = server.port if server else free_port(udp=True)
    cfg = {
        "sources": [{"uri": f"{scheme}://127.0.0.1:{port}", "id": "mute", "open_timeout_s": 30}],
        "model": {"checkpoint": tiny_checkpoint},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=lambda: load_engine(tiny_checkpoint))
    try:
        pipe.start()
        if server:
            assert server.accepted.wait(10), "the source did not connect"
        else:
            wait_until(lambda: _udp_port_bound(port), 10, "FFmpeg to bind the UDP port")
        helpers = [t for t in threading.enumerate() if t.name == "depthstream-open:mute"]
        t0 = time.monotonic()
        pipe.stop()
        summary = pipe.join(timeout=10)
        stop_s = time.monotonic() - t0
        for t in helpers:
            t.join(2.0)
        open_s = time.monotonic() - t0
        assert not any(t.is_alive() for t in helpers), "the open was not interrupted"
        if server:
            assert server.hung_up.wait(1), "the interrupted open did not close its connection"
        else:
            assert not _udp_port_bound(port), "the interrupted open did not close its socket"
    finally:
        pipe.stop()
        if server:
            server.close()
    assert summary.stopped_by == "stop()"
    assert stop_s < 2.0 and open_s < 2.0, f"stop {stop_s:.3f} s, open ended {open_s:.3f} s"
    assert opens_in_flight() == 0
    assert depthstream_threads() == []


def test_a_cancel_ends_an_open_at_once():
    """open_reader's cancel, set from another thread, ends PyAV's open within ~0.1 s."""
    server = TcpServer("hold")
    url = f"tcp://127.0.0.1:{server.port}"
    cancel = threading.Event()
    outcome: list[BaseException | float] = []

    def open_it() -> None:
        try:
            open_reader(SourceConfig(uri=url, open_timeout_s=30), "url", cancel).close()
        except SourceError as e:
            outcome.append(e)
        outcome.append(time.monotonic())

    opener = threading.Thread(target=open_it)
    opener.start()
    try:
        assert server.accepted.wait(10)
        t0 = time.monotonic()
        cancel.set()
        opener.join(5)
    finally:
        server.close()
    assert not opener.is_alive()
    error, ended = outcome
    assert str(error) == f"cannot open stream {url}: stopped"
    assert ended - t0 < 0.5, f"the open ended {ended - t0:.3f} s after the cancel"
    assert server.hung_up.wait(1)


@needs_ffmpeg
def test_reader_opencv_still_reads_urls(clip, tiny_checkpoint):
    """reader: opencv takes the OpenCV reader: frames carry OpenCV's msec, and no pts_s (which
    the PyAV reader gives every frame of this stream)."""
    with StreamServer(clip, protocol="tcp") as server:
        cfg = {
            "sources": [{"uri": server.url, "id": "cv", "reader": "opencv"}],
            "model": {"checkpoint": tiny_checkpoint},
            "metrics": {"interval_s": 0},
        }
        pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
        got = results_per_stream(pipe, 5, ("cv",))["cv"]
    assert len(got) >= 5 and all(r.depth.shape == (H, W) for r in got)
    assert all("pts_s" not in r.header["position"] for r in got)
    assert all("msec" in r.header["position"] for r in got)
    assert depthstream_threads() == []


@needs_ffmpeg
def test_without_av_urls_are_read_by_opencv_and_reader_pyav_is_one_error_line(
    clip, tiny_checkpoint, tmp_path
):
    """An install without the `video` extra: auto reads URLs through OpenCV; asking for PyAV (or
    for an RTSP transport) is a config error (exit 2) that says what to install."""
    env = env_without(tmp_path, "av")
    with StreamServer(clip, protocol="tcp") as server:
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "run_stream.py"), "--source", server.url,
             "--checkpoint", tiny_checkpoint, "--max-frames", "5"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "frames per stream: source0 5 in" in proc.stdout, proc.stdout
    config = tmp_path / "pyav.yaml"
    config.write_text("sources:\n  - uri: rtsp://127.0.0.1:9/s\n    reader: pyav\n")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), "--config", str(config),
         "--checkpoint", tiny_checkpoint],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_one_error_line(proc, 2, "reader: pyav needs PyAV: pip install depthstream[video]")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (dict(uri="clip.avi", kind="file", reader="pyav"), "reader: pyav reads URLs only"),
        (dict(uri="http://h/s.ts", rtsp_transport="tcp"), "rtsp_transport is for rtsp:// URLs"),
        (
            dict(uri="rtsp://h/s", rtsp_transport="tcp", reader="opencv"),
            "rtsp_transport needs reader: pyav or auto (OpenCV takes it only process-wide",
        ),
    ],
)
def test_settings_a_source_cannot_have_are_one_config_error(source, message):
    with pytest.raises(ConfigError) as info:
        check_source(SourceConfig(id="s", **source))
    assert str(info.value).startswith(f"source s: {message}"), str(info.value)


@pytest.mark.parametrize(("key", "value"), [("reader", "ffmpeg"), ("rtsp_transport", "http")])
def test_unknown_reader_or_transport_names_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"sources\[0\]\.{key}: '{value}' is not one of"):
        config_from_dict({"sources": [{"uri": "rtsp://h/s", key: value}]})


def test_auto_is_pyav_for_urls_only():
    url = SourceConfig(uri="rtsp://h/s")
    assert use_pyav(url, "url") and not use_pyav(SourceConfig(uri="0"), "camera")
    assert not use_pyav(SourceConfig(uri="rtsp://h/s", reader="opencv"), "url")
