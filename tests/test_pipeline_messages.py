"""Message codec: round trips, zero-copy inside a process, and every kind of malformed input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import zmq

from pipeline import messages
from pipeline.errors import MessageError


def frame_header(**overrides):
    header = {
        "kind": "frame",
        "stream": "cam0",
        "index": 3,
        "t_mono": 12.5,
        "t_wall": 1.7e9,
        "mode": "live",
        "source_shape": [241, 317],
    }
    header.update(overrides)
    return header


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://codec")
    b.connect("inproc://codec")
    yield a, b
    a.close(0)
    b.close(0)
    ctx.term()


def test_round_trip_keeps_header_and_arrays(pair):
    a, b = pair
    depth = np.random.default_rng(0).random((241, 317), dtype=np.float32)
    view = np.random.default_rng(1).integers(0, 255, (241, 317, 3), dtype=np.uint8)
    messages.send(a, frame_header(), {"depth": depth, "view": view})
    msg = messages.recv(b)
    assert msg.kind == "frame" and msg.stream == "cam0" and msg.header["index"] == 3
    assert msg.header["source_shape"] == [241, 317]
    np.testing.assert_array_equal(msg.arrays["depth"], depth)
    np.testing.assert_array_equal(msg.arrays["view"], view)
    assert msg.arrays["depth"].dtype == np.float32 and msg.arrays["view"].dtype == np.uint8


def test_inproc_is_zero_copy_and_received_arrays_are_read_only(pair):
    a, b = pair
    image = np.zeros((720, 1280, 3), np.uint8)  # large enough that pyzmq does not copy it
    messages.send(a, frame_header(), {"image": image})
    got = messages.recv(b).arrays["image"]
    assert got.__array_interface__["data"][0] == image.__array_interface__["data"][0]
    with pytest.raises(ValueError):
        got[0, 0, 0] = 1
    alias = messages.writable(got)
    assert np.shares_memory(alias, got)


def test_non_contiguous_and_big_endian_arrays_are_sent_correctly(pair):
    a, b = pair
    base = np.arange(48, dtype=np.float32).reshape(6, 8)
    messages.send(a, frame_header(), {"t": base.T, "be": base.astype(">f4")})
    msg = messages.recv(b)
    np.testing.assert_array_equal(msg.arrays["t"], base.T)
    np.testing.assert_array_equal(msg.arrays["be"], base)


def test_eos_needs_no_frame_fields():
    msg = messages.decode(messages.encode(messages.eos_header("cam1")))
    assert msg.kind == "eos" and msg.stream == "cam1" and msg.arrays == {}


def test_topic_frame_is_skipped_when_asked():
    parts = messages.encode(frame_header(), {"d": np.ones((2, 2), np.float32)}, topic=b"depth/x/")
    assert parts[0] == b"depth/x/"
    assert messages.decode(parts, topic=True).arrays["d"].shape == (2, 2)


def _header_bytes(header) -> bytes:
    return json.dumps(header).encode()


def _valid_header(arrays):
    return {**frame_header(), "v": 1, "arrays": arrays}


SPEC = [{"name": "depth", "dtype": "float32", "shape": [2, 3]}]
BUF = np.zeros((2, 3), np.float32).tobytes()

MALFORMED = {
    "empty": [],
    "not json": [b"\xff\x00garbage", BUF],
    "json list": [b"[1, 2, 3]"],
    "pickle": [pickle.dumps({"kind": "frame"})],
    "wrong version": [_header_bytes({**_valid_header(SPEC), "v": 99}), BUF],
    "unknown kind": [_header_bytes({**_valid_header(SPEC), "kind": "exec"}), BUF],
    "missing stream": [
        _header_bytes({k: v for k, v in _valid_header(SPEC).items() if k != "stream"}),
        BUF,
    ],
    "missing index": [
        _header_bytes({k: v for k, v in _valid_header(SPEC).items() if k != "index"}),
        BUF,
    ],
    "negative index": [_header_bytes({**_valid_header(SPEC), "index": -1}), BUF],
    "bool index": [_header_bytes({**_valid_header(SPEC), "index": True}), BUF],
    "bad mode": [_header_bytes({**_valid_header(SPEC), "mode": "fast"}), BUF],
    "bad source_shape": [_header_bytes({**_valid_header(SPEC), "source_shape": [0, 5]}), BUF],
    "object dtype": [_header_bytes(_valid_header([{**SPEC[0], "dtype": "object"}])), BUF],
    "pickle dtype": [_header_bytes(_valid_header([{**SPEC[0], "dtype": "O"}])), BUF],
    "shape too big for buffer": [_header_bytes(_valid_header([{**SPEC[0], "shape": [3, 3]}])), BUF],
    "negative shape": [_header_bytes(_valid_header([{**SPEC[0], "shape": [-2, -3]}])), BUF],
    "too many dims": [_header_bytes(_valid_header([{**SPEC[0], "shape": [1, 1, 1, 2, 3]}])), BUF],
    "extra spec key": [_header_bytes(_valid_header([{**SPEC[0], "offset": 4}])), BUF],
    "fewer buffers than specs": [_header_bytes(_valid_header(SPEC))],
    "more buffers than specs": [_header_bytes(_valid_header(SPEC)), BUF, BUF],
    "repeated array name": [_header_bytes(_valid_header(SPEC + SPEC)), BUF, BUF],
    "huge header": [_header_bytes({**_valid_header(SPEC), "pad": "x" * 70000}), BUF],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_messages_raise_message_error(case):
    with pytest.raises(MessageError):
        messages.decode(MALFORMED[case])


def test_valid_reference_for_the_malformed_cases_decodes():
    # The malformed cases are edits of this message; it must decode, or they prove nothing.
    msg = messages.decode([_header_bytes(_valid_header(SPEC)), BUF])
    assert msg.arrays["depth"].shape == (2, 3)


def test_size_limit():
    parts = messages.encode(frame_header(), {"big": np.zeros(4096, np.uint8)})
    assert messages.decode(parts, max_bytes=4096).arrays["big"].size == 4096
    with pytest.raises(MessageError, match="limit"):
        messages.decode(parts, max_bytes=4095)


def test_unsendable_dtypes_are_refused():
    with pytest.raises(MessageError):
        messages.encode(frame_header(), {"o": np.array([object()], dtype=object)})
    with pytest.raises(MessageError):
        messages.encode(frame_header(), {"c": np.zeros(3, np.complex64)})


def test_missing_or_mistyped_array_access_is_a_message_error():
    msg = messages.decode(messages.encode(frame_header(), {"depth": np.zeros((2, 2), np.float64)}))
    with pytest.raises(MessageError, match="dtype"):
        msg.array("depth", dtype="float32")
    with pytest.raises(MessageError, match="no 'image'"):
        msg.array("image")
