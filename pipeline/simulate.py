"""The load-test engine (`--backend simulate`): no model, a synthetic depth after a fixed delay.

Like Triton's identity models it lets a deployment be sized without GPUs: a hub, its workers and
their links carry real frames and real depth maps of the input's size, and each batch takes
`ms` milliseconds as a model call would. The depth is a smooth, deterministic function of the
input (a box-blurred grey level mapped onto 0.5..max_depth), so the same frame always gives the
same depth, in any process. Selected only by name (never by backend auto); it needs no checkpoint.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

MIN_DEPTH = 0.5  # metres: the nearest depth it returns
STEP = 4  # the depth is computed at 1/STEP of the size (area average), then resized up: cheap
BLUR_FRACTION = 1 / 16  # box filter side, as a fraction of the shorter image side


class SimulatedEngine:
    """Callable: (B, 3, h, w) float32 in [0, 1] -> (B, h, w) float32 metres, `ms` per call."""

    backend = "simulate"
    device = "none (simulated)"
    input_size = None  # any model input size

    def __init__(self, ms: float, max_depth: float = 80.0) -> None:
        if not 0 <= ms <= 60_000:
            raise ValueError(f"simulate: ms must be in 0..60000, got {ms}")
        if not max_depth > MIN_DEPTH:
            raise ValueError(f"simulate: max_depth must be above {MIN_DEPTH}, got {max_depth}")
        self.ms = float(ms)
        self.max_depth = float(max_depth)

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        x = np.asarray(pixel_values, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape (B, 3, h, w), got {x.shape}")
        depth = np.empty((x.shape[0], *x.shape[2:]), dtype=np.float32)
        h, w = x.shape[2:]
        small = (max(1, w // STEP), max(1, h // STEP))
        side = max(1, round(min(h, w) * BLUR_FRACTION / STEP))
        for i, frame in enumerate(x):
            # Grey at 1/STEP size (area averages: no full-size temporaries), then blurred.
            grey = sum(cv2.resize(c, small, interpolation=cv2.INTER_AREA) for c in frame) / 3
            smooth = cv2.blur(grey, (side, side), borderType=cv2.BORDER_REFLECT)
            # smoothstep: a sigmoid-like map of [0, 1]; bright is near, dark is far
            t = np.clip(smooth, 0, 1)
            t = self.max_depth - (self.max_depth - MIN_DEPTH) * (t * t * (3 - 2 * t))
            cv2.resize(t, (w, h), dst=depth[i], interpolation=cv2.INTER_LINEAR)
        # The simulated device time: the rest of `ms` is waited out, not computed.
        rest = self.ms / 1000 - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)
        return depth

    def describe(self) -> str:
        return f"simulate ({self.ms:g} ms/batch, no model)"
