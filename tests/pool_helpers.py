"""A harness for the worker pool's hub side (pipeline.pool.PoolStage), for tests/test_pool.py.

`running_hub` runs the stage on its thread with inproc links standing in for preprocess
(`Feeder`: frames out, credits in) and postprocess (`Hub.output`), and a tcp ROUTER for its
workers: `Peer`, a DEALER that speaks pipeline.pool_protocol one message at a time (a test
decides who answers what and when), or `real_worker`, pipeline.worker.Worker on a thread.
Frames carry one grey level per index and the test engines return it as depth, so every result
names its frame.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import zmq
from pipeline_helpers import frame_header, wait_until

from pipeline import curve, messages
from pipeline import pool_protocol as proto
from pipeline.config_network import WorkersConfig
from pipeline.pool import PoolStage
from pipeline.stage import STOP
from pipeline.worker import Worker

SHAPE = (32, 64)  # model input of the test frames (sides multiples of 32)
WAIT = 10.0  # seconds any expected event may take on a busy machine


def pixels_of(index: int) -> np.ndarray:
    """(3, h, w) float32 pixels that are exact uint8 values, one grey level per index."""
    return proto.UINT8_TO_PIXEL[np.full((3, *SHAPE), index % 256, np.uint8)]


def depth_of(pixels: np.ndarray) -> np.ndarray:
    """The test engine: depth = the grey level (so a result names its frame)."""
    return np.ascontiguousarray(pixels[:, 0] * 255, dtype=np.float32)


class GreyEngine:
    """A deterministic engine for pipeline.worker.Worker."""

    max_depth = 255.0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return depth_of(pixels)

    def describe(self) -> str:
        return "grey"


class Feeder:
    """Preprocess's side of the stage: sends frames as credits allow, reads the credits."""

    def __init__(self, ctx: zmq.Context, input: str, credit: str) -> None:
        self.push = ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.connect(input)
        self.credits = ctx.socket(zmq.PULL)
        self.credits.linger = 0
        self.credits.connect(credit)
        self.available = 0
        self.granted = 0  # credits received so far

    def read_credits(self, timeout: float = 0.0) -> int:
        if self.credits.poll(timeout * 1000):
            while True:
                try:
                    n = int(self.credits.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
                self.available += n
                self.granted += n
        return self.available

    def frame(self, stream: str, index: int, mode: str = "lossless") -> None:
        deadline = time.monotonic() + WAIT
        while self.read_credits(0) == 0:
            assert time.monotonic() < deadline, f"no credit for frame {stream}/{index}"
            self.read_credits(0.2)
        header = frame_header(stream, index, shape=SHAPE, mode=mode)
        self.push.send_multipart(messages.encode(header, {"pixels": pixels_of(index)}))
        self.available -= 1

    def eos(self, stream: str) -> None:
        self.push.send_multipart(messages.encode(messages.eos_header(stream)))

    def close(self) -> None:
        self.push.close()
        self.credits.close()


class Peer:
    """A worker driven step by step by the test: READY on connect, then what the test sends."""

    def __init__(
        self, ctx: zmq.Context, endpoint: str, name: str, *, batch: int = 1, credit: int = 1,
        keys: curve.Keys | None = None,
    ) -> None:  # fmt: skip
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        curve.client(self.sock, keys)
        self.sock.connect(endpoint)
        self.name = name
        ready = {"v": 1, "name": name, "host": "test", "pid": 1, "device": "cpu",
                 "engine": "grey", "batch": batch, "credit": credit,
                 "max_depth": 255.0}  # fmt: skip
        self.send(proto.READY, ready)

    def send(self, command: bytes, body: dict | None = None, *buffers) -> None:
        self.sock.send_multipart(proto.encode(command, body, *buffers))

    def recv(self, timeout: float = WAIT) -> tuple[bytes, dict, np.ndarray | None] | None:
        """The next message other than a HEARTBEAT; None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.sock.poll(max(0.0, deadline - time.monotonic()) * 1000):
            command, body, array = proto.decode(self.sock.recv_multipart(), max_bytes=1 << 26)
            if command != proto.HEARTBEAT:
                return command, body, array
        return None

    def batch(self, timeout: float = WAIT) -> tuple[dict, np.ndarray]:
        got = self.recv(timeout)
        assert got is not None and got[0] == proto.BATCH, f"{self.name}: no BATCH but {got}"
        return got[1], proto.unpack_pixels(got[1]["dtype"], got[2])

    def answer(self, body: dict, pixels: np.ndarray) -> None:
        depth = depth_of(pixels)
        self.send(proto.RESULT, {"id": body["id"], "ms": 1.0, "shape": list(depth.shape)}, depth)

    def close(self) -> None:
        self.sock.close()


def first_batch(peers: list[Peer]) -> tuple[Peer, dict, np.ndarray]:
    """The first BATCH any of `peers` gets (heartbeats skipped): (peer, body, pixels)."""
    poller = zmq.Poller()
    for p in peers:
        poller.register(p.sock, zmq.POLLIN)
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0:
        for sock, _ in poller.poll(left * 1000):
            p = next(p for p in peers if p.sock is sock)
            command, body, array = proto.decode(sock.recv_multipart(), max_bytes=1 << 26)
            if command == proto.BATCH:
                return p, body, proto.unpack_pixels(body["dtype"], array)
            assert command == proto.HEARTBEAT, command
    raise AssertionError(f"no BATCH for any of {[p.name for p in peers]}")


class Hub:
    """A running PoolStage with its feeder and output socket."""

    def __init__(self, ctx: zmq.Context, stage: PoolStage, feeder: Feeder, out: zmq.Socket):
        self.ctx, self.stage, self.feeder, self.out = ctx, stage, feeder, out
        self.endpoint = stage.bound["workers"]
        self.peers: list[Peer] = []  # closed by running_hub

    def peer(self, name: str, **kw) -> Peer:
        self.peers.append(Peer(self.ctx, self.endpoint, name, **kw))
        return self.peers[-1]

    def output(self, timeout: float = WAIT) -> messages.Message | None:
        if not self.out.poll(timeout * 1000):
            return None
        return messages.decode(self.out.recv_multipart(), max_bytes=1 << 26)

    def outputs_until_eos(self, stream: str) -> list[messages.Message]:
        got = []
        while True:
            msg = self.output()
            assert msg is not None, f"no EOS of {stream}; got {[m.header['index'] for m in got]}"
            if msg.kind == "eos":
                assert msg.stream == stream
                return got
            got.append(msg)

    def joined(self, n: int) -> None:
        wait_until(lambda: len(self.stage.registry.active()) == n, WAIT, f"{n} workers joined")


@contextlib.contextmanager
def running_hub(
    *, streams=("a",), live=False, max_batch=1, max_wait_ms=5.0, heartbeat_s=1.0,
    timeout_s=10.0, out_hwm: int = 1000, max_message_bytes: int = 1 << 26, **workers,
) -> Iterator[Hub]:  # fmt: skip
    """`out_hwm`: the output socket's receive queue (small: a slow postprocess)."""
    ctx = zmq.Context()
    uid = uuid.uuid4().hex[:8]
    cfg = WorkersConfig("tcp://127.0.0.1:0", heartbeat_s=heartbeat_s, timeout_s=timeout_s,
                        **workers)  # fmt: skip
    names = {k: f"inproc://pool-test-{uid}/{k}" for k in ("input", "credit", "output", "ctl")}
    stage = PoolStage(
        None, streams=streams, input=names["input"], credit=names["credit"],
        output=names["output"], endpoint=cfg.endpoint, workers=cfg, live=live,
        max_batch=max_batch, max_wait_ms=max_wait_ms, context=ctx, control=names["ctl"],
        max_message_bytes=max_message_bytes,
    )  # fmt: skip
    out = ctx.socket(zmq.PULL)
    out.linger = 0
    out.rcvhwm = out_hwm
    out.bind(names["output"])
    ctl = ctx.socket(zmq.PUSH)
    ctl.linger = 0
    ctl.connect(names["ctl"])
    hub = None
    stage.start()
    try:
        assert stage.ready.wait(WAIT) and stage.error is None, stage.error
        hub = Hub(ctx, stage, Feeder(ctx, names["input"], names["credit"]), out)
        yield hub
    finally:
        with contextlib.suppress(zmq.Again):  # not if the stage ended already
            ctl.send(STOP, zmq.NOBLOCK)
        stage.join(WAIT)
        assert not stage.is_alive()
        if hub is not None:
            hub.feeder.close()
            for p in hub.peers:
                p.close()
        out.close()
        ctl.close()
        curve.stop_authenticator(ctx)
        ctx.term()


@contextlib.contextmanager
def real_worker(endpoint: str, name: str, engine=GreyEngine, **kw) -> Iterator[Worker]:
    """pipeline.worker.Worker on a thread (the grey engine by default), stopped and joined."""
    w = Worker(endpoint, engine, name=name, **kw)
    thread = threading.Thread(target=w.run, name=f"test-worker-{name}", daemon=True)
    thread.start()
    try:
        assert w.ready.wait(WAIT) and w.error is None, w.error
        yield w
    finally:
        w.stop()
        thread.join(WAIT)
        assert not thread.is_alive()


def indices(msgs: list[messages.Message]) -> list[int]:
    return [m.header["index"] for m in msgs]


def assert_depth_is_frame(msg: messages.Message) -> None:
    depth = msg.arrays["depth"]
    assert depth.shape == SHAPE
    np.testing.assert_allclose(depth, msg.header["index"] % 256, atol=1e-3)
