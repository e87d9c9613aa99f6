"""Each backend x precision gives GLPNDepth's fp32 eager depth within that precision's tolerance.

Weights: spread_init_ (tests/conftest.py), whose depth spans most of (0, max_depth) and follows the
image, on structured synthetic frames; a flat output would hide any error. fp32 backends are held to
1e-4 relative; reduced precisions to the accuracy gate that `auto` applies (metrics.GATE). bf16 and
fp16 are built through glpn.backends directly: engine.load refuses them on CPUs without hardware
support (they run emulated there), but the numbers are what this test is about.
"""

import os

import numpy as np
import pytest
import torch

from glpn import GLPNDepth, backends
from glpn.backends import BuildSpec
from glpn.engine import from_model
from glpn.fused import InferenceGLPN
from glpn.gate import GATE, distinct_ratio
from glpn.metrics import depth_error
from glpn.synthetic import synthetic_image

SIZE = (64, 96)
FP32_MEAN_REL, FP32_MAX_REL = 1e-4, 1e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> GLPNDepth:
    return GLPNDepth.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    images = np.stack([synthetic_image(*SIZE, seed=s) for s in (1, 2)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def reference(model, frames) -> np.ndarray:
    with torch.inference_mode():
        ref = model(frames).numpy()
    assert ref.std() > 0.2 and ref.max() - ref.min() > 1.0  # metres: the check can see errors
    return ref


def _spec(precision: str, **kw) -> BuildSpec:
    return BuildSpec(
        device=torch.device("cpu"), precision=precision, input_size=SIZE, batch_sizes=(2,), **kw
    )


def test_eager_fp32(model, frames, reference):
    runner = backends.build("eager", InferenceGLPN(model), _spec("fp32"))
    err = depth_error(runner.run(frames).numpy(), reference)
    assert err.mean_rel < FP32_MEAN_REL and err.max_rel < FP32_MAX_REL, err


@pytest.mark.parametrize(
    "precision,keep_fp32",
    [("bf16", ()), ("bf16", ("layer_norm",)), ("fp16", ()), ("fp16", ("layer_norm", "attention"))],
)
def test_eager_reduced_precision_within_gate(model, frames, reference, precision, keep_fp32):
    spec = _spec(precision, keep_fp32=keep_fp32)
    depth = backends.build("eager", InferenceGLPN(model), spec).run(frames)
    assert depth.dtype == torch.float32  # the head's output stays float32 (glpn.fused)
    err = depth_error(depth.numpy(), reference)
    passed, reason = GATE.check(err, distinct_ratio(depth.numpy(), reference))
    assert passed, reason
    assert err.mean_rel > 1e-5  # it really ran in reduced precision


def test_onnxruntime_fp32(model, frames, reference, tmp_path):
    pytest.importorskip("onnxruntime")
    runner = backends.build("onnxruntime", InferenceGLPN(model), _spec("fp32", cache_dir=tmp_path))
    err = depth_error(runner.run(frames).numpy(), reference)
    assert err.mean_rel < FP32_MEAN_REL and err.max_rel < FP32_MAX_REL, err


@pytest.mark.skipif(
    not os.environ.get("DEPTHSTREAM_TEST_COMPILE") and not torch.cuda.is_available(),
    reason="torch.compile on CPU takes ~65 s per shape for even the tiny model on 2 cores; "
    "set DEPTHSTREAM_TEST_COMPILE=1 to run it (it runs by default where CUDA is present)",
)
def test_compile_matches_eager(model, frames, reference):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = from_model(
        model, backend="compile", precision="fp32", device=device, input_size=SIZE, batch_sizes=(2,)
    )
    err = depth_error(engine(frames), reference)
    tol = FP32_MEAN_REL if device == "cpu" else 1e-3  # TF32 convolutions on CUDA
    assert err.mean_rel < tol, err


def _tensorrt_available() -> bool:
    from glpn.backends.tensorrt import available

    return torch.cuda.is_available() and available(torch.device("cuda"))[0]


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_available(), reason="needs CUDA and torch-tensorrt")
def test_tensorrt_fp16_within_gate_and_cached(model, frames, tmp_path):
    cuda = torch.device("cuda")
    with torch.inference_mode():
        reference = model.to(cuda)(frames.to(cuda)).cpu().numpy()
        model.to("cpu")
    options = dict(
        backend="tensorrt",
        precision="fp16",
        device="cuda",
        input_size=SIZE,
        batch_sizes=(1, 2),
        cache_dir=tmp_path,
    )
    first = from_model(model, **options)
    assert "built" in first.describe()
    err = depth_error(first(frames), reference)
    assert GATE.check(err)[0], err
    second = from_model(model, **options)  # same key: the plans come from the cache
    assert "batch 1: hit" in second.describe() and "batch 2: hit" in second.describe()
    np.testing.assert_array_equal(second(frames), first(frames))
