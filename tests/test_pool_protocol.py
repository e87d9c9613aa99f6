"""The hub <-> worker messages (pipeline/pool_protocol.py): what a broken or hostile peer sends is
a MessageError and nothing else; pixels cross as uint8 only when that is exact; a peer's strings
are safe to print."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from glpn.processing import prepare_frames
from pipeline import pool_protocol as proto
from pipeline.errors import MessageError

READY_BODY = {"v": 1, "name": "gpu1", "host": "h", "pid": 7, "device": "cuda:0",
              "engine": "eager fp16", "batch": 4, "credit": 2}  # fmt: skip


def ready(**fields) -> list[bytes]:
    return [proto.READY, json.dumps({**READY_BODY, **fields}).encode()]


@pytest.mark.parametrize("method", ["torch", "opencv"])
def test_pixels_cross_as_uint8_exactly(method):
    frames = [np.random.default_rng(i).integers(0, 256, (241, 317, 3), np.uint8) for i in range(2)]
    pixels = prepare_frames(frames, (224, 320), bgr=True, method=method)
    dtype, values = proto.pack_pixels(pixels)
    assert dtype == "uint8" and values.dtype == np.uint8
    np.testing.assert_array_equal(proto.unpack_pixels(dtype, values), pixels)  # bit for bit
    np.testing.assert_array_equal(proto.UINT8_TO_PIXEL[values], pixels)


def test_pixels_that_are_not_uint8_over_255_stay_float32():
    pixels = np.full((1, 3, 32, 32), 0.5, np.float32)  # 127.5 / 255: no uint8 gives it
    dtype, values = proto.pack_pixels(pixels)
    assert dtype == "float32" and values is not None
    np.testing.assert_array_equal(proto.unpack_pixels(dtype, values), pixels)


def test_batch_round_trip_and_its_checks():
    values = np.arange(2 * 3 * 32 * 64, dtype=np.uint8).reshape(2, 3, 32, 64)
    frames = [{"stream": "cam", "index": 4}, {"stream": "cam", "index": 5}]
    body = {"id": 9, "frames": frames, "pixels": {"dtype": "uint8", "shape": [2, 3, 32, 64]}}
    command, got, array = proto.decode(proto.encode(proto.BATCH, body, values), max_bytes=1 << 20)
    assert command == proto.BATCH and got["id"] == 9 and got["frames"] == frames
    np.testing.assert_array_equal(array, values)
    bad = [
        {**body, "pixels": {"dtype": "uint8", "shape": [2, 3, 30, 64]}},  # not /32
        {**body, "pixels": {"dtype": "uint8", "shape": [3, 3, 32, 64]}},  # 3 inputs, 2 frames
        {**body, "pixels": {"dtype": "object", "shape": [2, 3, 32, 64]}},
        {**body, "frames": [{"stream": "../x", "index": 1}] * 2},
        {**body, "id": -1},
    ]
    for b in bad:
        with pytest.raises(MessageError):
            proto.decode(proto.encode(proto.BATCH, b, values), max_bytes=1 << 20)
    with pytest.raises(MessageError, match="limit"):  # over the size the link allows
        proto.decode(proto.encode(proto.BATCH, body, values), max_bytes=1000)


def test_ready_strings_are_printable_and_max_depth_optional():
    _, body, _ = proto.decode(
        ready(name="w\ud800\x1b[31mred\n", engine="e" * 500, max_depth=0), max_bytes=1 << 20
    )
    assert body["name"] == "w??[31mred?" and len(body["engine"]) == 200
    assert body["max_depth"] is None  # 0 or null: the engine did not say
    assert proto.decode(ready(max_depth=80), max_bytes=1 << 20)[1]["max_depth"] == 80.0
    for fields in ({"v": 2}, {"batch": 0}, {"credit": True}, {"max_depth": -1}, {"name": 3}):
        with pytest.raises(MessageError):
            proto.decode(ready(**fields), max_bytes=1 << 20)


def test_garbage_is_only_ever_a_message_error():
    rng = random.Random(3)
    samples = [b"", b"{}", b"[]", b"null", b'{"id": 1e999}', b"\xff\xfe", b'{"frames": 1}']
    commands = [*proto.COMMANDS, b"NOPE", b""]
    raised = 0
    for _ in range(3000):
        parts = [rng.choice(commands), rng.choice(samples)]
        parts += [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
                  for _ in range(rng.randrange(0, 3))]  # fmt: skip
        try:
            proto.decode(parts, max_bytes=1 << 20)
        except MessageError:
            raised += 1
    assert raised > 2500  # almost all are refused; none raised anything else
