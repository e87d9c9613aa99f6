"""glpn.metrics: expected values worked out by hand from the definitions, not from the code;
pipeline.metrics: the stages' latency histograms counted against numpy's histogram."""

import math

import numpy as np
import pytest
import torch

from glpn.gate import GATE, Gate
from glpn.metrics import DepthError, depth_error, depth_metrics, eval_mask
from pipeline.metrics import Histogram, StageMetrics

# The documented bucket bounds (seconds, README), then +Inf.
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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


def numpy_cumulative(seconds: np.ndarray) -> list[int]:
    """Values <= each bound: np.histogram's bins are [a, b) (the last [a, b]), Prometheus' are
    (a, b], so count the negated values in the bins [-b, -a) from the top."""
    edges = [-np.inf, *(-b for b in reversed(BOUNDS)), np.inf]  # [-inf, -60), ..., [-0.0005, inf]
    per_bin, _ = np.histogram(-seconds, bins=edges)
    # per_bin[0] counts values above 60 s; per_bin[k] values in (BOUNDS[-k-1], BOUNDS[-k]].
    return np.cumsum(per_bin[::-1])[: len(BOUNDS)].tolist()


def test_stage_histograms_count_every_latency_like_numpy():
    rng = np.random.default_rng(14)
    # Log-uniform from 0.01 ms to 200 s: every bucket gets values, some go past 60 s; plus each
    # bound exactly (a bucket holds its bound) and a few zero waits.
    spread = np.exp(rng.uniform(np.log(0.01), np.log(200_000), 2000))
    latency = np.concatenate([spread, np.asarray(BOUNDS) * 1000])
    wait = np.concatenate([spread[::-1] / 7, np.zeros(5)])
    e2e = spread[:300] * 3
    m = StageMetrics("stage", window=16)  # the histograms keep everything, the window does not
    snap = m.snapshot()
    assert set(snap["histograms"]) == {"latency"}  # wait and e2e only once recorded
    assert snap["histograms"]["latency"]["count"] == 0
    assert snap["histograms"]["latency"]["counts"] == [0] * len(BOUNDS)
    for ms in latency:
        m.record(float(ms))
    m.record(3.0, n=4)  # a batch of 4: 3 ms each
    for ms in wait:
        m.record_wait(float(ms))
    for ms in e2e:
        m.record_e2e(float(ms))

    snap = m.snapshot()
    hist = snap["histograms"]
    latency = np.concatenate([latency, [3.0] * 4])
    for key, ms in (("latency", latency), ("wait", wait), ("e2e", e2e)):
        h = hist[key]
        seconds = ms / 1000
        assert h["buckets"] == list(BOUNDS), key
        assert h["counts"] == numpy_cumulative(seconds), key
        assert h["count"] == len(ms), key
        assert h["sum"] == pytest.approx(seconds.sum(), rel=1e-12), key
    assert hist["latency"]["count"] == snap["processed"]
    assert hist["latency"]["counts"][-1] < snap["processed"]  # some took longer than 60 s
    # The window's percentiles are still there, over the last 16 items only.
    for key, ms in (("latency_ms", latency), ("wait_ms", wait), ("e2e_ms", e2e)):
        assert snap[key]["max"] == round(ms[-16:].max(), 3), key


def test_a_histogram_bucket_holds_values_up_to_its_bound():
    h = Histogram((0.001, 0.01))
    for value in (-1.0, 0.0, 0.001, 0.0010001, 0.01, 0.02):
        h.observe(value)
    h.observe(0.005, n=3)
    snap = h.snapshot()
    assert snap["counts"] == [3, 8]  # <= 1 ms: -1, 0, 0.001; <= 10 ms: and 0.0010001, 0.01, 3 x
    assert snap["count"] == 9  # and 0.02 (+Inf)
    assert snap["sum"] == pytest.approx(-1 + 0.001 + 0.0010001 + 0.01 + 0.02 + 3 * 0.005)
    with pytest.raises(ValueError, match="increase"):
        Histogram((0.01, 0.001))
