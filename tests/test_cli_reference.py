"""The CLI's default depth is the published model's: what the transformers loop a user writes gives.

`run_stream.py --source clip --checkpoint CK --save-depth OUT`, with no input size, runs the model
at the source's size rounded down to multiples of 32 (GLPNImageProcessor's rule) and writes the
depth at the source's size. The reference is transformers itself on the same decoded frames:
GLPNImageProcessor -> GLPNForDepthEstimation.from_pretrained(CK) -> post_process_depth_estimation.
Clips are lossless FFV1 (ffmpeg), read back with OpenCV as the pipeline reads them.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from pipeline_helpers import read_video, write_video_ffv1
from system_tools import needs_ffmpeg
from test_cli import run_cli

transformers = pytest.importorskip("transformers")

FRAMES = 2


def transformers_depth(checkpoint: str, frames: list[np.ndarray]) -> list[np.ndarray]:
    """The loop from transformers' GLPN documentation, on RGB frames, in fp32.

    The processor is the PIL one: what transformers 5's GLPNImageProcessor falls back to without
    torchvision (not a dependency here), and transformers 4's only one; pinned so that installing
    torchvision cannot change the reference."""
    processor = transformers.GLPNImageProcessorPil()
    model = transformers.GLPNForDepthEstimation.from_pretrained(checkpoint).eval()
    out = []
    for frame in frames:
        rgb = np.ascontiguousarray(frame[..., ::-1])  # OpenCV decodes BGR
        inputs = processor(images=rgb, return_tensors="pt")
        with torch.inference_mode():
            outputs = model(**inputs)
        post = processor.post_process_depth_estimation(outputs, target_sizes=[rgb.shape[:2]])
        out.append(post[0]["predicted_depth"].float().numpy())
    return out


@needs_ffmpeg
@pytest.mark.parametrize(
    "height, width, input_size, bound",
    [
        # Multiples of 32: no resize on either side; only float summation order differs.
        (480, 640, "480x640", 1e-4),
        # Odd: both resize the frame to 224x288 and the depth back to 241x317. The uint8 frames
        # after the resize differ by one level at ~0.1% of the pixels (rounding inside the
        # bilinear resize: OpenCV's vs PIL's); through the network that is 2.7e-4 and 4.8e-4 of
        # the spread on these two frames (the bicubic depth resize adds ~1e-5). 1e-3 allows that
        # rounding; a different input size (224x320, the old default) is 0.12-0.13.
        (241, 317, "224x288", 1e-3),
    ],
)
def test_default_cli_depth_matches_the_transformers_loop(
    tiny_checkpoint, tmp_path, height, width, input_size, bound
):
    clip = write_video_ffv1(str(tmp_path / "clip.mkv"), FRAMES, width, height)
    out, summary = tmp_path / "depth", tmp_path / "summary.json"
    proc = run_cli(
        "--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth", str(out),
        "--precision", "fp32", "--backend", "eager", "--summary-json", str(summary),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    reference = transformers_depth(tiny_checkpoint, read_video(clip))
    assert len(reference) == FRAMES
    for i, ref in enumerate(reference):
        depth = np.load(os.path.join(out, f"{i:06d}.npy"))
        assert depth.dtype == np.float32 and depth.shape == ref.shape == (height, width)
        spread = float(ref.max() - ref.min())
        assert spread > 1.0  # spread weights: a depth that varies, so a wrong size shows
        diff = float(np.abs(depth - ref).max())
        assert diff <= bound * spread, f"frame {i}: max diff {diff / spread:.2e} of the spread"
    # The summary states the input size the stream ran at.
    assert f"model input: source0 {input_size} (auto: {height}x{width} frames" in proc.stdout
    assert json.loads(summary.read_text())["input_sizes"] == {"source0": [input_size]}
