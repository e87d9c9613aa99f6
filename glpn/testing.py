"""What tests/ and benchmarks/ both need: random checkpoints, synthetic clips, HxW sizes.

In the package (not in tests/) so that benchmarks/*.py, which are scripts and not a package,
import it like everything else after `pip install -e .`, with no sys.path edits. Nothing here is
used by the library or the pipeline at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import socket
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from .config import GLPNConfig
from .hardware import cpu_features
from .model import GLPNForDepthEstimation
from .synthetic import spread_init_, synthetic_image

_SIZE = re.compile(r"\s*(\d+)\s*x\s*(\d+)\s*")


def random_checkpoint(
    path: str | os.PathLike, preset: str = "tiny", *, seed: int = 0, **overrides
) -> str:
    """Write a checkpoint directory (config.json + model.safetensors) of GLPNConfig.preset(preset,
    **overrides) with spread random weights (glpn.synthetic: the depth varies with the image);
    returns the path."""
    torch.manual_seed(seed)
    config = GLPNConfig.preset(preset, **overrides)
    spread_init_(GLPNForDepthEstimation(config), seed=seed).save_pretrained(path)
    return os.fspath(path)


def moving_scene(i: int, height: int, width: int) -> np.ndarray:
    """Frame i (BGR uint8) of a clip: one of 8 synthetic scenes, shifted 3 px per frame, so that
    every frame differs (a swapped or repeated frame shows)."""
    scene = synthetic_image(height, width, seed=i % 8)
    return np.ascontiguousarray(np.roll(scene, 3 * i, axis=1)[..., ::-1])


def write_clip(
    path: str | os.PathLike,
    frames: int,
    height: int,
    width: int,
    *,
    fps: float = 30.0,
    fourcc: str = "MJPG",
    frame: Callable[[int, int, int], np.ndarray] = moving_scene,
) -> str:
    """A video of `frames` frames written by OpenCV (`frame(i, height, width)` -> BGR uint8);
    returns the path. OpenCV's encoders round odd sizes down to even."""
    path = os.fspath(path)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {fourcc} video to {path}")
    try:
        for i in range(frames):
            writer.write(frame(i, height, width))
    finally:
        writer.release()
    return path


def parse_size(text: str) -> tuple[int, int]:
    """'480x640' -> (480, 640); ValueError for anything else."""
    m = _SIZE.fullmatch(text.lower())
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH (e.g. 480x640)")
    return int(m[1]), int(m[2])


def machine_info() -> dict:
    """What a benchmark records about the machine it ran on: lscpu's model name and flags (from
    /proc/cpuinfo on Linux), cores, load, Python, numpy and torch, and the date."""
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_features().summary(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "flags"):
                    info[key.strip().replace(" ", "_")] = value.strip()
                if "model_name" in info and "flags" in info:
                    break
    except OSError:
        info["model_name"] = platform.processor()
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    return info


def write_results(path: str, data: dict) -> str:
    """Writes a benchmark's JSON, {"machine": machine_info(), **data}, to `path`; returns it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"machine": machine_info(), **data}, f, indent=2)
    return path
