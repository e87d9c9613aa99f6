"""Outputs: ZeroMQ PUB, per-frame .npy / 16-bit .png, colourised video, window, callback.

Every sink takes finished DepthResults in the sink stage's thread and is closed on every exit path.
Files are written under a temporary name and renamed, so an interrupted run never leaves a
half-written file under a final name (and never corrupts one from an earlier run).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import zmq

from . import messages
from .config import FilesSinkConfig, VideoSinkConfig, WindowSinkConfig
from .results import DepthResult

log = logging.getLogger(__name__)

PNG_SCALE = 256.0  # KITTI convention: uint16 value = depth in metres * 256; 0 = no depth


def topic(stream: str) -> bytes:
    """PUB topic of a stream; subscribe to it to receive only that stream (b"" for all)."""
    return f"depth/{stream}/".encode()


def _atomic_write(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def depth_to_png16(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 depth * 256 (KITTI); invalid (NaN, <= 0) -> 0, saturating at 65535."""
    scaled = np.nan_to_num(depth * PNG_SCALE, nan=0.0, posinf=65535.0, neginf=0.0)
    return np.clip(np.round(scaled), 0, 65535).astype(np.uint16)


class Sink:
    def write(self, result: DepthResult) -> None:
        raise NotImplementedError

    def end_stream(self, stream: str) -> None:
        """All frames of `stream` were written."""

    def close(self) -> None:
        """Release everything; called once, on every exit path."""


class PublishSink(Sink):
    """Depth (and optionally the view) on a PUB socket, topic depth/<stream>/; never blocks."""

    def __init__(self, sock: zmq.Socket, *, publish_view: bool) -> None:
        self.sock = sock
        self.publish_view = publish_view
        self.dropped = 0

    def write(self, result: DepthResult) -> None:
        arrays = {"depth": result.depth}
        if self.publish_view and result.view is not None:
            arrays["view"] = result.view
        parts = messages.encode(result.header, arrays, topic=topic(result.stream))
        try:
            self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1


class FileSink(Sink):
    """DIR/<stream>/<index:06d>.npy (float32 metres) and .png (uint16 depth * 256)."""

    def __init__(self, config: FilesSinkConfig) -> None:
        self.config = config
        self._dirs: set[str] = set()
        self.written = 0

    def write(self, result: DepthResult) -> None:
        folder = os.path.join(self.config.directory, result.stream)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        base = os.path.join(folder, f"{result.index:06d}")
        if self.config.npy:
            buf = io.BytesIO()
            np.save(buf, np.asarray(result.depth, dtype=np.float32), allow_pickle=False)
            _atomic_write(base + ".npy", buf.getvalue())
        if self.config.png:
            ok, png = cv2.imencode(".png", depth_to_png16(result.depth))
            if not ok:
                raise OSError(f"cannot encode {base}.png")
            _atomic_write(base + ".png", png.tobytes())
        self.written += 1


def video_path(template: str, stream: str, several: bool) -> str:
    """The video file of `stream`: "{stream}" replaced, or added before the extension if several."""
    if "{stream}" in template:
        return template.replace("{stream}", stream)
    if several:
        root, ext = os.path.splitext(template)
        return f"{root}_{stream}{ext}"
    return template


class VideoSink(Sink):
    """Colourised view to a video per stream: MJPG in .avi or mp4v in .mp4 (OpenCV can encode).

    Written as NAME.partial.EXT and renamed when closed, so the final name is always a complete
    file.
    """

    FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}

    def __init__(self, config: VideoSinkConfig, streams: Sequence[str]) -> None:
        self.config = config
        self.several = len(streams) > 1
        self._writers: dict[str, tuple[cv2.VideoWriter, str, str, tuple[int, int]]] = {}
        self.frames: dict[str, int] = {}
        self.paths: dict[str, str] = {}

    def write(self, result: DepthResult) -> None:
        view = result.view
        if view is None:
            return
        entry = self._writers.get(result.stream)
        if entry is None:
            entry = self._open(result, view)
        writer, _, _, (w, h) = entry
        if view.shape[:2] != (h, w):  # size must not change within a video
            view = cv2.resize(view, (w, h), interpolation=cv2.INTER_AREA)
        writer.write(np.ascontiguousarray(view))
        self.frames[result.stream] = self.frames.get(result.stream, 0) + 1

    def _open(self, result: DepthResult, view: np.ndarray):
        path = video_path(self.config.path, result.stream, self.several)
        root, ext = os.path.splitext(path)
        partial = f"{root}.partial{ext}"
        fps = self.config.fps or result.header.get("fps") or 30.0
        h, w = view.shape[:2]
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[ext.lower()])
        writer = cv2.VideoWriter(partial, fourcc, float(fps), (w, h))
        if not writer.isOpened():
            raise OSError(f"cannot write video {path} ({self.FOURCC[ext.lower()]}, {w}x{h})")
        entry = (writer, partial, path, (w, h))
        self._writers[result.stream] = entry
        self.paths[result.stream] = path
        return entry

    def end_stream(self, stream: str) -> None:
        entry = self._writers.pop(stream, None)
        if entry is not None:
            writer, partial, path, _ = entry
            writer.release()
            os.replace(partial, path)

    def close(self) -> None:
        for stream in list(self._writers):
            self.end_stream(stream)


def display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class WindowSink(Sink):
    """One window per stream with the view; q or Esc asks the pipeline to stop."""

    def __init__(self, config: WindowSinkConfig, request_stop: Callable[[str], None]) -> None:
        self.config = config
        self.request_stop = request_stop
        self._windows: set[str] = set()

    def write(self, result: DepthResult) -> None:
        if result.view is None:
            return
        name = f"{self.config.title} {result.stream}"
        self._windows.add(name)
        cv2.imshow(name, result.view)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.request_stop("window")

    def close(self) -> None:
        for name in self._windows:
            try:
                cv2.destroyWindow(name)
            except cv2.error:
                pass


class CallbackSink(Sink):
    """Calls fn(result) in the sink thread; an exception stops the pipeline (stage 'sink')."""

    def __init__(self, fn: Callable[[DepthResult], object]) -> None:
        self.fn = fn

    def write(self, result: DepthResult) -> None:
        self.fn(result)
