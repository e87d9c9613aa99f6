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


def test_topic_frame_is_checked_and_skipped_when_asked():
    topic = messages.stream_topic("cam0")
    parts = messages.encode(frame_header(), {"d": np.ones((2, 2), np.float32)}, topic=topic)
    assert parts[0] == b"depth/cam0/"
    assert messages.decode(parts, topic=True).arrays["d"].shape == (2, 2)
    for wrong in (b"depth/cam1/", b"depth/cam0/x", b"depth/cam0", b"\xff\xfe", b""):
        with pytest.raises(MessageError, match="topic"):  # another stream's, or not UTF-8
            messages.decode([wrong, *parts[1:]], topic=True)


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
    # What a hostile peer can make absurd (issue 9): each of these raised ValueError or
    # OverflowError out of decode, or passed it and failed in a stage or a sink later.
    "zero and 2**63 dims": [
        _header_bytes(_valid_header([{**SPEC[0], "shape": [0, 2**63]}])),
        b"",
    ],
    "zero dim": [_header_bytes(_valid_header([{**SPEC[0], "shape": [0, 3]}])), b""],
    "400-digit t_mono": [_header_bytes({**_valid_header(SPEC), "t_mono": 10**400}), BUF],
    "400-digit index": [_header_bytes({**_valid_header(SPEC), "index": 10**400}), BUF],
    "index beyond int64": [_header_bytes({**_valid_header(SPEC), "index": 2**63}), BUF],
    "400-digit number anywhere": [
        _header_bytes({**_valid_header(SPEC), "position": {"frame": 10**400}}),
        BUF,
    ],
    "1e400 (inf) anywhere": [
        _header_bytes({**_valid_header(SPEC), "position": {"t": 1e300}}).replace(
            b"1e+300", b"1e400"
        ),
        BUF,
    ],
    "NaN t_wall": [_header_bytes({**_valid_header(SPEC), "t_wall": float("nan")}), BUF],
    "t_mono far beyond any clock": [_header_bytes({**_valid_header(SPEC), "t_mono": 1e300}), BUF],
    "nested JSON": [b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", BUF],
    "source_shape 30000x30000": [
        _header_bytes({**_valid_header(SPEC), "source_shape": [30000, 30000]}),
        BUF,
    ],
    "source_shape of 2**28 pixels": [
        _header_bytes({**_valid_header(SPEC), "source_shape": [16384, 16384]}),
        BUF,
    ],
    "stream with a slash": [_header_bytes({**_valid_header(SPEC), "stream": "a/b"}), BUF],
    "stream with a newline": [_header_bytes({**_valid_header(SPEC), "stream": "cam\n"}), BUF],
    "t_last a string": [_header_bytes({**_valid_header(SPEC), "t_last": "now"}), BUF],
    "stage_ms a list": [_header_bytes({**_valid_header(SPEC), "stage_ms": [1.0]}), BUF],
    "stage_ms value a string": [
        _header_bytes({**_valid_header(SPEC), "stage_ms": {"capture": "1"}}),
        BUF,
    ],
    "negative fps": [_header_bytes({**_valid_header(SPEC), "fps": -5}), BUF],
    "max_depth a string": [_header_bytes({**_valid_header(SPEC), "max_depth": "far"}), BUF],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_messages_raise_message_error(case):
    with pytest.raises(MessageError):
        messages.decode(MALFORMED[case])


def test_valid_reference_for_the_malformed_cases_decodes():
    # The malformed cases are edits of this message; it must decode, or they prove nothing.
    msg = messages.decode([_header_bytes(_valid_header(SPEC)), BUF])
    assert msg.arrays["depth"].shape == (2, 3)
    # and so does one with every optional field a stage reads, at the edges of their ranges
    full = {
        **_valid_header(SPEC),
        "index": 2**63 - 1,
        "t_mono": -1e9,
        "fps": None,  # unknown frame rate
        "t_last": 1e10,
        "max_depth": 80.0,
        "stage_ms": {"capture": 1.5},
        "wait_ms": {},
        "source_shape": [16384, 2048],
        "position": {"frame": -3, "ms": 0.5},
    }
    assert messages.decode([_header_bytes(full), BUF]).header == full


def test_size_limit():
    header = frame_header(source_shape=[16, 64])  # its depth (4 bytes a pixel) fits 4096 too
    parts = messages.encode(header, {"big": np.zeros(4096, np.uint8)})
    assert messages.decode(parts, max_bytes=4096).arrays["big"].size == 4096
    with pytest.raises(MessageError, match="limit"):
        messages.decode(parts, max_bytes=4095)


def test_a_source_size_whose_depth_exceeds_the_limit_is_refused():
    """Postprocess resizes the depth to the declared source size: not beyond what can be sent."""
    parts = messages.encode(frame_header(source_shape=[16, 64]), {"d": np.zeros(1, np.uint8)})
    messages.decode(parts, max_bytes=4096)
    with pytest.raises(MessageError, match="source_shape"):
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
