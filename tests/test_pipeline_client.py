"""Subscriber client and external frame producers over real sockets, including malformed traffic."""

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
    load_engine,
    reference_depth,
)

from pipeline import DepthSubscriber, FrameSender, Pipeline, messages
from pipeline.sinks import topic


def depth_message(stream, index, shape=(5, 7)):
    header = {
        "kind": "frame",
        "stream": stream,
        "index": index,
        "t_mono": time.monotonic(),
        "t_wall": time.time(),
        "mode": "live",
        "source_shape": list(shape),
    }
    depth = np.full(shape, float(index), np.float32)
    return messages.encode(header, {"depth": depth}, topic=topic(stream))


@pytest.fixture
def publisher():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    yield pub, f"tcp://127.0.0.1:{port}"
    pub.close(0)
    ctx.term()


WARMUP = 10_000  # index offset of the messages used to wait for the subscription


def wait_subscribed(pub, sub, stream):
    """PUB drops messages until the subscription arrives: publish until one gets through."""
    for i in range(200):
        pub.send_multipart(depth_message(stream, WARMUP + i))
        if sub.recv(timeout=0.05) is not None:
            return
    raise AssertionError("subscriber never connected")


def recv_frames(sub, n):
    """The next n (header, depth), skipping late warm-up messages."""
    out = []
    while len(out) < n:
        item = sub.recv(timeout=5.0)
        assert item is not None, f"got only {out}"
        if item[0]["index"] < WARMUP:
            out.append(item)
    return out


def test_subscriber_yields_header_and_depth_and_skips_malformed(publisher):
    pub, endpoint = publisher
    with DepthSubscriber(endpoint, timeout=2.0) as sub:
        wait_subscribed(pub, sub, "cam")
        bad = [
            [topic("cam"), b"{not json"],
            [topic("cam"), json.dumps({"v": 1, "kind": "frame", "stream": "cam"}).encode()],
            depth_message("cam", 1)[:2],  # buffer missing
            [topic("cam"), b"\x80\x04pickle"],
            [b""],
        ]
        for i, parts in enumerate(bad):
            pub.send_multipart(parts)
            pub.send_multipart(depth_message("cam", 100 + i))
        got = recv_frames(sub, 5)
        assert [h["index"] for h, _ in got] == [100, 101, 102, 103, 104]
        for header, depth in got:
            assert depth.dtype == np.float32 and depth.shape == (5, 7)
            assert np.all(depth == header["index"])
        assert sub.malformed == 5


def test_stream_filter(publisher):
    pub, endpoint = publisher
    with (
        DepthSubscriber(endpoint, streams=["a"]) as sub_a,
        DepthSubscriber(endpoint, streams=["b"]) as sub_b,
    ):
        wait_subscribed(pub, sub_a, "a")
        wait_subscribed(pub, sub_b, "b")
        for i in range(3):
            pub.send_multipart(depth_message("a", i))
            pub.send_multipart(depth_message("b", 10 + i))
        got_a = recv_frames(sub_a, 3)
        got_b = recv_frames(sub_b, 3)
        assert [(h["stream"], h["index"]) for h, _ in got_a] == [("a", 0), ("a", 1), ("a", 2)]
        assert [(h["stream"], h["index"]) for h, _ in got_b] == [("b", 10), ("b", 11), ("b", 12)]


def test_newest_only_gives_a_slow_consumer_the_newest_frame(publisher):
    pub, endpoint = publisher
    with DepthSubscriber(endpoint, newest_only=True) as sub:
        wait_subscribed(pub, sub, "s")
        # a message of its own stream, received last: nothing from before is still on the way
        pub.send_multipart(depth_message("sync", 0))
        while (item := sub.recv(timeout=5.0)) is not None and item[0]["stream"] != "sync":
            pass
        assert item is not None
        base = sub.received
        for i in range(20):
            pub.send_multipart(depth_message("s", i, shape=(120, 160)))
        deadline = time.monotonic() + 10
        while sub.received < base + 20:  # the consumer is busy while all 20 arrive
            assert time.monotonic() < deadline, "frames did not arrive"
            time.sleep(0.01)
        header, depth = sub.recv(timeout=1.0)
        assert header["index"] == 19 and np.all(depth == 19)  # the newest, not the oldest
        assert sub.skipped >= 19
        assert sub.recv(timeout=0.05) is None  # nothing stale left behind


def test_external_frames_with_malformed_messages_on_the_pipeline_socket(tiny_checkpoint):
    """Frames pushed by another process over tcp, interleaved with garbage: the garbage is dropped
    and counted, every valid frame comes out once, in order, with the model's depth."""
    cfg = {
        "sources": [{"uri": "external", "id": "ext", "kind": "external"}],
        "model": {"checkpoint": tiny_checkpoint, "max_batch": 2},
        "transport": {"kind": "tcp"},
        "outputs": {"zmq": {"endpoint": "tcp://127.0.0.1:*", "hwm": 100}},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
    results = pipe.results(timeout=30)  # starts the pipeline
    endpoint = pipe.endpoints["preprocess.lossless"]
    assert endpoint.startswith("tcp://127.0.0.1:")
    frames = [frame_at(i, 45, 61) for i in range(4)]
    garbage = [
        [b"\x00\x01\x02"],
        [json.dumps({"v": 1, "kind": "frame", "stream": "ext"}).encode()],
        messages.encode(  # a frame of a stream the pipeline does not know
            {
                "kind": "frame",
                "stream": "intruder",
                "index": 0,
                "t_mono": 0.0,
                "t_wall": 0.0,
                "mode": "lossless",
                "source_shape": [45, 61],
            },
            {"image": frames[0]},
        ),  # fmt: skip
        messages.encode(  # image that does not match its declared size
            {
                "kind": "frame",
                "stream": "ext",
                "index": 0,
                "t_mono": 0.0,
                "t_wall": 0.0,
                "mode": "lossless",
                "source_shape": [46, 61],
            },
            {"image": frames[0]},
        ),  # fmt: skip
    ]
    ctx = zmq.Context()
    raw = ctx.socket(zmq.PUSH)
    raw.connect(endpoint)
    sender = FrameSender(endpoint, "ext", context=ctx)
    sender._sock.close(0)
    sender._sock = raw  # one connection, so garbage and frames arrive in this exact order
    for frame, bad in zip(frames, garbage):
        raw.send_multipart(bad)
        assert sender.send(frame)
    sender.close()
    ctx.term()
    got = list(results)
    assert [r.index for r in got] == [0, 1, 2, 3]
    engine = load_engine(tiny_checkpoint)
    for r, ref in zip(got, reference_depth(engine, frames)):
        np.testing.assert_allclose(r.depth, ref, rtol=1e-4, atol=1e-4)
    assert pipe.summary().stages["preprocess"]["malformed"] == len(garbage)
    assert depthstream_threads() == []


def test_pipeline_publishes_depth_to_subscribers(tiny_checkpoint):
    cfg = {
        "sources": [{"uri": "external", "id": "cam", "kind": "external"}],
        "model": {"checkpoint": tiny_checkpoint},
        "outputs": {"zmq": {"endpoint": "tcp://127.0.0.1:*", "publish_view": True, "hwm": 100}},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).start()
    # inproc transport: an in-process producer shares the pipeline's context
    sender = FrameSender(pipe.endpoints["preprocess.lossless"], "cam", context=pipe.context)
    frame = frame_at(0, 50, 70)
    with DepthSubscriber(pipe.endpoints["publish"]) as sub:
        msg = None
        for _ in range(200):  # frames are published before the subscription lands: retry
            sender.send(frame)
            msg = sub.recv_message(timeout=0.1)
            if msg is not None:
                break
        assert msg is not None
        header, depth = msg.header, msg.arrays["depth"]
        assert header["stream"] == "cam" and header["units"] == "m"
        assert depth.shape == (50, 70) and depth.dtype == np.float32
        assert msg.arrays["view"].shape == (50, 70, 3)
        assert {"preprocess", "inference", "postprocess"} <= set(header["stage_ms"])
        assert header["latency_ms"] > 0 and header["t_wall"] > 0
    sender.close()
    summary = pipe.join()
    assert summary.outcome == "finished"
    assert depthstream_threads() == []
