"""Image pre/post-processing: transformers' GLPNImageProcessor API, and the pipeline's fast path.

Reference behaviour (transformers): resize so height and width round down to multiples of 32 with
PIL's bilinear filter (antialiased when shrinking) on uint8, then scale by 1/255; no mean/std. Depth
goes back to a target size with bicubic interpolation.

- `GLPNImageProcessor` reproduces that with torch's uint8 antialiased bilinear resize (the same
  algorithm as PIL; results differ from PIL by at most one grey level, at rounding boundaries).
- `prepare_frames` is the pipeline's path: a batch of frames to one float32 array at a fixed size,
  with torch (the processor's numbers; also on a GPU) or OpenCV.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .hub import resolve_checkpoint_dir

PREPROCESSOR_NAME = "preprocessor_config.json"


def input_size_for(height: int, width: int, divisor: int = 32) -> tuple[int, int]:
    """(height, width) rounded down to multiples of `divisor`, at least `divisor`."""
    return max(divisor, height // divisor * divisor), max(divisor, width // divisor * divisor)


def _as_hwc_uint8(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)  # also takes PIL images
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3:
        raise ValueError(f"expected an HxWx3 image, got an array of shape {arr.shape}")
    if arr.shape[-1] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # channels first -> last
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[-1] == 4:
        arr = arr[:, :, :3]
    elif arr.shape[-1] != 3:
        raise ValueError(f"expected 3 colour channels, got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0  # floats in [0, 1], as the reference treats them
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    return arr


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, h, w) uint8 with PIL-style antialiased bilinear filtering."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if images.device.type == "cpu":  # torch has a fast uint8 kernel on CPU, for channels_last input
        return F.interpolate(
            images.contiguous(memory_format=torch.channels_last),
            size=size,
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    out = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def prepare_frames(
    frames: Sequence[np.ndarray],
    size: tuple[int, int],
    *,
    bgr: bool = False,
    method: str = "torch",
    device: str | torch.device | None = None,
) -> np.ndarray | torch.Tensor:
    """HxWx3 uint8 frames -> (B, 3, h, w) float32 in [0, 1] at `size` = (h, w).

    method "torch" (default): the processor's antialiased bilinear, identical numbers to
    GLPNImageProcessor and as fast as OpenCV on this CPU; a numpy array, or a tensor on `device`.
    method "opencv": cv2.resize (INTER_AREA when shrinking, else bilinear); a numpy array, within a
    few grey levels of the reference at edges (a different antialiasing filter).
    """
    h, w = size
    if method == "opencv":
        out = np.empty((len(frames), 3, h, w), dtype=np.float32)
        for i, frame in enumerate(frames):
            fh, fw = frame.shape[:2]
            if (fh, fw) != (h, w):
                shrink = fh > h or fw > w
                interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
                frame = cv2.resize(frame, (w, h), interpolation=interp)
            if bgr:
                frame = frame[:, :, ::-1]
            # HWC uint8 -> CHW float in one pass per channel
            np.multiply(frame.transpose(2, 0, 1), np.float32(1 / 255), out=out[i])
        return out
    if method == "torch":
        batch = []
        for frame in frames:
            t = torch.from_numpy(np.ascontiguousarray(frame))
            if device is not None:
                t = t.to(device, non_blocking=True)
            t = t.permute(2, 0, 1)[None]  # (1, 3, H, W), channels_last in memory
            if bgr:
                t = t.flip(1)
            batch.append(resize_uint8(t, size))
        out = torch.cat(batch).float().mul_(1 / 255).contiguous()
        return out if device is not None else out.numpy()
    raise ValueError(f"unknown resize method {method!r}; use 'opencv' or 'torch'")


def resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 metres -> (H, W) float32, bicubic (OpenCV; same kernel as torch's bicubic)."""
    if tuple(depth.shape) == tuple(size):
        return np.asarray(depth, dtype=np.float32)
    out = cv2.resize(
        np.asarray(depth, dtype=np.float32), (size[1], size[0]), interpolation=cv2.INTER_CUBIC
    )
    return out


class BatchFeature(dict):
    """dict of model inputs that also allows attribute access (`inputs.pixel_values`)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args, **kwargs) -> BatchFeature:
        return BatchFeature(
            {
                k: v.to(*args, **kwargs) if isinstance(v, torch.Tensor) else v
                for k, v in self.items()
            }
        )


class GLPNImageProcessor:
    """Drop-in for transformers' GLPNImageProcessor (the same arguments and outputs)."""

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size_divisor: int = 32,
        resample: Any = "bilinear",
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        **kwargs: Any,
    ) -> None:
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.do_resize = do_resize
        self.size_divisor = size_divisor
        self.resample = (
            resample  # PIL's BILINEAR (2) in published configs; bilinear is what is used
        )
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.extra = kwargs

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> GLPNImageProcessor:
        file = os.path.join(resolve_checkpoint_dir(path), PREPROCESSOR_NAME)
        settings: dict[str, Any] = {}
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                settings = json.load(f)
        for key in ("image_processor_type", "feature_extractor_type", "processor_class"):
            settings.pop(key, None)
        settings.update(overrides)
        return cls(**settings)

    def to_dict(self) -> dict[str, Any]:
        return {
            "do_resize": self.do_resize,
            "size_divisor": self.size_divisor,
            "resample": 2,  # PIL.Image.BILINEAR, as transformers writes it
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "image_processor_type": "GLPNImageProcessor",
        }

    def save_pretrained(self, path: str | os.PathLike) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, PREPROCESSOR_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def __call__(
        self, images: Any, return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self,
        images: Any,
        return_tensors: str | None = "pt",
        do_resize: bool | None = None,
        size_divisor: int | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        **_: Any,
    ) -> BatchFeature:
        do_resize = self.do_resize if do_resize is None else do_resize
        divisor = self.size_divisor if size_divisor is None else size_divisor
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        factor = self.rescale_factor if rescale_factor is None else rescale_factor
        if isinstance(images, (list, tuple)):
            batch = [_as_hwc_uint8(im) for im in images]
        else:
            arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
            if isinstance(arr, np.ndarray) and arr.ndim == 4:
                batch = [_as_hwc_uint8(im) for im in arr]
            else:
                batch = [_as_hwc_uint8(images)]
        out = []
        for image in batch:
            t = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, 3, H, W)
            if do_resize:
                t = resize_uint8(t, input_size_for(*image.shape[:2], divisor))
            t = t.float()
            if do_rescale:
                t = t * factor
            out.append(t[0].contiguous())
        if return_tensors == "pt":
            if len({tuple(t.shape) for t in out}) > 1:
                raise ValueError(
                    "images of different sizes cannot be batched; pass them one at a time"
                )
            return BatchFeature(pixel_values=torch.stack(out))
        if return_tensors == "np":
            return BatchFeature(pixel_values=np.stack([t.numpy() for t in out]))
        return BatchFeature(pixel_values=[t.numpy() for t in out])

    def post_process_depth_estimation(
        self, outputs: Any, target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image `{"predicted_depth": (h, w)}`, bicubically resized to its target size."""
        depth = outputs.predicted_depth if hasattr(outputs, "predicted_depth") else outputs
        if target_sizes is not None and len(depth) != len(target_sizes):
            raise ValueError(
                f"{len(target_sizes)} target sizes for a batch of {len(depth)} depth maps"
            )
        results = []
        for i, d in enumerate(depth):
            if target_sizes is not None:
                size = tuple(int(s) for s in target_sizes[i])
                d = F.interpolate(d[None, None], size=size, mode="bicubic", align_corners=False)[
                    0, 0
                ]
            results.append({"predicted_depth": d})
        return results


class GLPNFeatureExtractor(GLPNImageProcessor):
    """Old name of GLPNImageProcessor, kept as transformers does."""
