"""The load-test engine (`--backend simulate`): a smooth, deterministic synthetic depth of the
input's size after a fixed delay, picked only by name, needing no checkpoint."""

from __future__ import annotations

import glob
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest

from glpn.testing import write_clip
from pipeline.config import Config, ModelConfig, SourceConfig
from pipeline.engine_spec import EngineSpec
from pipeline.simulate import MIN_DEPTH, SimulatedEngine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixels(seed: int, b: int = 2, h: int = 96, w: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).random((b, 3, h, w), dtype=np.float32)


def test_shape_range_and_determinism():
    x = pixels(0)
    depth = SimulatedEngine(0, max_depth=10.0)(x)
    assert depth.shape == (2, 96, 128) and depth.dtype == np.float32
    assert MIN_DEPTH <= depth.min() and depth.max() <= 10.0
    again = SimulatedEngine(0, max_depth=10.0)(x.copy())  # another instance, same input
    np.testing.assert_array_equal(depth, again)
    # It follows the input: another image, another depth; a brighter image is nearer.
    assert not np.array_equal(depth, SimulatedEngine(0, max_depth=10.0)(pixels(1)))
    dark = SimulatedEngine(0)(np.full((1, 3, 64, 64), 0.1, np.float32))
    bright = SimulatedEngine(0)(np.full((1, 3, 64, 64), 0.9, np.float32))
    assert bright.mean() < dark.mean()
    # Mid grey sits half way on the smoothstep: every pixel written, none left uninitialised.
    mid = SimulatedEngine(0, max_depth=80.5)(np.full((3, 3, 480, 640), 0.5, np.float32))
    np.testing.assert_allclose(mid, 40.5, rtol=1e-5)


def test_depth_is_smooth():
    """Noise in, a smooth map out: neighbouring depths differ far less than neighbouring
    pixels' share of the range would."""
    depth = SimulatedEngine(0, max_depth=80.0)(pixels(2, b=1, h=128, w=160))[0]
    grey = pixels(2, b=1, h=128, w=160)[0].mean(0) * 80.0
    step = np.abs(np.diff(depth, axis=1)).mean()
    assert step < 0.05 * np.abs(np.diff(grey, axis=1)).mean()


def test_each_call_takes_at_least_ms():
    engine = SimulatedEngine(30)
    engine(pixels(0))  # first call: cv2 and numpy warm up
    for _ in range(3):
        t0 = time.perf_counter()
        engine(pixels(0))
        assert time.perf_counter() - t0 >= 0.030


def test_compute_is_cheap_at_480x640():
    engine, x = SimulatedEngine(0), pixels(0, b=1, h=480, w=640)
    engine(x)
    t0 = time.perf_counter()
    for _ in range(20):
        engine(x)
    assert (time.perf_counter() - t0) / 20 < 0.010  # ~0.2 ms measured; bounded for busy CI


def test_describe_and_pickle():
    engine = SimulatedEngine(40)
    assert engine.describe() == "simulate (40 ms/batch, no model)"
    copy = pickle.loads(pickle.dumps(engine))
    assert copy.describe() == engine.describe() and copy.max_depth == engine.max_depth
    with pytest.raises(ValueError):
        SimulatedEngine(-1)


def test_engine_spec_selects_it_without_a_checkpoint():
    config = Config(
        sources=(SourceConfig(uri="x.mp4"),), model=ModelConfig(backend="simulate", simulate_ms=7)
    )
    spec = EngineSpec.from_config(config)  # no ConfigError: no checkpoint needed
    engine = pickle.loads(pickle.dumps(spec))()
    assert isinstance(engine, SimulatedEngine) and engine.ms == 7


def test_cli_runs_without_a_checkpoint(tmp_path):
    clip = write_clip(tmp_path / "clip.avi", 5, 64, 96)
    out = tmp_path / "depth"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), "--backend", "simulate",
         "--simulate-ms", "5", "--source", clip, "--save-depth", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM" not in proc.stderr  # no random-weights warning: there is no model
    files = sorted(glob.glob(str(out / "*.npy")))
    assert [os.path.basename(f) for f in files] == [f"{i:06d}.npy" for i in range(5)]
    depth = np.load(files[0])
    assert depth.shape == (64, 96) and depth.dtype == np.float32
    assert MIN_DEPTH <= depth.min() and depth.max() <= 80.0
