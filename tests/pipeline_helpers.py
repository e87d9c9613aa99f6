"""Helpers for the pipeline tests: real videos, images, engine wrappers, sockets, waits."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import cv2
import numpy as np
import pytest
import zmq

import glpn.engine
from glpn.processing import input_size_for, prepare_frames, resize_depth
from glpn.synthetic import synthetic_image
from pipeline import Pipeline, SourceError, StageError, messages


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


@contextlib.contextmanager
def xpub_on_tcp(option: int = zmq.XPUB_VERBOSE) -> Iterator[tuple[zmq.Socket, str]]:
    """A raw publisher that hands over the subscriptions it receives (XPUB; XPUB_VERBOSE: one per
    subscriber, duplicates included; XPUB_VERBOSER, as the sink stage makes it: unsubscriptions
    too), on a random tcp port: (socket, endpoint)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(option, 1)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        yield sock, f"tcp://127.0.0.1:{port}"
    finally:
        sock.close(0)
        ctx.term()


def frame_header(
    stream: str, index: int, *, shape: tuple[int, int] = (5, 7), mode: str = "lossless", **extra
) -> dict:
    """A frame header as the pipeline's stages write it, for messages built by hand."""
    return {
        "v": 1,
        "kind": "frame",
        "stream": stream,
        "index": index,
        "t_mono": time.monotonic(),
        "t_wall": time.time(),
        "mode": mode,
        "source_shape": list(shape),
        **extra,
    }


def depth_message(stream: str, index: int, shape: tuple[int, int] = (5, 7)) -> list:
    """A PUB message of `stream` as the sink publishes it, depth filled with `index`."""
    depth = np.full(shape, float(index), np.float32)
    header = frame_header(stream, index, shape=shape)
    return messages.encode(header, {"depth": depth}, topic=messages.stream_topic(stream))


def depthstream_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("depthstream-")]


def free_port(udp: bool = False) -> int:
    with socket.socket(type=socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout` seconds.

    Only for a condition nothing signals (a metrics counter): wait on the event, socket, log
    record (LogWatch) or file that says it happened wherever there is one.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)  # between polls of a condition, not synchronisation


class LogWatch(logging.Handler):
    """`seen` (a threading.Event) is set when a record containing `text` is logged under `logger`
    while in a `with` block: a test waits on what the code reports, as it reports it."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    def __enter__(self) -> LogWatch:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)


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
