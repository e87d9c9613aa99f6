"""The accuracy gate: what a reduced-precision engine must meet against fp32 eager, checked at load.

`Gate` states the bounds (GATE: mean relative error < 1%, 99th percentile < 5%, finite, and an
output that is not quantized);
`LoadGate` runs the check glpn.engine does on each candidate: the engine's depth on structured
synthetic frames against the source model in fp32 eager on the same device, TF32 off (the
reference is computed once per load and shared by every candidate).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .metrics import DepthError, depth_error
from .synthetic import synthetic_image

DEFAULT_SIZE = (256, 320)  # frames of an engine built for any size (input_size=None)


def distinct_ratio(depth: np.ndarray, reference: np.ndarray) -> float:
    """Distinct depth values of `depth` over those of the fp32 `reference` on the same frames.

    About 1 for a continuous output (the depth is a smooth function of a structured image: almost
    every pixel has its own value). An output rounded to a grid has at most range / step values:
    bf16 keeps 8 significant bits (128 values per octave), fp16 11, so at 256x320 a quantized
    output has ~1-5% of the reference's. The relative errors miss it: each rounding is within
    half a step (0.2% in bf16), but far depth comes out in visible bands.
    """
    ref = max(int(np.unique(reference).size), 1)
    return int(np.unique(depth).size) / ref


@dataclass(frozen=True)
class Gate:
    """What a reduced-precision backend must meet against fp32 eager for auto to use it."""

    max_mean_rel: float = 0.01  # mean relative error below 1%
    max_p99_rel: float = 0.05  # and no more than 1% of the pixels off by 5% or more
    # distinct depth values at least half the fp32 reference's: the output is not quantized
    min_distinct_ratio: float = 0.5

    def check(self, err: DepthError, distinct: float | None = None) -> tuple[bool, str]:
        """(passes, reason): the reason names the first bound that is exceeded. `distinct` is
        distinct_ratio(depth, reference); None when not measured (the error alone is checked)."""
        if not err.finite:
            return False, "non-finite depth (NaN or inf)"
        if err.mean_rel >= self.max_mean_rel:
            return False, (
                f"mean relative error {100 * err.mean_rel:.2f}% >= {100 * self.max_mean_rel:g}%"
            )
        if err.p99_rel >= self.max_p99_rel:
            return False, (
                f"99th-percentile relative error {100 * err.p99_rel:.2f}% >= "
                f"{100 * self.max_p99_rel:g}%"
            )
        if distinct is not None and distinct < self.min_distinct_ratio:
            return False, (
                f"quantized output: {100 * distinct:.1f}% as many distinct depth values as fp32 "
                f"< {100 * self.min_distinct_ratio:g}%"
            )
        shown = "" if distinct is None else f", distinct values {100 * distinct:.0f}% of fp32's"
        return True, f"within gate ({err}{shown})"

    def describe(self) -> str:
        return (
            f"mean relative error < {100 * self.max_mean_rel:g}% and 99th-percentile relative "
            f"error < {100 * self.max_p99_rel:g}% against fp32 eager, finite everywhere, at least "
            f"{100 * self.min_distinct_ratio:g}% as many distinct depth values as fp32 (not "
            "quantized)"
        )


GATE = Gate()


@dataclass(frozen=True)
class GateResult:
    passed: bool  # the engine met the gate
    error: DepthError  # its error against fp32 eager
    reason: str  # Gate.check's verdict: the bound exceeded, or "within gate (...)"
    distinct_ratio: float = 1.0  # distinct depth values over fp32's (distinct_ratio)

    def __str__(self) -> str:
        return f"{self.error}, distinct values {100 * self.distinct_ratio:.1f}% of fp32's"


class DepthFn(Protocol):
    def __call__(self, pixel_values: torch.Tensor) -> np.ndarray: ...


def gate_frames(input_size: tuple[int, int] | None, batch: int) -> torch.Tensor:
    """(batch, 3, h, w) float32 in [0, 1]: structured synthetic scenes (flat ones hide errors)."""
    h, w = input_size or DEFAULT_SIZE
    frames = np.stack([synthetic_image(h, w, seed=11 + i) for i in range(batch)])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@torch.inference_mode()
def reference_depth(model: nn.Module, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """fp32 eager on the engine's device, TF32 off: what every backend is gated against."""
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = copy.deepcopy(model).float().to(device).eval()
        return ref(x.to(device)).float().cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


class LoadGate:
    """The gate as glpn.engine runs it on each candidate of one load."""

    def __init__(
        self,
        model: nn.Module,
        gate: Gate,
        *,
        input_size: tuple[int, int] | None,
        batch: int,
        device: torch.device,
    ) -> None:
        self.model, self.gate, self.device = model, gate, device
        self.frames = gate_frames(input_size, batch)
        self._reference: np.ndarray | None = None  # computed at the first check

    def check(self, engine: DepthFn) -> GateResult:
        if self._reference is None:
            self._reference = reference_depth(self.model, self.frames, self.device)
        depth = engine(self.frames)
        err = depth_error(depth, self._reference)
        distinct = distinct_ratio(np.asarray(depth), self._reference)
        passed, verdict = self.gate.check(err, distinct)
        return GateResult(passed, err, verdict, distinct)
