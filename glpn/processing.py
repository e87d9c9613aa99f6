"""Image pre/post-processing: transformers' GLPNImageProcessor API, and the pipeline's fast path.

Reference behaviour (transformers 5.24 without torchvision, i.e. GLPNImageProcessorPil): resize so
height and width round down to multiples of 32 with PIL's bilinear filter (antialiased when
shrinking) on uint8, then scale by 1/255; no mean/std. Depth goes back to a target size with
bicubic interpolation.

- `GLPNImageProcessor` reproduces that with torch's uint8 antialiased bilinear resize (the same
  algorithm as PIL; results differ from PIL by at most one grey level, at rounding boundaries).
  Saving and loading are in processor_io.py.
- `prepare_frames` is the pipeline's path: a batch of frames to one float32 array at a fixed size,
  with torch (the processor's numbers; also on a GPU) or OpenCV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .processor_io import PREPROCESSOR_NAME, PROCESSOR_KWARGS, ImageProcessorIO

__all__ = [  # PREPROCESSOR_NAME is re-exported: it lived here first
    "PREPROCESSOR_NAME",
    "BatchFeature",
    "GLPNFeatureExtractor",
    "GLPNImageProcessor",
    "input_size_for",
    "prepare_frames",
    "resize_depth",
    "resize_uint8",
]


def input_size_for(height: int, width: int, divisor: int = 32) -> tuple[int, int]:
    """(height, width) rounded down to multiples of `divisor`, at least `divisor`."""
    return max(divisor, height // divisor * divisor), max(divisor, width // divisor * divisor)


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


# PIL's resampling codes, as processor files store them; names accepted for convenience.
_RESAMPLE_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
BILINEAR = 2
# Settings transformers accepts that would change the numbers and GLPN never uses: refused when
# switched on, not silently ignored.
_UNSUPPORTED = ("do_normalize", "do_center_crop", "do_pad")


def _resample_code(resample: Any) -> int:
    if isinstance(resample, str):
        if resample.lower() not in _RESAMPLE_CODES:
            raise ValueError(f"unknown resample {resample!r}; use one of {list(_RESAMPLE_CODES)}")
        return _RESAMPLE_CODES[resample.lower()]
    return int(resample)  # an int, or PIL's Resampling (an IntEnum)


def _to_chw(image: Any, input_data_format: str | None = None) -> np.ndarray:
    """One image (PIL, numpy or torch; HWC or CHW) -> a (3, H, W) array of its own dtype.

    Channels first wins when both ends could be channels, as in transformers. Unlike
    transformers, grey images become 3 channels and alpha is dropped (the model takes RGB).
    """
    is_pil = type(image).__module__.startswith("PIL.")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    arr = np.asarray(image)  # a PIL image gives HxW or HxWxC
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(f"expected an HxWxC or CxHxW image, got an array of shape {arr.shape}")
    elif is_pil or input_data_format == "channels_last":
        arr = arr.transpose(2, 0, 1)
    elif input_data_format is None and arr.shape[0] not in (1, 3, 4):
        if arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"cannot tell the channel axis of an image of shape {arr.shape}")
        arr = arr.transpose(2, 0, 1)
    if arr.shape[0] == 1:
        arr = np.repeat(arr, 3, axis=0)
    elif arr.shape[0] == 4:
        arr = arr[:3]
    elif arr.shape[0] != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got an image of shape {arr.shape}")
    return arr


def _as_uint8_for_resize(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """The uint8 image transformers hands to PIL for resizing, and whether it was scaled by 255.

    transformers 5.24 (image_transforms.resize): integer values in [0, 255] are cast; other floats
    in [0, 1] are multiplied by 255 in float64, cast to float32 and truncated to uint8, and the
    resized result is divided by 255 again. Anything else is an error.
    """
    if image.dtype == np.uint8:
        return image, False
    if np.allclose(image, image.astype(int)):
        if image.min() >= 0 and image.max() <= 255:
            return image.astype(np.uint8), False
        raise ValueError(
            f"integer-valued image outside [0, 255] (got [{image.min()}, {image.max()}])"
        )
    if image.min() >= 0 and image.max() <= 1:
        return (image.astype(np.float64) * 255).astype(np.float32).astype(np.uint8), True
    raise ValueError(f"float image outside [0, 1] (got [{image.min()}, {image.max()}])")


def _rescale(image: torch.Tensor, factor: float) -> torch.Tensor:
    # float32 arithmetic, as prepare_frames: at most one float32 ulp from transformers, which
    # multiplies in float64 and rounds once
    return image.float() * factor


class GLPNImageProcessor(ImageProcessorIO):
    """Drop-in for transformers' GLPNImageProcessor (v5.24): the same arguments, settings, files
    and numbers as the class transformers gives without torchvision (GLPNImageProcessorPil).

    Deliberate differences (they only help): `return_tensors` defaults to "pt" (transformers
    returns a list of arrays when it is not given); grey and RGBA images become RGB; an image
    smaller than `size_divisor` is resized up to it (transformers fails); CUDA tensors are taken.
    Only bilinear resampling, the published processors' setting, is implemented.
    """

    model_input_names = ["pixel_values"]
    image_processor_type = "GLPNImageProcessor"

    def __init__(
        self,
        do_resize: bool = True,
        size_divisor: int = 32,
        resample: Any = BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        **kwargs: Any,
    ) -> None:
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.do_resize = do_resize
        self.size_divisor = size_divisor
        self.resample = _resample_code(resample)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self._set_extra(kwargs)

    def __call__(
        self, images: Any, return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self, images: Any, return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """images -> {"pixel_values": (B, 3, h, w)}: resized to multiples of `size_divisor`,
        then multiplied by `rescale_factor`. uint8 stays uint8 when not rescaled, as in
        transformers; a float image in [0, 1] is rescaled again unless do_rescale=False."""
        unknown = set(kwargs) - PROCESSOR_KWARGS
        if unknown:
            raise TypeError(f"preprocess() got unexpected keyword arguments {sorted(unknown)}")
        opt = {**vars(self), **{k: v for k, v in kwargs.items() if v is not None}}
        refused = [k for k in _UNSUPPORTED if opt.get(k)]
        if refused or _resample_code(opt["resample"]) != BILINEAR:
            raise NotImplementedError(
                f"{refused or ['resample=' + str(opt['resample'])]}: GLPN's processors use "
                "bilinear resizing and rescaling only, which is all this processor implements"
            )
        if isinstance(images, (list, tuple)):
            batch = list(images)
        elif getattr(images, "ndim", 0) == 4:  # a batch as one array or tensor
            batch = list(images)
        else:
            batch = [images]
        out = []
        for image in batch:
            arr = _to_chw(image, opt.get("input_data_format"))
            scaled_by_255 = False
            if opt["do_resize"]:
                arr, scaled_by_255 = _as_uint8_for_resize(arr)
            if not arr.flags.writeable or arr.strides[0] < 0:
                arr = arr.copy()  # torch needs a writable array with positive strides
            t = torch.from_numpy(arr)
            if opt["do_resize"]:
                size = input_size_for(*arr.shape[1:], opt["size_divisor"])
                t = resize_uint8(t[None], size)[0]
            if scaled_by_255:
                t = _rescale(t, 1 / 255)
            if opt["do_rescale"]:
                t = _rescale(t, opt["rescale_factor"])
            out.append(t.contiguous())
        return _batch(out, return_tensors)

    def post_process_depth_estimation(
        self, outputs: Any, target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None
    ) -> list[dict[str, torch.Tensor]]:
        """Per image `{"predicted_depth": (h, w)}`, bicubically resized to its target size if
        given. Also takes the depth tensor itself, and target sizes as a tensor."""
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


def _batch(images: list[torch.Tensor], return_tensors: str | None) -> BatchFeature:
    if return_tensors is None:
        return BatchFeature(pixel_values=[t.numpy() for t in images])
    if len({tuple(t.shape) for t in images}) > 1:
        raise ValueError("images of different sizes cannot be batched; pass them one at a time")
    if return_tensors == "pt":
        return BatchFeature(pixel_values=torch.stack(images))
    if return_tensors == "np":
        return BatchFeature(pixel_values=np.stack([t.numpy() for t in images]))
    raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")


class GLPNFeatureExtractor(GLPNImageProcessor):
    """Old name of GLPNImageProcessor, kept as transformers does."""
