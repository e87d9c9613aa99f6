"""Clients for other programs: subscribe to published depth, or feed frames from another process.

    with DepthSubscriber("tcp://127.0.0.1:5556", newest_only=True) as sub:
        for header, depth in sub:          # depth: (H, W) float32 metres
            ...

    with DepthSubscriber("tcp://127.0.0.1:5556", until_end=True) as sub:
        for header, depth in sub:          # ends when the stream (e.g. a video file) has ended
            ...

Nothing here unpickles: messages are JSON headers plus raw buffers, checked before use; a malformed
message is skipped and counted (`sub.malformed`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
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
    A stream's end-of-stream message is never replaced: it is kept after the stream's newest frame
    (which `take` returns first), and a frame that comes after it (the stream started again) waits
    behind it. The thread creates its own sockets and stops on a control message.
    """

    def __init__(self, context: zmq.Context, connect: Callable[[zmq.Socket], None], decode) -> None:
        self._context = context
        self._connect = connect
        self._decode = decode
        self._control = f"inproc://depthstream-subscriber-{id(self):x}"
        self._cond = threading.Condition()
        # stream -> its messages not yet taken: frames and ends, never two frames in a row
        self._queues: OrderedDict[str, deque[messages.Message]] = OrderedDict()
        self._closed = False
        self.received = 0
        self.skipped = 0
        self.connected = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="depthstream-subscriber", daemon=True
        )
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        sock = self._context.socket(zmq.SUB)
        ctl = self._context.socket(zmq.PAIR)
        monitor = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self._connect(sock)
            ctl.bind(self._control)
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(ctl, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            while ctl not in (events := dict(poller.poll())):
                if monitor in events:
                    monitor.recv_multipart()
                    self.connected.set()
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    msg = self._decode(parts)
                    if msg is not None:
                        self._keep(msg)
        finally:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            ctl.close(linger=0)
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._ready.set()

    def _keep(self, msg: messages.Message) -> None:
        with self._cond:
            queue = self._queues.get(msg.stream)
            if msg.kind == "frame":
                self.received += 1
                if queue and queue[-1].kind == "frame":
                    queue.pop()  # replaced by the newer frame
                    self.skipped += 1
                    if len(queue) == 0:
                        del self._queues[msg.stream]  # and the stream moves to the back
                        queue = None
            elif queue and any(m.kind == "eos" for m in queue):
                while queue.popleft().kind != "eos":  # a newer end supersedes an older end and
                    self.skipped += 1  # the frames before it: at most [frame, end, frame] wait
            if queue is None:
                queue = self._queues[msg.stream] = deque()
            queue.append(msg)
            self._cond.notify_all()

    def take(self, timeout: float | None) -> messages.Message | None:
        """The oldest waiting stream's next message (a frame or an end), None on timeout."""
        with self._cond:
            self._cond.wait_for(lambda: self._queues or self._closed, timeout)
            if not self._queues:
                return None
            stream, queue = next(iter(self._queues.items()))
            msg = queue.popleft()
            if not queue:
                del self._queues[stream]
            return msg

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
    by more than the publisher's high-water mark plus its own receive queue loses frames, as with
    any ZeroMQ PUB).
    streams: receive only these stream ids (default: all).
    timeout: iteration ends after this many seconds without a message (default: never).

    End of stream: when a stream ends at the publisher (a video file or image folder finished,
    `max_frames` reached), its end-of-stream message follows the last frame; `recv` and iteration
    never return it, but its stream id is added to `ended` (and removed again if frames of that
    stream come later). `finished` is True once every watched stream has ended: the `streams`
    given, or without them every stream received so far. until_end=True: `recv` returns None and
    iteration stops once `finished` and every message that has already arrived has been read, so
    a loop over a file stream ends by itself:

        with DepthSubscriber("tcp://127.0.0.1:5556", until_end=True) as sub:
            for header, depth in sub:
                ...

    newest_only never drops an end: the stream's newest frame comes first, then the end. Limits:
    a pipeline that is stopped (Ctrl-C, q, an error) sends no end for the streams it cut short, a
    subscriber that falls so far behind that it loses frames may lose the end too (add a
    `timeout` where either can happen), and without `streams=` a stream none of whose messages
    has arrived yet when the others have ended is not waited for.
    `wait_connected` tells when the connection is made (frames published before are not received).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        streams: Sequence[str] | None = None,
        newest_only: bool = False,
        timeout: float | None = None,
        until_end: bool = False,
        max_bytes: int = messages.DEFAULT_MAX_BYTES,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.newest_only = newest_only
        self.timeout = timeout  # iteration ends when nothing arrives for this long (None: never)
        self.until_end = until_end  # recv/iteration end once every watched stream has ended
        self.max_bytes = max_bytes
        self.malformed = 0  # messages dropped because they did not decode
        self.ended: set[str] = set()  # streams whose end-of-stream message has arrived
        self._watched = set(streams) if streams else None
        self._seen: set[str] = set()
        self._received = 0
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._topics = [b""] if not streams else [topic(s) for s in streams]
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._connected = False
        self._newest: _NewestReceiver | None = None
        if newest_only:
            self._newest = _NewestReceiver(self._context, self._setup, self._decode)
        else:
            self._sock = self._context.socket(zmq.SUB)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._monitor = self._sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
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

    @property
    def finished(self) -> bool:
        """Every watched stream has ended: the `streams` given, else every stream seen so far."""
        watched = self._watched if self._watched is not None else self._seen
        return bool(watched) and watched <= self.ended

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the connection to the publisher is made (its handshake done); False if not
        within `timeout` s. A publisher sends a subscriber only what it publishes after that (once
        the subscription has crossed the connection too: a network round trip later)."""
        if self._newest is not None:
            return self._newest.connected.wait(timeout)
        if not self._connected and self._monitor.poll(None if timeout is None else timeout * 1000):
            self._connected = True
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
        return self._connected

    def _decode(self, parts: list[Any]) -> messages.Message | None:
        try:
            msg = messages.decode(parts, topic=True, max_bytes=self.max_bytes)
            if msg.kind == "frame":
                msg.array("depth", dtype="float32", ndim=2)
            elif msg.arrays:
                raise MessageError(f"end of stream with arrays {sorted(msg.arrays)}")
            return msg
        except MessageError as e:
            self.malformed += 1
            if self.malformed <= 10:
                log.error("%s: dropped malformed message: %s", self.endpoint, e)
            return None

    def _next(self, timeout: float | None) -> messages.Message | None:
        """The next valid message, frame or end, None on timeout."""
        if self._newest is not None:
            return self._newest.take(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._sock.poll(None if left is None else int(left * 1000)):
                return None
            msg = self._decode(self._sock.recv_multipart(copy=False))
            if msg is not None:
                if msg.kind == "frame":
                    self._received += 1
                return msg

    def recv_message(self, timeout: float | None = None) -> messages.Message | None:
        """The next depth message (header + arrays incl. an optional 'view'); None on timeout, or
        with until_end once `finished` and every message that has arrived has been read. Ends of
        streams are recorded in `ended`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.until_end and self.finished:
                msg = self._next(0)  # only what has arrived already: a stream not yet known
                if msg is None:
                    return None
            else:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                msg = self._next(left)
                if msg is None:
                    return None
            self._seen.add(msg.stream)
            if msg.kind == "eos":
                self.ended.add(msg.stream)
                continue
            self.ended.discard(msg.stream)  # the stream started again
            return msg

    def recv(self, timeout: float | None = None) -> tuple[dict[str, Any], np.ndarray] | None:
        """(header, depth (H, W) float32 metres), or None if nothing came within `timeout` s
        (or, with until_end, every watched stream has ended)."""
        msg = self.recv_message(timeout)
        return None if msg is None else (msg.header, msg.arrays["depth"])

    def __iter__(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """(header, depth) until `timeout` s pass without a message, or with until_end until every
        watched stream has ended."""
        while (item := self.recv(self.timeout)) is not None:
            yield item

    def close(self) -> None:
        if self._newest is not None:
            self._newest.close()
        if self._sock is not None:
            if not self._connected:
                self._sock.disable_monitor()
                self._monitor.close(linger=0)
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
