"""Point clouds to files: one binary little-endian PLY per frame, as Open3D, CloudCompare,
MeshLab and plyfile read them.

    ply
    format binary_little_endian 1.0
    comment depthstream stream cam0 index 12 frame_id cam0_optical t_wall 1767225600.123456
    element vertex N
    property float x        (metres, REP-103 optical frame: z forward, x right, y down)
    property float y
    property float z
    property uchar red      (with postprocess.points.colour)
    property uchar green
    property uchar blue
    end_header
    N records of 12 (or 15) bytes, no padding
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np

from glpn.fileio import atomic_write, remove_stale_tmp

from .config import PointsSinkConfig
from .results import DepthResult
from .sinks import Sink

XYZ = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
XYZRGB = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                   ("red", "u1"), ("green", "u1"), ("blue", "u1")])  # fmt: skip
_V12, _V3 = np.dtype((np.void, 12)), np.dtype((np.void, 3))  # a vertex's x y z, red green blue
_XYZ_RGB = np.dtype([("xyz", _V12), ("rgb", _V3)])  # XYZRGB's bytes, copied as two blocks


def ply_bytes(
    points: np.ndarray, rgb: np.ndarray | None = None, comments: Sequence[str] = ()
) -> memoryview:
    """(N, 3) float32 points (and (N, 3) uint8 RGB) -> a binary little-endian PLY file. The body is
    copied once, straight into the file's buffer (one write, no concatenation)."""
    dtype = XYZ if rgb is None else XYZRGB
    head = ["ply", "format binary_little_endian 1.0"]
    head += [f"comment {' '.join(c.split())}" for c in comments]  # one line each
    head.append(f"element vertex {len(points)}")
    head += [f"property {'float' if dtype[n] == np.float32 else 'uchar'} {n}" for n in dtype.names]
    head.append("end_header")
    text = ("\n".join(head) + "\n").encode("ascii")
    data = np.empty(len(text) + len(points) * dtype.itemsize, np.uint8)
    data[: len(text)] = np.frombuffer(text, np.uint8)
    xyz = np.ascontiguousarray(points, dtype="<f4").reshape(len(points), 3).view(_V12)
    if rgb is None:
        data[len(text) :].view(_V12)[:] = xyz[:, 0]
    else:  # two fields of raw bytes: one 12-byte and one 3-byte copy per vertex
        records = data[len(text) :].view(_XYZ_RGB)
        records["xyz"] = xyz[:, 0]
        records["rgb"] = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1, 3).view(_V3)[:, 0]
    return memoryview(data)


class PlySink(Sink):
    """DIR/<stream>/<index:06d>.ply (DIR/<index:06d>.ply with the flat layout) for each frame
    that has a point cloud (its stream has a camera); written atomically, like the depth files.
    A frame whose every pixel is invalid gets a PLY with no vertices."""

    def __init__(self, config: PointsSinkConfig) -> None:
        self.config = config
        self._streams: dict[str, str] = {}  # stream -> its folder, once a file is in it
        self.written = 0

    def write(self, result: DepthResult) -> None:
        if result.points is None:
            return
        folder = self._streams.get(result.stream)
        if folder is None:
            folder = self.config.folder(result.stream)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create {folder}: {e.strerror or e}") from None
            with contextlib.suppress(OSError):
                remove_stale_tmp(folder)  # left by a run that was killed while writing
            self._streams[result.stream] = folder
        h = result.header
        comment = (f"depthstream stream {result.stream} index {result.index} "
                   f"frame_id {h.get('frame_id', '')} t_wall {h.get('t_wall', 0):.6f}")  # fmt: skip
        data = ply_bytes(result.points, result.points_rgb, [comment])
        atomic_write(os.path.join(folder, f"{result.index:06d}.ply"), data)
        self.written += 1

    def files(self) -> dict[str, str]:
        flat = self.config.layout == "flat"
        return {
            "point clouds (ply)" + ("" if flat else f", {s}"): os.path.join(folder, "")
            for s, folder in self._streams.items()
        }
