"""Capture stage: one thread per source, reading frames and sending them with their metadata.

Live sources are read as fast as they deliver (so no stale frames pile up in the decoder) and a
frame is dropped, counted, when the next stage has no room. Lossless sources block on the next
stage's high-water mark instead (backpressure).

A source that does not open, or opens and gives no frame, is a SourceError at once: there is nothing
to reconnect to. A live camera or URL that fails after it delivered is reopened with exponential
backoff. Cameras and URLs open in a helper thread (`_Opening`), so that a stop never waits for one;
a URL read through PyAV is also interrupted then (source_av.py), so its connection closes at once.
"""

from __future__ import annotations

import atexit
import logging
import socket
import threading
import time

import zmq

from . import messages
from .config import SourceConfig
from .errors import SourceError
from .sources import ImageReader, VideoReader, open_reader
from .stage import Stage

log = logging.getLogger(__name__)


class CaptureStage(Stage):
    def __init__(
        self,
        source: SourceConfig,
        *,
        kind: str,
        mode: str,
        output: str,
        hwm: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(f"capture:{source.id}", **kwargs)
        self.source = source
        self.kind = kind
        self.mode = mode
        self.output = output  # preprocess input endpoint for this mode
        self.hwm = hwm
        # Reconnecting only makes sense where a failure is not the end of the data.
        self.reconnect = mode == "live" and kind in ("camera", "url")
        self.frames = 0  # frames read from the source

    def setup(self) -> None:
        self.out = self.socket(zmq.PUSH, connect=self.output, hwm=self.hwm)

    # ---- opening and reconnecting ----------------------------------------------------------

    def _open(self) -> VideoReader | ImageReader:
        """Open the source; a stop ends the wait for a camera or URL at once (Stopped)."""
        if self.kind not in ("camera", "url"):
            return open_reader(self.source, self.kind)  # a local file: quick
        opening = _Opening(self.source, self.kind, f"depthstream-open:{self.source.id}")
        try:
            self.poll([(opening.signal, zmq.POLLIN)])  # returns once the open is done
        except BaseException:
            opening.abandon()
            raise
        return opening.result()

    def _open_first(self) -> VideoReader | ImageReader:
        try:
            return self._open()
        except SourceError as e:  # never worked: nothing to reconnect to
            raise SourceError(f"source {self.source.id}: {e}") from None

    def _reopen(self, reason: str) -> VideoReader | ImageReader:
        cfg = self.source.reconnect
        attempt = 0
        while True:
            attempt += 1
            if 0 <= cfg.max_attempts < attempt:
                raise SourceError(
                    f"source {self.source.id}: gave up on {self.source.uri} after "
                    f"{cfg.max_attempts} reconnect attempts ({reason})"
                )
            delay = min(cfg.initial_delay_s * 2 ** (attempt - 1), cfg.max_delay_s)
            limit = "unlimited" if cfg.max_attempts < 0 else cfg.max_attempts
            log.warning(
                "source %s: %s; reconnecting in %.2f s (attempt %d of %s)",
                self.source.id, reason, delay, attempt, limit,
            )  # fmt: skip
            self.metrics.events["reconnect_attempts"] += 1
            self.wait(delay)
            try:
                reader = self._open()
            except SourceError as e:
                reason = str(e)
                continue
            log.info("source %s: reconnected to %s", self.source.id, self.source.uri)
            self.metrics.events["reconnects"] += 1
            return reader

    # ---- main loop ---------------------------------------------------------------------------

    def loop(self) -> None:
        sid = self.source.id
        lossless = self.mode == "lossless"
        reader = self._open_first()
        try:
            fps = self.source.fps or reader.fps
            t_start = time.monotonic()
            limit = self.source.max_frames
            while limit is None or self.frames < limit:
                self.check_stop()
                if self.source.pace:  # replay at the source's rate, like a camera would deliver
                    self.wait(t_start + self.frames / (fps or 30.0) - time.monotonic())
                t0 = time.monotonic()
                try:
                    frame = reader.read()
                except SourceError as e:
                    raise SourceError(f"source {sid}: {e}") from None
                t_read = time.monotonic()
                if frame is None:
                    if self.reconnect and self.frames > 0:  # it worked: reconnect
                        reader.close()
                        self.metrics.events["disconnects"] += 1
                        reader = self._reopen(f"no frame from {self.source.uri}")
                        continue
                    if self.frames == 0:
                        raise SourceError(
                            f"source {sid}: {reader.what} opened but gave no frame"
                            if self.reconnect
                            else f"source {sid}: cannot decode any frame from {reader.what}"
                        )
                    break  # end of file / images
                self._send_frame(frame, t_read, (t_read - t0) * 1000, fps, lossless)
            if reader.frame_count and self.kind == "file" and self.frames < reader.frame_count - 1:
                if limit is None:  # a truncated or partly undecodable file ends early
                    log.warning(
                        "source %s: %s ended after %d of %d frames",
                        sid, reader.what, self.frames, reader.frame_count,
                    )  # fmt: skip
        finally:
            reader.close()
        self.forward_eos(self.out, sid)

    def _send_frame(self, frame, t_read: float, read_ms: float, fps, lossless: bool) -> None:
        image = frame.image
        header = {
            "kind": "frame",
            "stream": self.source.id,
            "index": self.frames,
            "t_mono": t_read,
            "t_wall": time.time(),
            "mode": self.mode,
            "source_shape": [int(image.shape[0]), int(image.shape[1])],
            "position": frame.position,
            "fps": fps,
            "stage_ms": {"capture": round(read_ms, 3)},
            "t_last": t_read,
        }
        self.frames += 1
        self.metrics.record(read_ms)
        self.emit(self.out, messages.encode(header, {"image": image}), live=not lossless)


class _Opening:
    """`open_reader` in a helper thread, which says it is done by a byte on `signal`.

    OpenCV cannot interrupt an open: a URL's blocks in FFmpeg for up to `open_timeout_s`. The stage
    polls `signal` together with its control socket, so a stop does not wait for the open; it
    `abandon()`s it instead. The helper then closes whatever it opens when its call returns (within
    the open timeout, plus at most 2 s to tell why it failed; a PyAV open returns at once, as
    `abandon()` sets its `cancel`). It is a daemon thread, so that the
    interpreter does not wait for it; but see `_wait_for_abandoned_opens` at exit.
    """

    def __init__(self, source: SourceConfig, kind: str, name: str) -> None:
        self.what = source.uri
        self.deadline = time.monotonic() + source.open_timeout_s + 3.0  # + probe, + slack
        self.reader: VideoReader | ImageReader | None = None
        self.error: BaseException | None = None
        self.cancel = threading.Event()  # set by abandon(): ends a PyAV open (not OpenCV's)
        self.signal, self._done = socket.socketpair()  # stage thread's end, helper's end
        self._lock = threading.Lock()  # orders the helper's hand-over against abandon()
        self._finished = False
        self._abandoned = False
        self.thread = threading.Thread(
            target=self._run, args=(source, kind), name=name, daemon=True
        )
        self.thread.start()

    def _run(self, source: SourceConfig, kind: str) -> None:
        reader, error = None, None
        try:
            reader = open_reader(source, kind, self.cancel)
        except BaseException as e:  # raised again in the stage thread
            error = e
        with self._lock:
            self._finished = True
            if self._abandoned:
                if reader is not None:
                    reader.close()
                with _ABANDONED_LOCK:
                    _ABANDONED.discard(self)
            else:
                self.reader, self.error = reader, error
                self._done.send(b"!")
            self._done.close()

    def result(self) -> VideoReader | ImageReader:
        """The reader, or the open's exception; call once `signal` is readable."""
        self.thread.join()  # it has signalled: only returning is left
        self.signal.close()
        if self.error is not None:
            raise self.error
        return self.reader

    def abandon(self) -> None:
        """Leave the open to the helper thread, which closes what it opens."""
        self.cancel.set()
        with self._lock:
            self._abandoned = True
            if self.reader is not None:  # done, but not collected
                self.reader.close()
                self.reader = None
            elif not self._finished:
                with _ABANDONED_LOCK:
                    _ABANDONED.add(self)
        self.signal.close()


_ABANDONED: set[_Opening] = set()  # opens a stop left running, until they return
_ABANDONED_LOCK = threading.Lock()


def opens_in_flight() -> int:
    """How many opens that a stop abandoned are still running (each ends within its timeout)."""
    with _ABANDONED_LOCK:
        return len(_ABANDONED)


def _wait_for_abandoned_opens() -> None:
    """At exit, let the abandoned opens end first (each within its open timeout, + 3 s).

    A daemon thread that comes back from OpenCV while the interpreter is finalizing is ended inside
    OpenCV's C++ code (Python < 3.14), which aborts the process ("terminate called without an
    active exception"). A program that must exit at once calls os._exit when opens_in_flight().
    """
    with _ABANDONED_LOCK:
        pending = list(_ABANDONED)
    for opening in pending:
        left = opening.deadline - time.monotonic()
        if opening.thread.is_alive() and left > 0:
            log.info("waiting up to %.1f s for the open of %s to end", left, opening.what)
            opening.thread.join(left)


atexit.register(_wait_for_abandoned_opens)
