"""Inference engines (minimal eager version; backends are being added in issue 3)."""

from __future__ import annotations

import os

import numpy as np
import torch

from .model import GLPNDepth


class Engine:
    """Callable: (B, 3, h, w) float32 in [0, 1] -> (B, h, w) float32 metres (numpy). Not thread-
    safe."""

    def __init__(self, model: GLPNDepth, *, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.max_depth = float(model.config.max_depth)

    @torch.inference_mode()
    def __call__(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(pixel_values).to(self.device, torch.float32)
        return self.model(x).float().cpu().numpy()

    def describe(self) -> str:
        return f"eager fp32 on {self.device}"


def load(
    checkpoint: str | os.PathLike,
    *,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "auto",
    input_size: tuple[int, int] | None = None,
    batch_sizes: tuple[int, ...] = (1,),
) -> Engine:
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else device
    dev = "cpu" if dev == "auto" else dev
    return Engine(GLPNDepth.from_pretrained(checkpoint), device=dev)
