"""The worker pool's registry: who is connected, what each one holds, how each one is doing.

Workers are keyed by their ROUTER identity (one per connection): a worker that reconnects comes
back under a new identity with a new READY, and takes over the totals of the gone entry of the
same name. The pool stage's thread changes the registry; `snapshot()` and `describe()` may be
called from any thread (status line, Prometheus, summary), so a lock guards every change.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import messages
from .metrics import Histogram, percentiles

WORKER_BATCH_MAX = 64  # frames per batch a worker may ask for (its READY batch is capped here)
WORKER_CREDIT_MAX = 4  # batches a worker may hold at once: bounds the frames one peer pins here
GONE_KEPT = 32  # workers that left or were lost, still shown (the summary, Prometheus)
LATENCY_WINDOW = 256  # batches per worker in its latency percentiles
STATES = ("ready", "busy", "lost", "left")


@dataclass(eq=False)
class Frame:
    """A frame in the pool, from its arrival until its result leaves (or it is dropped)."""

    msg: messages.Message  # as preprocess sent it: header + pixels (+ image)
    arrival: int  # pool-wide arrival number: the order of the pending queue
    seq: int  # the Reorder number within its stream
    live: bool
    t_in: float  # monotonic time it (last) entered the pending queue
    failures: int = 0  # batches with this frame that a worker answered FAILED
    failed_on: set[str] = field(default_factory=set)  # names of those workers

    @property
    def stream(self) -> str:
        return self.msg.stream

    @property
    def shape(self) -> tuple[int, ...]:
        return self.msg.arrays["pixels"].shape


@dataclass(eq=False)
class Batch:
    id: int  # unique in this run; RESULT / FAILED name it
    frames: list[Frame]
    t_sent: float  # monotonic


@dataclass(eq=False)
class WorkerEntry:
    identity: bytes  # ROUTER routing id of its connection
    name: str  # as announced, made unique among the registry's entries ("gpu1", "gpu1-2")
    host: str
    pid: int
    device: str
    engine: str  # its engine's description
    batch: int  # frames per batch (capped at WORKER_BATCH_MAX)
    credit: int  # batches it may hold (capped at WORKER_CREDIT_MAX)
    max_depth: float | None  # its engine's max depth, if announced
    t_seen: float  # monotonic: last message from it (liveness)
    t_sent: float  # monotonic: last message to it (heartbeats go after heartbeat_s of silence)
    gone: str = ""  # "" while connected; "lost" (silent, unreachable) or "left" (DISCONNECT)
    blocked: bool = False  # its queue was full: no batch until it sends something
    frames: int = 0  # frames it returned depth for
    batches: int = 0
    failures: int = 0  # batches it answered FAILED (or with a wrong depth)
    inflight: dict[int, Batch] = field(default_factory=dict)
    latency: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    engine_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    histogram: Histogram = field(default_factory=Histogram)  # every batch's round trip, seconds
    p95_ms: float = 0.0  # of `latency`: how long a result may be late before it is hung

    def oldest(self) -> float | None:
        """Monotonic time the oldest batch it holds was sent; None if it holds none."""
        return min((b.t_sent for b in self.inflight.values()), default=None)

    @property
    def active(self) -> bool:
        return not self.gone

    @property
    def state(self) -> str:
        return self.gone or ("busy" if self.inflight else "ready")

    @property
    def free(self) -> int:
        """Batches it may still be sent."""
        return self.credit - len(self.inflight) if self.active else 0


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[bytes, WorkerEntry] = {}  # in join order

    def get(self, identity: bytes) -> WorkerEntry | None:
        """The connected worker with this identity (None: unknown, lost or left)."""
        w = self._entries.get(identity)
        return w if w is not None and w.active else None

    def active(self) -> list[WorkerEntry]:
        return [w for w in self._entries.values() if w.active]

    def join(self, identity: bytes, info: dict[str, Any], now: float) -> WorkerEntry:
        """Register a READY (`info`: pool_protocol's checked READY body)."""
        name = info["name"]
        with self._lock:
            old = self._entries.pop(identity, None)
            if old is None or old.active:  # a gone entry of the same name: the same worker back
                old = next((w for w in self._entries.values() if w.gone and w.name == name), None)
                if old is not None:
                    del self._entries[old.identity]
            taken = {w.name for w in self._entries.values()}
            label, n = name, 1
            while label in taken:
                n += 1
                label = f"{name}-{n}"
            w = WorkerEntry(
                identity, label, info["host"], info["pid"], info["device"], info["engine"],
                batch=min(info["batch"], WORKER_BATCH_MAX),
                credit=min(info["credit"], WORKER_CREDIT_MAX),
                max_depth=info.get("max_depth") or None,
                t_seen=now, t_sent=now,
            )  # fmt: skip
            if old is not None and old.name == label:
                w.frames, w.batches, w.failures = old.frames, old.batches, old.failures
            self._entries[identity] = w
            gone = [k for k, e in self._entries.items() if e.gone]
            for key in gone[: max(0, len(gone) - GONE_KEPT)]:
                del self._entries[key]
            return w

    def leave(self, w: WorkerEntry, state: str) -> list[Batch]:
        """Mark `w` lost or left; returns the batches it held, oldest first."""
        with self._lock:
            w.gone = state
            batches = sorted(w.inflight.values(), key=lambda b: b.id)
            w.inflight.clear()
            return batches

    def pick(self, avoid: set[str]) -> WorkerEntry | None:
        """The least loaded worker with credit (a worker not in `avoid` if there is one); among
        equals the one sent to longest ago."""
        ready = [w for w in self._entries.values() if w.free > 0 and not w.blocked]
        preferred = [w for w in ready if w.name not in avoid] or ready
        if not preferred:
            return None
        return min(preferred, key=lambda w: (len(w.inflight) / w.credit, w.t_sent))

    def sent(self, w: WorkerEntry, batch: Batch) -> None:
        with self._lock:
            w.inflight[batch.id] = batch
            w.t_sent = batch.t_sent

    def finished(self, w: WorkerEntry, batch_id: int) -> Batch | None:
        """The batch `w` answered; None if it holds no such batch (a late or foreign answer)."""
        with self._lock:
            return w.inflight.pop(batch_id, None)

    def record(self, w: WorkerEntry, batch: Batch, rtt_ms: float, engine_ms: float) -> None:
        with self._lock:
            w.frames += len(batch.frames)
            w.batches += 1
            w.latency.append(rtt_ms)
            w.engine_ms.append(engine_ms)
            w.histogram.observe(rtt_ms / 1000)
            w.p95_ms = percentiles(list(w.latency))["p95"]

    def failed(self, w: WorkerEntry) -> None:
        w.failures += 1

    def capacity(self) -> int:
        """Frames the connected workers may hold together."""
        return sum(w.batch * w.credit for w in self.active())

    def free_frames(self) -> int:
        """Frames the connected workers could be sent now."""
        return sum(w.batch * w.free for w in self.active() if not w.blocked)

    def in_flight(self) -> int:
        return sum(len(b.frames) for w in self.active() for b in w.inflight.values())

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per worker (connected first, in join order), for status, metrics, summary."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda w: bool(w.gone))
            return [
                {
                    "name": w.name,
                    "host": w.host,
                    "pid": w.pid,
                    "device": w.device,
                    "engine": w.engine,
                    "batch": w.batch,
                    "credit": w.credit,
                    "state": w.state,
                    "frames": w.frames,
                    "batches": w.batches,
                    "failures": w.failures,
                    "in_flight": len(w.inflight),
                    "latency_ms": percentiles(list(w.latency)),  # hub: batch sent -> result
                    "engine_ms": percentiles(list(w.engine_ms)),  # as the worker measured it
                    "latency_histogram": w.histogram.snapshot(),  # seconds, every batch
                }  # fmt: skip
                for w in entries
            ]

    def describe(self, endpoint: str) -> str:
        """The summary's engine line: "2 workers: gpu1 (cuda:0, <engine>), gpu2 (...)"."""
        with self._lock:
            live = sorted((w for w in self._entries.values() if w.active), key=lambda w: w.name)
        if not live:
            return f"workers at {endpoint}: none connected"
        items = ", ".join(f"{w.name} ({w.device}, {w.engine})" for w in live)
        return f"{len(live)} worker{'s' if len(live) != 1 else ''}: {items}"
