"""Render the demo clip `assets/demo.mp4`: a synthetic road scene, the camera driving forward.

A ground plane with a perspective checkerboard, a sky gradient, and boxes of several sizes standing
at known distances that come closer frame by frame, so the scene's depth changes from frame to frame
(a real depth model sees the boxes approach; random weights at least react to the motion).
Deterministic; the committed clip was made with `python assets/make_demo.py` (320x240, 60 frames at
15 fps, mp4v).
"""

from __future__ import annotations

import argparse
import os

import cv2
import numpy as np

HORIZON = 0.42  # horizon line, fraction of the height
CAMERA_HEIGHT = 1.6  # metres above the ground
SPEED = 0.35  # metres the camera moves forward per frame


def render(index: int, height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """Frame `index` of the scene, HxWx3 uint8 BGR."""
    f = 0.9 * width  # focal length in pixels
    cx, hy = width / 2, HORIZON * height
    travelled = index * SPEED
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.empty((height, width, 3), np.float32)

    # sky: light near the horizon, deeper blue above
    t = np.clip(y / hy, 0, 1)[..., None]
    img[:] = (1 - t) * np.array([200, 140, 90]) + t * np.array([235, 215, 190])

    # ground: checkerboard 2 m x 2 m in world coordinates, seen in perspective, scrolling towards us
    ground = y > hy + 0.5
    z = f * CAMERA_HEIGHT / np.maximum(y - hy, 0.5)  # distance of the ground point (m)
    xw = (x - cx) * z / f
    checker = (np.floor(xw / 2.0) + np.floor((z + travelled) / 2.0)) % 2
    shade = np.clip(1.2 - z / 60.0, 0.35, 1.0)[..., None]  # haze with distance
    road = np.where(checker[..., None] > 0, [90, 95, 100], [150, 150, 145]) * shade
    img[ground] = road[ground]

    # boxes at fixed world positions; drawn far to near so nearer ones cover farther ones
    rng = np.random.default_rng(seed)
    boxes = []
    for k in range(10):
        side = -1 if k % 2 else 1
        bx = side * rng.uniform(1.5, 5.0)
        bz = 6.0 + k * 4.0 + rng.uniform(0, 2.0)
        bw, bh = rng.uniform(0.8, 2.2), rng.uniform(0.8, 3.0)
        color = rng.uniform(40, 230, 3)
        boxes.append((bx, bz, bw, bh, color))
    period = 6.0 + 10 * 4.0  # boxes reappear in the distance after passing the camera
    visible = []
    for bx, bz, bw, bh, color in boxes:
        zc = (bz - travelled) % period
        if zc > 1.2:
            visible.append((zc, bx, bw, bh, color))
    for zc, bx, bw, bh, color in sorted(visible, key=lambda b: -b[0]):
        bottom = hy + f * CAMERA_HEIGHT / zc
        top = bottom - f * bh / zc
        left, right = cx + f * (bx - bw / 2) / zc, cx + f * (bx + bw / 2) / zc
        y0, y1 = int(max(top, 0)), int(min(bottom, height))
        x0, x1 = int(max(left, 0)), int(min(right, width))
        if y1 <= y0 or x1 <= x0:
            continue
        haze = np.clip(1.2 - zc / 60.0, 0.35, 1.0)
        patch = y[y0:y1, x0:x1] - top  # vertical shading: lighter at the top
        light = (1.1 - 0.4 * patch / max(bottom - top, 1))[..., None]
        img[y0:y1, x0:x1] = np.asarray(color) * light * haze

    img += np.random.default_rng(seed + index).normal(0, 3, img.shape)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_clip(path: str, frames: int = 60, fps: float = 15.0, height: int = 240, width: int = 320):
    """Write the clip with OpenCV (mp4v in .mp4, MJPG in .avi: what its bundled FFmpeg encodes)."""
    fourcc = "MJPG" if path.lower().endswith(".avi") else "mp4v"
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write {path}")
    try:
        for i in range(frames):
            writer.write(render(i, height, width))
    finally:
        writer.release()


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path", nargs="?", default=os.path.join(here, "demo.mp4"), help="output file")
    p.add_argument("--frames", type=int, default=60, help="number of frames (default 60)")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate (default 15)")
    p.add_argument("--size", default="240x320", help="HEIGHTxWIDTH (default 240x320)")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    write_clip(args.path, args.frames, args.fps, h, w)
    print(f"wrote {args.path}: {args.frames} frames, {w}x{h}, {args.fps:g} fps")


if __name__ == "__main__":
    main()
