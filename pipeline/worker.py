"""An inference worker of a hub's pool (`depthstream worker --hub tcp://HOST:PORT`, or the hub's
own --local-worker): the ZeroMQ guide's Paranoid Pirate worker around one engine.

Two threads. The one that calls `run()` owns the DEALER socket to the hub: it announces the
worker (READY), takes BATCHes, returns RESULT/FAILED and heartbeats both ways. The engine is built
and run in a second thread (engines are not thread-safe; a long batch must not stop the
heartbeats), fed one batch at a time through a queue; it signals each result on an inproc PUSH
that the I/O thread polls together with the hub and its stop signal, so nothing waits on a timer.

A hub silent for `timeout_s`, or one that says DISCONNECT, is gone: the socket is closed with
linger 0, the batches of that connection are dropped (the hub re-queues them), and after a
backoff (1 s doubling up to `reconnect_max_s`) a fresh DEALER sends READY again, so a restarted
hub is rejoined without restarting anything and nothing ever waits forever.

At most `credit` batches of the current connection are held (queued or running); a hub that
sends more gets FAILED for the extra ones. A batch still running from a lost connection is
finished and its result discarded, so memory is bounded by credit + 1 batches.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from . import curve
from . import pool_protocol as proto
from .errors import MessageError, one_line
from .worker_batch import batch_id_of, infer

log = logging.getLogger(__name__)

INITIAL_BACKOFF_S = 1.0  # first wait before reconnecting to a lost hub; doubles each time
STOP_LINGER_MS = 500  # on stop, the DISCONNECT gets this long to leave
ENGINE_JOIN_S = 10.0  # on stop, how long to wait for a running batch to finish

_STOP, _BUILT, _DONE = b"stop", b"built", b"done"  # signals on the I/O thread's wake socket


class Worker:
    """Serve a hub's batches with one engine until stop(); see the module docstring."""

    def __init__(
        self,
        hub: str,
        engine_factory: Callable[[], Any],
        *,
        name: str = "",
        batch: int = 1,
        credit: int = 2,
        heartbeat_s: float = 1.0,
        timeout_s: float = 3.0,
        keys: curve.Keys | None = None,
        context: zmq.Context | None = None,
        max_message_bytes: int = 256 << 20,
        reconnect_max_s: float = 5.0,
    ) -> None:
        if not 1 <= batch <= proto.MAX_BATCH or not 1 <= credit <= 64:
            raise ValueError(f"worker: batch must be 1..{proto.MAX_BATCH}, credit 1..64")
        if not (0 < heartbeat_s and timeout_s >= 2 * heartbeat_s):
            raise ValueError("worker: timeout_s must be at least twice heartbeat_s (> 0)")
        self.hub = hub  # the hub's ROUTER endpoint (tcp://HOST:PORT)
        self.engine_factory = engine_factory  # called in the engine thread
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch = batch  # most frames per engine call (bigger batches are split)
        self.credit = credit  # batches the hub may have here at once
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.keys = keys  # CURVE client keys (keys.server: the hub's public key); None: plain
        self.context = context  # None: run() makes (and terminates) its own
        self.max_message_bytes = max_message_bytes
        self.reconnect_max_s = reconnect_max_s
        self.ready = threading.Event()  # the engine is built, or building failed (.error)
        self.registered = threading.Event()  # the hub answered on the current connection
        self.error: BaseException | None = None
        self.description = ""  # engine.describe()
        self.device = ""
        self.max_depth = 0.0
        self.batches = 0  # batches returned (RESULT)
        self.frames = 0
        self.failed = 0  # batches the engine raised on (FAILED)
        self.connections = 0  # READYs sent (1 + reconnections)
        self._ever_registered = False
        self._stopping = threading.Event()
        self._wake_endpoint = f"inproc://depthstream-worker-{uuid.uuid4().hex[:10]}"
        self._wake_context: zmq.Context | None = None  # set while run()'s wake socket is bound
        self._lock = threading.RLock()  # stop() may run in a signal handler during stop()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()  # -> engine thread; None ends it
        self._results: queue.SimpleQueue = queue.SimpleQueue()  # <- engine thread
        self._pending: collections.deque = collections.deque()  # received, not yet running
        self._running_epoch = 0  # connection of the batch the engine runs; 0: idle
        self._last_sent = 0.0
        self._over_credit_logged = False
        self._malformed = 0  # malformed messages from the hub (the first few are logged)

    # ---- public -------------------------------------------------------------------------------

    def run(self) -> None:
        """Build the engine, connect, serve until stop(); reconnects to a lost hub. Returns with
        .error set if the engine could not be built (or something unexpected failed)."""
        context = self.context or zmq.Context()
        wake = context.socket(zmq.PULL)
        engine_thread: threading.Thread | None = None
        try:
            wake.bind(self._wake_endpoint)
            with self._lock:
                self._wake_context = context
            engine_thread = threading.Thread(
                target=self._engine_main, args=(context,), name=f"worker-engine-{self.name}",
                daemon=True,  # a stop during a long engine build does not wait for it
            )  # fmt: skip
            engine_thread.start()
            if self._wait_for_engine(wake):
                self._serve(context, wake)
        except Exception as e:  # recorded for the caller (the CLI prints one line)
            self.error = self.error or e
            log.debug("worker %s failed", self.name, exc_info=True)
        finally:
            built = self.ready.is_set()  # a stop during the build does not wait for it
            self.ready.set()
            self._jobs.put(None)
            if engine_thread is not None and built:
                engine_thread.join(ENGINE_JOIN_S)
            with self._lock:
                self._wake_context = None
            wake.close(linger=0)
            if engine_thread is not None and engine_thread.is_alive():
                # term() would block until the engine's socket closes: forever if it hangs
                log.warning("worker %s: the engine is still busy; not waiting", self.name)
            elif self.context is None:
                context.term()

    def stop(self) -> None:
        """From any thread (or a signal handler): run() sends DISCONNECT and returns promptly."""
        self._stopping.set()
        with self._lock:
            if self._wake_context is None:
                return  # run() checks _stopping before it waits on anything
            push = self._wake_context.socket(zmq.PUSH)
            try:
                push.connect(self._wake_endpoint)
                push.send(_STOP, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # run() is ending anyway
            finally:
                push.close(linger=100)

    # ---- the engine thread --------------------------------------------------------------------

    def _engine_main(self, context: zmq.Context) -> None:
        engine = None
        try:
            engine = self.engine_factory()
            describe = getattr(engine, "describe", None)
            self.description = describe() if callable(describe) else type(engine).__name__
            self.device = str(getattr(engine, "device", "") or "")
            self.max_depth = float(getattr(engine, "max_depth", 0.0) or 0.0)
        except BaseException as e:  # noqa: BLE001 - reported by run()'s caller, not here
            self.error = e
        self.ready.set()
        try:
            signal = context.socket(zmq.PUSH)
        except zmq.ZMQError:  # run() already ended (stopped while the engine was being built)
            return
        try:
            signal.connect(self._wake_endpoint)
            self._signal(signal, _BUILT)
            while engine is not None:
                job = self._jobs.get()
                if job is None:
                    break
                epoch, batch_id, dtype, values = job
                t0 = time.perf_counter()
                try:
                    depth, error = infer(engine, proto.unpack_pixels(dtype, values), self.batch), ""
                except Exception as e:
                    depth, error = None, one_line(f"{type(e).__name__}: {e}", 200)
                ms = (time.perf_counter() - t0) * 1000
                self._results.put((epoch, batch_id, ms, depth, error))
                self._signal(signal, _DONE)
        finally:
            engine = None  # free device memory in this thread
            signal.close(linger=0)

    @staticmethod
    def _signal(sock: zmq.Socket, what: bytes) -> None:
        with contextlib.suppress(zmq.ZMQError):  # the I/O thread has gone: nobody waits for it
            sock.send(what, zmq.NOBLOCK)

    # ---- the I/O thread -----------------------------------------------------------------------

    def _wait_for_engine(self, wake: zmq.Socket) -> bool:
        """True once the engine is built; False on stop() or a failed build."""
        while not self._stopping.is_set():
            signal = wake.recv()
            if signal == _STOP:
                return False
            if signal == _BUILT:
                return self.error is None
        return False

    def _serve(self, context: zmq.Context, wake: zmq.Socket) -> None:
        backoff = min(INITIAL_BACKOFF_S, self.reconnect_max_s)
        epoch = 0
        quiet = False  # a loss was logged; the retries until the next answer are not
        while not self._stopping.is_set():
            epoch += 1
            sock = self._connect(context)
            try:
                detail = self._session(sock, wake, epoch)
                if detail is None:  # stopped
                    self._send(sock, proto.encode(proto.DISCONNECT, {"reason": "stopped"}))
                    return
            finally:
                sock.close(linger=STOP_LINGER_MS if self._stopping.is_set() else 0)
            self._pending.clear()  # the hub re-queues what it gave this connection
            if self.registered.is_set():
                backoff = min(INITIAL_BACKOFF_S, self.reconnect_max_s)
                quiet = False
            self.registered.clear()
            if not quiet:
                quiet = True
                log.warning("worker %s: %s; reconnecting (backoff from %.1f s up to %.1f s)",
                            self.name, detail, backoff, self.reconnect_max_s)  # fmt: skip
            else:
                log.debug("worker %s: %s; retrying in %.1f s", self.name, detail, backoff)
            if self._pause(wake, backoff, epoch):
                return
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _connect(self, context: zmq.Context) -> zmq.Socket:
        """A fresh DEALER to the hub, READY already sent."""
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.rcvhwm = 4 * self.credit + 16  # batches are bounded by credit; the rest is small
        sock.maxmsgsize = self.max_message_bytes + proto.MAX_JSON_BYTES
        curve.client(sock, self.keys)
        sock.connect(self.hub)
        self.connections += 1
        ready = {
            "v": proto.VERSION,
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": self.device,
            "engine": self.description,
            "batch": self.batch,
            "credit": self.credit,
            "max_depth": self.max_depth,  # metres, 0: unknown; the hub stamps it on results
        }
        self._send(sock, proto.encode(proto.READY, ready))
        return sock

    def _session(self, sock: zmq.Socket, wake: zmq.Socket, epoch: int) -> str | None:
        """Serve one connection until the hub is lost (returns how) or stop() (None)."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        last_heard = time.monotonic()
        while True:
            now = time.monotonic()
            if now - last_heard > self.timeout_s:
                what = "lost the hub" if self.registered.is_set() else "no answer from the hub"
                hint = "" if self.registered.is_set() or self.keys is None else (
                    " (is this worker's public key in the hub's --curve-allow?)")  # fmt: skip
                return f"{what} {self.hub} for {self.timeout_s:g} s{hint}"
            if now - self._last_sent >= self.heartbeat_s:
                self._send(sock, proto.encode(proto.HEARTBEAT))
            wait = min(self._last_sent + self.heartbeat_s, last_heard + self.timeout_s) - now
            events = dict(poller.poll(max(0.0, wait) * 1000 + 1))
            if wake in events and self._drain_wake(wake):
                return None
            self._return_results(sock, epoch)
            if sock not in events:
                continue
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                last_heard = time.monotonic()  # any message is a sign of life
                if not self.registered.is_set():
                    self.registered.set()
                    again = "rejoined" if self._ever_registered else "registered with"
                    self._ever_registered = True
                    log.info("worker %s: %s hub %s (%s)", self.name, again, self.hub,
                             self.description)  # fmt: skip
                gone = self._handle(sock, parts, epoch)
                if gone:
                    return gone
            self._feed()

    def _handle(self, sock: zmq.Socket, parts: list, epoch: int) -> str:
        """One message from the hub; a non-empty string when the hub said goodbye."""
        try:
            command, body, values = proto.decode(parts, max_bytes=self.max_message_bytes)
        except MessageError as e:
            self._malformed += 1
            level = logging.WARNING if self._malformed <= 3 else logging.DEBUG
            log.log(level, "worker %s: dropped a malformed message from the hub: %s", self.name, e)
            batch_id = batch_id_of(parts)  # a BATCH it cannot take: FAILED, so the hub redoes it
            if batch_id is not None:
                self._send(sock, proto.encode(proto.FAILED, {"id": batch_id, "error": one_line(
                    f"worker {self.name} cannot decode the batch: {e}", 200)}))  # fmt: skip
            return ""
        if command == proto.DISCONNECT:
            return f"the hub {self.hub} disconnected ({body['reason'] or 'no reason given'})"
        if command != proto.BATCH:
            return ""  # HEARTBEAT (already counted as life); READY/RESULT/FAILED are not for us
        held = len(self._pending) + (self._running_epoch == epoch)
        if held >= self.credit:
            if not self._over_credit_logged:
                self._over_credit_logged = True
                log.warning("worker %s: the hub sent more than %d batches at once; refusing "
                            "the extra ones", self.name, self.credit)  # fmt: skip
            reply = {"id": body["id"], "error": f"over credit ({self.credit} batches)"}
            self._send(sock, proto.encode(proto.FAILED, reply))
            return ""
        self._pending.append((epoch, body["id"], body["dtype"], values))
        return ""

    def _feed(self) -> None:
        """Give the engine the next batch if it is idle."""
        if not self._running_epoch and self._pending:
            job = self._pending.popleft()
            self._running_epoch = job[0]
            self._jobs.put(job)

    def _drain_wake(self, wake: zmq.Socket) -> bool:
        """Read every signal; True on stop."""
        stop = False
        while True:
            try:
                stop |= wake.recv(zmq.NOBLOCK) == _STOP
            except zmq.Again:
                return stop or self._stopping.is_set()

    def _return_results(self, sock: zmq.Socket | None, epoch: int) -> None:
        """Send the finished batches of this connection; drop those of a lost one."""
        while True:
            try:
                batch_epoch, batch_id, ms, depth, error = self._results.get_nowait()
            except queue.Empty:
                break
            self._running_epoch = 0
            if batch_epoch != epoch or sock is None:
                continue
            if depth is None:
                self.failed += 1
                log.warning("worker %s: batch %d failed: %s", self.name, batch_id, error)
                self._send(sock, proto.encode(proto.FAILED, {"id": batch_id, "error": error}))
            else:
                self.batches += 1  # counted first: whoever sees the RESULT sees it counted
                self.frames += len(depth)
                body = {"id": batch_id, "ms": round(ms, 3), "shape": list(depth.shape)}
                self._send(sock, proto.encode(proto.RESULT, body, depth))
        self._feed()

    def _pause(self, wake: zmq.Socket, seconds: float, epoch: int) -> bool:
        """Wait `seconds` before reconnecting, still collecting the engine's results (dropped);
        True on stop."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if wake.poll(left * 1000 + 1) and self._drain_wake(wake):
                return True
            self._return_results(None, epoch)
        return self._stopping.is_set()

    def _send(self, sock: zmq.Socket, parts: list) -> None:
        """Never blocks: a message the socket cannot take now is dropped (the hub is gone or
        stalled; heartbeats and the hub's re-queueing cover it)."""
        try:
            sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.debug("worker %s: dropped a %s the hub cannot take", self.name, parts[0])
        self._last_sent = time.monotonic()

