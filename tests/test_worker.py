"""The inference worker (`depthstream worker`, pipeline.worker.Worker) against a hub played by the
test: a ROUTER speaking pool_protocol on a loopback port, with real worker processes (and, for the
Worker class's own contract, a Worker in a thread). Heartbeat 0.1 s, timeout 0.5 s: fast."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from pipeline import curve
from pipeline import pool_protocol as proto
from pipeline.simulate import SimulatedEngine
from pipeline.worker import Worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_STREAM = os.path.join(ROOT, "run_stream.py")
FAST = ["--heartbeat", "0.1", "--timeout", "0.5"]
SIM = ["--backend", "simulate"]
SIMULATE = [*SIM, "--simulate-ms", "5"]


class Hub:
    """The hub's side of the protocol, as little of it as a test needs: a ROUTER that heartbeats
    every worker that said READY (while `heartbeat` is true)."""

    def __init__(self, port: int = 0, keys: curve.Keys | None = None) -> None:
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.sock.linger = 0
        curve.server(self.sock, keys, "workers")
        self.port = self._bind(port)
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.workers: set[bytes] = set()  # identities that sent READY
        self.heartbeat = True
        self._last_beat = 0.0

    def _bind(self, port: int) -> int:
        if not port:
            return self.sock.bind_to_random_port("tcp://127.0.0.1")
        deadline = time.monotonic() + 5
        while True:  # the old hub's port may take a moment to be released
            try:
                self.sock.bind(f"tcp://127.0.0.1:{port}")
                return port
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                self.sock.poll(50)

    def recv(self, *commands: bytes, timeout: float = 5.0) -> tuple[bytes, bytes, dict, object]:
        """The next message whose command is one of `commands` (others are skipped):
        (identity, command, body, array)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            now = time.monotonic()
            if self.heartbeat and now - self._last_beat >= 0.1:
                self._last_beat = now
                for ident in self.workers:
                    self.sock.send_multipart([ident, *proto.encode(proto.HEARTBEAT)])
            if not self.sock.poll(min(left, 0.05) * 1000):
                continue
            ident, *parts = self.sock.recv_multipart()
            command, body, array = proto.decode(parts, max_bytes=1 << 26)
            if command == proto.READY:
                self.workers.add(ident)
            if command in commands:
                return ident, command, body, array
        raise AssertionError(f"no {b'/'.join(commands).decode()} within {timeout} s")

    def send_batch(self, ident: bytes, batch_id: int, pixels: np.ndarray) -> None:
        dtype, values = proto.pack_pixels(pixels)
        frames = [{"stream": "cam", "index": i} for i in range(len(pixels))]
        body = {"id": batch_id, "frames": frames,
                "pixels": {"dtype": dtype, "shape": list(pixels.shape)}}  # fmt: skip
        self.sock.send_multipart([ident, *proto.encode(proto.BATCH, body, values)])

    def close(self) -> None:
        self.sock.close(linger=0)
        curve.stop_authenticator(self.context)
        self.context.term()


def exact_pixels(b: int, h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """Pixels preprocess would make from uint8 frames: they travel as uint8."""
    values = np.random.default_rng(seed).integers(0, 256, (b, 3, h, w), dtype=np.uint8)
    return proto.UINT8_TO_PIXEL[values]


@pytest.fixture
def hubs():
    made: list[Hub] = []

    def make(port: int = 0, keys: curve.Keys | None = None) -> Hub:
        made.append(Hub(port, keys))
        return made[-1]

    yield make
    for hub in made:
        if not hub.context.closed:
            hub.close()


@pytest.fixture
def workers(tmp_path):
    """start(hub_endpoint, *options) -> a `depthstream worker` process (stderr: proc.log)."""
    procs: list[subprocess.Popen] = []

    def start(endpoint: str, *options: str) -> subprocess.Popen:
        log = open(tmp_path / f"worker{len(procs)}.log", "w+")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, RUN_STREAM, "worker", "--hub", endpoint, *options],
            stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
        )  # fmt: skip
        proc.log = log
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.log.close()


def stderr_of(proc: subprocess.Popen) -> str:
    proc.log.flush()
    proc.log.seek(0)
    return proc.log.read()


def test_ready_batch_result_and_heartbeats(hubs, workers):
    hub = hubs()
    proc = workers(hub.endpoint, *SIMULATE, *FAST, "--name", "w1", "--batch", "2", "--credit", "3")
    ident, _, ready, _ = hub.recv(proto.READY, timeout=30)
    assert ready == {
        "name": "w1", "host": socket.gethostname(), "pid": proc.pid,
        "device": "none (simulated)", "engine": "simulate (5 ms/batch, no model)",
        "batch": 2, "credit": 3, "max_depth": 80.0,  # the simulated engine's range
    }  # fmt: skip
    engine = SimulatedEngine(0)
    # uint8 on the wire, 2 frames; then float32 (not uint8-exact), 3 frames: two engine calls.
    for batch_id, pixels in ((11, exact_pixels(2)), (12, exact_pixels(3, seed=1) + 1e-3)):
        assert proto.pack_pixels(pixels)[0] == ("uint8" if batch_id == 11 else "float32")
        hub.send_batch(ident, batch_id, pixels)
        _, _, result, depth = hub.recv(proto.RESULT)
        assert result["id"] == batch_id and result["shape"] == (len(pixels), 64, 96)
        assert result["ms"] >= 5 * ((len(pixels) + 1) // 2)
        np.testing.assert_array_equal(depth, engine(pixels))
    # Idle: the worker heartbeats every 0.1 s, and stays on this connection (no new READY).
    t0 = time.monotonic()
    for _ in range(5):
        hub.recv(proto.HEARTBEAT, timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    assert hub.workers == {ident}


def test_heartbeats_flow_during_a_long_batch(hubs, workers):
    """A batch that runs 3 timeouts long: heartbeats keep coming meanwhile (the engine runs in
    its own thread), and neither side gives up on the other."""
    hub = hubs()
    workers(hub.endpoint, "--backend", "simulate", "--simulate-ms", "1500", *FAST)
    ident, *_ = hub.recv(proto.READY, timeout=30)
    hub.send_batch(ident, 1, exact_pixels(1))
    beats = 0
    while True:
        _, command, body, _ = hub.recv(proto.HEARTBEAT, proto.RESULT, proto.READY)
        assert command != proto.READY, "the worker reconnected during a long batch"
        if command == proto.RESULT:
            break
        beats += 1
    assert body["id"] == 1 and body["ms"] >= 1500
    assert beats >= 6  # 1.5 s at one per 0.1 s, with room for a busy machine


def test_a_silent_hub_is_left_and_rejoined(hubs, workers):
    hub = hubs()
    proc = workers(hub.endpoint, *SIMULATE, *FAST)
    first, *_ = hub.recv(proto.READY, timeout=30)
    hub.send_batch(first, 4, exact_pixels(1))
    hub.recv(proto.RESULT)  # the worker has heard the hub
    hub.heartbeat = False  # the hub hangs: the worker hears nothing for its timeout
    t0 = time.monotonic()
    second, *_ = hub.recv(proto.READY, timeout=5)
    assert second != first  # a fresh socket, a fresh identity
    assert time.monotonic() - t0 < 0.5 + 1.0 + 2.5  # timeout + first backoff + slack
    hub.heartbeat = True
    hub.send_batch(second, 5, exact_pixels(1))
    assert hub.recv(proto.RESULT)[2]["id"] == 5
    assert re.search(r"lost the hub tcp://127\.0\.0\.1:\d+ for 0\.5 s", stderr_of(proc))


def test_a_restarted_hub_is_rejoined(hubs, workers):
    hub = hubs()
    proc = workers(hub.endpoint, *SIMULATE, *FAST)
    ident, *_ = hub.recv(proto.READY, timeout=30)
    hub.send_batch(ident, 1, exact_pixels(1))
    hub.recv(proto.RESULT)  # the worker has heard the hub
    hub.send_batch(ident, 2, exact_pixels(1))  # never answered: the hub dies with it in flight
    port = hub.port
    hub.close()
    t0 = time.monotonic()
    hub = hubs(port)  # the same endpoint, a new process's worth of state
    ident, *_ = hub.recv(proto.READY, timeout=5)
    assert time.monotonic() - t0 < 0.5 + 1.0 + 2.5
    hub.send_batch(ident, 3, exact_pixels(2))
    _, _, result, depth = hub.recv(proto.RESULT, proto.FAILED)
    assert result["id"] == 3 and depth.shape == (2, 64, 96)  # nothing of the old connection
    assert "rejoined hub" in stderr_of(proc)


def test_a_real_model_worker(hubs, workers, tiny_checkpoint):
    """--checkpoint: the glpn engine EngineSpec builds, the same depth as calling it here."""
    from glpn import engine as glpn_engine

    hub = hubs()
    options = ["--checkpoint", tiny_checkpoint, "--backend", "eager", "--precision", "fp32",
               "--device", "cpu", "--batch", "2"]  # fmt: skip
    workers(hub.endpoint, *options, *FAST)
    ident, _, ready, _ = hub.recv(proto.READY, timeout=120)
    assert ready["device"] == "cpu" and ready["engine"].startswith("eager fp32 on cpu")
    pixels = exact_pixels(2)
    hub.send_batch(ident, 8, pixels)
    _, _, result, depth = hub.recv(proto.RESULT, proto.FAILED, timeout=60)
    assert result["id"] == 8
    local = glpn_engine.load(tiny_checkpoint, backend="eager", precision="fp32", device="cpu")
    np.testing.assert_allclose(depth, local(pixels), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_it_with_a_disconnect(hubs, workers, sig, code):
    hub = hubs()
    proc = workers(hub.endpoint, *SIMULATE, *FAST, "--name", "w9")
    ident, *_ = hub.recv(proto.READY, timeout=30)
    hub.send_batch(ident, 3, exact_pixels(2))
    hub.recv(proto.RESULT)
    proc.send_signal(sig)
    _, _, body, _ = hub.recv(proto.DISCONNECT)
    assert body == {"reason": "stopped"}
    assert proc.wait(10) == code
    err = stderr_of(proc)
    assert "worker w9: 1 batches, 2 frames" in err and "Traceback" not in err


def test_curve_allowed_key_is_served_and_another_is_not(hubs, workers, tmp_path):
    hub_pub, hub_secret = curve.generate(str(tmp_path / "hub"), "hub")
    _, worker_secret = curve.generate(str(tmp_path / "allowed"), "w1")
    _, intruder_secret = curve.generate(str(tmp_path / "other"), "intruder")
    keys = curve.file_keys(
        curve.CurveConfig(hub_secret, allow=str(tmp_path / "allowed")), server=True
    )
    hub = hubs(keys=keys)
    intruder = workers(hub.endpoint, *SIMULATE, *FAST, "--curve-secret", intruder_secret,
                       "--curve-server", hub_pub)  # fmt: skip
    good = workers(hub.endpoint, *SIMULATE, *FAST, "--curve-secret", worker_secret,
                   "--curve-server", hub_pub)  # fmt: skip
    ident, _, ready, _ = hub.recv(proto.READY, timeout=30)
    assert ready["pid"] == good.pid
    hub.send_batch(ident, 4, exact_pixels(1))
    _, _, result, depth = hub.recv(proto.RESULT)
    np.testing.assert_array_equal(depth, SimulatedEngine(0)(exact_pixels(1)))
    # The intruder retries all along; not one of its messages gets through.
    deadline = time.monotonic() + 2.0
    while (left := deadline - time.monotonic()) > 0:
        try:
            _, _, ready, _ = hub.recv(proto.READY, timeout=left)
        except AssertionError:
            break
        assert ready["pid"] != intruder.pid
    intruder.terminate()
    assert intruder.wait(10) == 143
    assert "is this worker's public key in the hub's --curve-allow?" in stderr_of(intruder)


@pytest.mark.parametrize(
    "options, code, needle",
    [
        (["--checkpoint", "./no/such/checkpoint"], 4, "no/such/checkpoint does not exist"),
        ([], 2, "--checkpoint is required"),
        ([*SIM, "--hub", "tcp://192.0.2.1:5560"], 2, "no CURVE keys"),
        ([*SIM, "--curve-server", "h.key"], 2, "need --curve-secret"),
        ([*SIM, "--curve-secret", "gone.key_secret", "--curve-server", "h.key"], 2, "gone.key"),
        ([*SIM, "--heartbeat", "1", "--timeout", "1"], 2, "--timeout"),
        ([*SIM, "--hub", "tcp://127.0.0.1:99999"], 2, "port must be in 1..65535"),
    ],
)
def test_bad_options_are_one_error_line(tmp_path, options, code, needle):
    proc = subprocess.run(
        [sys.executable, RUN_STREAM, "worker", "--hub", "tcp://127.0.0.1:9", *options],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


# ---- the Worker class (as the hub's --local-worker uses it), in a thread ---------------------


@pytest.fixture
def in_thread():
    """start(worker) -> runs worker.run() in a thread; stopped and joined at the end."""
    started: list[tuple[Worker, threading.Thread]] = []

    def start(worker: Worker) -> threading.Thread:
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        started.append((worker, thread))
        return thread

    yield start
    for worker, thread in started:
        worker.stop()
        thread.join(10)
        assert not thread.is_alive()


class GatedEngine:
    """Raises on a batch whose first pixel is 0; otherwise waits for `gate` (the test's say)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if pixels[0, 0, 0, 0] == 0:
            raise ValueError("this batch is cursed")
        assert self.gate.wait(10)
        return SimulatedEngine(0)(pixels)


def test_engine_errors_and_over_credit_are_failed_batches(hubs, in_thread):
    hub = hubs()
    engine = GatedEngine()
    context = zmq.Context()  # a caller's context (the hub's own, for --local-worker)
    worker = Worker(hub.endpoint, lambda: engine, credit=1, heartbeat_s=0.1, timeout_s=0.5,
                    context=context)  # fmt: skip
    thread = in_thread(worker)
    ident, *_ = hub.recv(proto.READY)
    assert worker.ready.is_set() and worker.error is None
    cursed = exact_pixels(1)
    cursed[0, 0, 0, 0] = 0
    hub.send_batch(ident, 1, cursed)
    _, command, body, _ = hub.recv(proto.RESULT, proto.FAILED)
    assert (command, body) == (proto.FAILED, {"id": 1, "error": "ValueError: this batch is cursed"})
    # Credit 1: while batch 2 runs (held at the gate), batch 3 is one too many.
    engine.gate.clear()
    good = exact_pixels(1) + np.float32(1 / 255)
    hub.send_batch(ident, 2, good)
    hub.send_batch(ident, 3, good)
    _, command, body, _ = hub.recv(proto.RESULT, proto.FAILED)
    assert (command, body["id"]) == (proto.FAILED, 3) and "over credit" in body["error"]
    engine.gate.set()
    _, command, body, depth = hub.recv(proto.RESULT, proto.FAILED)
    assert (command, body["id"]) == (proto.RESULT, 2)
    assert (worker.batches, worker.frames, worker.failed) == (1, 1, 1)
    worker.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert hub.recv(proto.DISCONNECT)[2] == {"reason": "stopped"}
    term = threading.Thread(target=context.term, daemon=True)
    term.start()
    term.join(5)
    assert not term.is_alive()  # every socket the worker made on the caller's context is closed
