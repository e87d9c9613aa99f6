"""Depth metrics: the GLPN evaluation's, and a backend's error against a reference, with a gate.

`depth_metrics(pred, gt)` follows GLPDepth's `eval_depth` (Kim et al. 2022; the usual Eigen et al.
set): over the valid pixels (gt in (min_depth, max_depth), optional crop), with
thresh = max(gt / pred, pred / gt):

    d1, d2, d3   fraction of pixels with thresh < 1.25, 1.25^2, 1.25^3
    abs_rel      mean |pred - gt| / gt
    sq_rel       mean (pred - gt)^2 / gt
    rmse         sqrt(mean (pred - gt)^2)                 metres
    rmse_log     sqrt(mean (ln pred - ln gt)^2)
    log10        mean |log10 pred - log10 gt|
    silog        sqrt(mean(dl^2) - 0.5 mean(dl)^2), dl = ln pred - ln gt

Predictions are clamped to [min_depth, max_depth] first and NaN/inf replaced as GLPDepth does.

`depth_error(pred, ref)` scores a backend against fp32 eager on the same frames; glpn/gate.py
states what `auto` accepts (Gate, GATE) and runs that check when an engine is loaded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

# Eval crops of the GLPN paper's protocol: fractions of the ground truth's height and width.
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # KITTI (Garg et al.)
EIGEN_CROP_NYU = (45, 471, 41, 601)  # NYU v2 at 480x640, in pixels (rows, then columns)


def _to_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def eval_mask(shape: tuple[int, int], crop: str | None) -> np.ndarray:
    """Boolean (H, W) mask of an evaluation crop: None, "garg" (KITTI) or "eigen" (NYU 480x640)."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    if crop is None:
        mask[:] = True
    elif crop == "garg":
        t, b, left, right = GARG_CROP
        mask[int(t * h) : int(b * h), int(left * w) : int(right * w)] = True
    elif crop == "eigen":
        if (h, w) != (480, 640):
            raise ValueError(f"the Eigen NYU crop is defined for 480x640 ground truth, got {h}x{w}")
        t, b, left, right = EIGEN_CROP_NYU
        mask[t:b, left:right] = True
    else:
        raise ValueError(f"unknown crop {crop!r}; use None, 'garg' or 'eigen'")
    return mask


def depth_metrics(
    pred: np.ndarray | torch.Tensor,
    gt: np.ndarray | torch.Tensor,
    *,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    crop: str | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Standard depth metrics of `pred` against ground truth `gt` (same shape, metres).

    Pixels count when min_depth < gt < max_depth, inside `crop` (applied to the last two axes) and
    inside `mask` if given. Raises ValueError when no pixel is valid.
    """
    p, g = _to_numpy(pred), _to_numpy(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    p = np.where(np.isinf(p), max_depth, p)
    p = np.where(np.isnan(p), min_depth, p)
    p = np.clip(p, min_depth, max_depth)
    valid = (g > min_depth) & (g < max_depth)
    if crop is not None:
        valid &= eval_mask(g.shape[-2:], crop)
    if mask is not None:
        valid &= np.asarray(mask, dtype=bool)
    if not valid.any():
        raise ValueError("no valid ground-truth pixels (check min_depth, max_depth, crop and mask)")
    p, g = p[valid], g[valid]
    thresh = np.maximum(g / p, p / g)
    diff = p - g
    dlog = np.log(p) - np.log(g)
    return {
        "d1": float(np.mean(thresh < 1.25)),
        "d2": float(np.mean(thresh < 1.25**2)),
        "d3": float(np.mean(thresh < 1.25**3)),
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean(dlog**2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "silog": float(np.sqrt(max(np.mean(dlog**2) - 0.5 * np.mean(dlog) ** 2, 0.0))),
    }


@dataclass(frozen=True)
class DepthError:
    """Error of a backend's depth against a reference (fp32 eager) on the same frames."""

    mean_abs: float  # metres
    max_abs: float  # metres
    mean_rel: float  # mean |d - ref| / ref
    p99_rel: float  # 99th percentile of |d - ref| / ref
    max_rel: float  # max |d - ref| / ref
    finite: bool  # False if the backend produced NaN or inf anywhere

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"mean rel {100 * self.mean_rel:.3g}%, p99 rel {100 * self.p99_rel:.3g}%, "
            f"mean abs {self.mean_abs:.3g} m, max abs {self.max_abs:.3g} m"
        )


def depth_error(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> DepthError:
    """Absolute (metres) and relative error of `pred` against `ref`; ref must be > 0 (GLPN's is)."""
    p, r = _to_numpy(pred), _to_numpy(ref)
    if p.shape != r.shape:
        raise ValueError(f"shape {p.shape} differs from the reference's {r.shape}")
    if not (r > 0).all():
        raise ValueError("the reference depth must be positive everywhere")
    finite = bool(np.isfinite(p).all())
    if not finite:
        return DepthError(math.inf, math.inf, math.inf, math.inf, math.inf, False)
    err = np.abs(p - r)
    rel = err / r
    return DepthError(
        mean_abs=float(err.mean()),
        max_abs=float(err.max()),
        mean_rel=float(rel.mean()),
        p99_rel=float(np.percentile(rel, 99)),
        max_rel=float(rel.max()),
        finite=True,
    )
