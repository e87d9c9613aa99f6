"""Per-stage counters, latency percentiles and latency histograms, written by one stage thread
and read by anyone.

Two views of the same latencies: percentiles over the last `window` items (the status line, the
summary) and cumulative histograms since the start (Prometheus: rates and quantiles over any range
come from bucket counts that only grow; a window of samples cannot give them).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from itertools import accumulate
from typing import Any

import numpy as np

# Upper bounds (seconds, inclusive: a bucket counts values <= its bound) of the latency histogram
# buckets, Prometheus' defaults widened to 0.5 ms .. 60 s; values above 60 s are only in the count.
BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


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


class Histogram:
    """Counts of observed values per bucket, their sum and their count, since the start.

    Not locked: StageMetrics observes and reads it under its own lock.
    """

    def __init__(self, bounds: tuple[float, ...] = BUCKETS_S) -> None:
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"histogram bounds must increase: {bounds}")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last: above them all
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        """`n` observations of `value`."""
        self._counts[bisect_left(self.bounds, value)] += n  # the first bound >= value
        self.sum += value * n
        self.count += n

    def snapshot(self) -> dict[str, Any]:
        """buckets: the upper bounds; counts: cumulative, values <= each bound (Prometheus' `le`);
        count: all values (the +Inf bucket); sum: of all values."""
        return {
            "buckets": list(self.bounds),
            "counts": list(accumulate(self._counts[:-1])),
            "sum": self.sum,
            "count": self.count,
        }


class StageMetrics:
    """What one stage did: items in/out, drops by reason, malformed messages, latency samples and
    histograms.

    Only the owning stage thread writes; `snapshot()` may be called from any thread (a lock guards
    the sample windows and the histograms, counters are plain ints).
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
        # The same three, in seconds, since the start (snapshot()["histograms"]).
        self._histograms = {"latency": Histogram(), "wait": Histogram(), "e2e": Histogram()}
        self._t_first: float | None = None
        self._t_last: float | None = None

    def record(self, ms: float, n: int = 1) -> None:
        """`n` items finished, the work took `ms` per item."""
        now = time.monotonic()
        with self._lock:
            for _ in range(n):
                self._latency.append(ms)
            self._histograms["latency"].observe(ms / 1000, n)
            if self._t_first is None:
                self._t_first = now - ms / 1000
            self._t_last = now
        self.processed += n

    def record_wait(self, ms: float) -> None:
        with self._lock:
            self._wait.append(ms)
            self._histograms["wait"].observe(ms / 1000)

    def record_e2e(self, ms: float) -> None:
        with self._lock:
            self._e2e.append(ms)
            self._histograms["e2e"].observe(ms / 1000)

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] += n

    def snapshot(self) -> dict[str, Any]:
        """Counters; percentiles (ms) over the window: latency_ms, and wait_ms / e2e_ms once
        recorded; histograms (seconds, see Histogram.snapshot): latency, and wait / e2e once
        recorded."""
        with self._lock:
            lat = list(self._latency)
            e2e = list(self._e2e)
            wait = list(self._wait)
            histograms = {
                key: h.snapshot()
                for key, h in self._histograms.items()
                if key == "latency" or h.count
            }
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
        out["histograms"] = histograms
        return out
