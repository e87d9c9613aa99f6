"""The receiver thread of a newest-only subscriber (DepthSubscriber(newest_only=True))."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import zmq

from . import messages
from .connection import Connection

log = logging.getLogger(__name__)


class NewestReceiver:
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
        setup: Callable[[zmq.Socket], Connection],
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
        self.connection: Connection | None = None
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
