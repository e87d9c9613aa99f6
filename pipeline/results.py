"""What the pipeline delivers per frame to Python code: depth in metres, view and header."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .messages import Message


@dataclass(frozen=True)
class DepthResult:
    header: dict[str, Any]  # stream, index, timestamps, source size/position, per-stage ms, ...
    depth: np.ndarray  # (H, W) float32 metres; read-only (shares the message's memory)
    view: np.ndarray | None = None  # colourised view, BGR uint8, when the pipeline makes one

    @classmethod
    def from_message(cls, msg: Message) -> DepthResult:
        return cls(msg.header, msg.arrays["depth"], msg.arrays.get("view"))

    @property
    def stream(self) -> str:
        return self.header["stream"]

    @property
    def index(self) -> int:
        return self.header["index"]

    @property
    def t_capture(self) -> float:
        """time.monotonic() when the frame was read from its source."""
        return self.header["t_mono"]

    @property
    def latency_ms(self) -> float:
        """Capture -> depth available, milliseconds."""
        return self.header.get("latency_ms", 0.0)

    @property
    def stage_ms(self) -> dict[str, float]:
        """Work time per stage (capture read, preprocess, inference batch, postprocess), ms."""
        return self.header.get("stage_ms", {})

    @property
    def wait_ms(self) -> dict[str, float]:
        """Time waited before each stage (queues, batching, newest-frame slot), ms."""
        return self.header.get("wait_ms", {})
