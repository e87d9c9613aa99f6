"""The hub <-> inference worker protocol: ROUTER (hub) / DEALER (worker), as the ZeroMQ guide's
load-balancing broker with credit, and its Paranoid Pirate heartbeats both ways.

Every message is multipart, a command first, then a JSON object, then raw buffers (never pickle):

    worker -> hub  READY     {"v": 1, "name", "host", "pid", "device", "engine", "batch", "credit",
                              "max_depth" (metres, or null)}
    hub -> worker  BATCH     {"id", "frames": [{"stream", "index"}, ...],
                              "pixels": {"dtype": "uint8" | "float32", "shape": [B, 3, h, w]}}
                             + the pixels buffer
    worker -> hub  RESULT    {"id", "ms", "shape": [B, h, w]} + float32 depth buffer (metres)
    worker -> hub  FAILED    {"id", "error"}   (the engine raised on that batch)
    either         HEARTBEAT {}                (every heartbeat_s when nothing else was sent)
    either         DISCONNECT {"reason"}       (a clean goodbye: no need to wait for a timeout)

`credit` is how many batches the worker may hold at once (one running, the next already there);
the hub sends a batch only to a worker with credit left, and a RESULT or FAILED returns one. Any
message counts as a sign of life; silence for timeout_s means dead (the hub re-queues the
worker's batches; the worker reconnects with a fresh socket and a new READY).

Pixels are in [0, 1] as preprocess makes them (uint8 / 255). On the wire they are the uint8
values when that is exact (checked per batch: `pack_pixels`), four times smaller than float32;
the worker turns them back with the same float32 table, so its input is bit-identical.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from .errors import MessageError
from .limits import MAX_INPUT_SIDE, STREAM_ID

VERSION = 1
READY, BATCH, RESULT, FAILED, HEARTBEAT, DISCONNECT = (
    b"READY",
    b"BATCH",
    b"RESULT",
    b"FAILED",
    b"HEARTBEAT",
    b"DISCONNECT",
)
COMMANDS = (READY, BATCH, RESULT, FAILED, HEARTBEAT, DISCONNECT)
MAX_JSON_BYTES = 64 * 1024
MAX_BATCH = 256
# uint8 value -> the float32 pixel preprocess makes of it (glpn.processing: .float().mul_(1/255)).
PIXEL_SCALE = np.float32(1 / 255)
UINT8_TO_PIXEL = np.multiply(np.arange(256, dtype=np.uint8), PIXEL_SCALE, dtype=np.float32)
_TEXT_LIMIT = 200  # characters of a name, engine description or error a peer may send


def encode(command: bytes, body: dict[str, Any] | None = None, *buffers: Any) -> list[Any]:
    """One message's parts (after the ROUTER's identity frame, on the hub side)."""
    return [command, json.dumps(body or {}, separators=(",", ":")).encode(), *buffers]


def pack_pixels(pixels: np.ndarray) -> tuple[str, np.ndarray]:
    """(B, 3, h, w) float32 -> ("uint8", values) when unpack_pixels gives back exactly these
    floats, else ("float32", pixels). Two multiplies, a cast and a compare: ~3.5 ms at 480x640."""
    scaled = np.multiply(pixels, np.float32(255), dtype=np.float32)
    np.clip(scaled, 0, 255, out=scaled)
    scaled += np.float32(0.5)
    values = scaled.astype(np.uint8)  # truncation of x + 0.5: rounded to nearest
    if np.array_equal(unpack_pixels("uint8", values), pixels):
        return "uint8", values
    return "float32", np.ascontiguousarray(pixels, dtype=np.float32)


def unpack_pixels(dtype: str, values: np.ndarray) -> np.ndarray:
    """The float32 pixels a BATCH carries (see pack_pixels): uint8 * float32(1/255), as
    glpn.processing computes them (UINT8_TO_PIXEL is the same table)."""
    if dtype == "uint8":
        return np.multiply(values, PIXEL_SCALE, dtype=np.float32)
    return values


def _text(body: dict, key: str) -> str:
    """A peer's string, made safe to print and log: at most _TEXT_LIMIT characters, each
    printable (control characters, ANSI escapes and lone surrogates become "?")."""
    value = body.get(key, "")
    if not isinstance(value, str):
        raise MessageError(f"{key!r} must be a string")
    return "".join(
        c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "?"
        for c in value[:_TEXT_LIMIT]
    )


def _int(body: dict, key: str, lo: int, hi: int) -> int:
    value = body.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise MessageError(f"{key!r} must be an integer in {lo}..{hi}, got {str(value)[:40]}")
    return value


def _max_depth(value: Any) -> float | None:
    """The engine's depth range in metres (0 < m <= 10 km), or None when it does not say (null
    or 0)."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1e4:
        raise MessageError(f"READY 'max_depth' must be metres in (0, 10000], got {str(value)[:40]}")
    return float(value)


def _shape(value: Any, ndim: int, what: str) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or len(value) != ndim
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise MessageError(f"{what} shape must be {ndim} positive integers, got {str(value)[:60]}")
    return tuple(value)


def _array(buffer: Any, dtype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    dt = np.dtype(dtype).newbyteorder("<")
    view = memoryview(buffer.buffer if hasattr(buffer, "buffer") else buffer)
    if view.nbytes != math.prod(shape) * dt.itemsize:
        raise MessageError(f"{what}: {view.nbytes} bytes do not make {dtype} {list(shape)}")
    arr = np.frombuffer(view, dtype=dt).reshape(shape)
    arr.flags.writeable = False
    return arr


def decode(parts: list[Any], *, max_bytes: int) -> tuple[bytes, dict[str, Any], np.ndarray | None]:
    """Message parts (without the identity frame) -> (command, checked body, array or None).
    MessageError for anything a broken or hostile peer could get wrong."""
    raw = [bytes(p.buffer) if hasattr(p, "buffer") and i < 2 else p for i, p in enumerate(parts)]
    if not raw or raw[0] not in COMMANDS:
        raise MessageError(f"unknown command {bytes(raw[0])[:20] if raw else b''!r}")
    command = raw[0]
    body: dict[str, Any] = {}
    if len(raw) > 1:
        if len(raw[1]) > MAX_JSON_BYTES:
            raise MessageError(f"{command.decode()} body over {MAX_JSON_BYTES} bytes")
        try:
            body = json.loads(raw[1])
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise MessageError(f"{command.decode()} body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise MessageError(f"{command.decode()} body must be a JSON object")
    buffers = raw[2:]
    want = 1 if command in (BATCH, RESULT) else 0
    if len(buffers) != want:
        raise MessageError(f"{command.decode()} has {len(buffers)} buffers, expected {want}")
    if command == READY:
        if body.get("v") != VERSION:
            raise MessageError(f"READY protocol version {body.get('v')!r}, expected {VERSION}")
        body = {
            "name": _text(body, "name") or "worker",
            "host": _text(body, "host"),
            "pid": _int(body, "pid", 0, 2**31),
            "device": _text(body, "device"),
            "engine": _text(body, "engine"),
            "batch": _int(body, "batch", 1, MAX_BATCH),
            "credit": _int(body, "credit", 1, 64),
            "max_depth": _max_depth(body.get("max_depth")),
        }
        return command, body, None
    if command in (HEARTBEAT, DISCONNECT):
        return command, {"reason": _text(body, "reason")}, None
    batch_id = _int(body, "id", 0, 2**62)
    if command == FAILED:
        return command, {"id": batch_id, "error": _text(body, "error")}, None
    if command == RESULT:
        shape = _shape(body.get("shape"), 3, "RESULT depth")
        ms = body.get("ms")
        if not isinstance(ms, (int, float)) or isinstance(ms, bool) or not 0 <= ms < 1e7:
            raise MessageError("RESULT 'ms' must be a number of milliseconds")
        if math.prod(shape) * 4 > max_bytes:
            raise MessageError(f"RESULT depth {list(shape)} over the {max_bytes}-byte limit")
        depth = _array(buffers[0], "float32", shape, "RESULT depth")
        return command, {"id": batch_id, "ms": float(ms), "shape": shape}, depth
    # BATCH
    frames = body.get("frames")
    if not isinstance(frames, list) or not 1 <= len(frames) <= MAX_BATCH:
        raise MessageError(f"BATCH frames must be a list of 1..{MAX_BATCH}")
    for f in frames:
        if not isinstance(f, dict) or not isinstance(f.get("stream"), str):
            raise MessageError("BATCH frame entries must be {stream, index}")
        if not STREAM_ID.fullmatch(f["stream"]):
            raise MessageError(f"BATCH stream {f['stream'][:40]!r} is not a stream id")
        _int(f, "index", 0, 2**63 - 1)
    pixels = body.get("pixels")
    if not isinstance(pixels, dict) or pixels.get("dtype") not in ("uint8", "float32"):
        raise MessageError("BATCH pixels must be {dtype: uint8 | float32, shape}")
    shape = _shape(pixels.get("shape"), 4, "BATCH pixels")
    b, c, h, w = shape
    if b != len(frames) or c != 3 or h % 32 or w % 32 or max(h, w) > MAX_INPUT_SIDE:
        raise MessageError(f"BATCH pixels {list(shape)} are not {len(frames)} model inputs")
    if math.prod(shape) * 4 > max_bytes:
        raise MessageError(f"BATCH pixels {list(shape)} over the {max_bytes}-byte limit")
    values = _array(buffers[0], pixels["dtype"], shape, "BATCH pixels")
    body = {"id": batch_id, "frames": frames, "dtype": pixels["dtype"], "shape": shape}
    return command, body, values
