"""glpn.fused: the inference rewrites give GLPNDepth's depth (to rounding) and leave it intact."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from glpn import GLPNConfig, GLPNDepth
from glpn.fused import InferenceGLPN, PolyphaseUpsampleConv, TapSumConv, fold_batchnorms_
from glpn.synthetic import spread_init_

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(**overrides) -> GLPNDepth:
    return spread_init_(GLPNDepth(GLPNConfig.preset("tiny", **overrides)), seed=3).eval()


def _upsample_then_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """What the reference decoder + head do: x2 by size, x2 by scale, then the 3x3 convolution."""
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return conv(x)


@pytest.mark.parametrize("hw", [(3, 3), (5, 8), (12, 7)])
def test_polyphase_conv_equals_upsample_then_conv(hw):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, *hw)
    with torch.no_grad():
        ref = _upsample_then_conv(conv, x)
        got = PolyphaseUpsampleConv(conv)(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)  # borders included


def test_polyphase_conv_channels_last_and_traced_path_agree():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 9)
    fold = PolyphaseUpsampleConv(conv)
    with torch.no_grad():
        ref = _upsample_then_conv(conv, x)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        cl = fold.to(memory_format=torch.channels_last)(x_cl)
        traced = torch.jit.trace(fold, x)(x)  # the out-of-place border assembly used by exporters
    torch.testing.assert_close(cl, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(traced, ref, rtol=0, atol=1e-5)


def test_tap_sum_conv_equals_conv():
    torch.manual_seed(2)
    conv = nn.Conv2d(8, 1, 3, padding=1)
    x = torch.randn(2, 8, 7, 10)
    with torch.no_grad():
        torch.testing.assert_close(TapSumConv(conv)(x), conv(x), rtol=0, atol=1e-5)


def test_batchnorm_folding_keeps_outputs():
    model = _model()
    seq = model.decoder.stages[1].fusion.convolutional_layer1
    x = torch.randn(1, seq[0].in_channels, 6, 8)
    with torch.no_grad():
        ref = seq(x)
        fold_batchnorms_(model)
        got = seq(x)
    assert isinstance(seq[1], nn.Identity)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 96), (32, 32), (37, 45), (100, 75)])
def test_inference_model_matches_reference(size):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = InferenceGLPN(model)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref, got = model(x), fused(x)
    assert fused.folded
    assert got.shape == ref.shape  # (B, 4*ceil(H/4), 4*ceil(W/4)), like the reference
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_inference_model_flip_tta_and_unfolded_head():
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    model = _model()
    model.flip_tta = True
    with torch.inference_mode():
        torch.testing.assert_close(InferenceGLPN(model)(x), model(x), rtol=1e-5, atol=1e-4)
    other = _model(head_in_index=-2)  # the head reads a coarser decoder output: no upsampling fold
    fused = InferenceGLPN(other)
    assert not fused.folded
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), other(x), rtol=1e-5, atol=1e-4)
