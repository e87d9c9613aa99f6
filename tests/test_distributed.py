"""Scale-out with real processes on real tcp sockets: a hub (`depthstream --workers`) and worker
processes (`depthstream worker --hub`), CURVE keys from `depthstream keys`'s library, the load-test
engine (deterministic depth) so every result can be compared with a single-process run.

An outside observer checks order and exactly-once: a DepthSubscriber on the hub's PUB output,
which holds the first frame until it subscribed (outputs.zmq.wait_subscribers) and queues
enough that it never loses one.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import yaml

from glpn.testing import write_clip
from pipeline import curve
from pipeline.client import DepthSubscriber
from pipeline.testing import Program
from tests.pipeline_helpers import free_port

FRAMES = 48
H, W = 96, 128


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return write_clip(str(tmp_path_factory.mktemp("clip") / "clip.mp4"), FRAMES, H, W)


@pytest.fixture(scope="module")
def reference(clip, tmp_path_factory) -> str:
    """The single-process run's depth files (same engine, no workers)."""
    out = str(tmp_path_factory.mktemp("reference"))
    with Program(["--source", clip, "--backend", "simulate", "--simulate-ms", "0",
                  "--save-depth", out, "--metrics-interval", "0"]) as p:  # fmt: skip
        assert p.wait(120) == 0, p.output
    assert len(os.listdir(out)) == FRAMES
    return out


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, str]:
    """hub, w1, w2 (allowed) and intruder (not allowed) key pairs; `allow`: w1 and w2's folder."""
    root = tmp_path_factory.mktemp("keys")
    paths: dict[str, str] = {}
    for name, folder in (("hub", "hub"), ("w1", "allowed"), ("w2", "allowed"),
                         ("intruder", "other")):  # fmt: skip
        public, secret = curve.generate(str(root / folder), name)
        paths[name], paths[name + ".pub"] = secret, public
    paths["allow"] = str(root / "allowed")
    return paths


def hub_config(tmp_path, clip: str, endpoint: str, publish: str, keys: dict, **workers) -> str:
    config = {
        "sources": [{"id": "clip", "uri": clip, "mode": "lossless"}],
        "model": {"backend": "simulate", "simulate_ms": 0},
        "workers": {"endpoint": endpoint, **workers,
                    "curve": {"secret": keys["hub"], "allow": keys["allow"]}},
        "outputs": {"files": {"directory": str(tmp_path / "out"), "png": False,
                              "layout": "flat"},
                    "zmq": {"endpoint": publish, "wait_subscribers": 1, "hwm": 10_000}},
        "metrics": {"interval_s": 0},
    }  # fmt: skip
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def worker(name: str, endpoint: str, keys: dict, ms: float = 20, *extra: str) -> Program:
    return Program(["worker", "--hub", endpoint, "--name", name, "--backend", "simulate",
                    "--simulate-ms", str(ms), "--curve-secret", keys[name],
                    "--curve-server", keys["hub.pub"], *extra])  # fmt: skip


class Observer:
    """Every (index, depth) the hub publishes, in arrival order, from a thread."""

    def __init__(self, endpoint: str) -> None:
        self.frames: list[tuple[int, np.ndarray]] = []
        self.enough = threading.Event()  # set once `want` frames arrived
        self.want = 1
        self._sub = DepthSubscriber(endpoint, until_end=True, timeout=60)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for header, depth in self._sub:
            self.frames.append((header["index"], depth.copy()))
            if len(self.frames) >= self.want:
                self.enough.set()

    def join(self, timeout: float) -> list[int]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the subscriber did not see the end of the stream"
        self._sub.close()
        return [i for i, _ in self.frames]


def assert_complete(out: str, reference: str) -> None:
    names = sorted(os.listdir(out))
    assert names == sorted(os.listdir(reference))
    for name in names:
        expected = np.load(os.path.join(reference, name))
        np.testing.assert_array_equal(np.load(os.path.join(out, name)), expected, err_msg=name)


def test_two_workers_curve_equal_to_single_process_and_intruder_gets_nothing(
    clip, reference, keys, tmp_path
):
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = hub_config(tmp_path, clip, endpoint, publish, keys)
    summary_path = tmp_path / "summary.json"
    with worker("w1", endpoint, keys) as w1, worker("w2", endpoint, keys) as w2, \
            worker("intruder", endpoint, keys) as intruder:  # fmt: skip
        observer = Observer(publish)
        with Program(["--config", config, "--summary-json", str(summary_path)]) as hub:
            assert hub.wait(120) == 0, hub.output
        order = observer.join(30)
        assert order == list(range(FRAMES)), "not every frame exactly once, in order"
        assert_complete(str(tmp_path / "out"), reference)
        summary = json.loads(summary_path.read_text())
        done = {w["name"]: w["frames"] for w in summary["workers"]}
        assert set(done) == {"w1", "w2"} and sum(done.values()) == FRAMES, done
        assert all(n > 0 for n in done.values()), f"one worker got nothing: {done}"
        # The intruder never registered: its key is not in the allowed folder.
        intruder.signal(signal.SIGTERM)
        assert intruder.wait(30) == 143
        assert "0 batches, 0 frames" in intruder.output, intruder.output
        assert "refused" in hub.output and "not allowed" in hub.output, hub.output
        for w in (w1, w2):
            w.signal(signal.SIGTERM)
            assert w.wait(30) == 143, w.output


def test_worker_killed_mid_stream_every_frame_once_in_order(clip, reference, keys, tmp_path):
    endpoint, publish = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = hub_config(tmp_path, clip, endpoint, publish, keys)
    with worker("w1", endpoint, keys, 40) as w1, worker("w2", endpoint, keys, 40) as w2:
        observer = Observer(publish)
        observer.want = 8
        with Program(["--config", config]) as hub:
            hub.wait_for(r"worker w1 joined", 60)
            hub.wait_for(r"worker w2 joined", 60)
            assert observer.enough.wait(60), hub.output
            w2.signal(signal.SIGKILL)
            killed = time.monotonic()
            # Its host closes the connection: the hub's next message to it (a heartbeat within
            # heartbeat_s, 1 s) finds it gone; a host that goes silent is caught by the heartbeat
            # timeout (3 s by default; test_two_hosts.py).
            t_lost, line = hub.wait_for(r"worker w2 lost", 10, after=killed)
            assert t_lost - killed <= 4.0, (t_lost - killed, line)
            assert hub.wait(120) == 0, hub.output
        assert observer.join(30) == list(range(FRAMES))
        assert_complete(str(tmp_path / "out"), reference)
        w1.signal(signal.SIGTERM)
        w1.wait(30)


def test_hub_restarted_mid_stream_is_rejoined(clip, reference, keys, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    first = tmp_path / "first"
    first.mkdir()
    second = tmp_path / "second"
    second.mkdir()
    with worker("w1", endpoint, keys, 40, "--heartbeat", "0.2", "--timeout", "1") as w1:
        cfg1 = hub_config(first, clip, endpoint, f"tcp://127.0.0.1:{free_port()}", keys)
        data = yaml.safe_load(open(cfg1))
        del data["outputs"]["zmq"]
        (first / "hub.yaml").write_text(yaml.safe_dump(data))
        with Program(["--config", cfg1]) as hub1:
            hub1.wait_for(r"worker w1 joined", 60)
            w1.wait_for(r"registered with hub", 30)
            hub1.signal(signal.SIGKILL)  # mid-stream: the worker is never told
            hub1.wait(30)
        t_killed = time.monotonic()
        cfg2 = hub_config(second, clip, endpoint, f"tcp://127.0.0.1:{free_port()}", keys)
        data = yaml.safe_load(open(cfg2))
        del data["outputs"]["zmq"]
        (second / "hub.yaml").write_text(yaml.safe_dump(data))
        with Program(["--config", cfg2]) as hub2:
            hub2.wait_for(r"worker w1 joined", 30)
            assert hub2.wait(120) == 0, hub2.output
        w1.wait_for(r"rejoined hub", 5, after=t_killed)
        assert_complete(str(second / "out"), reference)
        w1.signal(signal.SIGTERM)
        assert w1.wait(30) == 143


def test_live_source_with_slow_workers_keeps_latency_bounded(clip, keys, tmp_path):
    """A paced live source at 25 fps, one worker taking 150 ms a frame: most frames are dropped
    (counted), and what comes out is recent: end-to-end latency stays within a few batches."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = hub_config(tmp_path, clip, endpoint, f"tcp://127.0.0.1:{free_port()}", keys)
    data = yaml.safe_load(open(config))
    del data["outputs"]["zmq"]
    data["sources"][0].update(mode="live", pace=True, fps=25)
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(data))
    summary_path = tmp_path / "summary.json"
    with worker("w1", endpoint, keys, 150) as w1:
        with Program(["--config", config, "--summary-json", str(summary_path)]) as hub:
            assert hub.wait(120) == 0, hub.output
        summary = json.loads(summary_path.read_text())
        delivered = sum(summary["frames"].values())
        drops = sum(s["dropped"] for s in summary["stages"].values())
        assert 3 <= delivered < FRAMES and drops >= FRAMES - delivered - 2, summary["frames"]
        # 150 ms per frame with credit 2: a result is at most ~2 batches behind its capture.
        assert summary["e2e_ms"]["p95"] < 800, summary["e2e_ms"]
        w1.signal(signal.SIGTERM)
        w1.wait(30)


def test_no_worker_within_worker_wait_is_exit_3(clip, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with Program(["--source", clip, "--backend", "simulate", "--workers", endpoint,
                  "--worker-wait", "1", "--save-depth", str(tmp_path / "out"),
                  "--metrics-interval", "0.2"]) as hub:  # fmt: skip
        hub.wait_for(r"waiting for workers \(none connected\)", 30)  # the status line says why
        assert hub.wait(60) == 3, hub.output
    errors = [line for _, line in hub.lines if line.startswith("error:")]
    assert len(errors) == 1 and "no inference worker connected to " + endpoint in errors[0], errors
