"""Two hosts: network namespaces joined by a veth pair (iproute2, made here, as root), the hub in
one, a worker in the other, CURVE between them. The link is cut mid-stream (`ip link set ... down`)
and restored: the hub notices the silent worker within its heartbeat timeout, the worker rejoins
on its own once the link is back, and the lossless output is complete and in order.

Skips, saying why, where namespaces cannot be made (not root, no `ip`, no CAP_SYS_ADMIN)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml

from glpn.testing import write_clip
from pipeline import curve
from pipeline.testing import Program

FRAMES = 40
H, W = 96, 128
OBSERVER = """
import sys
from pipeline.client import DepthSubscriber
with DepthSubscriber(sys.argv[1], until_end=True, timeout=120) as sub:
    for header, _ in sub:
        print("frame", header["index"], flush=True)
print("end", flush=True)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def hosts():
    """(hub namespace, worker namespace, hub address, worker-side link name)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("two-host test: needs root and iproute2's `ip` to make network namespaces")
    tag = f"{os.getpid() % 100000}"
    hub_ns, worker_ns = f"ds-hub-{tag}", f"ds-wrk-{tag}"
    hub_if, worker_if = f"dsh{tag}", f"dsw{tag}"
    subnet = f"10.231.{os.getpid() % 250}"
    made: list[str] = []
    try:
        for ns in (hub_ns, worker_ns):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("link", "add", hub_if, "type", "veth", "peer", "name", worker_if)
        _ip("link", "set", hub_if, "netns", hub_ns)
        _ip("link", "set", worker_if, "netns", worker_ns)
        ends = ((hub_ns, hub_if, f"{subnet}.1"), (worker_ns, worker_if, f"{subnet}.2"))
        for ns, dev, addr in ends:
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as e:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        pytest.skip(f"two-host test: cannot make network namespaces: {e.stderr.strip()}")
    try:
        yield hub_ns, worker_ns, f"{subnet}.1", worker_if
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth pair, and the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_link_cut_and_restored_mid_stream(hosts, tmp_path):
    hub_ns, worker_ns, hub_addr, worker_if = hosts
    clip = write_clip(str(tmp_path / "clip.mp4"), FRAMES, H, W)
    reference = tmp_path / "reference"
    with Program(["--source", clip, "--backend", "simulate", "--simulate-ms", "0",
                  "--save-depth", str(reference), "--metrics-interval", "0"]) as p:  # fmt: skip
        assert p.wait(120) == 0, p.output
    keys = tmp_path / "keys"
    hub_secret = curve.generate(str(keys / "hub"), "hub")[1]
    worker_secret = curve.generate(str(keys / "workers"), "w1")[1]
    endpoint = f"tcp://{hub_addr}:5599"
    publish = "tcp://127.0.0.1:5598"  # the hub host's loopback: the observer runs there too
    config = {
        "sources": [{"id": "clip", "uri": clip, "mode": "lossless", "pace": True, "fps": 10}],
        "model": {"backend": "simulate", "simulate_ms": 0},
        "workers": {"endpoint": endpoint,
                    "curve": {"secret": hub_secret, "allow": str(keys / "workers")}},
        "outputs": {"files": {"directory": str(tmp_path / "out"), "png": False, "layout": "flat"},
                    "zmq": {"endpoint": publish, "wait_subscribers": 1, "hwm": 10_000}},
        "metrics": {"interval_s": 0},
    }  # fmt: skip
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config))
    in_hub = ["ip", "netns", "exec", hub_ns]
    worker_args = ["worker", "--hub", endpoint, "--name", "w1", "--backend", "simulate",
                   "--simulate-ms", "20", "--curve-secret", worker_secret,
                   "--curve-server", str(keys / "hub" / "hub.key")]  # fmt: skip
    with Program([publish], prefix=in_hub, entry=["-c", OBSERVER]) as observer, \
            Program(worker_args, prefix=["ip", "netns", "exec", worker_ns]) as worker, \
            Program(["--config", str(tmp_path / "hub.yaml")], prefix=in_hub) as hub:  # fmt: skip
        hub.wait_for(r"worker w1 joined", 60)
        observer.wait_for(r"^frame 5$", 60)  # mid-stream (paced: 10 fps, 40 frames)
        _ip("-n", worker_ns, "link", "set", worker_if, "down")
        t_cut = time.monotonic()
        t_lost, _ = hub.wait_for(r"worker w1 lost \(silent", 10, after=t_cut)
        assert t_lost - t_cut <= 3.0 + 1.0, t_lost - t_cut  # default timeout + a heartbeat
        _ip("-n", worker_ns, "link", "set", worker_if, "up")
        hub.wait_for(r"worker w1 joined", 30, after=t_lost)
        assert hub.wait(120) == 0, hub.output
        assert observer.wait(30) == 0, observer.output
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 143, worker.output
    order = [int(line.split()[1]) for _, line in observer.lines if line.startswith("frame ")]
    assert order == list(range(FRAMES)), "not every frame once, in order"
    names = sorted(os.listdir(reference))
    assert sorted(os.listdir(tmp_path / "out")) == names
    for name in names:
        expected = np.load(reference / name)
        np.testing.assert_array_equal(np.load(tmp_path / "out" / name), expected, err_msg=name)
