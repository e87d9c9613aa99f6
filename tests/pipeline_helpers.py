"""Helpers for the pipeline tests: real videos, images, an ffmpeg stream server, engine wrappers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np

import glpn.engine
from glpn.processing import input_size_for, prepare_frames, resize_depth
from glpn.synthetic import synthetic_image


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


def free_port() -> int:
    with socket.socket() as s:
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


class StreamServer:
    """ffmpeg serving a clip as MPEG-TS over HTTP on 127.0.0.1, paced in real time (FACTS.md)."""

    def __init__(self, clip: str, port: int | None = None) -> None:
        if shutil.which("ffmpeg") is None:
            raise RuntimeError("ffmpeg is not installed")
        self.clip = clip
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/s.ts"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> StreamServer:
        cmd = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", self.clip]
        cmd += [
            "-c:v",
            "mpeg2video",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mpegts",
            "-listen",
            "1",
            self.url,
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _listening(self.port):  # bounded readiness poll on the server's socket
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ffmpeg did not start listening on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
