"""Configs of the links that cross hosts: the inference worker pool and remote cameras. Part of
pipeline.config, which re-exports every name here. CurveConfig (keys) lives in pipeline.curve."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .config_checks import MAX_SECONDS, _in_range, _require, _short
from .curve import CurveConfig

ENCODINGS = ("jpeg", "raw")  # how frames travel on a network link


def _tcp_ok(endpoint: str) -> bool:
    return bool(re.fullmatch(r"tcp://[^\s]+:\d{1,5}", endpoint))


@dataclass(frozen=True)
class WorkersConfig:
    endpoint: str  # tcp://ADDR:PORT the hub binds; workers connect (depthstream worker --hub)
    local_worker: bool = False  # also run the configured model in the hub as one more worker
    heartbeat_s: float = 1.0  # heartbeat period, both ways (the guide's Paranoid Pirate)
    timeout_s: float = 3.0  # silence after which a worker is dead (and a worker's hub)
    wait_s: float | None = None  # no worker for this long while frames wait: exit 3; None: wait
    curve: CurveConfig = field(default_factory=CurveConfig)  # keys: secret + allow (workers' keys)

    def __post_init__(self) -> None:
        _require(_tcp_ok(self.endpoint), "endpoint",
                 f"{_short(self.endpoint)} is not tcp://ADDR:PORT")  # fmt: skip
        _in_range(self.heartbeat_s, "heartbeat_s", 0.01, 60)
        _in_range(self.timeout_s, "timeout_s", 0.05, 600)
        _require(self.timeout_s >= 2 * self.heartbeat_s, "timeout_s",
                 "must be at least twice heartbeat_s")  # fmt: skip
        _in_range(self.wait_s, "wait_s", 0, MAX_SECONDS, above=True)


@dataclass(frozen=True)
class IngestConfig:
    endpoint: str  # tcp://ADDR:PORT the hub binds for remote cameras (depthstream capture --hub)
    curve: CurveConfig = field(default_factory=CurveConfig)  # keys: secret + allow (cameras' keys)

    def __post_init__(self) -> None:
        _require(_tcp_ok(self.endpoint), "endpoint",
                 f"{_short(self.endpoint)} is not tcp://ADDR:PORT")  # fmt: skip
