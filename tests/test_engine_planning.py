"""glpn.planning and the backend registry: options, candidates, and each backend's own checks."""

from __future__ import annotations

import pytest
import torch

from glpn import backends, hardware
from glpn.engine import EngineOptions, from_model, load
from glpn.hardware import CpuFeatures
from glpn.planning import Candidate, EngineError, default_keep, plan

CPU = torch.device("cpu")
PLAIN_CPU = CpuFeatures("test CPU without bf16", frozenset({"avx2"}))
AMX_CPU = CpuFeatures("test CPU with AMX", frozenset({"avx2", "amx_bf16", "avx512_bf16"}))
SIZE = (64, 96)


@pytest.fixture
def cpu_is(monkeypatch):
    def set_cpu(features: CpuFeatures) -> None:
        monkeypatch.setattr(hardware, "cpu_features", lambda: features)

    return set_cpu


def test_registry_lists_every_backend_module():
    for name in backends.BACKENDS:
        module = backends.module(name)
        assert callable(module.build) and callable(module.unavailable), name
    with pytest.raises(ValueError, match="unknown backend"):
        backends.module("onnx")  # aliases are resolved by canonical_name, not here
    assert backends.canonical_name("onnx") == "onnxruntime"


@pytest.mark.parametrize(
    "name,precision,input_size,message",
    [
        ("tensorrt", "fp16", SIZE, "backend='tensorrt' needs a CUDA device"),
        ("compile", "fp32", None, "backend='compile' compiles for a fixed shape"),
        ("onnxruntime", "bf16", SIZE, "backend='onnxruntime' runs fp32 graphs only"),
        ("eager", "bf16", SIZE, "precision='bf16' on CPU needs AVX512-BF16"),
        ("eager", "fp16", None, "precision='fp16' on CPU needs AVX512-FP16"),
        ("compile", "bf16", SIZE, "precision='bf16' on CPU needs AVX512-BF16"),
    ],
)
def test_each_backend_says_why_it_cannot_run(cpu_is, name, precision, input_size, message):
    cpu_is(PLAIN_CPU)
    if name == "onnxruntime":
        pytest.importorskip("onnxruntime")
    reason = backends.unavailable(name, precision, CPU, input_size)
    assert reason is not None and reason.startswith(message), reason
    assert backends.unavailable("eager", "fp32", CPU, None) is None


def test_plan_orders_and_filters_candidates(cpu_is):
    cpu_is(AMX_CPU)
    auto = EngineOptions(input_size=SIZE).checked()
    assert [c for c, _ in plan(auto, CPU)] == [
        Candidate("eager", "bf16"),
        Candidate("eager", "fp32"),
    ]
    cpu_is(PLAIN_CPU)
    assert [c for c, _ in plan(auto, CPU)] == [Candidate("eager", "fp32")]
    kept = EngineOptions(backend="eager", precision="fp32", keep_fp32=["attention"]).checked()
    assert plan(kept, CPU) == [(Candidate("eager", "fp32"), "requested")]  # none kept in fp32
    with pytest.raises(EngineError, match="precision='bf16' on CPU"):
        plan(EngineOptions(precision="bf16").checked(), CPU)
    assert default_keep("tensorrt", "fp16") == ("layer_norm",)
    assert default_keep("eager", "fp16") == default_keep("tensorrt", "fp32") == ()


def test_checked_normalises():
    opts = EngineOptions(backend="onnx", input_size=[64, 96], batch_sizes=[4, 1, 4], threads="2")
    opts = opts.checked()
    assert (opts.backend, opts.input_size, opts.batch_sizes, opts.threads) == (
        "onnxruntime",
        (64, 96),
        (1, 4),
        2,
    )
    assert EngineOptions(backend="eager", precision="fp32").explicit
    assert not EngineOptions(backend="eager").explicit


def test_options_object_and_keywords(tiny_checkpoint, one_torch_thread):
    options = EngineOptions(backend="eager", precision="fp32", input_size=SIZE, warmup=False)
    engine = load(tiny_checkpoint, options=options, batch_sizes=(2,))
    assert (engine.backend, engine.precision, engine.batch_sizes) == ("eager", "fp32", (2,))
    assert engine.warmup_seconds == 0.0
    with pytest.raises(TypeError, match="unknown engine options \\['turbo'\\]"):
        load(tiny_checkpoint, turbo=True)


def test_backend_alias_onnx(tiny_checkpoint, tmp_path, one_torch_thread):
    pytest.importorskip("onnxruntime")
    engine = load(
        tiny_checkpoint, backend="onnx", device="cpu", input_size=SIZE, cache_dir=tmp_path
    )
    assert engine.backend == "onnxruntime" and engine.precision == "fp32"


def test_non_model_is_refused_before_anything_else():
    with pytest.raises(EngineError, match="glpn.GLPNDepth"):
        from_model(torch.nn.Linear(2, 2), backend="turbo")
