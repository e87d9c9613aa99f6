"""Clients for other programs: subscribe to published depth, or feed frames from another process.

    with DepthSubscriber("tcp://127.0.0.1:5556", newest_only=True) as sub:
        for header, depth in sub:          # depth: (H, W) float32 metres
            ...

    with DepthSubscriber("tcp://127.0.0.1:5556", until_end=True) as sub:
        for header, depth in sub:          # ends when the stream (e.g. a video file) has ended
            ...

Nothing here unpickles: messages are JSON headers plus raw buffers, checked before use; a malformed
message is skipped and counted (`sub.malformed`), whatever it contains.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import messages
from .config import MAX_IMAGE_SIDE, STREAM_ID
from .errors import MessageError

log = logging.getLogger(__name__)

MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
RETRY_S = (0.1, 5.0)  # first and longest wait before connecting again after a protocol error


def _sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two poll timeouts in ms (None: forever)."""
    return b if a is None else a if b is None else min(a, b)


class _Connection:
    """A SUB socket's connection to the publisher, watched through a socket monitor.

    `connected` is set once a handshake succeeded. ZeroMQ connects again by itself after a lost
    connection (it reports CONNECT_RETRIED), but not after a protocol error, which is what a
    message part over MAXMSGSIZE is: then this connects again, after RETRY_S[0] s, doubling up
    to RETRY_S[1] s while no handshake succeeds (a publisher that keeps sending such parts is
    not hammered). The frames published meanwhile are missed (`DepthSubscriber.lost`). Used by
    one thread only: the caller's, or the receiver thread's, which calls `handle_events` when
    the monitor has events or `timeout_ms` has passed.
    """

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.connected = threading.Event()
        self.reconnects = 0  # connections lost (each one made again)
        self.monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        self._retry_at: float | None = None  # when to connect again, if ZeroMQ does not
        self._backoff = RETRY_S[0]

    def timeout_ms(self) -> float | None:
        """How long a poll may wait before `handle_events` must run (None: for an event)."""
        if self._retry_at is None:
            return None
        return max(0.0, math.ceil((self._retry_at - time.monotonic()) * 1000))

    def handle_events(self) -> None:
        """Act on the monitor events waiting now, and connect again if that is due."""
        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected.set()
                self._backoff = RETRY_S[0]
            elif event == zmq.EVENT_DISCONNECTED:
                self.reconnects += 1
                log.info(
                    "%s: connection lost; frames published meanwhile are missed", self.endpoint
                )
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(2 * self._backoff, RETRY_S[1])
            elif event == zmq.EVENT_CONNECT_RETRIED:
                self._retry_at = None  # ZeroMQ is on it
        if self._retry_at is not None and time.monotonic() >= self._retry_at:
            self._retry_at = None
            if self.reconnects <= 10:
                log.warning(
                    "%s: the connection was closed on a protocol error (a message part over "
                    "max_bytes?); connecting again",
                    self.endpoint,
                )
            try:
                self.sock.disconnect(self.endpoint)  # the dead session: a new one replaces it
            except zmq.ZMQError:
                pass
            self.sock.connect(self.endpoint)

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)


class _NewestReceiver:
    """A thread that drains a SUB socket as fast as messages come, keeping the newest per stream.

    Draining continuously keeps ZeroMQ's queues empty, so the publisher never drops the newest
    frames for this subscriber (PUB drops new messages when a subscriber's queue is full).
    A stream's end-of-stream message is never replaced: it is kept after the stream's newest frame
    (which `take` returns first), and a frame that comes after it (the stream started again) waits
    behind it. The thread creates its own sockets and stops on a control message. It never ends
    silently: an error in it is raised by `take` (and by the constructor if it failed to start).
    """

    def __init__(
        self,
        context: zmq.Context,
        setup: Callable[[zmq.Socket], _Connection],
        accept: Callable[[list[Any]], messages.Message | None],
    ) -> None:
        self._context = context
        self._setup = setup
        self._accept = accept
        self._control = f"inproc://depthstream-subscriber-{id(self):x}"
        self._cond = threading.Condition()
        # stream -> its messages not yet taken: frames and ends, never two frames in a row
        self._queues: OrderedDict[str, deque[messages.Message]] = OrderedDict()
        self._closed = False
        self.error: BaseException | None = None  # what ended the thread, if not close()
        self.received = 0
        self.skipped = 0
        self.connection: _Connection | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="depthstream-subscriber", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error

    def _run(self) -> None:
        sock = self._context.socket(zmq.SUB)
        ctl = self._context.socket(zmq.PAIR)
        conn = None
        try:
            conn = self.connection = self._setup(sock)
            ctl.bind(self._control)
            self._ready.set()
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(ctl, zmq.POLLIN)
            poller.register(conn.monitor, zmq.POLLIN)
            while ctl not in (events := dict(poller.poll(conn.timeout_ms()))):
                if conn.monitor in events or not events:
                    conn.handle_events()
                while True:
                    try:
                        parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    msg = self._accept(parts)
                    if msg is not None:
                        self._keep(msg)
        except BaseException as exc:
            self.error = exc  # raised in the consumer's thread by take()
            log.debug("subscriber receiver thread failed", exc_info=True)
        finally:
            if conn is not None:
                conn.close()
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
        """The oldest waiting stream's next message (a frame or an end), None on timeout; the
        error that ended the receiver thread, if one did."""
        with self._cond:
            self._cond.wait_for(lambda: self._queues or self._closed, timeout)
            if self.error is not None:
                raise self.error
            if not self._queues:
                return None
            stream, queue = next(iter(self._queues.items()))
            msg = queue.popleft()
            if not queue:
                del self._queues[stream]
            return msg

    def close(self) -> None:
        if self._thread.is_alive():
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
    any ZeroMQ PUB: they count in `lost`).
    streams: receive only these stream ids (default: all).
    timeout: iteration ends after this many seconds without a message (default: never).
    max_bytes: a message whose arrays together exceed this is skipped as malformed; a single part
    larger than it is refused before it is received whole (ZeroMQ's MAXMSGSIZE), which closes the
    connection: the subscriber reconnects at once (`reconnects`), missing what is published
    meanwhile.

    Hostile or broken messages (bad JSON, absurd numbers or shapes, a topic that is not its
    stream's) never end the loop: each is skipped and counted in `malformed`. In newest_only mode
    an unexpected error in the background thread is raised by `recv` / the loop, never swallowed.

    lost: {stream: frames missed}, from gaps in the frames' `index` (which counts up by one per
    frame read from the source) among the frames that arrived here, since the first one of the
    stream; an index that goes back (the stream restarted) or an end of stream starts counting
    afresh. It counts frames this subscriber never received: lost at the publisher's high-water
    mark, published while it was reconnecting, or, for a live source, dropped inside the pipeline
    on purpose to stay current (those are also in the pipeline's drops). For a lossless source
    (a file) the pipeline drops nothing, so every one counted was lost on the way here. Frames
    replaced by a newer one in newest_only mode arrived: they are in `skipped`, not `lost`.

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
    `wait_connected` tells when the connection is made (frames published before are not received;
    a pipeline with `outputs.zmq.wait_subscribers` waits for its subscribers instead).
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
        self._lost: dict[str, int] = {}  # written by the thread that receives
        self._next_index: dict[str, int] = {}  # stream -> the index its next frame should have
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._topics = [b""] if not streams else [messages.stream_topic(s) for s in streams]
        self._sock: zmq.Socket | None = None
        self._conn: _Connection | None = None
        self._newest: _NewestReceiver | None = None
        try:
            if newest_only:
                self._newest = _NewestReceiver(self._context, self._setup, self._accept)
            else:
                self._sock = self._context.socket(zmq.SUB)
                self._conn = self._setup(self._sock)
        except BaseException:
            self.close()
            raise

    def _setup(self, sock: zmq.Socket) -> _Connection:
        sock.setsockopt(zmq.LINGER, 0)
        # Parts are a header (<= MAX_HEADER_BYTES) or one array (<= max_bytes).
        sock.setsockopt(zmq.MAXMSGSIZE, max(self.max_bytes, messages.MAX_HEADER_BYTES))
        for t in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        conn = _Connection(sock, self.endpoint)
        try:
            sock.connect(self.endpoint)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def received(self) -> int:
        """Valid depth frames received so far (including skipped ones in newest_only mode)."""
        return self._newest.received if self._newest else self._received

    @property
    def skipped(self) -> int:
        """Frames replaced by a newer one before they were read (newest_only mode)."""
        return self._newest.skipped if self._newest else 0

    @property
    def lost(self) -> dict[str, int]:
        """{stream: frames missed}, from gaps in `index` (see the class docstring)."""
        return dict(self._lost)  # a copy: the receiver thread may be adding to it

    @property
    def reconnects(self) -> int:
        """Times the connection was closed and made again (see `max_bytes`)."""
        conn = self._newest.connection if self._newest else self._conn
        return conn.reconnects if conn is not None else 0

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
            return self._newest.connection.connected.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._conn
        while not conn.connected.is_set():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                break
            conn.monitor.poll(_sooner(None if left is None else left * 1000, conn.timeout_ms()))
            conn.handle_events()
        return conn.connected.is_set()

    def _accept(self, parts: list[Any]) -> messages.Message | None:
        """A received message, checked, with its stream's gap counted; None (counted in
        `malformed`) if it is not a valid depth frame or end of stream."""
        try:
            msg = messages.decode(parts, topic=True, max_bytes=self.max_bytes)
            if msg.kind == "frame":
                msg.array("depth", dtype="float32", ndim=2)
            elif msg.arrays:
                raise MessageError(f"end of stream with arrays {sorted(msg.arrays)}")
        except MessageError as e:
            self.malformed += 1
            if self.malformed <= 10:
                log.error("%s: dropped malformed message: %s", self.endpoint, e)
            return None
        if msg.kind == "eos":
            self._next_index.pop(msg.stream, None)  # a new run of the stream starts anywhere
        else:
            index = msg.header["index"]
            expected = self._next_index.get(msg.stream, index)
            gap = index - expected if index > expected else 0  # back: the stream restarted
            self._lost[msg.stream] = self._lost.get(msg.stream, 0) + gap
            self._next_index[msg.stream] = index + 1
        return msg

    def _next(self, timeout: float | None) -> messages.Message | None:
        """The next valid message, frame or end, None on timeout."""
        if self._newest is not None:
            return self._newest.take(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._conn
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(conn.monitor, zmq.POLLIN)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            events = dict(
                poller.poll(_sooner(None if left is None else left * 1000, conn.timeout_ms()))
            )
            if conn.monitor in events or not events:
                conn.handle_events()
            if self._sock in events:
                msg = self._accept(self._sock.recv_multipart(copy=False))
                if msg is not None:
                    if msg.kind == "frame":
                        self._received += 1
                    return msg
            elif left == 0.0:
                return None

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
        if self._conn is not None:
            self._conn.close()
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
        if not STREAM_ID.fullmatch(stream):  # the pipeline drops frames of any other stream
            raise ValueError(f"stream {stream!r} must be a source id ({STREAM_ID.pattern})")
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
