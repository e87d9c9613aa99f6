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
    points: np.ndarray | None = None  # (N, 3) float32 x, y, z metres (optical frame), if computed
    points_rgb: np.ndarray | None = None  # (N, 3) uint8 RGB of each point, with colour
    # the input frame as captured, BGR uint8 (H, W, 3) at the source size, only when an output
    # records it (outputs.record / outputs.rerun image: input); not in arrays()
    image: np.ndarray | None = None

    @classmethod
    def from_message(cls, msg: Message) -> DepthResult:
        a, cloud = msg.arrays, msg.header.get("points")
        points, rgb = a.get("points"), a.get("points_rgb")
        if points is None and isinstance(cloud, dict) and cloud.get("count") == 0:
            points = np.empty((0, 3), np.float32)  # no valid pixel: a message has no empty arrays
            rgb = np.empty((0, 3), np.uint8) if cloud.get("colour") else None
        return cls(msg.header, a["depth"], a.get("view"), points, rgb, a.get("image"))

    def arrays(self) -> dict[str, np.ndarray]:
        """Its arrays by message name (depth, view, points, points_rgb), those it has."""
        named = {"depth": self.depth, "view": self.view, "points": self.points,
                 "points_rgb": self.points_rgb}  # fmt: skip
        return {k: v for k, v in named.items() if v is not None and v.size}

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
