"""How a frame's image travels: raw BGR bytes, or JPEG on network links. The one place that
encodes and decodes frame images (FrameSender, the uplink of `depthstream capture`, the hub's
ingest stage).

A frame message carries header field "encoding" and one array:
- "raw" (or no "encoding": every frame before this module): array "image", (H, W, 3) uint8 BGR;
- "jpeg": array "jpeg", the 1-D uint8 bytes of a baseline JPEG file (cv2.imencode).

A 720p frame is 2.76 MB raw; at JPEG quality 90 it was 260 KB for a detailed synthetic scene
(10.7x smaller, 2.7 ms to encode and ~5 ms to decode on one core) and 67 KB for the demo clip's
road scene scaled up (41x). `decode_image` is strict: the JPEG's own size (read
from its header before anything is decoded, so a small file cannot make a huge allocation) and
the decoded image must both be the header's source_shape, the data must end where a JPEG ends,
and anything else is a MessageError, so a stage drops and counts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import messages
from .config_network import ENCODINGS
from .curve import is_loopback
from .errors import MessageError

DEFAULT_QUALITY = 90  # cv2.IMWRITE_JPEG_QUALITY: visually lossless for depth estimation
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# Start-of-frame markers (they hold the size): C0-CF except DHT (C4), JPG (C8), DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def default_encoding(endpoint: str) -> str:
    """jpeg on a link to another host (tcp to a non-loopback address), raw on this host
    (inproc, ipc, loopback tcp), where bytes are cheap and pipeline stages take raw frames."""
    return "raw" if is_loopback(endpoint) else "jpeg"


def check_quality(quality: int) -> int:
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality must be an integer in 1..100, got {quality!r}")
    return quality


def encode_image(
    image: np.ndarray, encoding: str = "raw", quality: int = DEFAULT_QUALITY
) -> dict[str, np.ndarray]:
    """The arrays of a frame whose BGR uint8 (H, W, 3) `image` travels as `encoding` (its header
    also gets "encoding": `encode` does both)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    if encoding == "raw":
        return {"image": image}
    import cv2  # here: `import pipeline.client` (and FrameSender) must not load OpenCV

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, check_quality(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not JPEG-encode an image of {image.shape} {image.dtype}")
    return {"jpeg": buf.reshape(-1)}


def encode(
    header: Mapping[str, Any],
    image: np.ndarray,
    encoding: str = "raw",
    quality: int = DEFAULT_QUALITY,
) -> list[Any]:
    """Message parts of a frame whose BGR uint8 (H, W, 3) `image` travels as `encoding`."""
    arrays = encode_image(image, encoding, quality)
    return messages.encode({**header, "encoding": encoding}, arrays)


def message_bytes(parts: Sequence[Any]) -> int:
    """Bytes of a message on the wire (header and buffers; ZeroMQ's framing aside)."""
    return sum(memoryview(p).nbytes for p in parts)


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """(height, width) from a JPEG's start-of-frame header; MessageError if it has none."""
    buf = memoryview(data)
    if buf[:2] != _SOI:
        raise MessageError("jpeg: data does not start with a JPEG start-of-image marker")
    i, n = 2, buf.nbytes
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise MessageError(f"jpeg: no marker at byte {i}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = (buf[i + 2] << 8) | buf[i + 3]
        if length < 2:
            raise MessageError(f"jpeg: segment at byte {i} has length {length}")
        if marker in _SOF:
            if length < 7 or i + 9 > n:
                raise MessageError("jpeg: truncated start-of-frame header")
            h = (buf[i + 5] << 8) | buf[i + 6]
            w = (buf[i + 7] << 8) | buf[i + 8]
            return h, w
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        i += 2 + length
    raise MessageError("jpeg: no start-of-frame header before the image data")


def decode_image(msg: messages.Message) -> np.ndarray:
    """The frame's BGR uint8 (H, W, 3) image, (H, W) being its source_shape; MessageError for
    an unknown encoding, a missing or mistyped array, or data that is not such an image."""
    encoding = msg.header.get("encoding", "raw")
    h, w = msg.header["source_shape"]
    if encoding == "raw":
        image = msg.array("image", dtype="uint8", ndim=3)
    elif encoding == "jpeg":
        data = msg.array("jpeg", dtype="uint8", ndim=1)
        size = jpeg_size(data)
        if size != (h, w):
            raise MessageError(f"jpeg: image is {list(size)}, source_shape {[h, w]}")
        if data.nbytes < 4 or bytes(data[-2:]) != _EOI:
            raise MessageError("jpeg: data does not end with an end-of-image marker (truncated)")
        import cv2

        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if image is None:
            raise MessageError(f"jpeg: OpenCV cannot decode the {data.nbytes}-byte image")
    else:
        shown = repr(encoding)[:40]  # what a peer sent: never all of it
        raise MessageError(f"frame encoding {shown} is not one of {list(ENCODINGS)}")
    if image.shape != (h, w, 3):
        raise MessageError(f"image shape {image.shape} does not match source_shape {[h, w]}")
    return image
