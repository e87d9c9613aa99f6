"""The hub's end of the worker link: one ROUTER socket at workers.endpoint, and the local worker.

The ROUTER is a CURVE server (workers.curve: the hub's secret key, the workers' public keys
allowed) unless the endpoint is loopback or the config says insecure; a peer without an allowed
key completes no handshake, so it never gets a batch (pipeline.curve logs it once per address).
ROUTER_MANDATORY makes a send to a worker that is gone an error instead of a silent drop. The
local worker (workers.local_worker) is a pipeline.worker.Worker on a thread of this process,
connected over inproc to the same ROUTER.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

from . import curve, pool_protocol
from .config_network import WorkersConfig
from .errors import MessageError
from .inference import EngineFactory
from .pool_protocol import DISCONNECT
from .pool_workers import Registry, WorkerEntry
from .stage import Stage

log = logging.getLogger(__name__)

DISCONNECT_LINGER_MS = 200  # the goodbyes to workers may delay the hub's end this long
LOCAL_JOIN_S = 5.0  # the local worker's thread is waited for this long at the end
STRANGERS_LOGGED = 1024  # unregistered connections remembered (each is logged once)

# (identity, its registered worker or None, command, checked body, array or None)
Received = tuple[bytes, WorkerEntry | None, bytes, dict[str, Any], np.ndarray | None]


class WorkerLink:
    """The ROUTER of a pool stage (made in the stage's thread by open(), closed by close())."""

    def __init__(self, stage: Stage, endpoint: str, config: WorkersConfig) -> None:
        self.stage = stage  # makes the socket (closed with the stage), counts malformed messages
        self.endpoint = endpoint
        self.config = config
        self.registry = Registry()
        self.sock: zmq.Socket | None = None
        self.local: Any = None  # pipeline.worker.Worker, with workers.local_worker
        self._local_thread: threading.Thread | None = None
        self._strangers: set[bytes] = set()

    def open(self) -> None:
        """Bind the ROUTER; CurveError (one line naming the endpoint) for missing keys or a
        network endpoint without keys, EndpointError when it cannot be bound."""
        c = self.config.curve
        try:
            keys = curve.file_keys(c, server=True)
        except curve.CurveError as e:
            raise curve.CurveError(f"workers {self.endpoint}: {e}") from None
        curve.check_exposure(self.endpoint, keys, c.insecure, "workers")
        self.sock = self.stage.socket(
            zmq.ROUTER, bind=self.endpoint, role="workers", keys=keys, domain="workers"
        )
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)

    def send(self, identity: bytes, command: bytes, body: dict | None = None, *buffers) -> str:
        """ "ok", "full" (its queue is at the high-water mark) or "gone" (not connected)."""
        parts = [identity, *pool_protocol.encode(command, body, *buffers)]
        try:
            self.sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return "full"
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                return "gone"
            raise
        return "ok"

    def receive(self) -> Iterator[Received]:
        """The messages waiting now: (identity, its registered worker or None, command, body,
        array). A message from a registered worker refreshes its liveness; malformed ones are
        counted by the stage and skipped."""
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = parts[0].bytes
            w = self.registry.get(identity)
            try:
                command, body, array = pool_protocol.decode(
                    parts[1:], max_bytes=self.stage.max_message_bytes
                )
            except MessageError as e:
                who = w.name if w is not None else f"peer {identity.hex()}"
                self.stage.malformed(MessageError(f"worker {who}: {e}"))
                continue
            if w is not None:
                w.t_seen, w.blocked = time.monotonic(), False
            yield identity, w, command, body, array

    def stranger(self, identity: bytes, command: bytes) -> None:
        """A message from a connection without a READY (a worker this hub gave up on, or one
        whose connection was remade under the hood): tell it to start over."""
        if command == DISCONNECT:
            return
        if identity not in self._strangers and len(self._strangers) < STRANGERS_LOGGED:
            self._strangers.add(identity)
            log.info("inference: %s from an unregistered worker; told to reconnect", command)
        self.send(identity, DISCONNECT, {"reason": "not registered: reconnect, send READY"})

    def start_local(self, engine_factory: EngineFactory, batch: int) -> None:
        """The configured engine as one more worker, over inproc; returns once its engine is
        built (the start-up), raising what building it raised."""
        from .worker import Worker

        endpoint = f"inproc://depthstream-pool-{uuid.uuid4().hex[:10]}"
        self.sock.bind(endpoint)
        c = self.config
        self.local = Worker(
            endpoint, engine_factory, name="local", batch=batch, heartbeat_s=c.heartbeat_s,
            timeout_s=c.timeout_s, context=self.stage.context,
            max_message_bytes=self.stage.max_message_bytes,
        )  # fmt: skip
        self._local_thread = threading.Thread(
            target=self.local.run, name="depthstream-local-worker", daemon=True
        )
        self._local_thread.start()
        while not self.local.ready.wait(0.05):
            self.stage.check_stop()
        if self.local.error is not None:
            raise self.local.error

    def close(self) -> None:
        """DISCONNECT to every worker (no need to wait for a timeout), stop the local one."""
        if self.sock is not None:
            for w in self.registry.active():
                self.send(w.identity, DISCONNECT, {"reason": "the hub ended"})
        if self.local is not None:
            self.local.stop()
            self._local_thread.join(LOCAL_JOIN_S)
        if self.sock is not None:
            self.sock.close(linger=DISCONNECT_LINGER_MS)
