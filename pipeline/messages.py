"""Wire format of stages and subscribers: a JSON header plus raw array buffers, never pickle.

A message is multipart: ``[topic?, header, buffer_0, buffer_1, ...]``. The header is a UTF-8 JSON
object::

    {"v": 1, "kind": "frame" | "eos", "stream": "cam0", "index": 12, "t_mono": ..., "t_wall": ...,
     "arrays": [{"name": "depth", "dtype": "float32", "shape": [241, 317]}], ...}

followed by one buffer per entry of ``arrays``, little-endian, C order. Sending uses
``copy=False``, so inside one process (inproc://) a receiver sees the sender's memory; received
arrays are read-only views of the message frames. `decode` checks everything a hostile or broken
peer could get wrong (JSON, required fields, dtype whitelist, shape against buffer size, size
limits) and raises `MessageError`; stages drop and count such messages instead of crashing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from .errors import MessageError

VERSION = 1
KINDS = ("frame", "eos")
MAX_HEADER_BYTES = 64 * 1024  # headers are small; a huge one is an attack or a bug
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # all buffers of one message together
MAX_NDIM = 4
# Wire dtype names -> little-endian numpy dtypes (no object/void dtypes: they could carry code).
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
# Fields every frame header carries, with the JSON types they must have.
FRAME_FIELDS: dict[str, tuple[type, ...]] = {
    "stream": (str,),
    "index": (int,),
    "t_mono": (int, float),
    "t_wall": (int, float),
    "mode": (str,),
    "source_shape": (list,),
}
MODES = ("live", "lossless")


@dataclass
class Message:
    """A decoded message: the header dict and its arrays by name (read-only views of the frames)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def stream(self) -> str:
        return self.header["stream"]

    def array(self, name: str, *, dtype: str | None = None, ndim: int | None = None) -> np.ndarray:
        """The array `name`, checked; a missing or mistyped array is a MessageError."""
        arr = self.arrays.get(name)
        if arr is None:
            raise MessageError(f"message has no {name!r} array (has {sorted(self.arrays)})")
        if dtype is not None and arr.dtype != DTYPES[dtype]:
            raise MessageError(f"array {name!r} has dtype {arr.dtype}, expected {dtype}")
        if ndim is not None and arr.ndim != ndim:
            raise MessageError(f"array {name!r} has shape {arr.shape}, expected {ndim} dimensions")
        return arr


def _dtype_name(dtype: np.dtype) -> str:
    for name, dt in DTYPES.items():
        if dt == dtype:
            return name
    raise MessageError(f"dtype {dtype} cannot be sent; allowed: {sorted(DTYPES)}")


def encode(
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    topic: bytes | None = None,
) -> list[Any]:
    """Header + arrays -> message parts (arrays passed as buffers, not copied)."""
    head = dict(header)
    head.setdefault("v", VERSION)
    specs, buffers = [], []
    for name, arr in (arrays or {}).items():
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"array {name!r} is a {type(arr).__name__}, expected numpy.ndarray")
        if arr.ndim > MAX_NDIM:
            raise MessageError(f"array {name!r} has {arr.ndim} dimensions; at most {MAX_NDIM}")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)  # no copy when already C-contiguous
        specs.append({"name": name, "dtype": _dtype_name(arr.dtype), "shape": list(arr.shape)})
        buffers.append(arr)
    head["arrays"] = specs
    parts: list[Any] = [] if topic is None else [topic]
    parts.append(json.dumps(head, separators=(",", ":"), allow_nan=False).encode())
    parts.extend(buffers)
    return parts


def _buffer(part: Any) -> memoryview:
    if isinstance(part, zmq.Frame):
        return part.buffer
    return memoryview(part)


def _check_int(value: Any, what: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise MessageError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def decode(
    parts: Sequence[Any], *, topic: bool = False, max_bytes: int = DEFAULT_MAX_BYTES
) -> Message:
    """Message parts (zmq.Frame or bytes) -> Message, or MessageError saying what is wrong."""
    parts = list(parts)
    if topic:
        if not parts:
            raise MessageError("empty message")
        parts = parts[1:]
    if not parts:
        raise MessageError("empty message")
    raw = _buffer(parts[0])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise MessageError(f"header is {raw.nbytes} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MessageError(f"header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise MessageError(f"header is a JSON {type(header).__name__}, expected an object")
    if header.get("v") != VERSION:
        raise MessageError(f"header version is {header.get('v')!r}, expected {VERSION}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise MessageError(f"header kind is {kind!r}, expected one of {list(KINDS)}")
    if not isinstance(header.get("stream"), str) or not header["stream"]:
        raise MessageError(
            f"header stream is {header.get('stream')!r}, expected a non-empty string"
        )
    if kind == "frame":
        for name, types in FRAME_FIELDS.items():
            value = header.get(name)
            if not isinstance(value, types) or isinstance(value, bool):
                raise MessageError(f"frame header field {name!r} is missing or mistyped: {value!r}")
        _check_int(header["index"], "index")
        if not all(math.isfinite(header[k]) for k in ("t_mono", "t_wall")):
            raise MessageError("frame header timestamps must be finite numbers")
        if header["mode"] not in MODES:
            raise MessageError(f"frame header mode is {header['mode']!r}, expected {list(MODES)}")
        shape = header["source_shape"]
        if len(shape) != 2:
            raise MessageError(f"source_shape must be [height, width], got {shape!r}")
        for v in shape:
            _check_int(v, "source_shape entries", 1)
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise MessageError("header field 'arrays' must be a list")
    if len(specs) != len(parts) - 1:
        raise MessageError(f"header lists {len(specs)} arrays but {len(parts) - 1} buffers follow")
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for spec, part in zip(specs, parts[1:]):
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise MessageError(f"array spec must have exactly name, dtype, shape: {spec!r}")
        name, dtype_name, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or not name or name in arrays:
            raise MessageError(f"array name {name!r} is empty, not a string or repeated")
        dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise MessageError(f"array {name!r}: dtype {dtype_name!r} not in {sorted(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise MessageError(f"array {name!r}: shape {shape!r} is not a list of <= {MAX_NDIM}")
        for v in shape:
            _check_int(v, f"array {name!r} shape entries")
        expected = math.prod(shape) * dtype.itemsize
        buf = _buffer(part)
        if buf.nbytes != expected:
            raise MessageError(
                f"array {name!r}: shape {shape} {dtype_name} needs {expected} bytes, "
                f"buffer has {buf.nbytes}"
            )
        total += expected
        if total > max_bytes:
            raise MessageError(f"message arrays exceed the {max_bytes}-byte limit")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        arr.flags.writeable = False  # shares memory with the sender inside one process
        arrays[name] = arr
    return Message(header, arrays)


def writable(arr: np.ndarray) -> np.ndarray:
    """A writable alias of a received array (no copy), for APIs that refuse read-only buffers.

    torch.from_numpy warns on read-only arrays; callers must still not write into it.
    """
    view = arr.view()
    try:
        view.flags.writeable = True
    except ValueError:  # memory we may not alias writably: copy
        view = arr.copy()
    return view


def send(
    sock: zmq.Socket,
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    flags: int = 0,
    topic: bytes | None = None,
) -> None:
    """Encode and send without copying the array buffers."""
    sock.send_multipart(encode(header, arrays, topic=topic), flags=flags, copy=False)


def recv(
    sock: zmq.Socket, *, flags: int = 0, topic: bool = False, max_bytes: int = DEFAULT_MAX_BYTES
) -> Message:
    """Receive and decode one message (MessageError if malformed; it is consumed either way)."""
    return decode(sock.recv_multipart(flags=flags, copy=False), topic=topic, max_bytes=max_bytes)


def stamp(header: Mapping[str, Any], stage: str, t_start: float, t_end: float) -> dict[str, Any]:
    """A copy of `header` with `stage`'s work time and its wait since the previous stage (ms).

    stage_ms: time spent working on the frame; wait_ms: time it sat in queues, batches or a
    newest-frame slot before this stage started on it. Monotonic clocks: one host only.
    """
    out = dict(header)
    previous = header.get("t_last", header.get("t_mono", t_start))
    out["stage_ms"] = {**header.get("stage_ms", {}), stage: round((t_end - t_start) * 1000, 3)}
    out["wait_ms"] = {
        **header.get("wait_ms", {}),
        stage: round(max(0.0, t_start - previous) * 1000, 3),
    }
    out["t_last"] = t_end
    return out


def eos_header(stream: str) -> dict[str, Any]:
    """End of a stream: every frame of `stream` sent before it has been delivered."""
    return {"v": VERSION, "kind": "eos", "stream": stream}
