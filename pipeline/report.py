"""What a running pipeline reports: per-stage metrics with queue depths, the status line, the
periodic metrics log line. Stage order and queues come from the Topology, nothing else."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .metrics import percentiles
from .topology import Topology

log = logging.getLogger(__name__)


def stage_metrics(topology: Topology, stages: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each launched stage's metrics snapshot, in flow order, with `queue`: messages its upstream
    stages sent to it and it has not taken yet, plus what it holds inside (its backlog)."""
    snaps = {name: stages[name].metrics.snapshot() for name in topology.names() if name in stages}
    for name, snap in snaps.items():
        sent = sum(snaps[u]["sent"] for u in topology.upstream(name) if u in snaps)
        snap["queue"] = max(0, sent - snap["received"]) + snap["backlog"]
        workers = getattr(stages[name], "workers_snapshot", None)  # the worker pool's
        if workers is not None:
            snap["workers"] = workers()
    return snaps


def status_line(metrics: Mapping[str, dict[str, Any]]) -> str:
    """One line: output fps, end-to-end latency, per-stage p95 / queue / drops."""
    sink = metrics.get("sink", {})
    e2e = sink.get("e2e_ms", percentiles([]))
    parts = [
        f"out {sink.get('fps', 0):.1f} fps",
        f"e2e p50 {e2e['p50']:.0f} p95 {e2e['p95']:.0f} ms",
    ]
    for name, s in metrics.items():
        item = f"{name} p95 {s['latency_ms']['p95']:.1f}ms q{s['queue']}"
        if s["dropped"]:
            item += f" drop {s['dropped']}"
        if s["malformed"]:
            item += f" bad {s['malformed']}"
        parts.append(item)
        if s.get("gauges", {}).get("waiting_for_workers"):
            parts.append("waiting for workers (none connected)")
        for w in s.get("workers", []):
            if w["state"] in ("ready", "busy"):
                parts.append(f"{w['name']} {w['state']} {w['frames']}f "
                             f"p95 {w['latency_ms']['p95']:.0f}ms")  # fmt: skip
    return " | ".join(parts)


class MetricsLog:
    """Logs `line()` every `interval_s` seconds on a daemon thread, until stop()."""

    def __init__(self, line: Callable[[], str], interval_s: float) -> None:
        self.line = line
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="depthstream-metrics", daemon=True)

    def start(self) -> MetricsLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            log.info("depthstream: %s", self.line())
