"""Base of every stage: a worker thread that owns its ZeroMQ sockets and stops on a control message.

Like pyzmq's devices, the constructor only records endpoints; sockets are created inside the thread.
Every wait (for input, for room downstream, for a reconnect backoff, for pacing) is a poll that also
watches the stage's control socket, so a stop message ends the stage promptly without polled flags.

Over tcp (transport.kind tcp) every link between stages is CURVE-authenticated with the run's
ephemeral keys (`link_keys`, made once per run by the topology): a binding socket allows only the
run's client key, so no other process can inject into, drain or stall a stage. A socket that faces
the network (the PUB output, the worker pool, remote cameras) passes its own keys instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import zmq

from . import curve, messages
from .errors import EndpointError, MessageError
from .metrics import StageMetrics

log = logging.getLogger(__name__)

STOP = b"stop"
LINK = "link"  # Stage.socket(keys=LINK): the run's internal link keys, on tcp endpoints
LINK_DOMAIN = "depthstream-internal"  # ZAP domain of the internal links' server sockets


class Stopped(Exception):
    """Raised inside a stage thread when its control socket says stop."""


class Stage:
    """A pipeline stage. Subclasses implement `setup` (create sockets), `loop` and `teardown`."""

    def __init__(
        self,
        name: str,
        *,
        context: zmq.Context,
        control: str,
        metrics: StageMetrics | None = None,
        linger_ms: int = 1000,
        max_message_bytes: int = messages.DEFAULT_MAX_BYTES,
        link_keys: tuple[curve.Keys, curve.Keys] | None = None,
    ) -> None:
        self.name = name
        self.context = context
        self.control_endpoint = control  # inproc endpoint this stage's control socket binds
        self.metrics = metrics or StageMetrics(name)
        self.linger_ms = linger_ms  # on a normal end, unsent messages may delay closing this long
        self.max_message_bytes = max_message_bytes
        self.link_keys = link_keys  # (server, client) CURVE keys of the run's tcp links; None: off
        self.bound: dict[str, str] = {}  # role -> endpoint actually bound (tcp ports resolved)
        self.error: BaseException | None = None  # what ended the stage, if it failed
        self.outcome = "running"  # -> "finished" (all streams ended) | "stopped" | "failed"
        self.ready = threading.Event()  # set once sockets exist (or the stage failed)
        self.done = threading.Event()
        self.on_exit: Callable[[Stage], None] | None = None  # called in the thread, last thing
        self._thread: threading.Thread | None = None
        self._sockets: list[zmq.Socket] = []
        self._control: zmq.Socket | None = None
        self._malformed_logged = 0

    # ---- thread control (any thread) --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name=f"depthstream-{self.name}", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        """The stage's body, on the thread (or, later, the process) a launcher gives it: sockets
        are made, the loop runs, sockets are closed, all in here (like pyzmq's Device.run)."""
        linger = 0
        try:
            self._control = self.socket(zmq.PULL, bind=self.control_endpoint, role="control")
            self.setup()
            self.ready.set()
            self.loop()
            self.outcome = "finished"
            linger = self.linger_ms  # let the last messages (EOS) leave over tcp/ipc
        except Stopped:
            self.outcome = "stopped"
        except BaseException as exc:
            self.outcome = "failed"
            self.error = exc
            log.debug("stage %s failed", self.name, exc_info=True)
        finally:
            self.metrics.cpu_s = time.thread_time()  # this thread only (not native worker pools)
            try:
                self.teardown()
            except BaseException as exc:
                if self.error is None:
                    self.outcome, self.error = "failed", exc
                log.debug("stage %s teardown failed", self.name, exc_info=True)
            for sock in reversed(self._sockets):
                sock.close(linger=linger)
            self._sockets.clear()
            self.ready.set()
            self.done.set()
            if self.on_exit is not None:
                self.on_exit(self)

    def setup(self) -> None:
        """Create sockets (in the stage thread)."""

    def loop(self) -> None:
        """Run until every stream ended (return) or a stop message (Stopped)."""
        raise NotImplementedError

    def teardown(self) -> None:
        """Release resources; runs on every exit path, in the stage thread."""

    # ---- helpers for subclasses (stage thread only) -------------------------------------------

    def socket(
        self,
        kind: int,
        *,
        bind: str | None = None,
        connect: str | Sequence[str] | None = None,
        hwm: int | None = None,
        role: str = "",
        max_part_bytes: int | None = None,
        keys: curve.Keys | str | None = LINK,
        domain: str = LINK_DOMAIN,
    ) -> zmq.Socket:
        """A socket of this stage, closed when the stage ends.

        keys: LINK (default): a tcp bind is a CURVE server allowing only the run's client key, a
        tcp connect its client (when the run has `link_keys`); other endpoints get none. Keys:
        this socket's own (server keys with `allow`, under ZAP `domain`, or client keys with
        `server`), applied whatever the endpoint; None: no CURVE.

        Every socket refuses message parts larger than `max_part_bytes` (default: the largest a
        valid message may have, `max_message_bytes`) before they are received whole: ZeroMQ's
        MAXMSGSIZE, checked as the part's length arrives. A tcp/ipc peer that sends one is
        disconnected (it reconnects; the message is lost, uncounted). inproc ignores the option,
        but there the sender is this process. `messages.decode` still bounds all parts together.
        """
        sock = self.context.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        if max_part_bytes is None:
            max_part_bytes = max(self.max_message_bytes, messages.MAX_HEADER_BYTES)
        sock.setsockopt(zmq.MAXMSGSIZE, max_part_bytes)
        if hwm is not None:
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        connects = [] if connect is None else [connect] if isinstance(connect, str) else connect
        if isinstance(keys, str):  # LINK: the run's keys, on tcp (inproc/ipc: no network)
            tcp = any(e.startswith("tcp://") for e in [bind or "", *connects])
            server, client = self.link_keys if tcp and self.link_keys else (None, None)
            keys = server if bind is not None else client
        if bind is not None:  # before bind/connect: every peer meets CURVE from the first
            curve.server(sock, keys, domain)
        elif connects:
            curve.client(sock, keys)
        if bind is not None:
            try:
                sock.bind(bind)
            except zmq.ZMQError as e:
                raise EndpointError(f"{self.name}: cannot bind {bind}: {e}") from None
            self.bound[role or bind] = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        for endpoint in connects:
            sock.connect(endpoint)
        return sock

    def poll(
        self, items: Sequence[tuple[zmq.Socket, int]], timeout_ms: float | None = None
    ) -> dict[zmq.Socket, int]:
        """Poll `items` and the control socket; Stopped if a stop message arrived."""
        poller = zmq.Poller()
        poller.register(self._control, zmq.POLLIN)
        for sock, flags in items:
            if flags:
                poller.register(sock, flags)
        timeout = None if timeout_ms is None else max(0, int(timeout_ms + 0.999))
        events = dict(poller.poll(timeout))
        if events.pop(self._control, 0):
            self._control.recv(zmq.NOBLOCK)
            raise Stopped
        return events

    def check_stop(self) -> None:
        """Stopped if a stop message is waiting (non-blocking)."""
        self.poll((), 0)

    def wait(self, seconds: float) -> None:
        """Wait `seconds` unless told to stop first (backoff, pacing)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.poll((), left * 1000)

    def send(self, sock: zmq.Socket, parts: list[Any], *, block: bool) -> bool:
        """Send a message. block=False: give up at once if the peer is full (returns False)."""
        while True:
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if not block:
                    return False
            self.poll([(sock, zmq.POLLOUT)])  # wait for room, or a stop message

    def emit(
        self,
        sock: zmq.Socket,
        parts: list[Any],
        *,
        live: bool,
        drop_reason: str = "downstream_full",
        count: bool = True,
    ) -> bool:
        """Send-or-drop, the one policy of every stage: a live frame never waits (when the next
        stage is full it is dropped and counted under `drop_reason`, so the newest frames keep
        flowing); anything else waits for room, watching the control socket (backpressure).
        count: a message sent counts in `metrics.sent` (not for side outputs). True if sent."""
        if self.send(sock, parts, block=not live):
            if count:
                self.metrics.sent += 1
            return True
        self.metrics.drop(drop_reason)
        return False

    def forward_eos(self, sock: zmq.Socket, stream: str, *, count: bool = True) -> None:
        """Send the end of `stream` after its frames: never dropped, whatever the mode. A fresh
        header, so nothing else a peer put in the one received travels on."""
        self.emit(sock, messages.encode(messages.eos_header(stream)), live=False, count=count)

    def receive(self, sock: zmq.Socket) -> messages.Message | None:
        """One decoded message from `sock`, or None if it was malformed (logged and counted)."""
        parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        self.metrics.received += 1
        try:
            return messages.decode(parts, max_bytes=self.max_message_bytes)
        except MessageError as e:
            self.malformed(e)
            return None

    def incoming(self, sock: zmq.Socket, streams: Collection[str]) -> Iterator[messages.Message]:
        """The messages waiting on `sock` now, without blocking. Malformed ones and frames of
        unknown streams are logged, counted and skipped."""
        while True:
            try:
                msg = self.receive(sock)
            except zmq.Again:
                return
            if msg is None:
                continue
            if msg.stream not in streams:
                self.malformed(MessageError(f"unknown stream {msg.stream!r}"))
                continue
            yield msg

    def malformed(self, error: Exception) -> None:
        self.metrics.malformed += 1
        self._malformed_logged += 1
        n = self._malformed_logged
        if n <= 10 or n % 1000 == 0:  # a hostile peer must not flood the log
            log.error("%s: dropped malformed message #%d: %s", self.name, n, error)
