"""Colourised depth with a fixed metric range, so colours mean the same distance in every frame."""

from __future__ import annotations

import cv2
import numpy as np

_NAMES = (
    "autumn", "bone", "jet", "winter", "rainbow", "ocean", "summer", "spring", "cool", "hsv",
    "pink", "hot", "parula", "magma", "inferno", "plasma", "viridis", "cividis", "twilight",
    "turbo",
)  # fmt: skip
COLORMAPS = {name: getattr(cv2, f"COLORMAP_{name.upper()}") for name in _NAMES}


def colorize(
    depth: np.ndarray, depth_range: tuple[float, float], colormap: str = "inferno"
) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) BGR uint8; `near` maps to the bright end, beyond `far` saturates.

    The range is fixed (from the config or the model's max depth), never the frame's own min/max,
    which would make the colours flicker from frame to frame.
    """
    return cv2.applyColorMap(levels(depth, depth_range), COLORMAPS[colormap])


def levels(depth: np.ndarray, depth_range: tuple[float, float]) -> np.ndarray:
    """(H, W) metres -> (H, W) uint8 colour levels: `near` 255, `far` and beyond 0 (also NaN);
    the colour of a pixel is the colormap's entry at its level."""
    near, far = depth_range
    scale = 255.0 / (far - near)
    level = (far - np.nan_to_num(depth, nan=far, posinf=far, neginf=near)) * scale  # near -> 255
    return np.clip(level, 0, 255).astype(np.uint8)


def side_by_side(image: np.ndarray, view: np.ndarray) -> np.ndarray:
    """Input frame (BGR) left of the colourised depth, both at the depth view's height."""
    return np.hstack([fit(image, *view.shape[:2]), view])


def fit(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """The input frame at the depth's size (H, W), as side_by_side puts it beside the depth."""
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return image
