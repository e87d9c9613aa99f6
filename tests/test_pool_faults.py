"""The worker pool's hub side (pipeline.pool, pipeline.pool_dispatch) under faults: batches the
link cannot carry, a failure on a busy pool, a slow postprocess with a live source, a worker that
heartbeats but never answers (harness: tests/pool_helpers.py)."""

from __future__ import annotations

import time
from collections import deque

import zmq
from pool_helpers import SHAPE, WAIT, indices, running_hub

from pipeline import pool_protocol as proto
from pipeline.config_network import WorkersConfig
from pipeline.pool import PoolStage

FRAME_BYTES = 4 * 3 * SHAPE[0] * SHAPE[1]  # one frame's float32 pixels


def test_a_batch_never_exceeds_the_message_limit():
    with running_hub(max_batch=4, max_wait_ms=2000, max_message_bytes=2 * FRAME_BYTES + 512) as hub:
        p = hub.peer("p", batch=4, credit=2)
        hub.joined(1)
        for i in range(4):
            hub.feeder.frame("a", i)
        for expected in ([0, 1], [2, 3]):  # two frames fit in a message, not four
            body, pixels = p.batch()
            assert [f["index"] for f in body["frames"]] == expected
            p.answer(body, pixels)
        hub.feeder.eos("a")
        assert indices(hub.outputs_until_eos("a")) == [0, 1, 2, 3]


def test_a_failed_batch_waits_for_a_busy_healthy_worker_instead_of_the_one_it_failed_on():
    with running_hub() as hub:
        p1, p2 = hub.peer("p1"), hub.peer("p2")
        hub.joined(2)
        hub.feeder.frame("a", 0)
        hub.feeder.frame("a", 1)
        got = {p.name: p.batch() for p in (p1, p2)}  # one frame each: both busy
        p1.send(proto.FAILED, {"id": got["p1"][0]["id"], "error": "CUDA error: out of memory"})
        assert p1.recv(timeout=0.5) is None  # not back to p1, although p1 has credit now
        p2.answer(*got["p2"])
        body, pixels = p2.batch()  # p2 takes it once it has credit
        assert body["frames"] == got["p1"][0]["frames"]
        p2.answer(body, pixels)
        hub.feeder.eos("a")
        assert indices(hub.outputs_until_eos("a")) == [0, 1]
        assert hub.stage.error is None


def test_with_a_live_source_a_slow_output_stops_the_credits():
    """Lossless results waiting for postprocess count against the credits even when a live
    stream is in the run: what the pool holds stays bounded."""
    with running_hub(live=True, out_hwm=1) as hub:
        p = hub.peer("p")
        hub.joined(1)
        fed = 0
        while fed < 40 and hub.feeder.read_credits(1.0) > 0:  # the output is never read
            hub.feeder.frame("a", fed)
            fed += 1
            p.answer(*p.batch())
        assert fed < 15, f"{fed} frames taken while postprocess took none"
        hub.feeder.eos("a")
        assert indices(hub.outputs_until_eos("a")) == list(range(fed))


def test_a_worker_that_heartbeats_but_never_answers_is_lost_and_its_frames_redone():
    with running_hub(heartbeat_s=0.1, timeout_s=0.3) as hub:  # hung after 4 x 0.3 s
        hung = hub.peer("hung")
        hub.joined(1)
        hub.feeder.frame("a", 0)
        hung.batch()
        good = hub.peer("good")
        t0, got = time.monotonic(), None
        while got is None and time.monotonic() - t0 < WAIT:
            hung.send(proto.HEARTBEAT)  # its I/O thread lives on
            good.send(proto.HEARTBEAT)
            if good.sock.poll(100):
                command, body, array = proto.decode(good.sock.recv_multipart(), max_bytes=1 << 26)
                if command == proto.BATCH:
                    got = (body, proto.unpack_pixels(body["dtype"], array))
        assert got is not None, "the hung worker's frame was never redone"
        assert 1.2 <= time.monotonic() - t0 < 1.2 + 5
        good.answer(*got)
        hub.feeder.eos("a")
        assert indices(hub.outputs_until_eos("a")) == [0]
        states = {w["name"]: w["state"] for w in hub.stage.workers_snapshot()}
        assert states["hung"] == "lost"


def test_a_worker_is_lost_only_once():
    ctx = zmq.Context()
    try:
        cfg = WorkersConfig("tcp://127.0.0.1:0")
        stage = PoolStage(None, streams=["a"], input="inproc://x", credit="inproc://y",
                          output="inproc://z", endpoint=cfg.endpoint, workers=cfg,
                          context=ctx, control="inproc://c")  # fmt: skip
        stage.pending = deque()
        info = {"name": "w", "host": "h", "pid": 1, "device": "cpu", "engine": "e", "batch": 1,
                "credit": 1}  # fmt: skip
        w = stage.registry.join(b"id", info, time.monotonic())
        stage._lose(w, "left", "said goodbye")
        stage._lose(w, "lost", "disconnected")  # e.g. the heartbeat after its DISCONNECT failed
        assert stage.metrics.events["workers_left"] == 1
        assert stage.metrics.events["workers_lost"] == 0
    finally:
        ctx.term()
