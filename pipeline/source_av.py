"""Network streams (rtsp, http, tcp, udp, ...) read through PyAV, FFmpeg's Python binding.

What it has over OpenCV's FFmpeg backend, which reads cameras and files, and URLs without `av`:

- FFmpeg options per source: `rtsp_transport` (tcp: RTP interleaved in the RTSP connection;
  OpenCV takes it only process-wide, from OPENCV_FFMPEG_CAPTURE_OPTIONS).
- Opens and reads that can be interrupted. PyAV 18 bounds them by a timeout only: its FFmpeg
  interrupt callback asks `time.monotonic()`, looked up in `av.container.core`, whether the
  operation's deadline passed. That module gets `_InterruptClock` as its `time`: the real clock,
  except in a thread whose operation was cancelled or ran past its own deadline, where it reads
  past every deadline, so FFmpeg gives up at its next check (within ~0.1 s, while it waits for
  the network). A stop thus ends an open at once and closes its connection; and one deadline
  bounds the whole open (PyAV gives each of its two phases the whole timeout). Closing the
  container from another thread instead would free it under FFmpeg's feet. With another PyAV,
  where the clock cannot be put in (`INTERRUPTIBLE` False), PyAV's own timeouts still bound
  every open and read.
- Presentation timestamps: each frame's `position` carries the stream's pts in seconds
  (`pts_s`), and in milliseconds (`msec`, the key every video source's position has).

The failures keep the OpenCV reader's one-line words (`url_failure`); FFmpeg's log stays off
(PyAV's default).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import SourceConfig
from .errors import ConfigError, SourceError
from .sources import Frame, url_failure
from .video_av import VIDEO_INSTALL, import_av

RTSP_SCHEMES = ("rtsp", "rtsps")
_JUMP_S = 1e6  # each look at the clock by a cancelled operation: a million seconds further


@functools.cache
def pyav_available() -> bool:
    """Whether `av` imports (the optional extra `video`)."""
    try:
        import_av()
    except ImportError:
        return False
    return True


def use_pyav(source: SourceConfig, kind: str) -> bool:
    """Whether this source is read here: URLs, unless `reader: opencv`, and with `av` for auto."""
    if kind != "url" or source.reader == "opencv":
        return False
    return source.reader == "pyav" or pyav_available()


def check_reader(source: SourceConfig, kind: str) -> None:
    """ConfigError, in one line, for reader / rtsp_transport settings this source cannot have."""
    name = source.id
    if source.reader == "pyav" and kind != "url":
        raise ConfigError(
            f"source {name}: reader: pyav reads URLs only (cameras and files are read by OpenCV)"
        )
    if source.reader == "pyav" and not pyav_available():
        raise ConfigError(f"source {name}: reader: pyav needs PyAV: {VIDEO_INSTALL}")
    if source.rtsp_transport == "auto":
        return
    if kind != "url" or urllib.parse.urlsplit(source.uri).scheme.lower() not in RTSP_SCHEMES:
        raise ConfigError(f"source {name}: rtsp_transport is for rtsp:// URLs only")
    if source.reader == "opencv":
        raise ConfigError(
            f"source {name}: rtsp_transport needs reader: pyav or auto (OpenCV takes it only "
            "process-wide, from OPENCV_FFMPEG_CAPTURE_OPTIONS)"
        )
    if not pyav_available():
        raise ConfigError(f"source {name}: rtsp_transport needs PyAV: {VIDEO_INSTALL}")


def ffmpeg_options(source: SourceConfig) -> dict[str, str]:
    """The FFmpeg options this source's open gets (this source only)."""
    options = {}
    if source.rtsp_transport != "auto":
        options["rtsp_transport"] = source.rtsp_transport
    return options


# ---- interruptible FFmpeg calls --------------------------------------------------------------


@dataclass
class _Operation:
    deadline: float  # time.monotonic() after which FFmpeg is told to give up
    cancel: threading.Event | None  # set from another thread: give up now
    jumps: int = 0  # looks at the clock since it is over

    def over(self, now: float) -> bool:
        return now >= self.deadline or (self.cancel is not None and self.cancel.is_set())


class _InterruptClock:
    """`time` for av.container.core: the real module, but `monotonic()` jumps further past every
    deadline at each call from a thread whose operation is over (so also past a deadline PyAV
    sets after that: each of its timeouts is at most 3600 s, far less than one jump)."""

    def __init__(self) -> None:
        self._ops: dict[int, _Operation] = {}  # thread id -> its FFmpeg call (one per thread)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def monotonic(self) -> float:
        now = time.monotonic()
        op = self._ops.get(threading.get_ident())
        if op is None or not op.over(now):
            return now
        op.jumps += 1
        return now + op.jumps * _JUMP_S

    @contextlib.contextmanager
    def bounded(self, deadline: float, cancel: threading.Event | None) -> Iterator[None]:
        """FFmpeg calls of this thread meanwhile give up at `deadline` or once `cancel` is set."""
        ident = threading.get_ident()
        self._ops[ident] = _Operation(deadline, cancel)
        try:
            yield
        finally:
            self._ops.pop(ident, None)


_CLOCK = _InterruptClock()
_INSTALL_LOCK = threading.Lock()


def install_clock() -> bool:
    """Put `_CLOCK` into PyAV's interrupt callback; False where this PyAV has no such look-up."""
    with _INSTALL_LOCK:
        core = importlib.import_module("av.container.core")
        current = getattr(core, "time", None)
        if current is time:
            core.time = _CLOCK
        return core.time is _CLOCK


@functools.cache
def interruptible() -> bool:
    """Whether a cancel reaches an FFmpeg call in progress (else only the timeouts end it)."""
    return pyav_available() and install_clock()


# ---- the reader ------------------------------------------------------------------------------


class PyAVReader:
    """The first video stream of a URL, decoded to BGR frames with their pts.

    `cancel`, set from another thread, ends the open (and reads) within ~0.1 s: the capture stage
    sets it when a stop abandons the open.
    """

    kind = "url"
    frame_count = None  # a live stream has no length

    def __init__(self, source: SourceConfig, cancel: threading.Event | None = None) -> None:
        self.uri = source.uri
        self.what = f"stream {source.uri}"
        self._cancel = cancel
        self._read_timeout_s = source.read_timeout_s
        try:
            av = import_av()
        except ImportError:
            raise SourceError(
                f"cannot open stream {self.uri}: PyAV is needed: {VIDEO_INSTALL}"
            ) from None
        self._av = av
        interruptible()
        t0 = time.monotonic()
        try:
            with _CLOCK.bounded(t0 + source.open_timeout_s, cancel):
                self.container = av.open(
                    source.uri,
                    options=ffmpeg_options(source),
                    timeout=(source.open_timeout_s, source.read_timeout_s),
                )
        except av.FFmpegError as e:
            raise self._failure(source, time.monotonic() - t0, e) from None
        try:
            if not self.container.streams.video:
                raise self._failure(source, time.monotonic() - t0, None)
            self.stream = self.container.streams.video[0]
            rate = self.stream.average_rate or self.stream.guessed_rate
            self.fps = float(rate) if rate and 0 < rate < 1000 else None
            self._packets = self.container.demux(self.stream)
        except BaseException:
            self.container.close()
            raise
        self._decoded: deque[Any] = deque()  # frames of a packet not yet read

    def _failure(
        self, source: SourceConfig, elapsed_s: float, error: Exception | None
    ) -> SourceError:
        """Why the open failed (error: FFmpeg's; None: no video stream), in the OpenCV reader's
        words, or FFmpeg's where those say nothing (or, for the transport, the wrong thing)."""
        transport = source.rtsp_transport
        if self._cancel is not None and self._cancel.is_set():
            why = "stopped"  # a stop abandoned this open: nobody reads this
        elif error is None:
            why = "not a video (no video stream)"
        elif getattr(error, "errno", None) == errno.EPROTONOSUPPORT and transport != "auto":
            why = f"the server offers no RTP over {transport} (rtsp_transport: {transport})"
        else:
            why = url_failure(source.uri, elapsed_s=elapsed_s, timeout_s=source.open_timeout_s)
            why = why or str(getattr(error, "strerror", "") or "").lower()
        return SourceError(f"cannot open stream {self.uri}" + (f": {why}" if why else ""))

    def read(self) -> Frame | None:
        """The next frame; None once the stream ended, failed or stalled for read_timeout_s."""
        deadline = time.monotonic() + self._read_timeout_s
        try:
            with _CLOCK.bounded(deadline, self._cancel):
                frame = self._next_frame(deadline)
        except self._av.FFmpegError:  # timed out, closed, reset: the capture stage reconnects
            return None
        if frame is None:
            return None
        image = np.ascontiguousarray(frame.to_ndarray(format="bgr24"))
        position: dict[str, Any] = {}
        if frame.time is not None:
            position = {"pts_s": round(float(frame.time), 6), "msec": round(frame.time * 1000, 3)}
        return Frame(image, position)

    def _next_frame(self, deadline: float) -> Any:
        while not self._decoded:
            if time.monotonic() >= deadline:
                return None  # packets arrive, but none decodes: as good as a stall
            packet = next(self._packets, None)  # FFmpegError when the network fails
            if packet is None:
                return None  # the end of the stream
            try:
                self._decoded.extend(packet.decode())
            except self._av.error.InvalidDataError:  # damaged (lost datagrams): skipped, the
                continue  # next key frame repairs the picture
        return self._decoded.popleft()

    def close(self) -> None:
        """Releases the connection (not while another thread reads: this reader's own only)."""
        self._decoded.clear()
        self._packets.close()
        self.container.close()
