"""The worker pool's hub side (pipeline.pool.PoolStage) over real ZeroMQ sockets: dispatch and
order, dead and failing workers, live streams, no workers, CURVE, and whole pipelines with workers
(harness: tests/pool_helpers.py)."""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import pytest
import zmq
from pipeline_helpers import LogWatch, depthstream_threads, wait_until
from pool_helpers import (
    WAIT,
    assert_depth_is_frame,
    first_batch,
    indices,
    real_worker,
    running_hub,
)

from pipeline import Pipeline, curve, messages
from pipeline import pool_protocol as proto
from pipeline.config_network import WorkersConfig
from pipeline.errors import NoWorkersError, PipelineError
from pipeline.pool import PoolStage
from pipeline.report import status_line
from pipeline.simulate import SimulatedEngine
from pipeline.summary import Summary

# ---- dispatch and order ---------------------------------------------------------------------


def test_two_workers_answering_out_of_order_give_lossless_output_in_order_exactly_once():
    with running_hub() as hub:
        p1, p2 = hub.peer("p1"), hub.peer("p2")
        hub.joined(2)
        n = 8
        got: list[messages.Message] = []
        for i in range(0, n, 2):
            hub.feeder.frame("a", i)  # one to each worker: each has credit for one batch
            hub.feeder.frame("a", i + 1)
            batches = sorted([(p, *p.batch()) for p in (p1, p2)], key=lambda b: b[1]["id"])
            (pe, be, xe), (pl, bl, xl) = batches
            assert [be["frames"][0]["index"], bl["frames"][0]["index"]] == [i, i + 1]
            # The later frame's worker answers first: its result must wait for the earlier one.
            pl.answer(bl, xl)
            assert hub.output(0.2) is None, "a later frame overtook an earlier one"
            pe.answer(be, xe)
            got += [hub.output(), hub.output()]
        hub.feeder.eos("a")
        got += hub.outputs_until_eos("a")
        assert indices(got) == list(range(n))  # in order, exactly once
        for m in got:
            assert_depth_is_frame(m)
            assert m.header["batch"] == 1
            assert m.header["max_depth"] == 255.0  # as the worker announced it
            assert m.header["stage_ms"]["inference"] >= 0
        snap = {w["name"]: w for w in hub.stage.workers_snapshot()}
        assert snap["p1"]["frames"] == snap["p2"]["frames"] == n // 2  # shared out evenly
        assert hub.stage.description == "2 workers: p1 (cpu, grey), p2 (cpu, grey)"
        assert hub.stage.done.wait(WAIT) and hub.stage.outcome == "finished"
        for p in (p1, p2):  # the hub's goodbye: no worker waits for a timeout
            assert p.recv()[:2] == (proto.DISCONNECT, {"reason": "the hub ended"})


def test_batches_are_same_size_frames_up_to_the_worker_batch():
    with running_hub(max_batch=4, max_wait_ms=10_000) as hub:
        p = hub.peer("p", batch=4, credit=1)
        hub.joined(1)
        for i in range(4):  # credit: one batch of 4 at the worker + one batch waiting here
            hub.feeder.frame("a", i)
        body, pixels = p.batch()  # full: sent at once, not after max_wait_ms
        assert [f["index"] for f in body["frames"]] == [0, 1, 2, 3]
        assert body["dtype"] == "uint8"  # exact uint8 pixels travel as uint8
        p.answer(body, pixels)
        hub.feeder.frame("a", 4)
        hub.feeder.eos("a")  # the end of the stream sends the partial batch at once
        body, pixels = p.batch()
        assert [f["index"] for f in body["frames"]] == [4]
        p.answer(body, pixels)
        got = hub.outputs_until_eos("a")
        assert indices(got) == [0, 1, 2, 3, 4]
        assert [m.header["batch"] for m in got] == [4, 4, 4, 4, 1]
        p.close()


# ---- faults ---------------------------------------------------------------------------------


def test_a_silent_worker_is_detected_within_the_timeout_and_its_frames_redone(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.pool")
    with running_hub(heartbeat_s=0.1, timeout_s=0.4) as hub, \
            LogWatch("pipeline.pool", "worker p1 lost") as lost:  # fmt: skip
        p1 = hub.peer("p1")
        t_last = time.monotonic()  # p1's READY: the last thing it sends
        hub.joined(1)
        for i in range(2):  # p1 holds frame 0, frame 1 waits in the hub
            hub.feeder.frame("a", i)
        body, pixels = p1.batch()
        assert [f["index"] for f in body["frames"]] == [0]
        assert lost.seen.wait(WAIT)
        detected = time.monotonic() - t_last
        assert 0.4 <= detected < 0.4 + 2.0, detected  # the timeout, plus a busy machine's slack
        with real_worker(hub.endpoint, "w2", heartbeat_s=0.1, timeout_s=0.4) as w2:
            hub.feeder.frame("a", 2)
            # p1 wakes up and answers: too late, its frame went to w2; told to start over.
            p1.answer(body, pixels)
            command, reply, _ = p1.recv()
            assert command == proto.DISCONNECT and "READY" in reply["reason"]
            hub.feeder.eos("a")
            got = hub.outputs_until_eos("a")
            assert w2.frames == 3
        assert indices(got) == [0, 1, 2]  # exactly once, in order
        for m in got:
            assert_depth_is_frame(m)
        snap = {w["name"]: w for w in hub.stage.workers_snapshot()}
        assert snap["p1"]["state"] == "lost" and snap["p1"]["frames"] == 0
        assert snap["w2"]["frames"] == 3
        assert hub.stage.metrics.events["workers_lost"] == 1
        lines = [r.getMessage() for r in caplog.records if "p1 lost" in r.getMessage()]
        assert lines == ["inference: worker p1 lost (silent for 0.4 s): 1 frames re-queued, "
                         "0 live frames dropped"]  # fmt: skip


def test_disconnect_requeues_at_once_and_a_worker_may_come_back():
    with running_hub(timeout_s=30) as hub:  # nothing here waits for a timeout
        p1, p2 = hub.peer("p1"), hub.peer("p2")
        hub.joined(2)
        hub.feeder.frame("a", 0)
        hub.feeder.frame("a", 1)
        first = {p.name: p.batch() for p in (p1, p2)}
        order = sorted(first, key=lambda k: first[k][0]["frames"][0]["index"])
        quitter, stayer = (p1, p2) if order[0] == "p1" else (p2, p1)
        t0 = time.monotonic()
        quitter.send(proto.DISCONNECT, {"reason": "bye"})
        stayer.answer(*first[stayer.name])
        body, pixels = stayer.batch()  # the quitter's frame, redone here
        assert time.monotonic() - t0 < 5  # far less than timeout_s
        assert [f["index"] for f in body["frames"]] == [0]
        stayer.answer(body, pixels)
        assert indices([hub.output(), hub.output()]) == [0, 1]
        back = hub.peer(quitter.name)  # a new connection under the same name
        hub.joined(2)
        snap = [w for w in hub.stage.workers_snapshot() if w["name"] == quitter.name]
        assert [w["state"] for w in snap] == ["ready"]  # took the place of the one that left
        hub.feeder.frame("a", 2)
        hub.feeder.frame("a", 3)
        for p in (back, stayer):
            p.answer(*p.batch())
        hub.feeder.eos("a")
        assert indices(hub.outputs_until_eos("a")) == [2, 3]


def test_a_failed_batch_is_redone_once_elsewhere_and_a_second_failure_fails_the_stage():
    with running_hub() as hub:
        p1, p2 = hub.peer("p1"), hub.peer("p2")
        hub.joined(2)
        hub.feeder.frame("a", 0)
        first, body, _ = first_batch([p1, p2])
        first.send(proto.FAILED, {"id": body["id"], "error": "CUDA error: out of memory"})
        other = p2 if first is p1 else p1
        body2, _ = other.batch()  # redone on the other worker
        assert [f["index"] for f in body2["frames"]] == [0]
        other.send(proto.FAILED, {"id": body2["id"], "error": "CUDA error: device lost"})
        assert hub.stage.done.wait(WAIT)
        assert hub.stage.outcome == "failed"
        assert isinstance(hub.stage.error, PipelineError)
        assert "failed a batch twice: CUDA error: device lost" in str(hub.stage.error)


def test_no_worker_lossless_frames_wait_bounded_then_no_workers_error():
    with running_hub(max_batch=2, wait_s=0.5) as hub:
        hub.feeder.frame("a", 0)
        hub.feeder.frame("a", 1)
        wait_until(lambda: hub.stage.metrics.gauges.get("waiting_for_workers") == 1, WAIT,
                   "the stage to say it waits for workers")  # fmt: skip
        snap = {"inference": {**hub.stage.metrics.snapshot(), "queue": 2}}
        assert "waiting for workers (none connected)" in status_line(snap)
        assert hub.stage.done.wait(WAIT)
        # Bounded: with no worker, the hub asked preprocess for one batch of frames, no more.
        assert hub.feeder.read_credits(0) == 0 and hub.feeder.granted == 2
        assert isinstance(hub.stage.error, NoWorkersError)
        assert str(hub.stage.error) == (
            f"no inference worker connected to {hub.stage.endpoint} for 0.5 s"
        )


# ---- live streams ---------------------------------------------------------------------------


def test_live_results_never_go_backwards_and_credits_follow_free_workers():
    with running_hub(live=True) as hub:
        assert hub.feeder.read_credits(0.3) == 0  # no worker: nothing is asked of preprocess
        p1, p2 = hub.peer("p1"), hub.peer("p2")
        hub.joined(2)
        batches = {}
        for i in range(2):  # one at a time: a newer live frame replaces one still waiting
            hub.feeder.frame("a", i, mode="live")
            p, body, pixels = first_batch([p1, p2])
            batches[body["frames"][0]["index"]] = (p, body, pixels)
        assert batches[0][0] is not batches[1][0]  # one each
        newer, older = batches[1], batches[0]
        newer[0].answer(newer[1], newer[2])
        assert indices([hub.output()]) == [1]
        older[0].answer(older[1], older[2])  # older than what already left: dropped
        wait_until(lambda: hub.stage.metrics.drops["out_of_order"] == 1, WAIT, "the drop")
        hub.feeder.eos("a")
        assert hub.outputs_until_eos("a") == []


def test_live_frames_of_a_lost_worker_are_dropped_and_counted():
    with running_hub(live=True, timeout_s=30) as hub:
        p1 = hub.peer("p1")
        hub.joined(1)
        hub.feeder.frame("a", 0, mode="live")
        p1.batch()
        p1.send(proto.DISCONNECT, {"reason": "bye"})
        wait_until(lambda: hub.stage.metrics.drops["worker_lost"] == 1, WAIT, "the drop")
        hub.feeder.eos("a")
        assert hub.outputs_until_eos("a") == []  # the EOS still comes


# ---- security -------------------------------------------------------------------------------


def test_a_worker_whose_key_is_not_allowed_gets_no_batch(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.curve")
    keys = tmp_path / "keys"
    allow = tmp_path / "allow"
    hub_pub, hub_secret = curve.generate(str(keys), "hub")
    good_pub, good_secret = curve.generate(str(allow), "good")
    curve.generate(str(keys), "rogue")
    cfg = curve.CurveConfig(secret=hub_secret, allow=str(allow))
    with running_hub(curve=cfg) as hub:
        server = curve.load_public(hub_pub)

        def client(secret: str) -> curve.Keys:
            public, sec = curve.load_secret(secret)
            return curve.Keys(public, sec, server=server)

        with LogWatch("pipeline.curve", "refused a peer") as refused:
            rogue = hub.peer("rogue", keys=client(str(keys / "rogue.key_secret")))
            assert refused.seen.wait(WAIT)
        good = hub.peer("good", keys=client(good_secret))
        plain = hub.peer("plain")  # no CURVE at all: no handshake either
        hub.joined(1)
        hub.feeder.frame("a", 0)
        good.answer(*good.batch())
        assert indices([hub.output()]) == [0]
        assert rogue.recv(0.3) is None and plain.recv(0.1) is None
        assert [w["name"] for w in hub.stage.workers_snapshot()] == ["good"]
        refusals = [r for r in caplog.records if "refused a peer" in r.getMessage()]
        assert len(refusals) == 1  # once per peer address, however often it retries


def test_a_network_endpoint_without_keys_is_refused():
    ctx = zmq.Context()
    cfg = WorkersConfig("tcp://0.0.0.0:0")
    stage = PoolStage(
        None, streams=["a"], input="inproc://x-in", credit="inproc://x-credit",
        output="inproc://x-out", endpoint=cfg.endpoint, workers=cfg, context=ctx,
        control="inproc://x-ctl",
    )  # fmt: skip
    stage.start()
    try:
        assert stage.done.wait(WAIT)
        assert stage.outcome == "failed"
        assert str(stage.error).startswith("workers: tcp://0.0.0.0:0 is reachable from the network")
    finally:
        stage.join(WAIT)
        ctx.term()


# ---- the whole pipeline ---------------------------------------------------------------------


def write_frames(folder, n: int) -> None:
    import cv2
    from pipeline_helpers import frame_at

    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), frame_at(i, 60, 90))


def run_files(config: dict, out, **kw) -> tuple[dict[str, np.ndarray], Summary]:
    config = {**config, "outputs": {"files": {"directory": str(out), "png": False}}}
    summary = Pipeline(config, **kw).run(handle_signals=False)
    assert summary.outcome == "finished"
    return {p.name: np.load(p) for p in sorted((out / "a").glob("*.npy"))}, summary


@pytest.fixture
def images(tmp_path):
    write_frames(tmp_path / "images", 7)
    return {
        "sources": [{"uri": str(tmp_path / "images"), "id": "a"}],
        "model": {"backend": "simulate", "simulate_ms": 0, "max_batch": 2},
        "metrics": {"interval_s": 0},
    }


def simulate() -> SimulatedEngine:
    return SimulatedEngine(0)


def test_pipeline_with_workers_writes_what_a_single_process_run_writes(images, tmp_path):
    single, _ = run_files(images, tmp_path / "single", engine_factory=simulate)
    assert len(single) == 7
    config = {**images, "workers": {"endpoint": "tcp://127.0.0.1:0"}}
    config["outputs"] = {"files": {"directory": str(tmp_path / "pool"), "png": False}}
    pipe = Pipeline(config)  # no engine here: the workers run it
    pipe.start()
    try:
        hub = pipe.endpoints["workers"]
        with real_worker(hub, "w1", simulate, batch=2), real_worker(hub, "w2", simulate):
            summary = pipe.join(timeout=60)
    finally:
        pipe.stop()
        with contextlib.suppress(Exception):
            pipe.join()
    assert summary.outcome == "finished"
    pooled = {p.name: np.load(p) for p in sorted((tmp_path / "pool" / "a").glob("*.npy"))}
    assert sorted(pooled) == sorted(single)
    for name in single:
        np.testing.assert_array_equal(pooled[name], single[name])
    assert sum(w["frames"] for w in summary.workers) == 7
    assert {w["name"] for w in summary.workers} <= {"w1", "w2"}
    table = summary.format()
    for w in summary.workers:
        assert f"{w['name']:<22}  ready{w['frames']:>8}" in table
    line = pipe.status_line()
    assert all(f"{w['name']} ready {w['frames']}f p95" in line for w in summary.workers), line
    assert depthstream_threads() == []
    # Prometheus: per-worker series, labelled by worker name, read from the same snapshot.
    pytest.importorskip("prometheus_client")
    from pipeline.prometheus import PipelineCollector

    families = {f.name: f for f in PipelineCollector(pipe).collect()}
    frames = {s.labels["worker"]: s.value for s in families["depthstream_worker_frames"].samples
              if s.name.endswith("_total")}  # fmt: skip
    assert frames == {w["name"]: w["frames"] for w in summary.workers}
    states = {(s.labels["worker"], s.labels["state"]): s.value
              for s in families["depthstream_worker_state"].samples}  # fmt: skip
    assert all(states[(w["name"], "ready")] == 1 for w in summary.workers)
    latency = families["depthstream_worker_latency_seconds"]  # a histogram: one count per batch
    counts = {s.labels["worker"]: s.value for s in latency.samples if s.name.endswith("_count")}
    assert counts == {w["name"]: w["batches"] for w in summary.workers}


def test_pipeline_with_a_local_worker_only(images, tmp_path):
    single, _ = run_files(images, tmp_path / "single", engine_factory=simulate)
    config = {**images, "workers": {"endpoint": "tcp://127.0.0.1:0", "local_worker": True}}
    pooled, summary = run_files(config, tmp_path / "pool", engine_factory=simulate)
    assert [(w["name"], w["frames"]) for w in summary.workers] == [("local", 7)]
    assert summary.engine.startswith("1 worker: local (none (simulated), simulate")
    assert sorted(pooled) == sorted(single)
    for name in single:
        np.testing.assert_array_equal(pooled[name], single[name])
    assert depthstream_threads() == []
