"""Frame sources: cameras, video files, network streams (OpenCV FFmpeg), image dirs and globs.

A reader yields BGR uint8 frames with their position in the source; it never invents frames: a
failed read is the end (files) or a failure the capture stage reconnects from (live sources).
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .config import SourceConfig
from .errors import SourceError

IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pnm",
)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def resolve_kind(source: SourceConfig) -> str:
    """camera | file | url | images | external, from the config or guessed from the uri."""
    if source.kind != "auto":
        return source.kind
    uri = source.uri
    if uri.isdigit():
        return "camera"
    if _URL.match(uri) and not uri.lower().startswith("file://"):
        return "url"
    if os.path.isdir(uri) or any(c in uri for c in "*?["):
        return "images"
    return "file"


def resolve_mode(source: SourceConfig, kind: str) -> str:
    """live (newest frame wins) or lossless (every frame, in order)."""
    if source.mode != "auto":
        return source.mode
    return "live" if kind in ("camera", "url") else "lossless"


def check_source(source: SourceConfig) -> None:
    """Fail early, with one line, for a file source that does not exist (before threads start)."""
    kind = resolve_kind(source)
    path = _file_path(source.uri)
    if kind == "file" and not os.path.isfile(path):
        raise SourceError(f"source {source.id}: video file not found: {path}")
    if kind == "images" and not image_files(source.uri):
        raise SourceError(f"source {source.id}: no images found at {source.uri}")


def _file_path(uri: str) -> str:
    return uri[len("file://") :] if uri.lower().startswith("file://") else uri


def image_files(pattern: str) -> list[str]:
    """Image files of a directory (by extension) or a glob pattern, sorted by name."""
    if os.path.isdir(pattern):
        names = [os.path.join(pattern, n) for n in os.listdir(pattern)]
        files = [p for p in names if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)]
    else:
        files = [p for p in glob.glob(pattern) if os.path.isfile(p)]
    return sorted(files)


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 BGR
    position: dict[str, Any]  # where in the source: frame number, timestamp (ms), file name


class VideoReader:
    """cv2.VideoCapture over a camera index, a video file or a network URL (FFmpeg backend)."""

    def __init__(self, source: SourceConfig, kind: str) -> None:
        self.kind = kind
        self.uri = source.uri
        if kind == "camera":
            cap = cv2.VideoCapture(int(source.uri))
            what = f"camera {source.uri}"
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
                if source.camera_size:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, source.camera_size[0])
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, source.camera_size[1])
        elif kind == "url":
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(source.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(source.read_timeout_s * 1000),
            ]  # fmt: skip
            cap = cv2.VideoCapture(source.uri, cv2.CAP_FFMPEG, params)
            what = f"stream {source.uri}"
        else:
            path = _file_path(source.uri)
            if not os.path.isfile(path):
                raise SourceError(f"video file not found: {path}")
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
            what = f"video file {path}"
        if not cap.isOpened():
            cap.release()
            hint = (
                " (not a video, or a codec OpenCV's FFmpeg cannot decode)" if kind == "file" else ""
            )
            raise SourceError(f"cannot open {what}{hint}")
        self.cap = cap
        self.what = what
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if kind == "file" and count and count > 0 else None

    def read(self) -> Frame | None:
        ok, image = self.cap.read()
        if not ok or image is None:
            return None
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        position: dict[str, Any] = {"msec": round(float(self.cap.get(cv2.CAP_PROP_POS_MSEC)), 3)}
        if self.kind == "file":
            position["frame"] = int(self.cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1
        return Frame(image, position)

    def close(self) -> None:
        self.cap.release()


class ImageReader:
    """Images of a directory or glob, in name order."""

    def __init__(self, source: SourceConfig) -> None:
        self.files = image_files(source.uri)
        if not self.files:
            raise SourceError(f"no images found at {source.uri}")
        self.what = f"images {source.uri}"
        self.fps = source.fps
        self.frame_count = len(self.files)
        self._next = 0

    def read(self) -> Frame | None:
        if self._next >= len(self.files):
            return None
        path = self.files[self._next]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot decode image file {path}")
        frame = Frame(image, {"frame": self._next, "file": os.path.basename(path)})
        self._next += 1
        return frame

    def close(self) -> None:
        pass


def open_reader(source: SourceConfig, kind: str) -> VideoReader | ImageReader:
    """Open a source; SourceError (naming it) if it cannot be opened."""
    if kind == "images":
        return ImageReader(source)
    if kind in ("camera", "url", "file"):
        return VideoReader(source, kind)
    raise SourceError(f"source kind {kind!r} has no reader")
