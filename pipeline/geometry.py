"""Camera geometry: pinhole intrinsics that follow the depth through resizes, and point clouds.

Conventions (OpenCV, ROS sensor_msgs/CameraInfo): pixel (u, v) = (column, row) has its centre at
integer coordinates, so an image of width W spans -0.5 .. W - 0.5. The camera frame is REP-103's
optical frame: z forward (the depth), x right, y down. A pixel with depth z back-projects to

    x = (u - cx) / fx * z,   y = (v - cy) / fy * z,   z = z      (metres)

Resizes in the pipeline (OpenCV, torch) map pixel centres half-pixel to half-pixel, so intrinsics
scale as fx' = fx * sx and cx' = (cx + 0.5) * sx - 0.5 with sx = W' / W (likewise y).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .errors import MessageError
from .limits import MAX_IMAGE_SIDE

CAMERA_KEYS = ("fx", "fy", "cx", "cy", "width", "height")  # header["camera"]


@dataclass(frozen=True)
class Intrinsics:
    """A pinhole camera for an image of `width` x `height` pixels (no distortion)."""

    fx: float  # focal length in pixels, horizontal
    fy: float  # focal length in pixels, vertical
    cx: float  # principal point, pixels from the centre of the top-left pixel
    cy: float
    width: int  # the image these numbers are for
    height: int

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0 and math.isfinite(self.fx * self.fy)):
            raise ValueError(f"focal lengths must be finite and > 0: {self}")
        if not (math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise ValueError(f"principal point must be finite: {self}")
        if not (1 <= self.width <= MAX_IMAGE_SIDE and 1 <= self.height <= MAX_IMAGE_SIDE):
            raise ValueError(f"image size must be in 1..{MAX_IMAGE_SIDE}: {self}")

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera for the image resized to `width` x `height`."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            self.fx * sx, self.fy * sy,
            (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
            int(width), int(height),
        )  # fmt: skip

    @classmethod
    def from_hfov(cls, hfov_deg: float, width: int, height: int) -> Intrinsics:
        """Square pixels, principal point at the image centre, `hfov_deg` across the full width."""
        f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
        return cls(f, f, (width - 1) / 2, (height - 1) / 2, int(width), int(height))

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> Intrinsics | None:
        """header["camera"] (for the depth as delivered), None when the frame has none;
        MessageError when it is malformed (a foreign peer's header)."""
        camera = header.get("camera")
        if camera is None:
            return None
        if not isinstance(camera, Mapping) or set(camera) != set(CAMERA_KEYS):
            raise MessageError(f"header camera must have exactly {list(CAMERA_KEYS)}")
        values = [camera[k] for k in CAMERA_KEYS]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise MessageError(f"header camera has a value that is not a number: {camera}")
        if not all(isinstance(camera[k], int) for k in ("width", "height")):
            raise MessageError("header camera width and height must be integers")
        try:
            return cls(*(float(v) for v in values[:4]), camera["width"], camera["height"])
        except ValueError as e:
            raise MessageError(f"header camera: {e}") from None

    def as_header(self) -> dict[str, float | int]:
        """What header["camera"] holds: fx, fy, cx, cy (pixels), width, height."""
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
                "width": self.width, "height": self.height}  # fmt: skip

    def matrix(self) -> np.ndarray:
        """K, the 3x3 camera matrix (CameraInfo.k, row-major)."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)


def source_camera(
    intrinsics: tuple[float, float, float, float] | None,
    hfov_deg: float | None,
    width: int,
    height: int,
) -> Intrinsics | None:
    """A source's camera (config: intrinsics at the source resolution, or a field of view) for
    its frames of `width` x `height`; None when neither is configured."""
    if intrinsics is not None:
        return Intrinsics(*intrinsics, int(width), int(height))
    if hfov_deg is not None:
        return Intrinsics.from_hfov(hfov_deg, width, height)
    return None


@dataclass(frozen=True)
class _Rays:
    """Per pixel of a strided grid: (u - cx) / fx, (v - cy) / fy and its flat full-image index."""

    x: np.ndarray  # (h' * w',) float32
    y: np.ndarray  # (h' * w',) float32
    pixel: np.ndarray  # (h' * w',) intp: index into depth.ravel() of the full-size image


@functools.lru_cache(maxsize=32)  # a few cameras x strides; ~16 bytes per pixel each
def _rays(intr: Intrinsics, stride: int) -> _Rays:
    u = np.arange(0, intr.width, stride, dtype=np.float64)
    v = np.arange(0, intr.height, stride, dtype=np.float64)
    x = ((u - intr.cx) / intr.fx).astype(np.float32)
    y = ((v - intr.cy) / intr.fy).astype(np.float32)
    rx = np.broadcast_to(x[None, :], (len(v), len(u))).ravel()  # (h' * w',)
    ry = np.broadcast_to(y[:, None], (len(v), len(u))).ravel()
    pixel = (np.arange(0, intr.height, stride)[:, None] * intr.width
             + np.arange(0, intr.width, stride)[None, :]).ravel()  # fmt: skip
    for a in (rx, ry, pixel):
        a.flags.writeable = False
    return _Rays(rx, ry, pixel)


def _check_grid(depth: np.ndarray, intr: Intrinsics, stride: int) -> None:
    if depth.ndim != 2 or depth.shape != (intr.height, intr.width):
        raise ValueError(f"depth of shape {depth.shape} for a {intr.width}x{intr.height} camera")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def backproject(
    depth: np.ndarray,
    intr: Intrinsics,
    *,
    stride: int = 1,
    max_range: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) depth in metres -> (points (N, 3) float32 x, y, z metres in the optical frame,
    index (N,) of each point's pixel in depth.ravel()).

    Every `stride`-th pixel in each direction, starting at (0, 0); pixels whose depth is NaN,
    infinite, <= 0 or > max_range are dropped. Points are in row-major pixel order. The ray
    of each pixel is computed once per camera and stride (cached). Measured per 480x640 frame
    (benchmarks/bench_points.py): the valid pixels are picked with boolean masks (contiguous
    copies), not index gathers, which took twice as long; a depth valid everywhere (the model's
    usual output) needs no picking at all."""
    _check_grid(depth, intr, stride)
    rays = _rays(intr, int(stride))
    z = np.asarray(depth[::stride, ::stride], dtype=np.float32).ravel()  # copies when strided
    keep = z > 0  # False for NaN
    if max_range is not None:
        keep &= z <= max_range
    else:
        keep &= z < np.inf
    if keep.all():
        rx, ry, index = rays.x, rays.y, rays.pixel
    else:
        z, rx, ry = z[keep], rays.x[keep], rays.y[keep]
        index = np.flatnonzero(keep)  # the grid's own index: the pixel's at stride 1
        if stride > 1:
            index = rays.pixel[index]
    points = np.empty((len(z), 3), np.float32)
    np.multiply(z, rx, out=points[:, 0])
    np.multiply(z, ry, out=points[:, 1])
    points[:, 2] = z
    return points, index


@functools.lru_cache(maxsize=32)
def _device_rays(intr: Intrinsics, stride: int, device: str) -> tuple[Any, Any, Any]:
    """_rays(intr, stride) as torch tensors on `device`, copied there once."""
    import torch

    rays = _rays(intr, stride)
    return tuple(torch.from_numpy(np.array(a)).to(device) for a in (rays.x, rays.y, rays.pixel))


def backproject_torch(
    depth: np.ndarray,
    intr: Intrinsics,
    *,
    stride: int = 1,
    max_range: float | None = None,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """backproject() computed with torch on `device` (the GPU that runs the model): the depth is
    copied there, the points and their index copied back. The same arrays bit for bit: one
    IEEE float32 product per coordinate and the same comparisons on either side."""
    import torch

    _check_grid(depth, intr, stride)
    rx, ry, pixel = _device_rays(intr, int(stride), str(device))
    host = np.ascontiguousarray(depth[::stride, ::stride], dtype=np.float32)
    if not host.flags.writeable:  # a received message's memory: torch wants its own
        host = host.copy()
    z = torch.from_numpy(host).to(device).reshape(-1)
    keep = z > 0  # False for NaN
    keep &= (z <= max_range) if max_range is not None else (z < math.inf)
    grid = torch.nonzero(keep).squeeze(1)
    z = z[grid]
    points = torch.stack((z * rx[grid], z * ry[grid], z), dim=1)
    return points.cpu().numpy(), pixel[grid].cpu().numpy()


def point_colours(image_bgr: np.ndarray, index: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, 3) uint8 RGB of the points whose pixels are `index` in an image of `shape` (h, w):
    the BGR frame, resized to that shape first when it is another size."""
    h, w = shape
    if image_bgr.shape[:2] != (h, w):
        image_bgr = cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_AREA)
    # whole 3-byte rows, then swapped by OpenCV: 3x faster than indexing a reversed view
    bgr = np.take(np.ascontiguousarray(image_bgr).reshape(-1, 3), index, axis=0)
    if len(bgr) == 0:
        return bgr
    return cv2.cvtColor(bgr[:, None], cv2.COLOR_BGR2RGB).reshape(-1, 3)


def check_frame(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """MessageError unless the frame's geometry is what sinks rely on: a well-formed camera of
    the depth's size, points (N, 3) float32 and points_rgb (N, 3) uint8 with them, and the input
    frame (image) uint8 (H, W, 3) of the source's size."""
    camera = Intrinsics.from_header(header)
    depth = arrays.get("depth")
    if camera is not None and depth is not None and depth.shape != (camera.height, camera.width):
        raise MessageError(f"header camera is {camera.width}x{camera.height}, depth {depth.shape}")
    points, rgb = arrays.get("points"), arrays.get("points_rgb")
    if points is not None and (points.dtype != np.float32 or points.shape[1:] != (3,)):
        raise MessageError(f"points of {points.dtype} {points.shape} are not (N, 3) float32")
    if rgb is not None and (
        points is None or rgb.dtype != np.uint8 or rgb.shape != points.shape
    ):
        raise MessageError(f"points_rgb {rgb.dtype} {rgb.shape} do not match the points")
    image = arrays.get("image")
    if image is not None:
        source = header.get("source_shape")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or (
            isinstance(source, list) and list(image.shape[:2]) != source
        ):
            raise MessageError(f"image {image.dtype} {image.shape} is not the (H, W, 3) uint8 "
                               f"input frame of source_shape {source}")  # fmt: skip
