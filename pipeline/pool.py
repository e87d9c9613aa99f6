"""The worker pool, hub side: the stage named "inference" when config.workers is set.

    preprocess --frames, credits--> PoolStage (ROUTER at workers.endpoint) --depth--> postprocess
                                       |  BATCH / RESULT / FAILED / HEARTBEAT / DISCONNECT
                                    workers (DEALER, `depthstream worker --hub ...`, any host)

To preprocess and postprocess it is InferenceStage: the same sockets, credits and output
messages. Instead of an engine it has the ZeroMQ guide's load-balancing broker with credit
(pipeline.pool_protocol): workers announce themselves (READY: name, device, engine, batch size,
credit), and a batch of same-size frames goes to the least loaded worker with credit. A partial
batch waits at most model.max_wait_ms.

Faults, as the guide's Paranoid Pirate: heartbeats both ways after heartbeat_s of silence; a worker
silent for timeout_s (or unreachable, or saying DISCONNECT) is gone: its lossless frames go back to
the front of the queue for another worker, its live frames are dropped (counted "worker_lost"). So
is a worker that heartbeats but returns no result for max(4 x timeout_s, 10 x its p95 round trip)
(a hung engine; pipeline.pool_dispatch). A batch a worker answers FAILED is redone once
elsewhere (waiting for another worker's credit rather than going back to the one it failed on);
failing twice fails the run with the worker's error. Workers may join at any time
(pipeline.pool_workers keeps the registry).

Order (pipeline.reorder): per stream, lossless results leave in arrival order, exactly once;
live results never go backwards. Memory is bounded by the credits given to preprocess: lossless
frames up to what the workers can hold plus one batch (with no worker, that one batch waits here
and preprocess and the captures push back); live frames only when a worker has free credit, so the
frame taken is the newest. With no worker connected for workers.wait_s while frames wait, the run
fails with NoWorkersError (exit 3). Results leave through a queue polled for room, so the hub
keeps heartbeating while postprocess is slow.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from . import messages, pool_dispatch
from .config import Config
from .config_network import WorkersConfig
from .engine_spec import EngineSpec
from .errors import MessageError, NoWorkersError, PipelineError
from .inference import EngineFactory, check_pixels, depth_message
from .pool_link import WorkerLink
from .pool_protocol import DISCONNECT, FAILED, HEARTBEAT, READY, RESULT
from .pool_workers import Batch, Frame, WorkerEntry
from .reorder import Reorder
from .stage import Stage

log = logging.getLogger(__name__)

MAX_CREDIT = 4096  # frames per credit message (what preprocess accepts)


def hub_engine(config: Config) -> EngineSpec | None:
    """The engine the pipeline's own process builds: none when workers run it all (config.workers
    without local_worker), so such a hub needs no checkpoint."""
    if config.workers is not None and not config.workers.local_worker:
        return None
    return EngineSpec.from_config(config)


class PoolStage(Stage):
    def __init__(
        self,
        engine_factory: EngineFactory | None = None,
        *,
        streams: Sequence[str],
        input: str,
        credit: str,
        output: str,
        endpoint: str,
        workers: WorkersConfig,
        live: bool = False,
        max_batch: int = 1,
        max_wait_ms: float = 5.0,
        hwm: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__("inference", **kwargs)
        self.engine_factory = engine_factory  # for the local worker (workers.local_worker)
        self.streams = set(streams)
        self.input = input  # bound here
        self.credit_endpoint = credit  # bound here; preprocess connects
        self.output = output  # postprocess input (connect)
        self.endpoint = endpoint  # the workers' ROUTER, bound here
        self.workers = workers  # heartbeat_s, timeout_s, wait_s, local_worker, curve
        # Any live source: frames are asked for only when a worker can take them at once.
        self.live = live
        self.max_batch = max_batch  # lossless frames that may wait here with no worker
        self.max_wait = max_wait_ms / 1000  # a partial batch waits at most this long
        self.hwm = hwm
        self.link = WorkerLink(self, endpoint, workers)  # the ROUTER, the local worker
        self.registry = self.link.registry
        self.reorder = Reorder()

    # ---- read-outs (any thread) --------------------------------------------------------------

    @property
    def description(self) -> str:
        """The workers now connected and their engines (the summary's engine line)."""
        return self.registry.describe(self.endpoint)

    def workers_snapshot(self) -> list[dict[str, Any]]:
        return self.registry.snapshot()

    # ---- the stage thread --------------------------------------------------------------------

    def setup(self) -> None:
        self.link.open()
        # Credits bound what preprocess sends; the HWM also bounds what a foreign peer pushes.
        window = self.max_batch + len(self.streams) + self.hwm + 64
        self.inp = self.socket(zmq.PULL, bind=self.input, hwm=window, role="input")
        self.credit = self.socket(zmq.PUSH, bind=self.credit_endpoint, role="credit")
        self.out = self.socket(zmq.PUSH, connect=self.output, hwm=self.hwm)
        self.pending: deque[Frame] = deque()  # frames waiting for a worker, in arrival order
        self.outbox: deque[list[Any]] = deque()  # messages for postprocess, waiting for room
        self.promised = 0  # credits given to preprocess not yet used
        self._arrivals = itertools.count()
        self._batch_ids = itertools.count()
        self._idle_since: float | None = None  # no worker while frames wait, since then
        self.eos: set[str] = set()  # streams whose EOS came, waiting for their last results
        self.ended: set[str] = set()  # streams whose EOS went to postprocess
        if self.workers.local_worker:
            self.link.start_local(self.engine_factory, self.max_batch)

    def teardown(self) -> None:
        self.link.close()

    def loop(self) -> None:
        while self.ended != self.streams or self.outbox:
            now = time.monotonic()
            events = self.poll(
                [
                    (self.inp, zmq.POLLIN),
                    (self.link.sock, zmq.POLLIN),
                    (self.credit, zmq.POLLOUT if self._want() > 0 else 0),
                    (self.out, zmq.POLLOUT if self.outbox else 0),
                ],
                self._timeout(now),
            )
            if self.link.sock in events:
                self._read_workers()
            if self.inp in events:
                self._read_frames()
            now = time.monotonic()
            self._check_workers(now)
            pool_dispatch.check_hung(self, time.monotonic())
            pool_dispatch.dispatch(self, now)
            self._close_streams()
            self._flush()
            self._grant()
            self._check_waiting(now)
            self.metrics.backlog = self._held()
            self.metrics.gauges["workers"] = len(self.registry.active())

    def _timeout(self, now: float) -> float | None:
        """Milliseconds until the next thing due: a heartbeat, a worker's timeout, a partial
        batch, the no-worker limit. None: only a message can change anything."""
        w = self.workers
        times = [t for e in self.registry.active()
                 for t in (e.t_sent + w.heartbeat_s, e.t_seen + w.timeout_s,
                           pool_dispatch.hung_deadline(self, e)) if t is not None]  # fmt: skip
        if pool_dispatch.target(self) is not None:  # a partial batch: sent after max_wait
            times.append(self.pending[0].t_in + self.max_wait)
        if self._idle_since is not None and w.wait_s is not None:
            times.append(self._idle_since + w.wait_s)
        return max(0.0, (min(times) - now) * 1000) if times else None

    # ---- frames in, credits out --------------------------------------------------------------

    def _read_frames(self) -> None:
        now = time.monotonic()
        for msg in self.incoming(self.inp, self.streams):
            if msg.stream in self.eos:
                self.malformed(MessageError(f"a message of stream {msg.stream!r} after its end"))
                continue
            if msg.kind == "eos":
                self.eos.add(msg.stream)
                continue
            self.promised = max(0, self.promised - 1)
            try:
                check_pixels(msg)
            except MessageError as e:
                self.malformed(e)
                continue
            live = msg.header["mode"] == "live"
            if live:  # a newer frame of the stream: the older one is not worth a worker's time
                for i, f in enumerate(self.pending):
                    if f.live and f.stream == msg.stream:
                        del self.pending[i]
                        self.reorder.drop(f.stream)
                        self.metrics.drop("superseded")
                        break
            seq = self.reorder.arrive(msg.stream, live)
            self.pending.append(Frame(msg, next(self._arrivals), seq, live, now))

    def _held(self) -> int:
        """Frames in the pool: waiting, at workers, waiting for an earlier result, to be sent."""
        return len(self.pending) + self.registry.in_flight() + self.reorder.held + len(self.outbox)

    def _want(self) -> int:
        """Credits preprocess should get now (see the module docstring)."""
        room = self.registry.capacity() + self.max_batch - self._held()  # results waiting too
        if self.live:
            room = min(room, self.registry.free_frames() - len(self.pending))
        return min(room - self.promised, MAX_CREDIT)

    def _grant(self) -> None:
        want = self._want()
        if want <= 0:
            return
        try:
            self.credit.send(str(want).encode(), zmq.NOBLOCK)
        except zmq.Again:  # preprocess not connected yet: the poll retries
            return
        self.promised += want

    def _check_waiting(self, now: float) -> None:
        """Count the time no worker was connected while frames waited; NoWorkersError past
        workers.wait_s. Live frames wait in preprocess (newest-wins), so a live source waits
        for as long as it runs."""
        waiting = bool(self.pending) or (self.live and self.ended != self.streams)
        if self.registry.active() or not waiting:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        elif self.workers.wait_s is not None and now - self._idle_since >= self.workers.wait_s:
            raise NoWorkersError(
                f"no inference worker connected to {self.endpoint} for {self.workers.wait_s:g} s"
            )
        self.metrics.gauges["waiting_for_workers"] = int(self._idle_since is not None)

    # ---- workers ----------------------------------------------------------------------------

    def _send(self, w: WorkerEntry, command: bytes, body: dict | None = None, *buffers) -> bool:
        status = self.link.send(w.identity, command, body, *buffers)
        if status == "ok":
            w.t_sent = time.monotonic()
        elif status == "gone":
            self._lose(w, "lost", "disconnected")
        else:  # wedged or hung: no batch until it sends again (or times out); no retry storm
            w.blocked, w.t_sent = True, time.monotonic()
        return status == "ok"

    def _read_workers(self) -> None:
        for identity, w, command, body, array in self.link.receive():
            if command == READY:
                self._join(identity, w, body)
            elif w is None:
                self.link.stranger(identity, command)
            elif command == RESULT:
                self._result(w, body, array)
            elif command == FAILED:
                batch = self.registry.finished(w, body["id"])
                if batch is not None:
                    self._batch_failed(w, batch, body["error"] or "no reason given")
            elif command == DISCONNECT:
                self._lose(w, "left", body["reason"] or "said goodbye")
            # HEARTBEAT: a sign of life, recorded by receive()

    def _join(self, identity: bytes, old: WorkerEntry | None, info: dict[str, Any]) -> None:
        if old is not None:  # READY again on one connection: it forgot what it held
            self._lose(old, "left", "announced itself again")
        w = self.registry.join(identity, info, time.monotonic())
        self.metrics.events["workers_joined"] += 1
        log.info(
            "inference: worker %s joined (%s pid %d, %s, %s; batch %d, credit %d)",
            w.name, w.host or "?", w.pid, w.device or "?", w.engine or "?", w.batch, w.credit,
        )  # fmt: skip

    def _check_workers(self, now: float) -> None:
        """Heartbeat the quiet ones; a worker silent for timeout_s is lost."""
        hb, timeout = self.workers.heartbeat_s, self.workers.timeout_s
        for w in self.registry.active():
            if not w.active:  # lost earlier in this pass (a DISCONNECT read below)
                continue
            if now - w.t_seen > timeout:
                self._read_workers()  # anything it sent while this thread was busy counts
                if w.active and time.monotonic() - w.t_seen > timeout:
                    self._lose(w, "lost", f"silent for {timeout:g} s")
            elif now - w.t_sent >= hb:
                self._send(w, HEARTBEAT)

    def _lose(self, w: WorkerEntry, state: str, why: str) -> None:
        """`w` is gone: its lossless frames go back to the front of the queue, live ones are
        dropped. A worker already gone is left alone."""
        if not w.active:
            return
        frames = [f for b in self.registry.leave(w, state) for f in b.frames]
        live = [f for f in frames if f.live]
        for f in live:
            self.reorder.drop(f.stream)
        if live:
            self.metrics.drop("worker_lost", len(live))
        self._requeue([f for f in frames if not f.live])
        self.metrics.events[f"workers_{state}"] += 1
        level = logging.WARNING if frames or state == "lost" else logging.INFO
        log.log(
            level, "inference: worker %s %s (%s): %d frames re-queued, %d live frames dropped",
            w.name, state, why, len(frames) - len(live), len(live),
        )  # fmt: skip

    def _requeue(self, frames: list[Frame]) -> None:
        """Frames back in the queue; it stays in arrival order, so they go first."""
        if frames:
            self.pending = deque(sorted([*frames, *self.pending], key=lambda f: f.arrival))

    # ---- batches ----------------------------------------------------------------------------

    def _result(self, w: WorkerEntry, body: dict[str, Any], depth: np.ndarray) -> None:
        batch = self.registry.finished(w, body["id"])
        if batch is None:  # a batch given up on (it was redone elsewhere), or never sent
            log.debug("inference: worker %s answered batch %d it does not hold", w.name, body["id"])
            return
        n = len(batch.frames)
        expected = (n, *batch.frames[0].shape[1:])
        if depth.shape != expected:
            self._batch_failed(
                w, batch, f"returned depth of shape {list(depth.shape)}, expected {list(expected)}"
            )
            return
        now = time.monotonic()
        rtt_ms = (now - batch.t_sent) * 1000
        self.registry.record(w, batch, rtt_ms, body["ms"])
        self.metrics.record(rtt_ms, n=n)
        self.metrics.events["batches"] += 1
        for f, d in zip(batch.frames, depth):
            out = depth_message(f.msg, d, batch.t_sent, now, batch=n, max_depth=w.max_depth)
            self.metrics.record_wait(out.header["wait_ms"]["inference"])
            ready, kept = self.reorder.done(f.stream, f.seq, f.live, out)
            if not kept:
                self.metrics.drop("out_of_order")  # a newer live result already left
            for m in ready:
                parts = messages.encode(m.header, m.arrays)
                if f.live:
                    self.emit(self.out, parts, live=True)  # never waits: dropped if full
                else:
                    self.outbox.append(parts)

    def _batch_failed(self, w: WorkerEntry, batch: Batch, error: str) -> None:
        """Redo the batch's frames once, on another worker if there is one; a second failure of
        any of them fails the run with the worker's error."""
        self.registry.failed(w)
        self.metrics.events["batches_failed"] += 1
        log.warning(
            "inference: worker %s failed batch %d (%d frames): %s",
            w.name, batch.id, len(batch.frames), error,
        )  # fmt: skip
        for f in batch.frames:
            f.failures += 1
            f.failed_on.add(w.name)
        if any(f.failures >= 2 for f in batch.frames):
            raise PipelineError(f"inference worker {w.name} failed a batch twice: {error}")
        self._requeue(batch.frames)

    # ---- results out ------------------------------------------------------------------------

    def _close_streams(self) -> None:
        """A stream's EOS follows its last result."""
        for stream in sorted(self.eos - self.ended):
            if self.reorder.settled(stream):
                self.outbox.append(messages.encode(messages.eos_header(stream)))
                self.ended.add(stream)

    def _flush(self) -> None:
        while self.outbox:
            try:
                self.out.send_multipart(self.outbox[0], zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.outbox.popleft()
            self.metrics.sent += 1
