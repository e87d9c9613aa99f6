"""glpn.metrics: expected values worked out by hand from the definitions, not from the code."""

import math

import numpy as np
import pytest
import torch

from glpn.gate import GATE, Gate
from glpn.metrics import DepthError, depth_error, depth_metrics, eval_mask


def test_uniform_ten_percent_overestimate():
    gt = np.array([[1.0, 2.0], [4.0, 5.0]])
    m = depth_metrics(gt * 1.1, gt, max_depth=10.0)
    # |pred - gt| / gt = 0.1 everywhere; (0.1 gt)^2 / gt = 0.01 gt; thresh = 1.1 < 1.25.
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["sq_rel"] == pytest.approx(0.01 * (1 + 2 + 4 + 5) / 4)
    assert m["rmse"] == pytest.approx(0.1 * math.sqrt((1 + 4 + 16 + 25) / 4))
    assert m["rmse_log"] == pytest.approx(math.log(1.1))
    assert m["log10"] == pytest.approx(math.log10(1.1))
    assert m["silog"] == pytest.approx(math.log(1.1) / math.sqrt(2))
    assert m["d1"] == m["d2"] == m["d3"] == 1.0


def test_thresholds_and_mixed_errors():
    gt = np.array([1.0, 2.0, 4.0, 8.0])
    pred = np.array([1.0, 3.0, 2.0, 8.0])
    m = depth_metrics(pred, gt, max_depth=10.0)
    # ratios max(gt/pred, pred/gt): 1, 1.5, 2, 1 -> below 1.25: 2 of 4; below 1.25^2 = 1.5625:
    # 3 of 4; below 1.25^3 = 1.953125: still 3 of 4 (2 is not).
    assert m["d1"] == pytest.approx(0.5)
    assert m["d2"] == pytest.approx(0.75)
    assert m["d3"] == pytest.approx(0.75)
    assert m["abs_rel"] == pytest.approx((0 + 0.5 + 0.5 + 0) / 4)
    assert m["sq_rel"] == pytest.approx((0 + 1 / 2 + 4 / 4 + 0) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4 + 0) / 4))
    dl = [0.0, math.log(1.5), math.log(0.5), 0.0]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(d * d for d in dl) / 4))
    assert m["log10"] == pytest.approx((math.log10(1.5) + math.log10(2)) / 4)
    mean_sq, mean = sum(d * d for d in dl) / 4, sum(dl) / 4
    assert m["silog"] == pytest.approx(math.sqrt(mean_sq - 0.5 * mean * mean))


def test_invalid_pixels_clamping_and_torch_input():
    gt = torch.tensor([0.0, 2.0, 50.0, 4.0])  # 0 (no ground truth) and 50 (> max_depth) are ignored
    pred = torch.tensor([7.0, float("nan"), 3.0, float("inf")])
    m = depth_metrics(pred, gt, min_depth=1e-3, max_depth=10.0)
    # NaN -> min_depth (1e-3), inf -> max_depth (10): valid pixels are (1e-3 vs 2) and (10 vs 4).
    assert m["abs_rel"] == pytest.approx(((2 - 1e-3) / 2 + 6 / 4) / 2)
    assert m["d3"] == 0.0
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        depth_metrics(np.ones(3), np.ones(4))


def test_crops():
    garg = eval_mask((100, 200), "garg")
    rows, cols = np.nonzero(garg)
    assert (rows.min(), rows.max() + 1) == (40, 99)  # int(0.408 * 100), int(0.992 * 100)
    assert (cols.min(), cols.max() + 1) == (7, 192)  # int(0.0359 * 200), int(0.964 * 200)
    eigen = eval_mask((480, 640), "eigen")
    assert eigen.sum() == (471 - 45) * (601 - 41) and eigen[45, 41] and not eigen[44, 41]
    with pytest.raises(ValueError):
        eval_mask((240, 320), "eigen")
    # A crop changes which pixels count: an error outside the Eigen crop is ignored.
    gt = np.full((480, 640), 5.0)
    pred = gt.copy()
    pred[0, 0] = 10.0
    assert depth_metrics(pred, gt, crop="eigen")["rmse"] == 0.0
    assert depth_metrics(pred, gt)["rmse"] > 0.0


def test_depth_error_and_gate():
    ref = np.array([[1.0, 2.0], [4.0, 8.0]])
    pred = ref + np.array([[0.01, -0.02], [0.0, 0.8]])
    e = depth_error(pred, ref)
    assert e.mean_abs == pytest.approx((0.01 + 0.02 + 0 + 0.8) / 4)
    assert e.max_abs == pytest.approx(0.8)
    assert e.mean_rel == pytest.approx((0.01 + 0.01 + 0 + 0.1) / 4)
    assert e.max_rel == pytest.approx(0.1)
    assert e.finite
    ok, reason = GATE.check(e)  # mean rel 3% > 1%
    assert not ok and "mean relative error" in reason
    assert Gate(max_mean_rel=0.05, max_p99_rel=0.2).check(e)[0]
    ok, reason = Gate(max_mean_rel=0.05, max_p99_rel=0.05).check(e)  # p99 ~ 9.7%
    assert not ok and "99th-percentile" in reason
    bad = depth_error(np.array([1.0, np.nan]), np.array([1.0, 1.0]))
    assert not bad.finite and not GATE.check(bad)[0]
    assert GATE.check(DepthError(0.001, 0.01, 0.001, 0.005, 0.01, True))[0]
    with pytest.raises(ValueError, match="positive"):
        depth_error(np.ones(2), np.array([1.0, 0.0]))
