"""Helpers for the pipeline tests: real videos, images, an ffmpeg stream server, engine wrappers."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import cv2
import numpy as np
import pytest

import glpn.engine
from glpn.processing import input_size_for, prepare_frames, resize_depth
from glpn.synthetic import synthetic_image
from pipeline import Pipeline, SourceError, StageError


def frame_at(i: int, height: int, width: int) -> np.ndarray:
    """A distinct BGR frame per index: a synthetic scene plus a moving bright square."""
    img = synthetic_image(height, width, seed=i % 7).copy()
    x = (i * 7) % max(width - 20, 1)
    img[height // 3 : height // 3 + 20, x : x + 20] = (255, 255, 255)
    return img


def write_video(path: str, n: int, width: int, height: int, fourcc: str, fps: float = 25.0) -> str:
    """A video written by OpenCV (note: its encoders round odd sizes down to even)."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for i in range(n):
        writer.write(frame_at(i, height, width))
    writer.release()
    return path


def write_video_ffv1(path: str, n: int, width: int, height: int, fps: float = 25.0) -> str:
    """A lossless FFV1 video of exactly width x height (odd sizes kept), written by ffmpeg."""
    frames = np.stack([frame_at(i, height, width) for i in range(n)])
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24"]
    cmd += ["-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-c:v", "ffv1", path]
    subprocess.run(cmd, input=frames.tobytes(), check=True, timeout=60)
    return path


def write_images(folder: str, n: int, width: int, height: int) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"img_{i:03d}.png")
        cv2.imwrite(path, frame_at(100 + i, height, width))
        paths.append(path)
    return paths


def read_video(path: str) -> list[np.ndarray]:
    """Every frame as OpenCV decodes it (the reference the pipeline must match)."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def reference_depth(
    engine, frames: Sequence[np.ndarray], input_size: tuple[int, int] | None = None
) -> list[np.ndarray]:
    """What calling the model directly gives: one frame at a time, back at source size."""
    out = []
    for frame in frames:
        size = input_size or input_size_for(*frame.shape[:2])
        pixels = np.asarray(prepare_frames([frame], size, bgr=True))
        depth = engine(pixels)[0]
        out.append(resize_depth(depth, frame.shape[:2]))
    return out


def load_engine(checkpoint: str) -> glpn.engine.Engine:
    """Eager fp32 on the CPU: the same numbers for any batch size, on any CI machine."""
    return glpn.engine.load(checkpoint, backend="eager", precision="fp32", device="cpu")


def eager_factory(checkpoint: str) -> Callable[[], glpn.engine.Engine]:
    return lambda: load_engine(checkpoint)


class SlowEngine:
    """A real engine that also takes `delay_s` per call: stands in for a big model on a slow CPU."""

    def __init__(self, engine, delay_s: float) -> None:
        self.engine = engine
        self.delay_s = delay_s
        self.max_depth = engine.max_depth
        self.calls = 0

    def __call__(self, pixels):
        self.calls += 1
        time.sleep(self.delay_s)  # simulated compute time, not synchronisation
        return self.engine(pixels)

    def describe(self) -> str:
        return f"{self.engine.describe()} + {self.delay_s * 1000:.0f} ms"


class FailingEngine:
    """A real engine whose call number `fail_at` raises (a fault inside the inference stage)."""

    def __init__(self, engine, fail_at: int) -> None:
        self.engine = engine
        self.fail_at = fail_at
        self.max_depth = engine.max_depth
        self.calls = 0

    def __call__(self, pixels):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("device lost")
        return self.engine(pixels)


def depthstream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("depthstream-")]


def free_port(udp: bool = False) -> int:
    with socket.socket(type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """True when something listens on 127.0.0.1:port, or has accepted a client there.

    Read from /proc, without connecting. `-listen 1` closes its listening socket once a client is
    accepted, and a reconnecting pipeline can get in before a poll sees LISTEN: an ESTABLISHED
    socket on the server's port then says the server is up.
    """
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[1].endswith(want) and cols[3] in ("0A", "01"):  # LISTEN, ESTABLISHED
                return True
    return False


# GStreamer's RTSP server (gst-rtsp-server through PyGObject), run by a Python that has `gi`:
# a live test pattern of the given size and rate, JPEG over RTP, at rtsp://127.0.0.1:PORT/s.
RTSP_SERVER_SCRIPT = """
import os
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("videotestsrc", "jpegenc", "rtpjpegpay") if not Gst.ElementFactory.find(e)]
if missing:
    sys.exit("missing GStreamer elements: " + " ".join(missing))
if sys.argv[1] == "check":
    sys.exit(0)
port, width, height, fps = sys.argv[1:5]
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},"
    f"height={height},framerate={fps} ! jpegenc ! rtpjpegpay name=pay0 pt=96 )"
)
factory.set_shared(True)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
server.get_mount_points().add_factory("/s", factory)
server.attach(None)
loop, parent = GLib.MainLoop(), os.getppid()
GLib.timeout_add(200, lambda: os.getppid() == parent or loop.quit())  # ends with its test run
loop.run()
"""
RTSP_PACKAGES = "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good"


@functools.cache
def rtsp_server_python() -> str | None:
    """A Python that can run RTSP_SERVER_SCRIPT (this one, or the system's), or None."""
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3")]):
        if python and os.path.isfile(python):
            check = [python, "-c", RTSP_SERVER_SCRIPT, "check"]
            try:
                ok = subprocess.run(check, capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return python
    return None


class StreamServer:
    """A real stream server on 127.0.0.1 that a pipeline source reads, paced in real time.

    ffmpeg's streams are MPEG-2 video in MPEG-TS (MJPEG in MPEG-TS does not open: FACTS.md).

    protocol (the source's URL is `url`):
      http  ffmpeg serves the clip, looped, as MPEG-TS over HTTP (`-listen 1`); the source connects
      tcp   ffmpeg serves it as MPEG-TS on a bare TCP socket (`?listen=1`); the source connects
      udp   ffmpeg sends it as MPEG-TS datagrams to the port; the source listens there
      rtsp  GStreamer's RTSP server plays a live test pattern of the clip's size and frame rate
            (JPEG over RTP; needs RTSP_PACKAGES, see rtsp_server_python)
    A listening server (http, tcp, rtsp) is up once its port listens; a sender (udp) once ffmpeg
    reports bytes written. Each http/tcp server serves one client: restart it to reconnect.
    """

    PROTOCOLS = ("http", "tcp", "udp", "rtsp")

    def __init__(self, clip: str, port: int | None = None, protocol: str = "http") -> None:
        if protocol not in self.PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {self.PROTOCOLS}")
        if protocol == "rtsp":
            if rtsp_server_python() is None:
                raise RuntimeError(f"GStreamer's RTSP server is not installed ({RTSP_PACKAGES})")
        elif shutil.which("ffmpeg") is None:
            raise RuntimeError("ffmpeg is not installed")
        self.clip = clip
        self.protocol = protocol
        self.port = port or free_port(udp=protocol == "udp")
        self.url = {
            "http": f"http://127.0.0.1:{self.port}/s.ts",
            "tcp": f"tcp://127.0.0.1:{self.port}",
            "udp": f"udp://127.0.0.1:{self.port}",
            "rtsp": f"rtsp://127.0.0.1:{self.port}/s",
        }[protocol]
        self.proc: subprocess.Popen | None = None
        self._progress: str | None = None  # udp: ffmpeg's -progress file

    def _command(self) -> list[str]:
        if self.protocol == "rtsp":
            cap = cv2.VideoCapture(self.clip, cv2.CAP_FFMPEG)
            width, height = (
                int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT)
            )
            fps = Fraction(cap.get(cv2.CAP_PROP_FPS) or 25).limit_denominator(1001)
            cap.release()
            python = rtsp_server_python()
            return [
                python,
                "-c",
                RTSP_SERVER_SCRIPT,
                str(self.port),
                str(width),
                str(height),
                f"{fps.numerator}/{fps.denominator}",
            ]
        cmd = ["ffmpeg", "-v", "error", "-nostdin"]
        if self.protocol == "udp":
            fd, self._progress = tempfile.mkstemp(prefix="ffmpeg-progress-", suffix=".txt")
            os.close(fd)
            cmd += ["-stats_period", "0.05", "-progress", self._progress]
        cmd += ["-re", "-stream_loop", "-1", "-i", self.clip]
        cmd += ["-c:v", "mpeg2video", "-pix_fmt", "yuv420p", "-f", "mpegts"]
        if self.protocol == "http":
            return cmd + ["-listen", "1", self.url]
        if self.protocol == "tcp":
            return cmd + [f"{self.url}?listen=1"]
        return cmd + [f"{self.url}?pkt_size=1316"]  # udp: one datagram = 7 TS packets

    def _ready(self) -> bool:
        if self.protocol != "udp":
            return _listening(self.port)
        with open(self._progress) as f:  # written by ffmpeg every -stats_period
            sizes = re.findall(r"^total_size=(\d+)$", f.read(), re.MULTILINE)
        return any(int(n) > 0 for n in sizes)

    def start(self, timeout: float = 10.0) -> StreamServer:
        self.proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._ready():  # bounded readiness poll on the server's socket / progress
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.protocol} server did not come up on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        if self._progress is not None:
            os.unlink(self._progress)
            self._progress = None

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def slow_factory(checkpoint: str, delay_s: float) -> Callable[[], SlowEngine]:
    return lambda: SlowEngine(load_engine(checkpoint), delay_s)


def total_drops(summary) -> int:
    return sum(s["dropped"] for s in summary.stages.values())


def latency_bound_ms(summary, frame_period_ms: float) -> float:
    """What newest-wins allows: a frame waits at most for the model call in progress, then its own
    (plus a frame period and slack). Relative to the model time measured in this run, so a busy
    machine does not fail the test; a growing backlog would exceed it many times over."""
    model = summary.stages["inference"]["latency_ms"]["max"]
    return 2 * model + 2 * frame_period_ms + 250


def assert_fails_at_once(
    url: str, checkpoint: str, caplog, open_timeout_s: float, failure: str
) -> float:
    """A live source at `url` that never opened: the pipeline fails with one SourceError saying
    why (`failure`), without a reconnect attempt (backoff is for sources that worked), and leaves
    no threads; returns how long that took (s)."""
    caplog.set_level(logging.WARNING, logger="pipeline")
    cfg = {
        "sources": [{"uri": url, "id": "gone", "open_timeout_s": open_timeout_s}],
        "model": {"checkpoint": checkpoint},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=lambda: load_engine(checkpoint))
    t0 = time.monotonic()
    expected = f"source gone: cannot open stream {url}: {failure}"
    with pytest.raises(StageError, match=re.escape(expected)) as info:
        pipe.run()
    elapsed = time.monotonic() - t0
    assert isinstance(info.value.error, SourceError)
    assert not [m for m in caplog.messages if "reconnecting in" in m]
    events = pipe.summary().stages["capture:gone"].get("events", {})
    assert events.get("reconnect_attempts", 0) == 0
    assert depthstream_threads() == []
    return elapsed
