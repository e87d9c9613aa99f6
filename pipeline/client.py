"""Clients for other programs: subscribe to published depth, or feed frames from another process.

    with DepthSubscriber("tcp://127.0.0.1:5556", newest_only=True) as sub:
        for header, depth in sub:          # depth: (H, W) float32 metres
            ...

Nothing here unpickles: messages are JSON headers plus raw buffers, checked before use; a malformed
message is skipped and counted (`sub.malformed`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import zmq

from . import messages
from .errors import MessageError
from .sinks import topic

log = logging.getLogger(__name__)


class _NewestReceiver:
    """A thread that drains a SUB socket as fast as messages come, keeping the newest per stream.

    Draining continuously keeps ZeroMQ's queues empty, so the publisher never drops the newest
    frames for this subscriber (PUB drops new messages when a subscriber's queue is full).
    The thread creates its own sockets and stops on a control message.
    """

    def __init__(self, context: zmq.Context, connect: Callable[[zmq.Socket], None], decode) -> None:
        self._context = context
        self._connect = connect
        self._decode = decode
        self._control = f"inproc://depthstream-subscriber-{id(self):x}"
        self._cond = threading.Condition()
        self._slots: OrderedDict[str, messages.Message] = OrderedDict()
        self._closed = False
        self.received = 0
        self.skipped = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="depthstream-subscriber", daemon=True
        )
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        sock = self._context.socket(zmq.SUB)
        ctl = self._context.socket(zmq.PAIR)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            self._connect(sock)
            ctl.bind(self._control)
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(ctl, zmq.POLLIN)
            while ctl not in dict(poller.poll()):
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    msg = self._decode(parts)
                    if msg is None or msg.kind != "frame":
                        continue
                    with self._cond:
                        self.received += 1
                        if self._slots.pop(msg.stream, None) is not None:
                            self.skipped += 1
                        self._slots[msg.stream] = msg
                        self._cond.notify_all()
        finally:
            sock.close(linger=0)
            ctl.close(linger=0)
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._ready.set()

    def take(self, timeout: float | None) -> messages.Message | None:
        with self._cond:
            self._cond.wait_for(lambda: self._slots or self._closed, timeout)
            if not self._slots:
                return None
            return self._slots.popitem(last=False)[1]

    def close(self) -> None:
        ctl = self._context.socket(zmq.PAIR)
        ctl.connect(self._control)
        ctl.send(b"stop")
        self._thread.join()
        ctl.close(linger=0)


class DepthSubscriber:
    """Receives (header, depth) from a pipeline's ZeroMQ PUB output.

    newest_only: for consumers slower than the pipeline. A background thread takes every message
    as it arrives and keeps only the newest frame of each stream; `recv` returns that (older ones
    count in `skipped`). Otherwise every frame is returned in order (a consumer that falls behind
    by more than the publisher's high-water mark loses frames, as with any ZeroMQ PUB).
    streams: receive only these stream ids (default: all).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        streams: Sequence[str] | None = None,
        newest_only: bool = False,
        timeout: float | None = None,
        max_bytes: int = messages.DEFAULT_MAX_BYTES,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.newest_only = newest_only
        self.timeout = timeout  # iteration ends when nothing arrives for this long (None: never)
        self.max_bytes = max_bytes
        self.malformed = 0  # messages dropped because they did not decode
        self._received = 0
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._topics = [b""] if not streams else [topic(s) for s in streams]
        self._sock: zmq.Socket | None = None
        self._newest: _NewestReceiver | None = None
        if newest_only:
            self._newest = _NewestReceiver(self._context, self._setup, self._decode)
        else:
            self._sock = self._context.socket(zmq.SUB)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._setup(self._sock)

    def _setup(self, sock: zmq.Socket) -> None:
        for t in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        sock.connect(self.endpoint)

    @property
    def received(self) -> int:
        """Valid depth frames received so far (including skipped ones in newest_only mode)."""
        return self._newest.received if self._newest else self._received

    @property
    def skipped(self) -> int:
        """Frames replaced by a newer one before they were read (newest_only mode)."""
        return self._newest.skipped if self._newest else 0

    def _decode(self, parts: list[Any]) -> messages.Message | None:
        try:
            msg = messages.decode(parts, topic=True, max_bytes=self.max_bytes)
            if msg.kind == "frame":
                msg.array("depth", dtype="float32", ndim=2)
            return msg
        except MessageError as e:
            self.malformed += 1
            if self.malformed <= 10:
                log.error("%s: dropped malformed message: %s", self.endpoint, e)
            return None

    def recv_message(self, timeout: float | None = None) -> messages.Message | None:
        """The next depth message (header + arrays incl. an optional 'view'), None on timeout."""
        if self._newest is not None:
            return self._newest.take(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._sock.poll(None if left is None else int(left * 1000)):
                return None
            msg = self._decode(self._sock.recv_multipart(copy=False))
            if msg is not None and msg.kind == "frame":
                self._received += 1
                return msg

    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], np.ndarray] | None:
        """(header, depth (H, W) float32 metres), or None if nothing came within `timeout` s."""
        msg = self.recv_message(timeout)
        return None if msg is None else (msg.header, msg.arrays["depth"])

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        while (item := self.recv(self.timeout)) is not None:
            yield item

    def close(self) -> None:
        if self._newest is not None:
            self._newest.close()
        if self._sock is not None:
            self._sock.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> DepthSubscriber:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class FrameSender:
    """Pushes frames of one stream into a running pipeline (a source of kind `external`).

    Connect it to `pipeline.endpoints["preprocess.lossless"]` (or `"preprocess.live"` for a live
    stream); `send(image)` blocks when the pipeline is behind (lossless) or drops (live);
    `close()` sends the end of the stream. With the default inproc transport, pass
    `context=pipeline.context` (inproc endpoints exist only inside their context); from another
    process, run the pipeline with transport ipc or tcp.
    """

    def __init__(
        self,
        endpoint: str,
        stream: str,
        *,
        mode: str = "lossless",
        hwm: int = 2,
        context: zmq.Context | None = None,
    ) -> None:
        if mode not in messages.MODES:
            raise ValueError(f"mode must be one of {messages.MODES}, got {mode!r}")
        self.stream = stream
        self.mode = mode
        self.index = 0
        self.dropped = 0
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._sock = self._context.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.connect(endpoint)

    def send(self, image: np.ndarray, *, position: dict[str, Any] | None = None) -> bool:
        """Send one BGR uint8 (H, W, 3) frame; False if dropped (live mode, pipeline full)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected (H, W, 3) uint8 BGR, got {image.dtype} {image.shape}")
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
        try:
            messages.send(self._sock, header, {"image": image}, flags=flags)
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
