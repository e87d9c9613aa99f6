"""Frame sources: cameras, video files, network streams (OpenCV FFmpeg), image dirs and globs.

Network streams are read through PyAV instead when it is installed (source_av.py; `reader`).

A reader yields BGR uint8 frames with their position in the source; it never invents frames: a
failed read is the end (files) or a failure the capture stage reconnects from (live sources that
have delivered). A source that cannot be opened is a SourceError saying why, in one line: OpenCV
only says that it failed, and its own log lines for a missing camera are silenced.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .config import SourceConfig
from .errors import SourceError

if TYPE_CHECKING:
    from .source_av import PyAVReader

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
    from .source_av import check_reader  # it imports this module

    check_reader(source, kind)  # reader / rtsp_transport this source cannot have: ConfigError
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
    position: dict[str, Any]  # where in the source: frame number, timestamp (ms), image file


class VideoReader:
    """cv2.VideoCapture over a camera index, a video file or a network URL (FFmpeg backend)."""

    def __init__(self, source: SourceConfig, kind: str) -> None:
        self.kind = kind
        self.uri = source.uri
        opener = {"camera": _open_camera, "url": _open_url, "file": _open_file}[kind]
        cap, self.what = opener(source)  # SourceError, saying why, if it does not open
        self.cap = cap
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


def _open_camera(source: SourceConfig) -> tuple[cv2.VideoCapture, str]:
    index = int(source.uri)
    with _opencv_quiet():
        cap = cv2.VideoCapture(index, _camera_backend())
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"cannot open camera {index} ({camera_failure(index)})")
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of old ones
    if source.camera_size:
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, source.camera_size[0])
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, source.camera_size[1])
    return cap, f"camera {index}"


def _open_url(source: SourceConfig) -> tuple[cv2.VideoCapture, str]:
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(source.open_timeout_s * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(source.read_timeout_s * 1000),
    ]  # fmt: skip
    t0 = time.monotonic()
    cap = cv2.VideoCapture(source.uri, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        why = url_failure(
            source.uri, elapsed_s=time.monotonic() - t0, timeout_s=source.open_timeout_s
        )
        raise SourceError(f"cannot open stream {source.uri}" + (f": {why}" if why else ""))
    return cap, f"stream {source.uri}"


def _open_file(source: SourceConfig) -> tuple[cv2.VideoCapture, str]:
    path = _file_path(source.uri)
    if not os.path.isfile(path):
        raise SourceError(f"video file not found: {path}")
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise SourceError(
            f"cannot open video file {path} (not a video, or a codec OpenCV's FFmpeg cannot decode)"
        )
    return cap, f"video file {path}"


# ---- why an open failed (OpenCV only says that it did) ---------------------------------------

_OPENCV_LOG = threading.Lock()  # the log level is global: one quiet section at a time


@contextlib.contextmanager
def _opencv_quiet() -> Iterator[None]:
    """OpenCV's own log off meanwhile: for a camera that does not exist its backends print
    "[ WARN..." / "[ERROR..." lines (on every attempt) that say less than our one error line."""
    with _OPENCV_LOG:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(level)


def _camera_backend() -> int:
    """V4L2 on Linux, where camera N is /dev/videoN. With CAP_ANY, an index V4L2 cannot open is
    tried by every other camera backend too (GStreamer, FFmpeg, uEye, Orbbec's obsensor), each
    with its own log lines. (A camera only a vendor SDK backend sees is not supported.)"""
    if sys.platform.startswith("linux") and cv2.videoio_registry.hasBackend(cv2.CAP_V4L2):
        return cv2.CAP_V4L2
    return cv2.CAP_ANY


def camera_failure(index: int) -> str:
    """Why camera `index` did not open, as far as the system can tell."""
    device = f"/dev/video{index}"
    if not sys.platform.startswith("linux"):
        return "no such camera, or it is in use"
    if not os.path.exists(device):
        return f"no such camera: {device} does not exist"
    return f"{device} is in use, not a capture device, or not readable by this user"


# scheme -> default port, for the stream protocols that run over TCP
_TCP_PORTS = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322, "rtmp": 1935, "tcp": None}
_REQUESTS = {  # what makes a server of that protocol answer (others speak first, or need TLS)
    "http": "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n",
    "rtsp": "OPTIONS {url} RTSP/1.0\r\nCSeq: 1\r\n\r\n",
}


def url_failure(uri: str, *, elapsed_s: float, timeout_s: float) -> str | None:
    """Why FFmpeg could not open the stream at `uri`, after the fact, in a few words:

    "timed out"            the open used its whole timeout: a server that accepts but never
                           answers, a host that does not answer, a UDP port nobody sends to
    "connection refused"   nothing listens at that host and port
    "closed"               the server accepted the connection, then closed it without a word
    "not a video (...)"    the server answered, with something FFmpeg cannot open (a web page, an
                           error status: its status line is quoted)
    "unknown host", or the system's words for another connection error.

    Told apart by the open's duration and one plain-socket connection (for the TCP-based schemes
    http, rtsp, tcp; https, rtsps, rtmp only up to the connection). None when it cannot tell.
    """
    if elapsed_s >= 0.9 * timeout_s:
        return "timed out"
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _TCP_PORTS.get(scheme)
    except ValueError:  # a port that is not a number
        return None
    if scheme not in _TCP_PORTS or not parts.hostname or port is None:
        return None
    try:
        with socket.create_connection((parts.hostname, port), timeout=min(timeout_s, 2.0)) as s:
            if scheme in _REQUESTS:
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                request = _REQUESTS[scheme].format(path=path, host=parts.netloc, url=uri)
                s.sendall(request.encode("latin-1", "replace"))
            elif scheme != "tcp":
                return None  # connected; the TLS or RTMP handshake is FFmpeg's business
            answer = s.recv(256)
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return "timed out"
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return "closed"
    except socket.gaierror:
        return "unknown host"
    except OSError as e:
        return (e.strerror or str(e)).lower()
    if not answer:
        return "closed"
    status = answer.split(b"\r\n", 1)[0].decode("latin-1")
    if status.startswith(("HTTP/", "RTSP/")):
        return f"not a video (the server answered {status.strip()!r})"
    return "not a video"


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
        # File names are given relative to this folder: the name in a directory, enough of the
        # path to tell apart the files of a glob that spans directories.
        self.root = source.uri if os.path.isdir(source.uri) else _common_folder(self.files)

    def read(self) -> Frame | None:
        if self._next >= len(self.files):
            return None
        path = self.files[self._next]
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot decode image file {path}")
        frame = Frame(image, {"frame": self._next, "file": os.path.relpath(path, self.root)})
        self._next += 1
        return frame

    def close(self) -> None:
        pass


def _common_folder(files: list[str]) -> str:
    """The deepest folder that holds every one of `files`."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])


def open_reader(
    source: SourceConfig, kind: str, cancel: threading.Event | None = None
) -> VideoReader | ImageReader | PyAVReader:
    """Open a source; SourceError (naming it) if it cannot be opened. `cancel`, set from another
    thread, ends a URL's open at once where PyAV reads it (OpenCV's open cannot be interrupted)."""
    from .source_av import PyAVReader, use_pyav  # it imports this module

    if kind == "images":
        return ImageReader(source)
    if use_pyav(source, kind):
        return PyAVReader(source, cancel)
    if kind in ("camera", "url", "file"):
        return VideoReader(source, kind)
    raise SourceError(f"source kind {kind!r} has no reader")
