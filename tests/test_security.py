"""Authenticated links (issue 12, security): per-run CURVE keys on a pipeline's internal tcp links,
and CURVE keys on the PUB output.

The attacker is a real process on the same host (HOSTILE below), as the issue found it: it
connects to a running pipeline's tcp ports as any local program can, sends well-formed messages,
and says whether its handshake succeeded. Before the per-run keys, a frame it pushed into a stage
was processed and written (000000.npy overwritten), an end of stream it sent ended or hung the
run, and a PULL it connected to the credit port stalled the run for good.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from pipeline_helpers import (
    depthstream_threads,
    eager_factory,
    frame_at,
    frame_header,
    load_engine,
    read_video,
    reference_depth,
    wait_until,
    write_video,
)

from pipeline import DepthSubscriber, FrameSender, Pipeline, StageError, curve, messages
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.topology import Addresses, Topology

H, W = 40, 50  # the frames' size

# A process that connects a socket per spec to a pipeline's endpoints, PUSHes the messages given,
# prints whether each handshake succeeded, holds on until its stdin closes, then prints how many
# messages its PULL sockets received (credits, results: what it drained from the pipeline).
HOSTILE = r"""
import base64, json, sys, zmq
from zmq.utils.monitor import recv_monitor_message
EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
ctx = zmq.Context()
socks = []
for spec in json.loads(sys.argv[1]):
    sock = ctx.socket(zmq.PUSH if spec["kind"] == "push" else zmq.PULL)
    monitor = sock.get_monitor_socket(EVENTS)
    sock.connect(spec["endpoint"])
    for parts in spec.get("send", []):
        sock.send_multipart([base64.b64decode(p) for p in parts], zmq.NOBLOCK)
    socks.append((sock, monitor))
shakes = []
for sock, monitor in socks:
    event = recv_monitor_message(monitor)["event"] if monitor.poll(10000) else None
    shakes.append({zmq.EVENT_HANDSHAKE_SUCCEEDED: "succeeded", None: "none"}.get(event, "refused"))
print(json.dumps(shakes), flush=True)
sys.stdin.read()
received = 0
for sock, _ in socks:
    while sock.poll(0):
        sock.recv_multipart()
        received += 1
print(received, flush=True)
for sock, monitor in socks:
    sock.disable_monitor()
    monitor.close(0)
    sock.close(0)
ctx.term()
"""


class Hostile:
    """The HOSTILE process: `handshakes` once it is connected; `close()` -> messages it drained."""

    def __init__(self, specs: list[dict]) -> None:
        for spec in specs:
            spec["send"] = [
                [base64.b64encode(bytes(p)).decode() for p in m] for m in spec.get("send", [])
            ]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOSTILE, json.dumps(specs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()  # each handshake resolves, or 10 s pass
        assert line, f"the hostile process failed: {self.proc.stderr.read()}"
        self.handshakes: list[str] = json.loads(line)

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.stdin.close()
        out = self.proc.stdout.read()
        assert self.proc.wait(30) == 0, self.proc.stderr.read()
        return int(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def tcp_pipeline(checkpoint: str, out: str | None = None) -> Pipeline:
    """An external stream (frames come through a FrameSender) over tcp links; depth files."""
    cfg = {
        "sources": [{"uri": "external", "id": "ext", "kind": "external", "mode": "lossless"}],
        "model": {"checkpoint": checkpoint, "input_size": [64, 64]},
        "transport": {"kind": "tcp"},
        "metrics": {"interval_s": 0},
    }
    if out is not None:
        cfg["outputs"] = {"files": {"directory": out, "layout": "flat", "png": False}}
    return Pipeline(cfg, engine_factory=eager_factory(checkpoint))


def sender(pipe: Pipeline) -> FrameSender:
    """The run's own producer: it holds the run's keys. Its queue takes every frame of a test,
    so that a stalled pipeline fails the test at pipe.join(timeout) instead of hanging it."""
    return FrameSender(pipe.endpoints["preprocess.lossless"], "ext", hwm=100, keys=pipe.link_keys)


def stage_ports(pipe: Pipeline) -> dict[str, str]:
    """Every data port a stage binds over tcp: where a local process could push."""
    return {
        s: pipe.endpoints[s] for s in ("preprocess.lossless", "inference", "postprocess", "sink")
    }


def frame(index: int, **extra) -> dict:
    header = frame_header("ext", index, shape=(H, W), **extra)
    del header["v"]  # messages.encode adds it
    return header


def well_formed(port: str) -> list:
    """A frame 0 each stage would take as its own (before the keys, each one was processed):
    white pixels, or a depth of 42 m, where the run's frame 0 is a scene of < 10 m."""
    if port == "preprocess.lossless":
        arrays = {"image": np.full((H, W, 3), 255, np.uint8)}
    elif port == "inference":
        arrays = {"pixels": np.ones((3, 64, 64), np.float32)}
    else:
        arrays = {"depth": np.full((H, W), 42.0, np.float32)}
    return messages.encode(
        frame(0, position={"frame": 0}, stage_ms={}, t_last=time.monotonic()), arrays
    )


def finish(pipe: Pipeline) -> None:
    if pipe.summary().outcome == "running":
        pipe.stop()
        pipe.join(30)


def test_a_frame_pushed_by_another_process_is_never_processed_nor_written(
    tiny_checkpoint, one_torch_thread, tmp_path
):
    out = str(tmp_path / "depth")
    pipe = tcp_pipeline(tiny_checkpoint, out).start()
    hostile = None
    try:
        with sender(pipe) as producer:
            frames = [frame_at(i, H, W) for i in range(2)]
            for f in frames:
                assert producer.send(f)
            wait_until(lambda: pipe.metrics()["sink"]["processed"] == 2, 30, "2 frames written")
            written = np.load(os.path.join(out, "000000.npy"))
            ports = stage_ports(pipe)
            hostile = Hostile(
                [
                    {"kind": "push", "endpoint": e, "send": [well_formed(p)]}
                    for p, e in ports.items()
                ]
            )
            assert hostile.handshakes == ["refused"] * len(ports), dict(
                zip(ports, hostile.handshakes)
            )
        summary = pipe.join(timeout=30)  # the producer's end of stream: the run ends
        assert hostile.close() == 0
    finally:
        if hostile is not None:
            hostile.kill()
        finish(pipe)
    assert summary.outcome == "finished" and summary.frames == {"ext": 2}
    np.testing.assert_array_equal(np.load(os.path.join(out, "000000.npy")), written)
    ref = reference_depth(load_engine(tiny_checkpoint), frames, (64, 64))
    np.testing.assert_allclose(written, ref[0], rtol=1e-4, atol=1e-4)  # the run's own frame 0
    for name in ("preprocess", "inference", "postprocess", "sink"):  # 2 frames + the end, no more
        assert summary.stages[name]["received"] == 3, (name, summary.stages[name])
        assert summary.stages[name]["malformed"] == 0
    assert sorted(os.listdir(out)) == ["000000.npy", "000001.npy"]
    assert depthstream_threads() == []


def test_an_end_of_stream_from_another_process_neither_ends_nor_hangs_the_run(
    tiny_checkpoint, one_torch_thread
):
    pipe = tcp_pipeline(tiny_checkpoint)
    results = pipe.results(timeout=30)
    eos = messages.encode(messages.eos_header("ext"))
    ports = stage_ports(pipe)
    hostile = Hostile([{"kind": "push", "endpoint": e, "send": [eos]} for e in ports.values()])
    try:
        assert hostile.handshakes == ["refused"] * len(ports), dict(zip(ports, hostile.handshakes))
        with sender(pipe) as producer:
            for i in range(4):
                assert producer.send(frame_at(i, H, W))
        got = [r.index for r in results]
        summary = pipe.join(timeout=30)
        assert hostile.close() == 0
    finally:
        hostile.kill()
        finish(pipe)
    assert got == [0, 1, 2, 3]
    assert summary.outcome == "finished" and summary.frames == {"ext": 4}
    assert depthstream_threads() == []


def test_another_process_can_drain_neither_credits_nor_results(tiny_checkpoint, one_torch_thread):
    """A PULL on the inference stage's credit port took every other credit: preprocess ran out
    and the run stalled for good. A PULL on the results port took every other result."""
    pipe = tcp_pipeline(tiny_checkpoint)
    results = pipe.results(timeout=30)
    credit = pipe._by_name["inference"].bound["credit"]
    assert credit.startswith("tcp://127.0.0.1:")
    hostile = Hostile(
        [
            {"kind": "pull", "endpoint": credit},
            {"kind": "pull", "endpoint": pipe.endpoints["results"]},
        ]
    )
    try:
        assert hostile.handshakes == ["refused", "refused"]
        with sender(pipe) as producer:
            for i in range(8):
                assert producer.send(frame_at(i, H, W))
        got = [r.index for r in results]
        summary = pipe.join(timeout=30)
        assert hostile.close() == 0  # it drained nothing
    finally:
        hostile.kill()
        finish(pipe)
    assert got == list(range(8))
    assert summary.outcome == "finished" and summary.frames == {"ext": 8}
    assert depthstream_threads() == []


def test_one_key_pair_per_run_on_tcp_links_only(tiny_checkpoint):
    def topology(kind: str) -> Topology:
        cfg = load_config(
            {
                "sources": [{"uri": "external", "id": "e", "kind": "external"}],
                "transport": {"kind": kind},
            }
        )
        return Topology.from_config(cfg, Addresses(cfg.transport, "u"), engine_factory=object)

    one, two = topology("tcp"), topology("tcp")
    assert len({s.link_keys for s in one.stages}) == 1  # every stage of a run: the same pair
    server, client = one.stages[0].link_keys
    assert client.server == server.public and server.allow == (client.public,)
    assert two.stages[0].link_keys[1].public != client.public  # another run: other keys
    assert "secret" not in repr(one.stages[0])  # a logged spec does not show the keys
    for kind in ("inproc", "ipc"):
        assert {s.link_keys for s in topology(kind).stages} == {None}


# ---- the PUB output -------------------------------------------------------------------------


@pytest.fixture
def keyring(tmp_path) -> dict[str, str]:
    """Key files: the publisher's pair, an allowed subscriber's, and one not allowed."""
    allowed, others = tmp_path / "allowed", tmp_path / "others"
    hub_public, hub_secret = curve.generate(str(tmp_path / "hub"), "hub")
    sub_public, sub_secret = curve.generate(str(allowed), "viewer")
    _, stranger_secret = curve.generate(str(others), "stranger")
    return {
        "hub_public": hub_public,
        "hub_secret": hub_secret,
        "allow": str(allowed),
        "sub_secret": sub_secret,
        "stranger_secret": stranger_secret,
    }


def test_curve_publisher_serves_only_allowed_subscribers(
    keyring, tiny_checkpoint, one_torch_thread, tmp_path
):
    clip = write_video(str(tmp_path / "clip.avi"), 4, W, H, "MJPG")
    cfg = {
        "sources": [{"uri": clip, "id": "clip"}],
        "model": {"checkpoint": tiny_checkpoint, "input_size": [64, 64]},
        "outputs": {
            "zmq": {
                "endpoint": "tcp://127.0.0.1:*",
                "wait_subscribers": 1,
                "hwm": 100,
                "curve": {"secret": keyring["hub_secret"], "allow": keyring["allow"]},
            }
        },
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).start()
    endpoint = pipe.endpoints["publish"]
    subs = []
    try:
        plain = DepthSubscriber(endpoint)  # no keys
        subs.append(plain)
        stranger = DepthSubscriber(
            endpoint,
            curve_secret=keyring["stranger_secret"],
            curve_server=keyring["hub_public"],
            newest_only=True,
        )
        subs.append(stranger)
        for refused in (plain, stranger):
            assert not refused.wait_connected(10) and refused.refused
        assert "not among the publisher's allowed keys" in stranger.refused
        viewer = DepthSubscriber(
            endpoint,
            curve_secret=keyring["sub_secret"],
            curve_server=keyring["hub_public"],
            until_end=True,
            timeout=30,
        )
        subs.append(viewer)
        assert viewer.wait_connected(10) and viewer.refused is None
        got = list(viewer)
        summary = pipe.join(timeout=30)
        assert plain.recv(timeout=0.2) is None and stranger.recv(timeout=0) is None
        assert plain.received == stranger.received == 0
    finally:
        for sub in subs:
            sub.close()
        finish(pipe)
    assert [h["index"] for h, _ in got] == [0, 1, 2, 3] and viewer.finished
    ref = reference_depth(load_engine(tiny_checkpoint), read_video(clip), (64, 64))
    for (_, depth), expected in zip(got, ref):
        np.testing.assert_allclose(depth, expected, rtol=1e-4, atol=1e-4)
    # the refused ones never subscribed: the publisher counted the viewer only
    assert summary.stages["sink"]["gauges"] == {"subscribers": 1, "subscribers_peak": 1}
    assert depthstream_threads() == []


@pytest.mark.parametrize(
    "endpoint, curve_options, problem",
    [
        ("tcp://0.0.0.0:*", {}, "outputs.zmq.endpoint: tcp://0.0.0.0:* is reachable"),
        ("tcp://127.0.0.1:*", {"secret": "missing.key_secret", "allow": "."}, "missing.key_secret"),
        ("tcp://127.0.0.1:*", {"secret": "HUB"}, "--curve-allow"),
    ],
    ids=["network-without-keys", "missing-key-file", "secret-without-allow"],
)
def test_publisher_configuration_errors_name_the_problem(keyring, endpoint, curve_options, problem):
    curve_options = {
        k: keyring["hub_secret"] if v == "HUB" else v for k, v in curve_options.items()
    }
    cfg = {
        "sources": [{"uri": "external", "id": "e", "kind": "external"}],
        "outputs": {"zmq": {"endpoint": endpoint, "curve": curve_options}},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=lambda: pytest.fail("the engine is never built"))
    with pytest.raises(StageError) as info:
        pipe.start()
    assert isinstance(info.value.error, ConfigError)  # exit 2 from the command line
    assert info.value.stage == "sink" and problem in str(info.value)
    assert depthstream_threads() == []


def test_subscriber_key_files_are_checked_at_once(keyring, tmp_path):
    with pytest.raises(ConfigError, match="missing.key_secret"):
        DepthSubscriber(
            "tcp://127.0.0.1:5556",
            curve_secret=str(tmp_path / "missing.key_secret"),
            curve_server=keyring["hub_public"],
        )
    with pytest.raises(ConfigError, match="--curve-server"):
        DepthSubscriber("tcp://127.0.0.1:5556", curve_secret=keyring["sub_secret"])
    with pytest.raises(ConfigError, match="holds no secret key"):
        DepthSubscriber(
            "tcp://127.0.0.1:5556",
            curve_secret=keyring["hub_public"],
            curve_server=keyring["hub_public"],
        )
