"""Feed frames of one stream into a running pipeline from another thread or process."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import zmq

from . import curve, framecodec, messages
from .limits import MAX_IMAGE_SIDE, STREAM_ID

log = logging.getLogger(__name__)


class FrameSender:
    """Pushes frames of one stream into a running pipeline (a source of kind `external`).

    Connect it to `pipeline.endpoints["preprocess.lossless"]` (or `"preprocess.live"` for a live
    stream); `send(image)` blocks when the pipeline is behind (lossless) or drops (live);
    `close()` sends the end of the stream. With the default inproc transport, pass
    `context=pipeline.context` (inproc endpoints exist only inside their context); from another
    process, run the pipeline with transport ipc, or connect to a hub's ingest endpoint
    (`pipeline.endpoints["ingest"]`, `--ingest tcp://ADDR:PORT`), from this host or another.

    encoding: how images travel (pipeline.framecodec): "raw", or "jpeg" (`jpeg_quality`), which
    only the ingest endpoint decodes; None: jpeg to a non-loopback tcp address (another host),
    raw otherwise. keys: CURVE client keys (curve.file_keys(..., server=False)) for a hub whose
    ingest has them; without keys a non-loopback endpoint is refused unless `insecure`.
    """

    def __init__(
        self,
        endpoint: str,
        stream: str,
        *,
        mode: str = "lossless",
        hwm: int = 2,
        context: zmq.Context | None = None,
        encoding: str | None = None,
        jpeg_quality: int = framecodec.DEFAULT_QUALITY,
        keys: curve.Keys | None = None,
        insecure: bool = False,
    ) -> None:
        if mode not in messages.MODES:
            raise ValueError(f"mode must be one of {messages.MODES}, got {mode!r}")
        if not STREAM_ID.fullmatch(stream):  # the pipeline drops frames of any other stream
            raise ValueError(f"stream {stream!r} must be a source id ({STREAM_ID.pattern})")
        self.encoding = encoding or framecodec.default_encoding(endpoint)
        if self.encoding not in framecodec.ENCODINGS:
            raise ValueError(f"encoding must be one of {framecodec.ENCODINGS}, got {encoding!r}")
        self.jpeg_quality = framecodec.check_quality(jpeg_quality)
        curve.check_exposure(endpoint, keys, insecure, "FrameSender")
        self.stream = stream
        self.mode = mode
        self.index = 0
        self.dropped = 0
        self.bytes_sent = 0  # message bytes of the frames sent (see framecodec.message_bytes)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._sock = self._context.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        curve.client(self._sock, keys)
        self._sock.connect(endpoint)

    def send(self, image: np.ndarray, *, position: dict[str, Any] | None = None) -> bool:
        """Send one BGR uint8 (H, W, 3) frame; False if dropped (live mode, pipeline full)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8 BGR, got {image.dtype} {image.shape}")
        if not 0 < min(image.shape[:2]) <= max(image.shape[:2]) <= MAX_IMAGE_SIDE:
            raise ValueError(f"image of {image.shape} is empty or over {MAX_IMAGE_SIDE} a side")
        header = {
            "kind": "frame",
            "stream": self.stream,
            "index": self.index,
            "t_mono": time.monotonic(),
            "t_wall": time.time(),
            "mode": self.mode,
            "source_shape": [int(image.shape[0]), int(image.shape[1])],
            "position": position or {"frame": self.index},
            "stage_ms": {},
            "t_last": time.monotonic(),
        }
        self.index += 1
        flags = zmq.NOBLOCK if self.mode == "live" else 0
        parts = framecodec.encode(header, image, self.encoding, self.jpeg_quality)
        try:
            self._sock.send_multipart(parts, flags=flags, copy=False)
            self.bytes_sent += framecodec.message_bytes(parts)
            return True
        except zmq.Again:
            self.dropped += 1
            return False

    def close(self, *, linger_ms: int = 2000) -> None:
        """End the stream (the pipeline flushes its frames) and close the socket.

        Waits at most `linger_ms` for room to send the end, and for it to leave."""
        if self._sock.poll(linger_ms, zmq.POLLOUT):
            messages.send(self._sock, messages.eos_header(self.stream), flags=zmq.NOBLOCK)
        else:
            log.warning("stream %s: the pipeline did not take the end of stream", self.stream)
        self._sock.close(linger=linger_ms)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> FrameSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
