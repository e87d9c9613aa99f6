"""ROS 2 messages of a DepthResult, as plain dicts, and their message definitions.

Shared by the MCAP recording (pipeline.record_mcap) and the live Foxglove server: one place knows
the topics, the schemas and how a frame becomes sensor_msgs. Needs only numpy; the libraries that
encode the dicts (mcap-ros2-support, foxglove-sdk) are imported by the sinks that use them.

Conventions: depth is float32 metres with invalid = NaN (REP-118); frames are REP-103 optical
(z forward, x right, y down); every stamp is the frame's capture wall-clock time, header["t_wall"].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .results import DepthResult

# The definitions in the concatenated form of ROS 2 bags (rosbag2's MCAP storage, Foxglove and
# mcap-ros2-support read it): the message's own fields, then each type it uses after a separator
# line and "MSG: <package>/<Type>". Comments are left out; the fields are ROS 2's (Humble on).
_SEPARATOR = "=" * 80
_TIME = "int32 sec\nuint32 nanosec\n"
_HEADER = "builtin_interfaces/Time stamp\nstring frame_id\n"
_ROI = "uint32 x_offset\nuint32 y_offset\nuint32 height\nuint32 width\nbool do_rectify\n"
_POINT_FIELD = (
    "uint8 INT8=1\nuint8 UINT8=2\nuint8 INT16=3\nuint8 UINT16=4\nuint8 INT32=5\nuint8 UINT32=6\n"
    "uint8 FLOAT32=7\nuint8 FLOAT64=8\n"
    "string name\nuint32 offset\nuint8 datatype\nuint32 count\n"
)
_IMAGE = (
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\n"
    "uint32 step\nuint8[] data\n"
)
_CAMERA_INFO = (
    "std_msgs/Header header\nuint32 height\nuint32 width\nstring distortion_model\nfloat64[] d\n"
    "float64[9] k\nfloat64[9] r\nfloat64[12] p\nuint32 binning_x\nuint32 binning_y\n"
    "sensor_msgs/RegionOfInterest roi\n"
)
_POINT_CLOUD2 = (
    "std_msgs/Header header\nuint32 height\nuint32 width\nsensor_msgs/PointField[] fields\n"
    "bool is_bigendian\nuint32 point_step\nuint32 row_step\nuint8[] data\nbool is_dense\n"
)


def _definition(main: str, *deps: tuple[str, str]) -> str:
    return main + "".join(f"{_SEPARATOR}\nMSG: {name}\n{text}" for name, text in deps)


_STAMPED = (("std_msgs/Header", _HEADER), ("builtin_interfaces/Time", _TIME))

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD2 = "sensor_msgs/msg/PointCloud2"

# Schema name -> ROS 2 message definition text (schema encoding "ros2msg", messages "cdr").
SCHEMAS: dict[str, str] = {
    IMAGE: _definition(_IMAGE, *_STAMPED),
    CAMERA_INFO: _definition(
        _CAMERA_INFO, *_STAMPED, ("sensor_msgs/RegionOfInterest", _ROI)
    ),
    POINT_CLOUD2: _definition(
        _POINT_CLOUD2, *_STAMPED, ("sensor_msgs/PointField", _POINT_FIELD)
    ),
}

# Topic kind -> schema name; topics are /depthstream/<stream>/<kind>.
TOPICS: dict[str, str] = {
    "depth": IMAGE,
    "camera_info": CAMERA_INFO,
    "points": POINT_CLOUD2,
    "image": IMAGE,
}

_FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32
_INT32_MAX = 2**31 - 1


def topic(stream: str, kind: str) -> str:
    """/depthstream/<stream>/<kind>, kind one of TOPICS."""
    return f"/depthstream/{stream}/{kind}"


def stamp_ns(result: DepthResult) -> int:
    """The frame's capture wall-clock time (header["t_wall"], float seconds) in integer
    nanoseconds, >= 0: whole seconds and fraction apart, so 1700000000.25 gives ...250000000
    exactly (t_wall * 1e9 would be off by up to 128 ns)."""
    t = max(0.0, float(result.header["t_wall"]))
    sec = math.floor(t)
    return sec * 1_000_000_000 + round((t - sec) * 1e9)  # t - sec is exact


def frame_id(result: DepthResult) -> str:
    """The camera's frame: header["frame_id"], else "<stream>_optical"."""
    return result.header.get("frame_id") or f"{result.stream}_optical"


def header(result: DepthResult) -> dict[str, Any]:
    """std_msgs/Header: stamp = capture wall-clock time (sec clamped to int32), frame_id."""
    sec, nanosec = divmod(stamp_ns(result), 1_000_000_000)
    return {
        "stamp": {"sec": min(sec, _INT32_MAX), "nanosec": nanosec},
        "frame_id": frame_id(result),
    }


def depth_metres(depth: np.ndarray) -> np.ndarray:
    """float32 metres, C order, with every non-finite or <= 0 value NaN (REP-118)."""
    d = np.asarray(depth, dtype=np.float32)
    return np.ascontiguousarray(np.where(np.isfinite(d) & (d > 0), d, np.float32(np.nan)))


def _image(result: DepthResult, pixels: np.ndarray, encoding: str) -> dict[str, Any]:
    pixels = np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    return {
        "header": header(result),
        "height": h,
        "width": w,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": pixels.strides[0],  # bytes per row (C order: width * bytes per pixel)
        "data": pixels.tobytes(),  # little-endian (numpy's native order on every platform we run)
    }


def depth_image(result: DepthResult) -> dict[str, Any]:
    """sensor_msgs/msg/Image, encoding 32FC1: float32 metres, invalid = NaN."""
    return _image(result, depth_metres(result.depth), "32FC1")


def bgr_image(result: DepthResult, pixels: np.ndarray | None) -> dict[str, Any] | None:
    """sensor_msgs/msg/Image, bgr8, of a BGR uint8 (H, W, 3) image of the frame (result.view, the
    colourised view, or result.image, the input frame); None without one."""
    if pixels is None:
        return None
    return _image(result, np.asarray(pixels, dtype=np.uint8), "bgr8")


def camera_info(result: DepthResult) -> dict[str, Any] | None:
    """sensor_msgs/msg/CameraInfo of the depth as delivered (header["camera"]: fx, fy, cx, cy,
    width, height in pixels); None when the intrinsics are unknown. No distortion (plumb_bob with
    zero coefficients), R identity, P = [K | 0]."""
    cam = result.header.get("camera")
    if not isinstance(cam, dict):
        return None
    fx, fy, cx, cy = (float(cam[k]) for k in ("fx", "fy", "cx", "cy"))
    return {
        "header": header(result),
        "height": int(cam["height"]),
        "width": int(cam["width"]),
        "distortion_model": "plumb_bob",
        "d": [0.0] * 5,
        "k": [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
        "binning_x": 0,
        "binning_y": 0,
        "roi": {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False},
    }


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 R, G, B -> (N,) float32 whose bits are 0x00RRGGBB (PCL's packed `rgb`, which
    rviz and Foxglove read)."""
    c = np.asarray(rgb, dtype=np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def point_cloud(result: DepthResult) -> dict[str, Any] | None:
    """sensor_msgs/msg/PointCloud2, unorganised (height 1), in the camera's optical frame: x, y, z
    float32 metres, plus `rgb` (float32-packed 0x00RRGGBB) when result.points_rgb is there;
    None without points. Invalid pixels were dropped when the points were made, so is_dense."""
    points = getattr(result, "points", None)
    if points is None:
        return None
    points = np.ascontiguousarray(points, dtype="<f4").reshape(-1, 3)
    rgb = getattr(result, "points_rgb", None)
    names = ["x", "y", "z"] + (["rgb"] if rgb is not None else [])
    if rgb is None:
        record = points  # x y z already: no interleaving
    else:
        record = np.empty(len(points), dtype=[(n, "<f4") for n in names])
        record["x"], record["y"], record["z"] = points[:, 0], points[:, 1], points[:, 2]
        record["rgb"] = pack_rgb(np.asarray(rgb).reshape(-1, 3))
    step = 4 * len(names)
    return {
        "header": header(result),
        "height": 1,
        "width": len(points),
        "fields": [
            {"name": n, "offset": 4 * i, "datatype": _FLOAT32, "count": 1}
            for i, n in enumerate(names)
        ],
        "is_bigendian": False,
        "point_step": step,
        "row_step": step * len(points),
        "data": record.tobytes(),
        "is_dense": True,
    }
