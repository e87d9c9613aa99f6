"""Numerical parity with transformers' GLPNForDepthEstimation on the same random weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import glpn
import glpn.decoder
import glpn.mit
from glpn.synthetic import spread_init_, synthetic_image

transformers = pytest.importorskip("transformers")

SMALL = {}  # transformers' default config
B4_SHALLOW = dict(  # MiT-b4 widths and heads (kitti), fewer layers to stay fast
    depths=(1, 1, 2, 1),
    hidden_sizes=(64, 128, 320, 512),
    num_attention_heads=(1, 2, 5, 8),
    max_depth=80,
)
TOL = 1e-4  # max |ours - reference| relative to the reference's spread (max - min)


def _pair(kwargs: dict, seed: int = 0):
    ref = transformers.GLPNForDepthEstimation(transformers.GLPNConfig(**kwargs)).eval()
    spread_init_(ref, seed=seed)
    ours = glpn.GLPNForDepthEstimation(glpn.GLPNConfig(**kwargs)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _input(h: int, w: int, batch: int = 1) -> torch.Tensor:
    imgs = [synthetic_image(h, w, seed=i) for i in range(batch)]
    return torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in imgs]).float() / 255


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / (b.max() - b.min())).item()


@pytest.mark.parametrize("name,kwargs", [("small", SMALL), ("b4_shallow", B4_SHALLOW)])
@pytest.mark.parametrize("size", [(64, 96), (125, 157), (96, 61)])
def test_depth_matches_transformers(name, kwargs, size):
    # 125x157 and 96x61 are not multiples of 32; the reference accepts them (each stage size doubles
    # exactly) and returns depth at the next multiple of 32.
    ref, ours = _pair(kwargs)
    x = _input(*size, batch=2)
    with torch.no_grad():
        expected = ref(x).predicted_depth
        got = ours(x).predicted_depth
    assert got.shape == expected.shape
    max_depth = kwargs.get("max_depth", 10)
    # The weights must make the test meaningful: depth spans a good part of the range.
    assert (expected.max() - expected.min()) > 0.2 * max_depth
    assert _rel_err(got, expected) < TOL


def test_hidden_states_and_loss_match_transformers():
    ref, ours = _pair(SMALL, seed=3)
    x = _input(64, 64)
    labels = torch.rand(1, 64, 64) * 9 + 0.5
    labels[0, :5] = 0  # invalid pixels are ignored by the loss
    with torch.no_grad():
        r = ref(x, labels=labels, output_hidden_states=True)
        o = ours(x, labels=labels, output_hidden_states=True)
        enc_r = transformers.GLPNModel(ref.config).eval()
        enc_r.load_state_dict(ref.glpn.state_dict())
        enc_o = glpn.GLPNModel(ours.config).eval()
        enc_o.load_state_dict(ours.glpn.state_dict())
        last_r = enc_r(x).last_hidden_state
        last_o = enc_o(x).last_hidden_state
    assert len(o.hidden_states) == len(r.hidden_states) == 4
    for a, b in zip(o.hidden_states, r.hidden_states):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last_o, last_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o.loss, r.loss, rtol=1e-5, atol=1e-6)


def test_processor_then_model_matches_transformers_pipeline():
    """What a user does: processor on an odd-sized uint8 image, model, post-process to the image
    size."""
    from transformers.models.glpn.image_processing_pil_glpn import GLPNImageProcessorPil

    ref, ours = _pair(SMALL, seed=1)
    image = synthetic_image(203, 277, seed=5)
    ref_proc, our_proc = GLPNImageProcessorPil(), glpn.GLPNImageProcessor()
    with torch.no_grad():
        r_in = ref_proc(image, return_tensors="pt")
        o_in = our_proc(image, return_tensors="pt")
        r = ref_proc.post_process_depth_estimation(ref(**r_in), target_sizes=[(203, 277)])
        o = our_proc.post_process_depth_estimation(ours(**o_in), target_sizes=[(203, 277)])
    r, o = r[0]["predicted_depth"], o[0]["predicted_depth"]
    assert o.shape == (203, 277)
    # The only difference is the resize (at most one grey level on a few pixels, see processing
    # tests).
    assert (o - r).abs().mean().item() < 1e-3 * (r.max() - r.min()).item()


@pytest.mark.parametrize("mutation", ["relu_for_gelu", "nearest_upsampling"])
def test_parity_check_detects_wrong_implementations(mutation, monkeypatch):
    """The parity test above can fail: a plausible implementation mistake breaks the tolerance."""
    ref, ours = _pair(SMALL)
    if mutation == "relu_for_gelu":
        for m in ours.modules():
            if isinstance(m, glpn.mit.MixFFN):
                m.act = nn.ReLU()
    else:
        real = F.interpolate

        def nearest(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
            return real(x, size=size, scale_factor=scale_factor, mode="nearest")

        # Only our decoder's view of torch.nn.functional changes; the reference keeps bilinear.
        monkeypatch.setattr(glpn.decoder, "F", SimpleNamespace(interpolate=nearest))
    x = _input(64, 96)
    with torch.no_grad():
        err = _rel_err(ours(x).predicted_depth, ref(x).predicted_depth)
    assert err > 100 * TOL
