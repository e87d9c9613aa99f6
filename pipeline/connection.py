"""A SUB socket's connection to a publisher, watched through a ZeroMQ socket monitor.

Used by pipeline.client.DepthSubscriber, directly or from its receiver thread (pipeline.receiver).
"""

from __future__ import annotations

import logging
import math
import threading
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

HANDSHAKE_FAILED = {  # the publisher refused us (CURVE): event -> why
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "its CURVE key is not among the publisher's allowed keys",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "CURVE keys missing or wrong on one side "
    "(curve_secret / curve_server here, outputs.zmq.curve there)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed",
}
MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
RETRY_S = (0.1, 5.0)  # first and longest wait before connecting again after a protocol error


def sooner(a: float | None, b: float | None) -> float | None:
    """The shorter of two poll timeouts in ms (None: forever)."""
    return b if a is None else a if b is None else min(a, b)


class Connection:
    """A SUB socket's connection to the publisher, watched through a socket monitor.

    `connected` is set once a handshake succeeded. ZeroMQ connects again by itself after a lost
    connection (it reports CONNECT_RETRIED), but not after a protocol error, which is what a
    message part over MAXMSGSIZE is: then this connects again, after RETRY_S[0] s, doubling up
    to RETRY_S[1] s while no handshake succeeds (a publisher that keeps sending such parts is
    not hammered). The frames published meanwhile are missed (`DepthSubscriber.lost`). A
    handshake the publisher refuses (CURVE keys) sets `refused` and is logged once; ZeroMQ does
    not try again after one either, so this does, with the same backoff (the publisher may be
    restarted with other keys). Used by one thread only: the caller's, or the receiver thread's,
    which calls `handle_events` when the monitor has events or `timeout_ms` has passed.
    """

    def __init__(self, sock: zmq.Socket, endpoint: str) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.connected = threading.Event()
        self.refused: str | None = None  # why the publisher refused the last handshake, if it did
        self.changed = threading.Condition()  # notified when `connected` or `refused` is set
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
                with self.changed:
                    self.connected.set()
                    self.refused = None
                    self.changed.notify_all()
                self._backoff = RETRY_S[0]
            elif event in HANDSHAKE_FAILED:
                if self.refused is None:
                    log.warning("%s: the publisher refused this subscriber: %s",
                                self.endpoint, HANDSHAKE_FAILED[event])  # fmt: skip
                with self.changed:
                    self.refused = HANDSHAKE_FAILED[event]
                    self.changed.notify_all()
                self._retry_at = time.monotonic() + self._backoff  # its DISCONNECTED is no loss
                self._backoff = min(2 * self._backoff, RETRY_S[1])
            elif event == zmq.EVENT_DISCONNECTED and self.refused is not None:
                pass  # after a refused handshake: never connected, nothing was lost
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
            if self.refused is None and self.reconnects <= 10:
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

    def wait_handshake(self, timeout: float | None) -> bool:
        """Wait (in another thread than the one handling events) until a handshake succeeded
        (True) or was refused (False); False after `timeout` s."""
        with self.changed:
            self.changed.wait_for(lambda: self.connected.is_set() or self.refused, timeout)
        return self.connected.is_set()

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
