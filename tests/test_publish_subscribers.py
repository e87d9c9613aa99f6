"""PUB output honesty (issue 9, part 2): subscribers counted at the publisher, frames lost counted
at the subscriber (`sub.lost`), and `outputs.zmq.wait_subscribers` so that a subscriber that
connects a moment late still gets every frame of a file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from pipeline_helpers import (
    depth_message,
    depthstream_threads,
    eager_factory,
    load_engine,
    read_video,
    reference_depth,
    total_drops,
    write_video,
    xpub_on_tcp,
)

from pipeline import DepthSubscriber, EndpointError, Pipeline, StageError, messages
from pipeline.sinks import PublishSink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 12


def eos_message(stream: str) -> list:
    return messages.encode(messages.eos_header(stream), topic=messages.stream_topic(stream))


@pytest.fixture
def xpub():
    """A publishing socket as the sink stage makes it (XPUB_VERBOSER), on a random tcp port."""
    with xpub_on_tcp(zmq.XPUB_VERBOSER) as pub:
        yield pub


def subscriptions(sink: PublishSink, n: int, timeout_s: float = 10.0) -> None:
    """Wait until `sink` counts n subscribers, on the socket, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while sink.update() != n:
        left = deadline - time.monotonic()
        assert left > 0, f"{sink.subscribers} subscribers, expected {n}"
        sink.sock.poll(left * 1000)


@pytest.mark.parametrize("newest_only", [False, True], ids=["every-frame", "newest-only"])
def test_lost_counts_the_gaps_in_each_streams_index(xpub, newest_only):
    pub, endpoint = xpub
    sink = PublishSink(pub, publish_view=False)
    with DepthSubscriber(endpoint, newest_only=newest_only, timeout=10) as sub:
        subscriptions(sink, 1)  # from now on everything sent arrives
        for index in (0, 1, 4):  # 2 and 3 lost on the way
            pub.send_multipart(depth_message("s", index))
        pub.send_multipart(eos_message("s"))
        for index in (0, 1):  # the stream again: counting starts afresh after its end
            pub.send_multipart(depth_message("s", index))
        for index in (5, 6, 3):  # joined at 5: nothing before counts; back to 3: a restart
            pub.send_multipart(depth_message("t", index))
        pub.send_multipart(depth_message("z", 0))  # sent last, so read last
        while (item := sub.recv(timeout=10)) is not None and item[0]["stream"] != "z":
            pass
        assert item is not None, "the last frame never came"
        assert sub.lost == {"s": 2, "t": 0, "z": 0}
        assert sub.malformed == 0


def test_publish_sink_counts_subscribers_as_they_come_and_go(xpub):
    pub, endpoint = xpub
    sink = PublishSink(pub, publish_view=False)
    assert sink.update() == 0
    with DepthSubscriber(endpoint) as a:
        subscriptions(sink, 1)
        with DepthSubscriber(endpoint, streams=["cam"]):
            subscriptions(sink, 2)
        subscriptions(sink, 1)  # its connection closed: its subscription went with it
        assert sink.peak == 2
        pub.send_multipart(depth_message("cam", 0))  # the one that stays still gets frames
        header, _ = a.recv(timeout=10)
        assert header["index"] == 0
    subscriptions(sink, 0)
    with DepthSubscriber(endpoint, streams=["a", "b"]):
        subscriptions(sink, 2)  # one subscription per stream: counted per stream (documented)
    subscriptions(sink, 0)
    assert sink.peak == 2


def clip_config(clip: str, checkpoint: str, **zmq_options) -> dict:
    return {
        "sources": [{"uri": clip, "id": "clip"}],
        "model": {"checkpoint": checkpoint, "input_size": [64, 64]},
        "outputs": {"zmq": {"endpoint": "tcp://127.0.0.1:*", **zmq_options}},
        "metrics": {"interval_s": 0},
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return write_video(str(tmp_path_factory.mktemp("clip") / "clip.avi"), FRAMES, 80, 64, "MJPG")


def sink_waiting(monkeypatch) -> threading.Event:
    """Set when the sink stage first takes the subscriptions off its publishing socket: with
    `wait_subscribers`, that is once the first frame is in its hands and it starts waiting for
    them (nothing reads the socket before: PublishSink.update is what does)."""
    waiting = threading.Event()
    update = PublishSink.update

    def watched(sink: PublishSink) -> int:
        n = update(sink)
        waiting.set()
        return n

    monkeypatch.setattr(PublishSink, "update", watched)
    return waiting


def test_a_late_subscriber_gets_every_frame_of_a_file_with_wait_subscribers(
    clip, tiny_checkpoint, one_torch_thread, monkeypatch
):
    """The pipeline runs, its first frame waits at the sink, and only then a subscriber connects:
    it receives every frame, none missing, and the summary says who was connected."""
    cfg = clip_config(clip, tiny_checkpoint, wait_subscribers=1, hwm=100)
    at_sink = sink_waiting(monkeypatch)
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).start()
    try:
        assert at_sink.wait(30), "no frame reached the sink"
        assert pipe.metrics()["sink"]["processed"] == 0  # nothing went out yet
        with DepthSubscriber(pipe.endpoints["publish"], until_end=True, timeout=30) as sub:
            got = list(sub)
            summary = pipe.join(timeout=60)
            assert sub.finished and sub.lost == {"clip": 0}
    finally:
        if pipe.summary().outcome == "running":
            pipe.stop()
            pipe.join(30)
    assert [h["index"] for h, _ in got] == list(range(FRAMES))
    engine = load_engine(tiny_checkpoint)
    for (_, depth), ref in zip(got, reference_depth(engine, read_video(clip), (64, 64))):
        np.testing.assert_allclose(depth, ref, rtol=1e-4, atol=1e-4)
    assert summary.outcome == "finished" and summary.frames == {"clip": FRAMES}
    assert total_drops(summary) == 0  # held back by backpressure while waiting, not dropped
    assert summary.stages["sink"]["gauges"] == {"subscribers": 1, "subscribers_peak": 1}
    assert "subscribers: 1 at the end, peak 1" in summary.format()
    assert "DepthSubscriber.lost" in summary.format()  # where a subscriber's losses are counted
    assert depthstream_threads() == []


def test_no_subscriber_in_time_is_a_clear_error(clip, tiny_checkpoint):
    cfg = clip_config(clip, tiny_checkpoint, wait_subscribers=1, wait_timeout_s=0.5)
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
    t0 = time.monotonic()
    with pytest.raises(StageError) as info:
        pipe.run()
    assert time.monotonic() - t0 < 20
    assert info.value.stage == "sink" and isinstance(info.value.error, EndpointError)
    assert "0 of 1 subscribers connected" in str(info.value)
    assert "within 0.5 s (outputs.zmq.wait_subscribers)" in str(info.value)
    assert pipe.summary().frames == {"clip": 0}
    assert depthstream_threads() == []


def test_stop_while_waiting_for_subscribers(clip, tiny_checkpoint, monkeypatch):
    cfg = clip_config(clip, tiny_checkpoint, wait_subscribers=1, wait_timeout_s=60)
    at_sink = sink_waiting(monkeypatch)
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).start()
    assert at_sink.wait(30), "no frame reached the sink"
    t0 = time.monotonic()
    pipe.stop()
    summary = pipe.join(timeout=30)
    assert time.monotonic() - t0 < 5  # the wait watches the control socket
    assert summary.outcome == "stopped" and summary.frames == {"clip": 0}
    assert depthstream_threads() == []


def test_command_line_exit_code_5_when_no_subscriber_comes(clip, tiny_checkpoint, tmp_path):
    config = tmp_path / "wait.yaml"
    config.write_text(
        "outputs:\n  zmq:\n    wait_subscribers: 1\n    wait_timeout_s: 0.5\n"
        "metrics:\n  interval_s: 0\n"
    )
    endpoint = "tcp://127.0.0.1:*"  # a free port: nobody connects
    args = ["--config", str(config), "--source", f"clip={clip}", "--checkpoint", tiny_checkpoint]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), *args, "--publish", endpoint],
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 5, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "0 of 1 subscribers connected" in last, proc.stderr
    assert "Traceback" not in proc.stderr
