"""Per-stage counters and latency percentiles, written by one stage thread and read by anyone."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 / p95 / max of `samples` (milliseconds); zeros when empty."""
    if not samples:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    arr = np.asarray(samples, dtype=np.float64)
    p50, p95 = np.percentile(arr, [50, 95])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "max": round(float(arr.max()), 3),
    }


class StageMetrics:
    """What one stage did: items in/out, drops by reason, malformed messages, latency samples.

    Only the owning stage thread writes; `snapshot()` may be called from any thread (a lock guards
    the sample windows, counters are plain ints).
    """

    def __init__(self, name: str, window: int = 4096) -> None:
        self.name = name
        self.received = 0  # messages taken from the input socket(s)
        self.processed = 0  # items this stage finished work on
        self.sent = 0  # messages handed to the next stage
        self.malformed = 0  # messages dropped because they did not decode
        self.drops: Counter[str] = Counter()  # frames dropped on purpose, by reason
        self.backlog = 0  # items held inside the stage (batch being formed, newest-frame slots)
        self.cpu_s: float | None = None  # CPU seconds of the stage thread, when it has ended
        self.events: Counter[str] = Counter()  # other notable things (reconnects, ...)
        self.gauges: dict[str, int] = {}  # levels, not counts (subscribers now, their peak)
        self._lock = threading.Lock()
        self._latency: deque[float] = deque(maxlen=window)  # ms of work per item
        self._e2e: deque[float] = deque(maxlen=window)  # ms from capture to this stage (sinks)
        self._wait: deque[float] = deque(maxlen=window)  # ms items waited before this stage
        self._t_first: float | None = None
        self._t_last: float | None = None

    def record(self, ms: float, n: int = 1) -> None:
        """`n` items finished, the work took `ms` per item."""
        now = time.monotonic()
        with self._lock:
            for _ in range(n):
                self._latency.append(ms)
            if self._t_first is None:
                self._t_first = now - ms / 1000
            self._t_last = now
        self.processed += n

    def record_wait(self, ms: float) -> None:
        with self._lock:
            self._wait.append(ms)

    def record_e2e(self, ms: float) -> None:
        with self._lock:
            self._e2e.append(ms)

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            lat = list(self._latency)
            e2e = list(self._e2e)
            wait = list(self._wait)
            t0, t1 = self._t_first, self._t_last
        drops, events = dict(self.drops), dict(self.events)  # copies: the stage keeps counting
        gauges = dict(self.gauges)
        span = (t1 - t0) if t0 is not None and t1 is not None else 0.0
        out: dict[str, Any] = {
            "received": self.received,
            "processed": self.processed,
            "sent": self.sent,
            "dropped": sum(drops.values()),
            "drops": drops,
            "malformed": self.malformed,
            "backlog": self.backlog,
            "fps": round(self.processed / span, 2) if span > 0 else 0.0,
            "latency_ms": percentiles(lat),
        }
        if wait:
            out["wait_ms"] = percentiles(wait)
        if self.cpu_s is not None:
            out["cpu_s"] = round(self.cpu_s, 3)
        if e2e:
            out["e2e_ms"] = percentiles(e2e)
        if events:
            out["events"] = events
        if gauges:
            out["gauges"] = gauges
        return out
