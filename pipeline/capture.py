"""Capture stage: one thread per source, reading frames and sending them with their metadata.

Live sources are read as fast as they deliver (so no stale frames pile up in the decoder) and a
frame is dropped, counted, when the next stage has no room. Lossless sources block on the next
stage's high-water mark instead (backpressure). Live cameras and URLs that fail are reopened with
exponential backoff.
"""

from __future__ import annotations

import logging
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
        try:
            return open_reader(self.source, self.kind)
        except SourceError as e:
            if not self.reconnect:
                raise SourceError(f"source {self.source.id}: {e}") from None
            return self._reopen(str(e))

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
                reader = open_reader(self.source, self.kind)
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
        reader = self._open()
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
                    if self.reconnect:
                        reader.close()
                        self.metrics.events["disconnects"] += 1
                        reader = self._reopen(f"no frame from {self.source.uri}")
                        continue
                    if self.frames == 0:
                        raise SourceError(
                            f"source {sid}: cannot decode any frame from {reader.what}"
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
        self.send(self.out, messages.encode(messages.eos_header(sid)), block=True)
        self.metrics.sent += 1

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
        if self.send(self.out, messages.encode(header, {"image": image}), block=lossless):
            self.metrics.sent += 1
        else:
            self.metrics.drop("downstream_full")
