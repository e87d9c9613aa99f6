"""EngineSpec: the engine factory as data, so that it can cross a process boundary."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import glpn.engine
from glpn import GLPNConfig, GLPNDepth
from glpn.synthetic import spread_init_
from pipeline import ConfigError, Pipeline, load_config
from pipeline.engine_spec import EngineSpec

EAGER = {"backend": "eager", "precision": "fp32", "device": "cpu"}  # the same numbers anywhere


def config(checkpoint="", sizes=((64, 96),), max_batch=1):
    sources = [{"uri": f"s{i}.mp4", "input_size": list(s)} for i, s in enumerate(sizes)]
    model = {"checkpoint": checkpoint, "max_batch": max_batch, **EAGER}
    return load_config({"sources": sources, "model": model})


def pixels(seed=0):
    return np.random.default_rng(seed).random((1, 3, 64, 96), dtype=np.float32)


def test_from_config_fixes_the_input_size_only_when_every_stream_shares_it():
    spec = EngineSpec.from_config(config("ckpt", max_batch=4))
    assert spec == EngineSpec(config("ckpt", max_batch=4).model, (64, 96), (1, 4), False)
    assert EngineSpec.from_config(config("ckpt", sizes=((64, 96), (32, 32)))).input_size is None
    assert EngineSpec.from_config(config("ckpt")).batch_sizes == (1,)


def test_a_checkpoint_is_required_unless_random_weights_are_asked_for():
    with pytest.raises(ConfigError, match="model.checkpoint is required"):
        EngineSpec.from_config(config())
    with pytest.raises(ConfigError, match="model.checkpoint is required"):
        Pipeline(config())  # the default engine factory
    assert EngineSpec.from_config(config(), random_weights=True).random_weights


def test_the_pipeline_default_is_the_spec_of_its_config(tiny_checkpoint):
    cfg = config(tiny_checkpoint)
    assert Pipeline(cfg).engine_factory == EngineSpec.from_config(cfg)


def test_a_pickled_spec_builds_an_equal_engine(tiny_checkpoint, one_torch_thread):
    spec = EngineSpec.from_config(config(tiny_checkpoint))
    again = pickle.loads(pickle.dumps(spec))
    assert again == spec
    a, b = spec(), again()
    for attr in ("backend", "precision", "input_size", "batch_sizes", "max_depth"):
        assert getattr(a, attr) == getattr(b, attr), attr
    assert np.array_equal(a(pixels()), b(pixels()))
    reference = glpn.engine.load(tiny_checkpoint, **EAGER, input_size=(64, 96))
    assert np.array_equal(a(pixels()), reference(pixels()))


def test_a_spec_builds_the_same_engine_in_another_process(tiny_checkpoint, one_torch_thread):
    spec = EngineSpec.from_config(config(tiny_checkpoint))
    child = textwrap.dedent("""
        import pickle, sys
        import numpy as np
        import torch
        torch.set_num_threads(1)  # as the parent (one_torch_thread): the same summation order
        spec = pickle.load(sys.stdin.buffer)
        x = np.random.default_rng(0).random((1, 3, 64, 96), dtype=np.float32)
        np.save(sys.stdout.buffer, spec()(x))
    """)
    out = subprocess.run(
        [sys.executable, "-c", child], input=pickle.dumps(spec), capture_output=True, timeout=300
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    theirs = np.load(io.BytesIO(out.stdout))
    assert np.array_equal(theirs, spec()(pixels()))


def test_random_weights_are_the_demo_model(one_torch_thread):
    """The small default preset, spread with seed 2, built in memory (never from a checkpoint)."""
    spec = pickle.loads(pickle.dumps(EngineSpec.from_config(config(), random_weights=True)))
    engine = spec()
    demo = spread_init_(GLPNDepth(GLPNConfig.preset("default")), seed=2)
    reference = glpn.engine.from_model(demo, **EAGER, input_size=(64, 96))
    assert engine.max_depth == GLPNConfig.preset("default").max_depth
    assert np.array_equal(engine(pixels()), reference(pixels()))
