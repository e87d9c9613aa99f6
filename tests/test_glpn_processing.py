"""Image processor parity with transformers' GLPNImageProcessor, and the pipeline's fast paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glpn import GLPNFeatureExtractor, GLPNImageProcessor
from glpn.model import DepthEstimatorOutput
from glpn.processing import input_size_for, prepare_frames, resize_depth
from glpn.synthetic import synthetic_image

pytest.importorskip("transformers")
from transformers.models.glpn.image_processing_pil_glpn import GLPNImageProcessorPil  # noqa: E402

SIZES = [(241, 317), (480, 640), (100, 150), (33, 70), (720, 1280)]


@pytest.mark.parametrize("size", SIZES)
def test_preprocess_matches_transformers(size):
    """Tolerance: at most one grey level (1/255) on a pixel, on under 1% of values.

    transformers resizes with PIL's antialiased bilinear filter on uint8; we use torch's
    implementation of
    the same filter, which rounds differently in rare cases.
    """
    image = synthetic_image(*size, seed=7)
    ref = GLPNImageProcessorPil()(image, return_tensors="pt")["pixel_values"]
    ours = GLPNImageProcessor()(image, return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, *input_size_for(*size))
    assert ours.dtype == torch.float32
    diff = (ours - ref).abs()
    assert diff.max().item() <= 1 / 255 + 1e-6
    assert (diff > 1e-6).float().mean().item() < 0.01


def test_batches_lists_and_alias():
    images = [synthetic_image(100, 150, seed=i) for i in range(3)]
    ref = GLPNImageProcessorPil()(images, return_tensors="pt")["pixel_values"]
    ours = GLPNFeatureExtractor()(images, return_tensors="pt")
    assert ours.pixel_values.shape == ref.shape == (3, 3, 96, 128)
    assert (ours.pixel_values - ref).abs().max().item() <= 1 / 255 + 1e-6
    np_out = GLPNImageProcessor()(images, return_tensors="np")["pixel_values"]
    assert isinstance(np_out, np.ndarray) and np_out.shape == (3, 3, 96, 128)


def test_post_process_matches_transformers():
    depth = torch.rand(2, 96, 128) * 10
    out = DepthEstimatorOutput(predicted_depth=depth)
    sizes = [(241, 317), (90, 100)]
    ref = GLPNImageProcessorPil().post_process_depth_estimation(out, target_sizes=sizes)
    ours = GLPNImageProcessor().post_process_depth_estimation(out, target_sizes=sizes)
    for r, o, s in zip(ref, ours, sizes):
        assert o["predicted_depth"].shape == s
        torch.testing.assert_close(o["predicted_depth"], r["predicted_depth"])
    with pytest.raises(ValueError, match="target sizes"):
        GLPNImageProcessor().post_process_depth_estimation(out, target_sizes=[(1, 1)])


@pytest.mark.parametrize("size", SIZES)
def test_prepare_frames_torch_equals_processor(size):
    frames = [synthetic_image(*size, seed=s) for s in (1, 2)]
    target = input_size_for(*size)
    fast = prepare_frames(frames, target)
    ref = GLPNImageProcessor()(frames, return_tensors="np")["pixel_values"]
    assert fast.dtype == np.float32 and fast.flags.c_contiguous
    np.testing.assert_array_equal(fast, ref)
    # BGR frames (OpenCV's order) give the same result as RGB ones
    bgr = prepare_frames([f[:, :, ::-1].copy() for f in frames], target, bgr=True)
    np.testing.assert_array_equal(bgr, fast)


def test_prepare_frames_opencv_is_close_to_reference():
    """OpenCV's resize is a different filter: within 10 grey levels, 1 on average, near scale 1."""
    frames = [synthetic_image(241, 317, seed=3)]
    ref = prepare_frames(frames, (224, 288))
    cv = prepare_frames(frames, (224, 288), method="opencv")
    diff = np.abs(cv - ref) * 255
    assert diff.max() <= 10 and diff.mean() < 1.0
    with pytest.raises(ValueError, match="unknown resize method"):
        prepare_frames(frames, (32, 32), method="pil")


@pytest.mark.parametrize("size", [(241, 317), (720, 1280)])
def test_resize_depth_matches_bicubic_reference(size):
    depth = torch.rand(96, 128) * 10
    ref = F.interpolate(depth[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
    ours = resize_depth(depth.numpy(), size)
    assert ours.dtype == np.float32 and ours.shape == size
    assert np.abs(ours - ref.numpy()).max() < 1e-3  # metres, on a 10 m range


def test_input_size_for():
    assert input_size_for(241, 317) == (224, 288)
    assert input_size_for(480, 640) == (480, 640)
    assert input_size_for(20, 40) == (32, 32)  # never zero
