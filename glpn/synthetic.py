"""Random GLPN weights whose depth output varies, for tests, benchmarks and the accuracy gate.

Default initialisation gives an almost flat depth map (all pixels near max_depth / 2), which cannot
tell a correct implementation from a wrong one, nor an accurate low-precision backend from a broken
one. These weights keep activations near unit variance through every layer, so the output spans much
of the (0, max_depth) range and follows the image's structure. Never used when loading a checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def spread_init_(model: nn.Module, seed: int = 0, gain: float = 1.5) -> nn.Module:
    """Re-initialise every weight of a GLPN model in place (works for ours and transformers')."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=g) * std + mean)

    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            normal(m.weight, gain / math.sqrt(fan_in))
            if m.bias is not None:
                normal(m.bias, 0.1)
        elif isinstance(m, nn.LayerNorm):
            normal(m.weight, 0.2, 1.0)
            normal(m.bias, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            normal(m.weight, 0.2, 1.0)
            normal(m.bias, 0.1)
            normal(m.running_mean, 0.2)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return model


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 RGB scene with gradients, edges and texture (a stand-in for a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 255 * y / max(height - 1, 1)
    img[..., 1] = 128 + 100 * np.sin(x / max(width, 1) * 6.28 * (1 + seed % 3))
    img[..., 2] = 255 * (1 - x / max(width - 1, 1))
    for _ in range(6):  # a few solid rectangles: sharp edges
        h0, w0 = rng.integers(0, max(height - 4, 1)), rng.integers(0, max(width - 4, 1))
        h1, w1 = h0 + rng.integers(4, max(height // 2, 5)), w0 + rng.integers(4, max(width // 2, 5))
        img[h0:h1, w0:w1] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
