"""Subscriber client and external frame producers over real sockets, including malformed traffic."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq
from pipeline_helpers import (
    depth_message,
    depthstream_threads,
    eager_factory,
    frame_at,
    free_port,
    load_engine,
    read_video,
    reference_depth,
    write_video,
    xpub_on_tcp,
)

from pipeline import DepthSubscriber, FrameSender, Pipeline, curve, messages
from pipeline.messages import stream_topic as topic


def eos_message(stream):
    return messages.encode(messages.eos_header(stream), topic=topic(stream))


@pytest.fixture
def publisher():
    """A publishing socket that also hands over the subscriptions it receives (XPUB, verbose: one
    per subscriber, duplicates included), so a test can wait until they are in effect."""
    with xpub_on_tcp() as pub:
        yield pub


ALL = b""  # the subscription of a DepthSubscriber without `streams`


def wait_subscribed(pub, *topics, timeout: float = 30.0) -> None:
    """Wait on the publishing socket until a subscription to each of `topics` arrived (a topic
    listed twice: from two subscribers). Once it has arrived, that subscriber gets everything
    published after it (PUB drops what is published before)."""
    waiting = [b"\x01" + t for t in topics]
    deadline = time.monotonic() + timeout
    while waiting:
        left = deadline - time.monotonic()
        assert left > 0 and pub.poll(left * 1000), f"subscriptions never arrived: {waiting}"
        msg = pub.recv()
        if msg in waiting:
            waiting.remove(msg)


def wait_received(sub: DepthSubscriber, n: int, timeout: float = 30.0) -> None:
    """Wait until a newest_only subscriber's receiver thread has taken `n` frames off its socket
    while the consumer reads nothing. The thread notifies its condition for every message it keeps;
    DepthSubscriber has no public wait for this, so the test waits on that condition."""
    receiver = sub._newest
    with receiver._cond:
        arrived = receiver._cond.wait_for(lambda: receiver.received >= n, timeout)
    assert arrived, f"{sub.received} of {n} frames arrived"


def recv_frames(sub, n):
    """The next n (header, depth)."""
    out = []
    while len(out) < n:
        item = sub.recv(timeout=5.0)
        assert item is not None, f"got only {out}"
        out.append(item)
    return out


def test_subscriber_yields_header_and_depth_and_skips_malformed(publisher):
    pub, endpoint = publisher
    with DepthSubscriber(endpoint, timeout=2.0) as sub:
        wait_subscribed(pub, ALL)
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
        wait_subscribed(pub, topic("a"), topic("b"))
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
        wait_subscribed(pub, ALL)
        pub.send_multipart(depth_message("sync", 0))  # read before the burst: nothing waits
        header, _ = sub.recv(timeout=5.0)
        assert (header["stream"], header["index"]) == ("sync", 0)
        base = sub.received
        for i in range(20):
            pub.send_multipart(depth_message("s", i, shape=(120, 160)))
        wait_received(sub, base + 20)  # the consumer is busy while all 20 arrive
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
    curve.client(raw, pipe.link_keys)  # tcp links take only the run's keys
    raw.connect(endpoint)
    sender = FrameSender(endpoint, "ext", context=ctx, keys=pipe.link_keys)
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
        "outputs": {
            "zmq": {
                "endpoint": "tcp://127.0.0.1:*",
                "publish_view": True,
                "hwm": 100,
                # the frame waits at the sink until the subscription is in effect
                "wait_subscribers": 1,
                "wait_timeout_s": 60,
            }
        },
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).start()
    # inproc transport: an in-process producer shares the pipeline's context
    sender = FrameSender(pipe.endpoints["preprocess.lossless"], "cam", context=pipe.context)
    frame = frame_at(0, 50, 70)
    with DepthSubscriber(pipe.endpoints["publish"]) as sub:
        assert sender.send(frame)
        msg = sub.recv_message(timeout=60)
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


def test_end_of_stream_is_recorded_and_ends_iteration_with_until_end(publisher):
    pub, endpoint = publisher
    with DepthSubscriber(endpoint, until_end=True, timeout=5.0) as sub:
        wait_subscribed(pub, ALL)
        bad_eos = [
            messages.encode(messages.eos_header("a"), {"depth": np.zeros(2, np.float32)},
                            topic=topic("a")),  # an end with arrays
            [topic("a"), json.dumps({"v": 1, "kind": "eos"}).encode()],  # no stream
        ]  # fmt: skip
        for parts in bad_eos:
            pub.send_multipart(parts)
        for i in range(3):
            pub.send_multipart(depth_message("a", i))
        pub.send_multipart(depth_message("b", 0))
        pub.send_multipart(eos_message("b"))
        pub.send_multipart(depth_message("a", 3))
        pub.send_multipart(eos_message("a"))
        t0 = time.monotonic()
        got = [(h["stream"], h["index"]) for h, _ in sub]
        elapsed = time.monotonic() - t0
        # every frame, in order, then the loop ended at the ends, not after the 5 s timeout
        assert got == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("a", 3)]
        assert sub.ended == {"a", "b"} and sub.finished
        assert elapsed < 4.0
        assert sub.malformed == 2
        t0 = time.monotonic()
        assert sub.recv(timeout=5.0) is None  # finished: returns at once
        assert time.monotonic() - t0 < 4.0
        pub.send_multipart(depth_message("a", 99))  # the stream starts again
        sub.until_end = False
        header, _ = sub.recv(timeout=5.0)
        assert header["index"] == 99 and sub.ended == {"b"} and not sub.finished


def test_end_of_stream_of_watched_streams_only(publisher):
    """streams= names what until_end waits for; without until_end an end is only recorded."""
    pub, endpoint = publisher
    with (
        DepthSubscriber(endpoint, streams=["a", "b"], until_end=True) as both,
        DepthSubscriber(endpoint, streams=["a"]) as plain,
    ):
        wait_subscribed(pub, topic("a"), topic("b"), topic("a"))  # both: a and b; plain: a
        pub.send_multipart(eos_message("a"))
        pub.send_multipart(depth_message("b", 0))
        pub.send_multipart(eos_message("b"))
        got = [(h["stream"], h["index"]) for h, _ in both]
        assert got == [("b", 0)]  # ended at b's end: a had ended already
        assert both.ended == {"a", "b"} and both.finished
        pub.send_multipart(depth_message("a", 7))  # "a" again, after its end
        header, _ = recv_frames(plain, 1)[0]  # the end is skipped; the next frame comes
        assert header["index"] == 7 and plain.ended == set() and not plain.finished
        assert plain.received >= 1 and plain.malformed == 0


def test_newest_only_never_drops_the_end_of_stream(publisher):
    """A busy consumer: 20 frames and the stream's end arrive before it reads. It gets the newest
    frame, then the end (kept, not replaced by frames), and the loop ends by itself."""
    pub, endpoint = publisher
    with DepthSubscriber(endpoint, newest_only=True, until_end=True, timeout=5.0) as sub:
        assert sub.wait_connected(timeout=10)
        wait_subscribed(pub, ALL)
        pub.send_multipart(depth_message("sync", 0))  # read before the burst: nothing waits
        header, _ = sub.recv(timeout=5.0)
        assert (header["stream"], header["index"]) == ("sync", 0)
        base = sub.received
        pub.send_multipart(eos_message("sync"))
        for i in range(20):
            pub.send_multipart(depth_message("s", i, shape=(120, 160)))
        pub.send_multipart(eos_message("s"))
        pub.send_multipart(depth_message("marker", 0))  # arrives after the end of "s"
        wait_received(sub, base + 21)  # the consumer is busy while everything arrives
        pub.send_multipart(eos_message("marker"))
        got = [(h["stream"], h["index"], float(d[0, 0])) for h, d in sub]
        assert got == [("s", 19, 19.0), ("marker", 0, 0.0)]
        assert sub.ended == {"sync", "s", "marker"} and sub.finished
        assert sub.skipped >= 19


def test_newest_only_keeps_the_last_end_and_the_frames_around_it(publisher):
    """A stream that ends and starts again while the consumer is busy: what waits is bounded,
    the newest frame before the last end, the end, and the newest frame after it."""
    pub, endpoint = publisher
    with DepthSubscriber(endpoint, newest_only=True) as sub:
        wait_subscribed(pub, ALL)
        pub.send_multipart(depth_message("sync", 0))  # read before the burst: nothing waits
        header, _ = sub.recv(timeout=5.0)
        assert (header["stream"], header["index"]) == ("sync", 0)
        base, skipped = sub.received, sub.skipped
        for i in range(4):
            pub.send_multipart(depth_message("s", i))
            if i < 3:
                pub.send_multipart(eos_message("s"))
        wait_received(sub, base + 4)  # the consumer is busy while everything arrives
        header, _ = sub.recv(timeout=5.0)
        assert header["index"] == 2 and sub.ended == set()
        header, _ = sub.recv(timeout=5.0)  # after the end, which was recorded, the new start
        assert header["index"] == 3 and sub.ended == set()
        assert sub.skipped - skipped == 2  # frames 0 and 1, superseded with their ends
        assert sub.recv(timeout=0.05) is None


def test_subscriber_receives_every_frame_of_a_video_then_its_end(
    tiny_checkpoint, tmp_path, one_torch_thread
):
    """A pipeline over a video file publishing on tcp: a subscriber connected before the first
    frame gets every frame, in order, with the model's depth, and its loop ends at the end of the
    stream; a newest_only subscriber that reads only after the run gets the last frame and ends
    too."""
    clip = write_video(str(tmp_path / "clip.avi"), 8, 80, 64, "MJPG")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = {
        "sources": [{"uri": clip, "id": "clip"}],
        "model": {"checkpoint": tiny_checkpoint, "input_size": [64, 64]},
        "outputs": {"zmq": {"endpoint": endpoint, "hwm": 100}},
        "metrics": {"interval_s": 0},
    }
    subscribers_ready = threading.Event()

    def engine_factory():  # holds the first frame back until the subscribers are connected
        engine = load_engine(tiny_checkpoint)
        assert subscribers_ready.wait(60), "the subscribers never connected"
        return engine

    pipe = Pipeline(cfg, engine_factory=engine_factory)
    starter = threading.Thread(target=pipe.start)
    starter.start()  # the PUB socket is bound first; start() returns once the engine is loaded
    try:
        with (
            DepthSubscriber(endpoint, until_end=True, timeout=30) as sub,
            DepthSubscriber(endpoint, newest_only=True, until_end=True, timeout=30) as newest,
        ):
            assert sub.wait_connected(timeout=30) and newest.wait_connected(timeout=30)
            subscribers_ready.set()
            t0 = time.monotonic()
            got = list(sub)
            elapsed = time.monotonic() - t0
            starter.join(60)
            summary = pipe.join(timeout=60)
            last = [h["index"] for h, _ in newest]
            assert sub.ended == {"clip"} and sub.finished and elapsed < 25  # no timeout
            assert newest.ended == {"clip"} and newest.finished
    finally:
        subscribers_ready.set()
        starter.join(60)
        if pipe.summary().outcome == "running":
            pipe.stop()
            pipe.join(60)
    assert summary.outcome == "finished" and summary.frames == {"clip": 8}
    assert [h["index"] for h, _ in got] == list(range(8))
    assert all(h["stream"] == "clip" and h["units"] == "m" for h, _ in got)
    engine = load_engine(tiny_checkpoint)
    for (_, depth), ref in zip(got, reference_depth(engine, read_video(clip), (64, 64))):
        np.testing.assert_allclose(depth, ref, rtol=1e-4, atol=1e-4)
    assert sub.malformed == 0 and sub.received == 8
    assert last[-1] == 7 and last == sorted(last) and newest.received == 8
    assert depthstream_threads() == []
