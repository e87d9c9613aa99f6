"""Ranges and checks shared by the config dataclasses: every number finite and within what the
code and the OS accept; a bad value raises ConfigError naming the key and the range."""

from __future__ import annotations

import math
import re
import reprlib
from typing import Any

from .errors import ConfigError
from .limits import MAX_IMAGE_SIDE, MAX_INPUT_SIDE

SOURCE_KINDS = ("auto", "camera", "file", "url", "images", "external")
SOURCE_MODES = ("auto", "live", "lossless")
SOURCE_READERS = ("auto", "opencv", "pyav")  # what reads a URL; auto: PyAV when installed
RTSP_TRANSPORTS = ("auto", "tcp", "udp")  # FFmpeg's rtsp_transport; auto: its own choice
TRANSPORTS = ("inproc", "ipc", "tcp")
FILE_LAYOUTS = ("per_stream", "flat")
RECORD_IMAGES = ("none", "view", "input")  # the colourised view | the input frame
WEB_ENCODINGS = ("auto", "levels", "jpeg")  # how outputs.web sends the colourised depth
RECORD_COMPRESSIONS = ("auto", "zstd", "lz4", "none")  # auto: lz4 with point clouds, else zstd

MAX_SOURCES = 256  # each source is a capture thread with its own sockets

# Ranges of numbers (inclusive). Upper ends are what the code and the OS accept (zmq options are
# C ints, `time.monotonic() + timeout` must stay a time) and far beyond any sensible setting.
MAX_SECONDS = 3600.0  # timeouts and reconnect delays
MIN_FPS = 0.01  # one frame per 100 s; OpenCV's video writers refuse much less
MAX_DEPTH_M = 10_000.0  # colour range of the view, metres
MAX_HWM = 1_000_000  # zmq high-water marks, messages
MAX_MESSAGE_BYTES = 1 << 31  # 2 GiB; zmq's MAXMSGSIZE takes an int64, a frame is far smaller
MAX_LINGER_MS = 60_000  # zmq's LINGER is a C int of milliseconds
MAX_FOCAL_PX = 1e6  # focal lengths, pixels (a 16384-pixel-wide image at a 0.9 degree field of view)
MAX_HFOV_DEG = 179.0  # horizontal field of view of a pinhole camera: below 180 degrees
MAX_POINTS_STRIDE = 64  # point clouds: keep every stride-th pixel in each direction
# Frame ids (ROS tf names): one safe token, slashes allowed (namespaces), no spaces.
FRAME_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$")

_repr = reprlib.Repr()  # never builds more than a few hundred characters, whatever the value
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6
_repr.maxlevel = 3


def _short(value: Any) -> str:
    """repr(value) in at most 100 characters, without ever building the whole repr."""
    try:
        text = _repr.repr(value)
    except Exception:  # e.g. an int too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else text[:97] + "..."


class _Invalid(ConfigError):
    """A field's value is invalid; load_config adds the dotted path of the section to the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _Invalid(key, message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)  # 3600, not 3600.0 or 3.6e+03


def _in_range(value: Any, key: str, lo: float, hi: float, *, above: bool = False) -> None:
    """value must be a finite number in lo..hi (above=True: > lo); None passes (auto)."""
    if value is None:
        return
    ok = _is_number(value) and (isinstance(value, int) or math.isfinite(value))
    ok = ok and (value > lo if above else value >= lo) and value <= hi
    where = f"> {_num(lo)} and <= {_num(hi)}" if above else f"in {_num(lo)}..{_num(hi)}"
    _require(ok, key, f"must be {where}, got {_short(value)}")


def _check_size(value: tuple[int, int] | None, key: str, hi: int = MAX_INPUT_SIDE) -> None:
    if value is None:
        return
    _require(
        len(value) == 2 and all(_is_number(v) and 32 <= v <= hi and v % 32 == 0 for v in value),
        key,
        f"must be [height, width], multiples of 32 in 32..{hi}, got {_short(list(value))}",
    )


def _check_camera(intrinsics: tuple[float, ...] | None, hfov_deg: float | None) -> None:
    """A source's pinhole camera: intrinsics fx, fy, cx, cy or a horizontal field of view."""
    _require(intrinsics is None or hfov_deg is None, "hfov_deg",
             "give intrinsics or hfov_deg, not both")  # fmt: skip
    if intrinsics is not None:
        _require(len(intrinsics) == 4 and all(_is_number(v) for v in intrinsics), "intrinsics",
                 f"must be [fx, fy, cx, cy], got {_short(intrinsics)}")  # fmt: skip
        for i, (name, hi) in enumerate((("fx", MAX_FOCAL_PX), ("fy", MAX_FOCAL_PX),
                                        ("cx", MAX_IMAGE_SIDE), ("cy", MAX_IMAGE_SIDE))):
            _in_range(intrinsics[i], f"intrinsics[{i}] ({name})", 0, hi, above=i < 2)
    _in_range(hfov_deg, "hfov_deg", 0, MAX_HFOV_DEG, above=True)


def _endpoint_ok(endpoint: str) -> bool:
    return bool(re.match(r"^(tcp|ipc|inproc)://.+", endpoint))
