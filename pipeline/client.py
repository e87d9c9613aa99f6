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
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import zmq

from . import curve, messages
from .connection import Connection, sooner
from .errors import MessageError
from .receiver import NewestReceiver
from .sender import FrameSender

__all__ = ["DepthSubscriber", "FrameSender"]

log = logging.getLogger(__name__)


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

    CURVE: a publisher with `outputs.zmq.curve` keys takes only subscribers whose public key it
    allows. Pass this subscriber's key pair and the publisher's public key as files,
    `curve_secret="me.key_secret", curve_server="hub.key"` (made by `depthstream keys`), or as
    `keys=curve.Keys(...)`. A refused handshake is logged once and sets `refused` (why); the
    subscriber keeps trying now and then, in case the publisher is restarted with other keys.
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
        curve_secret: str = "",
        curve_server: str = "",
        keys: curve.Keys | None = None,
    ) -> None:
        if keys is None:  # CurveError (a ConfigError) naming a missing or unreadable key file
            config = curve.CurveConfig(secret=curve_secret, server=curve_server)
            keys = curve.file_keys(config, server=False)
        self.keys = keys  # CURVE client keys (None: none)
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
        self._conn: Connection | None = None
        self._newest: NewestReceiver | None = None
        try:
            if newest_only:
                self._newest = NewestReceiver(self._context, self._setup, self._accept)
            else:
                self._sock = self._context.socket(zmq.SUB)
                self._conn = self._setup(self._sock)
        except BaseException:
            self.close()
            raise

    def _setup(self, sock: zmq.Socket) -> Connection:
        sock.setsockopt(zmq.LINGER, 0)
        # Parts are a header (<= MAX_HEADER_BYTES) or one array (<= max_bytes).
        sock.setsockopt(zmq.MAXMSGSIZE, max(self.max_bytes, messages.MAX_HEADER_BYTES))
        for t in self._topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        curve.client(sock, self.keys)
        conn = Connection(sock, self.endpoint)
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
    def refused(self) -> str | None:
        """Why the publisher refused this subscriber's last handshake (CURVE keys); None if it
        did not (or a later one succeeded)."""
        conn = self._newest.connection if self._newest else self._conn
        return conn.refused if conn is not None else None

    @property
    def finished(self) -> bool:
        """Every watched stream has ended: the `streams` given, else every stream seen so far."""
        watched = self._watched if self._watched is not None else self._seen
        return bool(watched) and watched <= self.ended

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until the connection to the publisher is made (its handshake done); False if not
        within `timeout` s, or once the publisher refused it (`refused`: CURVE keys). A publisher
        sends a subscriber only what it publishes after that (once the subscription has crossed
        the connection too: a network round trip later)."""
        if self._newest is not None:
            return self._newest.connection.wait_handshake(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        conn = self._conn
        while not conn.connected.is_set() and conn.refused is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if left == 0.0:
                break
            conn.monitor.poll(sooner(None if left is None else left * 1000, conn.timeout_ms()))
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
                poller.poll(sooner(None if left is None else left * 1000, conn.timeout_ms()))
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
