"""Reduced precision never quantizes the depth: the head's last convolution, sigmoid and scale run
in float32 (glpn.fused.DepthOutput in a glpn.precision.Float32Island), and the accuracy gate
catches an output rounded to a coarse grid (glpn.gate.distinct_ratio)."""

import numpy as np
import pytest
import torch
from torch import nn

from glpn import GLPNConfig, GLPNDepth
from glpn.engine import from_model
from glpn.fused import InferenceGLPN
from glpn.gate import GATE, LoadGate
from glpn.precision import cast_model
from glpn.synthetic import spread_init_

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 96)


@pytest.fixture(scope="module")
def model() -> GLPNDepth:
    return spread_init_(GLPNDepth(GLPNConfig.preset("tiny")), seed=3).eval()


def _off_grid(depth: np.ndarray, dtype: torch.dtype) -> float:
    """Fraction of depth values that `dtype` cannot represent exactly."""
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
    return (d.to(dtype).float() != d).float().mean().item()


def test_bf16_engine_depth_is_float32_and_not_on_the_bf16_grid(model):
    engine = from_model(model, backend="eager", precision="bf16", input_size=SIZE, verify=False)
    x = LoadGate(model, GATE, input_size=SIZE, batch=2, device=torch.device("cpu")).frames
    depth = engine(x)
    assert depth.dtype == np.float32
    # A bf16 output is all on the grid (fraction 0); a float32 head leaves almost nothing on it.
    assert _off_grid(depth, torch.bfloat16) > 0.5
    assert np.unique(depth).size > 0.9 * depth.size


def test_cast_model_keeps_the_head_output_float32_with_unrounded_weights(model):
    fused = InferenceGLPN(model)
    head = fused.output.module.conv.taps.weight.detach().clone()
    name, norm = next((n, m) for n, m in fused.named_modules() if isinstance(m, nn.LayerNorm))
    norm = norm.weight.detach().clone()
    cast = cast_model(fused, torch.float16, keep_fp32=("layer_norm",))
    # The islands' weights are the float32 ones, never rounded through fp16 on the way.
    assert torch.equal(cast.output.module.conv.taps.weight, head)
    assert torch.equal(cast.get_submodule(name).module.weight, norm)
    assert cast.head_conv1.mix.weight.dtype == torch.float16  # the rest is cast
    x = torch.rand(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        depth = cast(x.half())
    assert depth.dtype == torch.float32
    assert _off_grid(depth.numpy(), torch.float16) > 0.5


def test_gate_flags_a_quantized_output_and_passes_the_bf16_engine(model):
    gate = LoadGate(model, GATE, input_size=SIZE, batch=1, device=torch.device("cpu"))
    reference = InferenceGLPN(model)

    def bf16_rounded(x: torch.Tensor) -> np.ndarray:  # fp32 depth, then rounded to bf16 steps
        with torch.inference_mode():
            return reference(x).bfloat16().float().numpy()

    quantized = gate.check(bf16_rounded)
    # The relative errors alone pass it: rounding to bf16 is within 0.4%.
    assert quantized.error.mean_rel < GATE.max_mean_rel and quantized.error.p99_rel < 0.005
    assert not quantized.passed
    assert "quantized output" in quantized.reason
    assert quantized.distinct_ratio < 0.2

    engine = from_model(model, backend="eager", precision="bf16", input_size=SIZE, verify=False)
    result = gate.check(engine)
    assert result.passed, result.reason
    assert result.distinct_ratio > 0.9
    assert "distinct values" in result.reason and "distinct depth values" in GATE.describe()
