"""The result of a run: outcome, frames per stream, end-to-end latency and per-stage metrics.

The headline fps is over the running time only: start-up (building the engine, which may mean
compiling it for minutes) would otherwise make a fast run look slow. Start-up is shown apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Summary:
    """What a run did. `stages` holds each stage's metrics snapshot (see StageMetrics.snapshot)."""

    outcome: str  # running | finished (every source ended) | stopped | failed
    stopped_by: str | None  # stop() | SIGINT | SIGTERM | window | None
    duration_s: float  # start() to the end, start-up included
    frames: dict[str, int]  # stream id -> frames delivered to the sinks
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    e2e_ms: dict[str, float] = field(default_factory=dict)  # capture -> depth, p50/p95/max
    engine: str = ""  # engine.describe()
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # what the sinks wrote: label -> path
    # start() until every stage was ready (engine built and warmed up, sockets bound): no frame is
    # read before then. All of duration_s when the run ended while starting.
    startup_s: float = 0.0
    # Inference workers (config.workers): name, host, device, engine, state, frames, batches,
    # failures, latency_ms (hub: batch sent -> result), engine_ms; see pipeline.pool_workers.
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def running_s(self) -> float:
        """Seconds frames were flowing: the run without its start-up."""
        return round(max(0.0, self.duration_s - self.startup_s), 3)

    @property
    def fps(self) -> float:
        """Frames delivered per second of running time (start-up excluded)."""
        running = self.running_s
        return sum(self.frames.values()) / running if running > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "stopped_by": self.stopped_by,
            "duration_s": self.duration_s,
            "startup_s": self.startup_s,
            "running_s": self.running_s,
            "fps": round(self.fps, 3),
            "frames": self.frames,
            "e2e_ms": self.e2e_ms,
            "engine": self.engine,
            "error": self.error,
            "outputs": self.outputs,
            "stages": self.stages,
            "workers": self.workers,
        }

    def format(self) -> str:
        """A table: one row per stage."""
        total = sum(self.frames.values())
        lines = [
            f"depthstream {self.outcome}"
            + (f" ({self.stopped_by})" if self.stopped_by else "")
            + f": {total} frames in {self.running_s:.1f} s ({self.fps:.1f} fps), "
            f"start-up {self.startup_s:.1f} s, engine: {self.engine}",
            f"end-to-end capture->depth ms: p50 {self.e2e_ms.get('p50', 0):.1f}  "
            f"p95 {self.e2e_ms.get('p95', 0):.1f}  max {self.e2e_ms.get('max', 0):.1f}",
            f"{'stage':<22}{'items':>8}{'fps':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}"
            f"{'wait p95':>10}{'queue':>7}{'drops':>7}{'bad':>5}",
        ]
        for name, s in self.stages.items():
            lat = s["latency_ms"]
            wait = s.get("wait_ms", {}).get("p95")
            lines.append(
                f"{name:<22}{s['processed']:>8}{s['fps']:>9.1f}{lat['p50']:>9.2f}{lat['p95']:>9.2f}"
                f"{lat['max']:>9.2f}{'-' if wait is None else f'{wait:.2f}':>10}"
                f"{s.get('queue', 0):>7}{s['dropped']:>7}{s['malformed']:>5}"
            )
        if self.workers:
            lines.append(f"{'worker':<22}{'state':>7}{'frames':>8}{'batches':>8}{'fail':>5}"
                         f"{'p50 ms':>9}{'p95 ms':>9}  device, engine")  # fmt: skip
        for w in self.workers:
            lat = w["latency_ms"]
            lines.append(
                f"{w['name'][:21]:<22}{w['state']:>7}{w['frames']:>8}{w['batches']:>8}"
                f"{w['failures']:>5}{lat['p50']:>9.2f}{lat['p95']:>9.2f}  "
                f"{w['device']}, {w['engine']}"
            )
        gauges = self.stages.get("sink", {}).get("gauges", {})
        if "subscribers" in gauges:
            # A publisher cannot know what a subscriber missed: that is not in the drops above.
            lines.append(
                f"subscribers: {gauges['subscribers']} at the end, peak "
                f"{gauges.get('subscribers_peak', 0)} (frames a subscriber missed are counted "
                "there: DepthSubscriber.lost)"
            )
        return "\n".join(lines)
