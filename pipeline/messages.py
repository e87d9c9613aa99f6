"""Wire format of stages and subscribers: a JSON header plus raw array buffers, never pickle.

A message is multipart: ``[topic?, header, buffer_0, buffer_1, ...]``. The header is a UTF-8 JSON
object::

    {"v": 1, "kind": "frame" | "eos", "stream": "cam0", "index": 12, "t_mono": ..., "t_wall": ...,
     "arrays": [{"name": "depth", "dtype": "float32", "shape": [241, 317]}], ...}

followed by one buffer per entry of ``arrays``, little-endian, C order. Sending uses
``copy=False``, so inside one process (inproc://) a receiver sees the sender's memory; received
arrays are read-only views of the message frames. `decode` is the one place that checks what a
hostile or broken peer could get wrong, and raises `MessageError` for all of it (never another
exception): JSON, every number (finite floats, integers within int64, anywhere in the header),
required fields and their ranges (stream ids as in the config, timestamps, the source size a
frame declares), the topic against the stream, the dtype whitelist, shapes against buffer sizes,
size limits. Stages and subscribers drop and count such messages instead of crashing.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from .errors import MessageError
from .limits import MAX_FPS, MAX_IMAGE_SIDE, STREAM_ID

VERSION = 1
KINDS = ("frame", "eos")
MAX_HEADER_BYTES = 64 * 1024  # headers are small; a huge one is an attack or a bug
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # all buffers of one message together
MAX_NDIM = 4
MAX_INT = 2**63 - 1  # JSON integers must fit an int64 (numpy, C and other languages' readers)
MAX_TIME_S = 1e10  # |t_mono|, |t_wall|, t_last: seconds (t_wall 1e10 is the year 2286)
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
# Optional frame fields that stages read, when present: numbers in (low, high]; fps may be null.
FRAME_NUMBERS: dict[str, tuple[float, float]] = {
    "t_last": (-MAX_TIME_S, MAX_TIME_S),
    "fps": (0.0, MAX_FPS),
    "max_depth": (0.0, math.inf),
    "latency_ms": (-math.inf, math.inf),
}
FRAME_TIMINGS = ("stage_ms", "wait_ms")  # optional {stage: milliseconds}


def stream_topic(stream: str) -> bytes:
    """PUB topic of a stream: depth/<stream>/ (subscribe to it for that stream, b"" for all)."""
    return f"depth/{stream}/".encode()


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


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80  # what a peer sent, quoted in an error: never 64 KiB of it


def _short(value: Any) -> str:
    return _repr.repr(value)


def _check_int(value: Any, what: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise MessageError(
            f"{what} must be an integer in [{minimum}, {maximum}], got {_short(value)}"
        )
    return value


def _check_number(value: Any, what: str, low: float, high: float) -> float:
    """A JSON number in (low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value <= high:
        raise MessageError(f"{what} must be a number in ({low}, {high}], got {_short(value)}")
    return value


def _json_int(text: str) -> int:
    # Decimal digits only (JSON); checked before int() so that 60,000 digits cost nothing.
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > MAX_INT:
        raise MessageError(f"integer {text[:24]}... does not fit an int64")
    return value


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise MessageError(f"number {text[:24]} is not a finite float64")
    return value


def _json_constant(name: str) -> Any:
    raise MessageError(f"{name} is not a JSON number")


def _parse_header(raw: memoryview) -> dict[str, Any]:
    """The UTF-8 JSON object of a header; every number in it finite and within int64."""
    try:
        header = json.loads(
            raw.tobytes().decode("utf-8"),
            parse_int=_json_int,
            parse_float=_json_float,
            parse_constant=_json_constant,
        )
    except MessageError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: [[[[...
        raise MessageError(f"header is not UTF-8 JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise MessageError(f"header is a JSON {type(header).__name__}, expected an object")
    return header


def _check_frame_header(header: dict[str, Any], max_bytes: int) -> None:
    for name, types in FRAME_FIELDS.items():
        value = header.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            raise MessageError(
                f"frame header field {name!r} is missing or mistyped: {_short(value)}"
            )
    _check_int(header["index"], "index")
    for name in ("t_mono", "t_wall"):
        _check_number(header[name], name, -MAX_TIME_S, MAX_TIME_S)
    if header["mode"] not in MODES:
        raise MessageError(f"frame header mode is {_short(header['mode'])}, expected {list(MODES)}")
    shape = header["source_shape"]
    if len(shape) != 2:
        raise MessageError(f"source_shape must be [height, width], got {_short(shape)}")
    for v in shape:
        _check_int(v, "source_shape entries", 1, MAX_IMAGE_SIDE)
    # Postprocess resizes the depth back to this size and sends it on: a size whose depth alone
    # could not be sent must not make it allocate (30000x30000 would be 3.6 GB).
    if shape[0] * shape[1] * 4 > max_bytes:
        raise MessageError(
            f"source_shape {shape}: its float32 depth would exceed the {max_bytes}-byte limit"
        )
    for name, (low, high) in FRAME_NUMBERS.items():
        if name in header and not (name == "fps" and header[name] is None):  # null: unknown fps
            _check_number(header[name], name, low, high)
    for name in FRAME_TIMINGS:
        timings = header.get(name, {})
        if not isinstance(timings, dict):
            raise MessageError(f"frame header field {name!r} must be an object: {_short(timings)}")
        for stage, ms in timings.items():
            _check_number(ms, f"{name}[{_short(stage)}]", -math.inf, math.inf)


def decode(
    parts: Sequence[Any], *, topic: bool = False, max_bytes: int = DEFAULT_MAX_BYTES
) -> Message:
    """Message parts (zmq.Frame or bytes) -> Message, or MessageError saying what is wrong.

    topic=True: the first part is the PUB topic, which must be `stream_topic` of the header's
    stream (so a non-UTF-8 topic never is)."""
    parts = list(parts)
    if not parts or (topic and len(parts) < 2):
        raise MessageError("empty message")
    raw = _buffer(parts[1 if topic else 0])
    if raw.nbytes > MAX_HEADER_BYTES:
        raise MessageError(f"header is {raw.nbytes} bytes; the limit is {MAX_HEADER_BYTES}")
    header = _parse_header(raw)
    if header.get("v") != VERSION:
        raise MessageError(f"header version is {_short(header.get('v'))}, expected {VERSION}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise MessageError(f"header kind is {_short(kind)}, expected one of {list(KINDS)}")
    stream = header.get("stream")
    if not isinstance(stream, str) or not STREAM_ID.fullmatch(stream):
        raise MessageError(f"header stream is {_short(stream)}, expected {STREAM_ID.pattern}")
    if topic:
        got, expected = _buffer(parts[0]), stream_topic(stream)
        if got.nbytes != len(expected) or got.tobytes() != expected:
            raise MessageError(f"topic {_short(bytes(got[:100]))} does not match stream {stream!r}")
        parts = parts[1:]
    if kind == "frame":
        _check_frame_header(header, max_bytes)
    specs = header.get("arrays", [])
    if not isinstance(specs, list):
        raise MessageError("header field 'arrays' must be a list")
    if len(specs) != len(parts) - 1:
        raise MessageError(f"header lists {len(specs)} arrays but {len(parts) - 1} buffers follow")
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for spec, part in zip(specs, parts[1:]):
        if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"}:
            raise MessageError(f"array spec must have exactly name, dtype, shape: {_short(spec)}")
        name, dtype_name, shape = spec["name"], spec["dtype"], spec["shape"]
        if not isinstance(name, str) or not name or name in arrays:
            raise MessageError(f"array name {_short(name)} is empty, not a string or repeated")
        dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise MessageError(
                f"array {name!r}: dtype {_short(dtype_name)} not in {sorted(DTYPES)}"
            )
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise MessageError(
                f"array {name!r}: shape {_short(shape)} is not a list of <= {MAX_NDIM}"
            )
        for v in shape:  # >= 1: with the buffer size check below, no dimension can be absurd
            _check_int(v, f"array {name!r} shape entries", 1)
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
