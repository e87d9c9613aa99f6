"""Flicker control (postprocess.temporal): the filter on known inputs, then in a real pipeline and
through the command line, where its output must be the filter applied to the unfiltered run."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pipeline_helpers import eager_factory, load_engine, read_video, reference_depth
from test_cli import EXACT, run_cli

from glpn.synthetic import synthetic_image
from glpn.testing import write_clip
from pipeline import ConfigError, Pipeline, cli
from pipeline.config import Config, PostprocessConfig, SourceConfig, TemporalConfig
from pipeline.temporal import TemporalFilter

H, W = 60, 80


def scene(seed: int = 0) -> np.ndarray:
    """A textured static depth map, 2..5 m."""
    img = synthetic_image(H, W, seed=seed).astype(np.float32).mean(axis=2)
    return 2.0 + 3.0 * img / 255.0


def test_static_noise_variance_falls_by_alpha_over_two_minus_alpha():
    rng = np.random.default_rng(0)
    gt = np.full((120, 160), 3.0, np.float32)
    for alpha in (0.2, 0.4, 0.7):
        f = TemporalFilter(TemporalConfig(alpha=alpha, reset=0.1))
        raw, out = [], []
        for _ in range(400):  # 1% noise: far below the 10% reset, nothing resets
            d = (gt * (1 + 0.01 * rng.standard_normal(gt.shape))).astype(np.float32)
            raw.append(d)
            out.append(f(d))
        ratio = np.stack(out[50:]).var(axis=0).mean() / np.stack(raw[50:]).var(axis=0).mean()
        assert ratio == pytest.approx(alpha / (2 - alpha), rel=0.08), alpha  # EMA of white noise


def test_change_beyond_the_threshold_is_taken_at_once_and_a_small_one_is_averaged():
    f = TemporalFilter(TemporalConfig(alpha=0.4, reset=0.1))
    base = scene()
    f(base)
    moved = base.copy()
    moved[10:30, 10:30] *= 0.5  # an object arrives: 50% nearer
    moved[40:50, 50:70] *= 1.05  # 5%: below the threshold
    out = f(moved)
    np.testing.assert_array_equal(out[10:30, 10:30], moved[10:30, 10:30])  # no ghost
    expected_small = base[40:50, 50:70] * np.float32(1 + 0.4 * 0.05)
    np.testing.assert_allclose(out[40:50, 50:70], expected_small, rtol=1e-5)
    out = f(base)  # it leaves: the background is back at once
    np.testing.assert_array_equal(out[10:30, 10:30], base[10:30, 10:30])


@pytest.mark.parametrize("factor", [1.05, 0.93, 1.5])
def test_a_global_scale_change_is_followed_without_blur(factor):
    f = TemporalFilter(TemporalConfig(alpha=0.4, reset=0.1))
    base = scene()
    f(base)
    f(base)
    new = (base * np.float32(factor)).astype(np.float32)
    new[5:20, 5:20] = 1.0  # and a moving object, which must not pull the scale
    out = f(new)
    np.testing.assert_allclose(out, new, rtol=1e-5)  # not between the old scale and the new
    # without the alignment a 5% change would be averaged: out = base * (1 + 0.4 * 0.05)
    assert f.scale(new, base) == pytest.approx(factor, rel=1e-5)


def test_new_size_and_reset_start_over_and_invalid_pixels_pass_through():
    f = TemporalFilter(TemporalConfig())
    a, b = scene(0), scene(1)[:50, :70]
    f(a)
    np.testing.assert_array_equal(f(b), b)  # another size: no state carried over
    np.testing.assert_array_equal(f(a), a)  # and back: the old state was forgotten
    f.reset()
    np.testing.assert_array_equal(f(a * 1.02), (a * 1.02).astype(np.float32))
    holes = a.copy()
    holes[0, :5] = [np.nan, 0.0, -1.0, np.inf, 0.0]
    out = f(holes)
    np.testing.assert_array_equal(out[0, :5], holes[0, :5])
    after = f(a)  # where the average had no depth, the new value is taken
    np.testing.assert_array_equal(after[0, :5], a[0, :5])
    assert out.dtype == np.float32 and np.isfinite(after).all()


def test_config_ranges_and_default_off():
    assert PostprocessConfig().temporal is None
    for bad in ({"alpha": 0.0}, {"alpha": 1.5}, {"reset": 0.0}, {"alpha": float("nan")}):
        with pytest.raises(ConfigError):
            TemporalConfig(**bad)
    TemporalConfig(alpha=1.0, reset=10.0)


def test_command_line_stabilize_keeps_the_files_keys(tmp_path):
    parse = cli.build_parser().parse_args
    config = cli.build_config(parse(["--source", "x.avi", "--stabilize"]))
    assert config.postprocess.temporal == TemporalConfig()
    path = tmp_path / "c.yaml"
    path.write_text("sources: [{uri: x.avi}]\npostprocess: {temporal: {alpha: 0.7}}\n")
    config = cli.build_config(parse(["--config", str(path), "--stabilize"]))
    assert config.postprocess.temporal == TemporalConfig(alpha=0.7)
    config = cli.build_config(parse(["--source", "x.avi"]))
    assert config.postprocess.temporal is None
    assert Config(sources=(SourceConfig("x.avi"),)).postprocess.temporal is None


def box_on_static_scene(i: int, height: int, width: int) -> np.ndarray:
    """A static textured scene (BGR) and a white box moving 6 px per frame."""
    img = np.ascontiguousarray(synthetic_image(height, width, seed=3)[..., ::-1])
    x = 6 * i
    img[height // 3 : height // 3 + 24, x : x + 24] = 255
    return img


@pytest.fixture(scope="module")
def box_clip(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("temporal") / "box.avi")
    return write_clip(path, 8, 96, 128, fps=10.0, frame=box_on_static_scene)  # MJPG: it flickers


def run(clip: str, checkpoint: str, temporal: dict | None) -> list[np.ndarray]:
    config = {
        "sources": [{"uri": clip, "id": "cam"}],
        "model": {"checkpoint": checkpoint},
        "postprocess": {"temporal": temporal, "view": True},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(config, engine_factory=eager_factory(checkpoint))
    results = list(pipe)
    assert pipe.summary().outcome == "finished"
    assert [r.index for r in results] == list(range(8))
    return [np.array(r.depth) for r in results]


def test_pipeline_output_is_the_filter_applied_to_the_raw_run(box_clip, tiny_checkpoint):
    raw = run(box_clip, tiny_checkpoint, None)
    expected = reference_depth(load_engine(tiny_checkpoint), read_video(box_clip))
    for got, ref in zip(raw, expected, strict=True):  # off: exactly what the model gives
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    stabilised = run(box_clip, tiny_checkpoint, {"alpha": 0.5, "reset": 0.2})
    f = TemporalFilter(TemporalConfig(alpha=0.5, reset=0.2))
    filtered = [f(d) for d in raw]
    np.testing.assert_array_equal(stabilised[0], raw[0])  # the first frame has no past
    for got, want in zip(stabilised, filtered, strict=True):
        np.testing.assert_array_equal(got, want)
    assert max(np.abs(s - r).max() for s, r in zip(stabilised[1:], raw[1:])) > 1e-3


def test_cli_stabilize_writes_the_filtered_depth(box_clip, tiny_checkpoint, tmp_path):
    out = tmp_path / "depth"
    args = ("--source", box_clip, "--checkpoint", tiny_checkpoint, *EXACT)
    proc = run_cli(*args, "--save-depth", str(out), "--stabilize")
    assert proc.returncode == 0, proc.stderr
    raw = reference_depth(load_engine(tiny_checkpoint), read_video(box_clip))
    f = TemporalFilter(TemporalConfig())
    names = sorted(os.listdir(out))
    assert len(names) == len(raw) == 8
    changed = 0.0
    for name, ref in zip(names, raw, strict=True):
        want = f(ref)
        np.testing.assert_allclose(np.load(out / name), want, rtol=0, atol=1e-3, err_msg=name)
        changed = max(changed, float(np.abs(want - ref).max()))
    assert changed > 0.01  # the unfiltered depth would not pass
