"""Hostile messages never kill a subscriber or a stage (issue 9, part 5).

Real sockets throughout: a raw XPUB publishes to a DepthSubscriber (its subscription arriving at
the XPUB says when what it sends is received), and raw PUSH sockets send into the stages of a
running pipeline over tcp. They hold the run's CURVE keys (Pipeline.link_keys): a peer inside the
run's trust, a bug rather than an attack (a process without the keys cannot reach a stage at all:
test_security.py).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq
from pipeline_helpers import (
    depthstream_threads,
    eager_factory,
    frame_at,
    frame_header,
    load_engine,
    reference_depth,
    wait_until,
    xpub_on_tcp,
)
from zmq.utils.monitor import recv_monitor_message

from pipeline import DepthSubscriber, FrameSender, Pipeline, curve, messages
from pipeline.messages import stream_topic

DEPTH = np.arange(35, dtype=np.float32).reshape(5, 7)


def raw(header: dict, arrays: dict[str, np.ndarray], topic: bytes | None = None) -> list[bytes]:
    """A message written by hand, as a foreign program would: json.dumps writes any int."""
    specs = [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in arrays.items()]
    parts = [json.dumps({**header, "arrays": specs}).encode()]
    parts += [a.tobytes() for a in arrays.values()]
    return parts if topic is None else [topic, *parts]


def header_text(header: dict, shape: list[int] | None = None) -> bytes:
    """The JSON of a header announcing one float32 depth array of `shape` (default 5x7)."""
    spec = {"name": "depth", "dtype": "float32", "shape": shape or [5, 7]}
    return json.dumps({**header, "arrays": [spec]}).encode()


def good(index: int, stream: str = "s") -> list[bytes]:
    return raw(frame_header(stream, index), {"depth": DEPTH + index}, stream_topic(stream))


# Before issue 9 each of these raised out of the loop, ended it (newest_only: the receiver thread
# died), or was taken for a valid frame.
HOSTILE_TO_SUBSCRIBERS = {
    "shape [0, 2**63]": [b"depth/s/", header_text(frame_header("s", 1), [0, 2**63]), b""],
    "400-digit t_mono": raw(frame_header("s", 1, t_mono=10**400), {"depth": DEPTH}, b"depth/s/"),
    "400-digit index": raw(frame_header("s", 10**400), {"depth": DEPTH}, b"depth/s/"),
    "1e400 in position": [
        b"depth/s/",
        header_text(frame_header("s", 1, position={"t": 1e300})).replace(b"1e+300", b"1e400"),
        DEPTH.tobytes(),
    ],
    "nested JSON": [b"depth/s/", b"[" * 5000 + b"]" * 5000],
    "topic of another stream": raw(frame_header("s", 1), {"depth": DEPTH}, b"depth/other/"),
    "non-UTF-8 topic": raw(frame_header("s", 1), {"depth": DEPTH}, b"depth/\xff\xfe/"),
}


@pytest.fixture
def xpub():
    """A raw publisher that tells when a subscription arrived (XPUB), on a random tcp port."""
    with xpub_on_tcp() as pub:
        yield pub


def subscribed(pub: zmq.Socket, timeout_s: float = 10.0) -> None:
    """Wait for a subscription: what `pub` sends after it is received by that subscriber."""
    assert pub.poll(timeout_s * 1000), "no subscription arrived"
    assert pub.recv()[:1] == b"\x01"


@pytest.mark.parametrize("newest_only", [False, True], ids=["every-frame", "newest-only"])
@pytest.mark.parametrize("case", sorted(HOSTILE_TO_SUBSCRIBERS))
def test_subscriber_skips_and_counts_a_hostile_message(xpub, case, newest_only):
    pub, endpoint = xpub
    with DepthSubscriber(endpoint, newest_only=newest_only, timeout=10) as sub:
        subscribed(pub)
        pub.send_multipart(good(0))
        pub.send_multipart(HOSTILE_TO_SUBSCRIBERS[case])
        pub.send_multipart(good(1))  # arrives after the hostile one: same connection
        got = []  # newest_only may skip frame 0
        while (item := sub.recv(timeout=10)) is not None:
            got.append(item)
            if item[0]["index"] == 1:
                break
        indices = [h["index"] for h, _ in got]
        assert indices in ([0, 1], [1]), f"the frame after the hostile one did not come: {indices}"
        assert np.array_equal(got[-1][1], DEPTH + 1)
        assert sub.malformed == 1
        assert sub.lost == {"s": 0}
    assert depthstream_threads() == []


class BuggySubscriber(DepthSubscriber):
    """Its message handling fails on frames of stream "boom": stands in for a bug in the code the
    background thread runs (nothing a peer sends can do this any more)."""

    def _accept(self, parts):
        msg = super()._accept(parts)
        if msg is not None and msg.stream == "boom":
            raise RuntimeError("bug in the receiver")
        return msg


def test_an_unexpected_error_in_the_receiver_thread_is_raised_in_the_loop(xpub):
    pub, endpoint = xpub
    with BuggySubscriber(endpoint, newest_only=True, timeout=10) as sub:
        subscribed(pub)
        pub.send_multipart(good(0, "boom"))
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="bug in the receiver"):
            for _ in sub:
                pass
        assert time.monotonic() - t0 < 5  # raised when it happened, not after the timeout
        with pytest.raises(RuntimeError, match="bug in the receiver"):
            sub.recv(timeout=0)  # and again: the subscriber is dead, not merely idle
    assert depthstream_threads() == []


def test_a_receiver_thread_that_cannot_start_raises_in_the_constructor():
    """Before, the thread died at connect() and the loop ended at once, as if nothing came."""
    with pytest.raises(zmq.ZMQError):
        DepthSubscriber("tcp://127.0.0.1:not-a-port", newest_only=True, timeout=1)
    with pytest.raises(zmq.ZMQError):
        DepthSubscriber("tcp://127.0.0.1:not-a-port", timeout=1)
    assert depthstream_threads() == []


@pytest.mark.parametrize("newest_only", [False, True], ids=["every-frame", "newest-only"])
def test_a_part_over_max_bytes_is_refused_before_it_is_received(xpub, newest_only):
    """ZMQ_MAXMSGSIZE: the subscriber drops the connection instead of receiving the part whole,
    then connects again (ZeroMQ would not, after this protocol error) and goes on."""
    pub, endpoint = xpub
    limit = 100_000
    with DepthSubscriber(endpoint, newest_only=newest_only, max_bytes=limit, timeout=10) as sub:
        subscribed(pub)
        huge = np.zeros(limit // 4 + 1000, np.float32).reshape(1, -1)  # one part over the limit
        pub.send_multipart(raw(frame_header("s", 0), {"depth": huge}, b"depth/s/"))
        deadline = time.monotonic() + 10
        while not (pub.poll(0) and pub.recv()[:1] == b"\x01"):  # subscribed on a new connection
            assert time.monotonic() < deadline, "the subscriber did not reconnect"
            if newest_only:
                pub.poll(50)
            else:
                assert sub.recv(timeout=0.05) is None  # reconnecting is done inside recv
        pub.send_multipart(good(1))
        header, depth = sub.recv(timeout=10)
        assert header["index"] == 1 and np.array_equal(depth, DEPTH + 1)
        assert sub.reconnects == 1
        assert sub.malformed == 0  # refused by ZeroMQ, never received
        assert sub.lost == {"s": 0}  # nothing of frame 0 arrived: it is not a gap


# ---- stages ---------------------------------------------------------------------------------


def pixels(c: int, h: int, w: int) -> np.ndarray:
    return np.zeros((c, h, w), np.float32)


def stage_frame(index: int = 0, **extra) -> dict:
    header = frame_header("ext", index, **extra)
    del header["v"]  # messages.encode adds it
    return header


# endpoint -> hostile messages; each was fatal, or costly, before issue 9 (see the comments).
HOSTILE_TO_STAGES = {
    "preprocess.lossless": [
        # OverflowError in decode: the stage failed
        raw(frame_header("ext", 0, t_mono=10**400), {"image": np.zeros((5, 7, 3), np.uint8)}),
        # TypeError in messages.stamp: the stage failed
        messages.encode(stage_frame(t_last="soon"), {"image": np.zeros((5, 7, 3), np.uint8)}),
        # an 8288x32 model input (input_size auto) that the inference stage cannot take
        messages.encode(
            stage_frame(source_shape=[8300, 40]), {"image": np.zeros((8300, 40, 3), np.uint8)}
        ),
    ],
    "inference": [
        # EngineError: the run ended with exit code 4
        messages.encode(stage_frame(source_shape=[1, 1]), {"pixels": pixels(3, 1, 1)}),
        messages.encode(stage_frame(), {"pixels": pixels(3, 33, 64)}),
        messages.encode(stage_frame(), {"pixels": pixels(4, 32, 32)}),
    ],
    "postprocess": [
        # a 3.6 GB resize (30 s on this machine)
        messages.encode(
            stage_frame(source_shape=[30000, 30000]), {"depth": np.zeros((2, 2), np.float32)}
        ),
        # TypeError in messages.stamp: the stage failed
        messages.encode(stage_frame(stage_ms=[1]), {"depth": np.zeros((5, 7), np.float32)}),
        # ValueError in np.hstack: the stage failed
        messages.encode(
            stage_frame(),
            {"depth": np.zeros((5, 7), np.float32), "image": np.zeros((5, 7, 4), np.uint8)},
        ),
    ],
    "sink": [
        # handed to the sinks: a float64 depth, a 4-channel view
        messages.encode(stage_frame(), {"depth": np.zeros((5, 7), np.float64)}),
        messages.encode(
            stage_frame(),
            {"depth": np.zeros((5, 7), np.float32), "view": np.zeros((5, 7, 4), np.uint8)},
        ),
    ],
}


def tcp_pipeline(checkpoint: str, **extra) -> Pipeline:
    cfg = {
        "sources": [{"uri": "external", "id": "ext", "kind": "external"}],
        "model": {"checkpoint": checkpoint, "input_size": "auto"},
        "transport": {"kind": "tcp"},
        "postprocess": {"view": True, "side_by_side": True},
        "metrics": {"interval_s": 0},
        **extra,
    }
    return Pipeline(cfg, engine_factory=eager_factory(checkpoint))


def test_hostile_frames_are_dropped_and_counted_at_the_stage_that_sees_them(
    tiny_checkpoint, one_torch_thread
):
    pipe = tcp_pipeline(tiny_checkpoint)
    results = pipe.results(timeout=30)  # starts the pipeline
    ctx = zmq.Context()
    try:
        for stage, hostile in HOSTILE_TO_STAGES.items():
            push = ctx.socket(zmq.PUSH)
            curve.client(push, pipe.link_keys)
            push.connect(pipe.endpoints[stage])
            for parts in hostile:
                push.send_multipart(parts)
            push.close(linger=5000)
        name = {"preprocess.lossless": "preprocess"}
        expected = {name.get(s, s): len(h) for s, h in HOSTILE_TO_STAGES.items()}

        def counted():
            return {s: pipe.metrics()[s]["malformed"] for s in expected}

        wait_until(lambda: counted() == expected, 30, f"malformed counts {expected}")
        frames = [frame_at(i, 40, 50) for i in range(3)]
        with FrameSender(
            pipe.endpoints["preprocess.lossless"], "ext", context=ctx, keys=pipe.link_keys
        ) as sender:
            for frame in frames:
                assert sender.send(frame)
        got = list(results)
    finally:
        if pipe.summary().outcome == "running":
            pipe.stop()
            pipe.join(30)
        ctx.term()
    summary = pipe.summary()
    assert summary.outcome == "finished" and summary.error is None
    assert [r.index for r in got] == [0, 1, 2]  # the pipeline's own frames, all of them
    for r, ref in zip(got, reference_depth(load_engine(tiny_checkpoint), frames)):
        np.testing.assert_allclose(r.depth, ref, rtol=1e-4, atol=1e-4)
    assert {s: summary.stages[s]["malformed"] for s in expected} == expected
    assert depthstream_threads() == []


def test_a_message_part_over_the_limit_is_refused_before_it_is_received(tiny_checkpoint):
    """ZMQ_MAXMSGSIZE on the stage's sockets: libzmq reads a part's length first and drops the
    sender's connection; the stage never receives the message (before issue 9 it received it
    whole, then decode rejected it as malformed)."""
    limit = 1 << 20
    pipe = tcp_pipeline(tiny_checkpoint, transport={"kind": "tcp", "max_message_bytes": limit})
    pipe.start()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    monitor = push.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    curve.client(push, pipe.link_keys)
    try:
        push.connect(pipe.endpoints["preprocess.lossless"])
        assert monitor.poll(10_000) and recv_monitor_message(monitor)["event"] == (
            zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        big = np.zeros((1024, 1024 + 1, 3), np.uint8)  # 3 MiB in one part
        push.send_multipart(messages.encode(stage_frame(source_shape=[1024, 1025]), {"image": big}))
        assert monitor.poll(10_000), "the stage did not refuse the oversized part"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        with FrameSender(
            pipe.endpoints["preprocess.lossless"], "ext", context=ctx, keys=pipe.link_keys
        ) as sender:
            assert sender.send(frame_at(0, 40, 50))
        summary = pipe.join(timeout=30)
    finally:
        push.disable_monitor()
        monitor.close(0)
        push.close(0)
        if pipe.summary().outcome == "running":
            pipe.stop()
            pipe.join(30)
        ctx.term()
    assert summary.outcome == "finished" and summary.frames == {"ext": 1}
    pre = summary.stages["preprocess"]
    assert pre["received"] == 2 and pre["malformed"] == 0  # the frame and the end, nothing else
    assert depthstream_threads() == []
