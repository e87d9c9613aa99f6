"""glpn.engine: the load/call contract, the auto choice with its accuracy gate, and clear errors."""

import logging
import warnings

import numpy as np
import pytest
import torch

from glpn import GLPNDepth, hardware
from glpn.backends import Runner
from glpn.engine import Candidate, Engine, EngineError, from_model, load
from glpn.gate import Gate
from glpn.hardware import CpuFeatures
from glpn.metrics import depth_error

SIZE = (64, 96)
PLAIN_CPU = CpuFeatures("test CPU without bf16", frozenset({"avx2"}))
AMX_CPU = CpuFeatures("test CPU with AMX", frozenset({"avx2", "amx_bf16", "avx512_bf16"}))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> GLPNDepth:
    return GLPNDepth.from_pretrained(tiny_checkpoint)


@pytest.fixture
def cpu_is(monkeypatch):
    """Make the engine's policy see a given CPU (the decision logic is under test, not the CPU):
    planning and the backends' `unavailable` look hardware.cpu_features up at call time."""

    def set_cpu(features: CpuFeatures) -> None:
        monkeypatch.setattr(hardware, "cpu_features", lambda: features)

    return set_cpu


def _frames(b: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((b, 3, *SIZE), dtype=np.float32)


def _reference(model: GLPNDepth, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _assert_matches_reference(engine: Engine, depth: np.ndarray, ref: np.ndarray) -> None:
    """Each precision held to its own tolerance: fp32 agrees to 1e-4, a reduced precision (which
    auto picks on CPUs with native bf16) only has to meet the accuracy gate it was chosen by."""
    if engine.precision == "fp32":
        np.testing.assert_allclose(depth, ref, rtol=1e-4, atol=1e-4)
    else:
        passed, reason = Gate().check(depth_error(depth, ref))
        assert passed, f"{engine.precision}: {reason}"


@pytest.mark.parametrize("cpu", ["this CPU", "CPU without bf16"])
def test_load_contract(tiny_checkpoint, model, cpu, cpu_is):
    """load() with precision auto, on whatever CPU runs the suite (AVX2-only, AVX-512 BF16, AMX)
    and on one made to look plain: auto's choice is checked at its own precision."""
    if cpu != "this CPU":
        cpu_is(PLAIN_CPU)
    engine = load(tiny_checkpoint, device="cpu", input_size=SIZE, batch_sizes=(1, 2))
    if cpu != "this CPU" or not hardware.cpu_features().native_bf16:
        assert engine.precision == "fp32"  # nothing else is fast on a CPU without native bf16
    x = _frames(2)
    depth = engine(x)
    assert isinstance(depth, np.ndarray) and depth.dtype == np.float32 and depth.shape == (2, *SIZE)
    _assert_matches_reference(engine, depth, _reference(model, x))
    np.testing.assert_array_equal(engine(torch.from_numpy(x)), depth)  # tensors work too
    frozen = x.copy()
    frozen.setflags(write=False)  # e.g. a view of a ZeroMQ message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(engine(frozen), depth)
    assert engine.max_depth == 10.0 and engine.device == "cpu" and engine.input_size == SIZE
    text = engine.describe()
    for word in ("eager", engine.precision, "cpu", "why:", "warm-up"):
        assert word in text


def test_batches_larger_than_the_largest_are_split(model):
    engine = from_model(model, backend="eager", precision="fp32", input_size=SIZE, batch_sizes=(2,))
    x = _frames(5, seed=1)
    np.testing.assert_allclose(engine(x), _reference(model, x), rtol=1e-4, atol=1e-4)
    assert engine(x[:0]).shape == (0, *SIZE)


def test_fixed_batch_backends_get_padded_batches(model):
    """A fixed-shape runner (like compile and tensorrt) only ever sees its compiled batch sizes."""
    eager = from_model(model, backend="eager", precision="fp32", input_size=SIZE)
    seen = []

    def run(x):
        seen.append(x.shape[0])
        return eager._runner.run(x)

    engine = Engine(
        Runner(run=run, fixed_batch=True),
        Candidate("eager", "fp32"),
        device=torch.device("cpu"),
        input_size=SIZE,
        batch_sizes=(2, 4),
        max_depth=10.0,
        reason="test",
        build_seconds=0.0,
        rejected=[],
    )
    x = _frames(7, seed=2)
    depth = engine(x)  # 7 -> chunks of 4 and 3 -> 3 padded to 4
    assert seen == [4, 4] and depth.shape == (7, *SIZE)
    np.testing.assert_allclose(depth, _reference(model, x), rtol=1e-4, atol=1e-4)
    engine(x[:1])
    assert seen[-1] == 2


def test_flip_tta_option(model):
    x = _frames(1, seed=3)
    engine = from_model(model, backend="eager", precision="fp32", input_size=SIZE, flip_tta=True)
    model.flip_tta = True
    try:
        ref = _reference(model, x)
    finally:
        model.flip_tta = False
    np.testing.assert_allclose(engine(x), ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(ref, _reference(model, x), atol=1e-3)  # TTA changes the output


def test_auto_on_a_cpu_without_bf16_picks_fp32(model, cpu_is, caplog):
    cpu_is(PLAIN_CPU)
    with caplog.at_level(logging.INFO, logger="glpn.engine"):
        engine = from_model(model, input_size=SIZE)
    assert (engine.backend, engine.precision) == ("eager", "fp32")
    chose = [r for r in caplog.records if "auto chose" in r.getMessage()]
    assert len(chose) == 1 and "without native bf16" in chose[0].getMessage()


def test_auto_on_an_amx_cpu_picks_bf16_after_the_gate(model, cpu_is, caplog):
    cpu_is(AMX_CPU)  # bf16 runs emulated on the test machine: same numbers, slower
    with caplog.at_level(logging.INFO, logger="glpn.engine"):
        engine = from_model(model, input_size=SIZE)
    assert (engine.backend, engine.precision) == ("eager", "bf16")
    assert engine.gate is not None and engine.gate.passed
    assert 0 < engine.gate.error.mean_rel < 0.01
    assert "native bf16" in engine.reason and "accuracy gate passed" in engine.describe()
    assert sum("auto chose" in r.getMessage() for r in caplog.records) == 1


def test_auto_skips_a_candidate_that_fails_the_gate(model, cpu_is, caplog):
    cpu_is(AMX_CPU)
    strict = Gate(max_mean_rel=1e-7, max_p99_rel=1e-6)  # bf16 cannot meet this; fp32 is not gated
    with caplog.at_level(logging.WARNING, logger="glpn.engine"):
        engine = from_model(model, input_size=SIZE, gate=strict)
    assert engine.precision == "fp32"
    assert any("bf16" in r and "accuracy gate" in r for r in engine.rejected)
    assert any("fails the accuracy gate" in r.getMessage() for r in caplog.records)
    with pytest.raises(EngineError, match="fails the accuracy gate"):
        from_model(
            model, backend="eager", precision="bf16", input_size=SIZE, gate=strict, verify=True
        )


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(backend="tensorrt"), "backend='tensorrt' needs a CUDA device"),
        (dict(backend="tensorrt", precision="fp16"), "backend='tensorrt' needs a CUDA device"),
        (dict(precision="fp16"), "precision='fp16' on CPU needs AVX512-FP16"),
        (dict(backend="eager", precision="bf16"), "precision='bf16' on CPU needs AVX512-BF16"),
        (dict(backend="turbo"), "backend='turbo' is unknown"),
        (dict(precision="int4"), "precision='int4' is unknown"),
        (dict(device="tpu"), "device='tpu'"),
        (dict(backend="compile", input_size=None), "pass input_size"),
        (dict(backend="onnxruntime", precision="fp16"), "fp32 graphs only"),
        (dict(input_size=(60, 96)), "multiples of 32"),
        (dict(batch_sizes=()), "batch_sizes"),
        (dict(batch_sizes=(0, 2)), "batch_sizes"),
        (dict(keep_fp32=("softmax",)), "keep_fp32"),
    ],
)
def test_impossible_requests_raise(model, cpu_is, options, message):
    cpu_is(PLAIN_CPU)
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace("[", r"\[")):
        from_model(model, **{"device": "cpu", "input_size": SIZE, **options})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_raises(model):
    with pytest.raises(EngineError, match="device='cuda' but CUDA is not available"):
        from_model(model, device="cuda", input_size=SIZE)


def test_bad_inputs_raise_engine_errors(model):
    engine = from_model(model, backend="eager", precision="fp32", input_size=SIZE)
    with pytest.raises(EngineError, match="shape"):
        engine(np.zeros((3, *SIZE), np.float32))
    with pytest.raises(EngineError, match="built for 64x96"):
        engine(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(EngineError, match="float"):
        engine(np.zeros((1, 3, *SIZE), np.uint8))
    with pytest.raises(EngineError, match="numpy array or a torch tensor"):
        engine([[0.0]])
    with pytest.raises(EngineError, match="glpn.GLPNDepth"):
        from_model(torch.nn.Linear(2, 2))


def test_any_size_engine(model):
    engine = from_model(model, backend="eager", precision="fp32", input_size=None)
    x = _frames(1)[:, :, :32, :64]
    np.testing.assert_allclose(
        engine(x), _reference(model, np.ascontiguousarray(x)), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(EngineError, match="multiples of 32"):
        engine(np.zeros((1, 3, 40, 64), np.float32))
