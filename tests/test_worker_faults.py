"""The inference worker's faults (pipeline.worker, `depthstream worker`): a batch it cannot
decode, an engine that hangs while the worker is stopped, one that cannot be built, a stop
during the build. The hub is tests/test_worker.py's."""

from __future__ import annotations

import signal
import threading

import pytest
from test_worker import FAST, SIM, exact_pixels, hubs, in_thread, stderr_of, workers  # noqa: F401

from pipeline import pool_protocol as proto
from pipeline import worker as worker_module
from pipeline.simulate import SimulatedEngine
from pipeline.worker import Worker


def test_a_batch_it_cannot_decode_is_answered_failed(hubs, in_thread):  # noqa: F811
    """A BATCH over the worker's max_message_bytes: FAILED with its id (never a silent drop that
    would leave it in flight at the hub forever)."""
    hub = hubs()
    worker = Worker(hub.endpoint, lambda: SimulatedEngine(0), heartbeat_s=0.1, timeout_s=0.5,
                    max_message_bytes=4096)  # fmt: skip
    in_thread(worker)
    ident, *_ = hub.recv(proto.READY)
    hub.send_batch(ident, 7, exact_pixels(1))  # 18 KiB of uint8 pixels
    _, command, body, _ = hub.recv(proto.RESULT, proto.FAILED)
    assert command == proto.FAILED and body["id"] == 7 and "decode" in body["error"]
    hub.sock.send_multipart([ident, proto.BATCH, b'{"id": "x"'])  # no id to answer: dropped
    hub.send_batch(ident, 8, exact_pixels(1)[:, :, :8, :8][:, :, :0])  # a bad shape: FAILED
    _, command, body, _ = hub.recv(proto.RESULT, proto.FAILED)
    assert command == proto.FAILED and body["id"] == 8


def test_stop_does_not_wait_forever_for_a_hung_engine(hubs, in_thread, monkeypatch):  # noqa: F811
    hub = hubs()
    release = threading.Event()

    class Hung:
        def __call__(self, pixels):
            release.wait(30)
            return SimulatedEngine(0)(pixels)

    monkeypatch.setattr(worker_module, "ENGINE_JOIN_S", 0.2)
    worker = Worker(hub.endpoint, Hung, heartbeat_s=0.1, timeout_s=0.5)  # its own context
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        ident, *_ = hub.recv(proto.READY)
        hub.send_batch(ident, 1, exact_pixels(1))
        hub.recv(proto.HEARTBEAT)  # the batch is taken; the engine hangs in it
        worker.stop()
        thread.join(5)
        assert not thread.is_alive()  # before: blocked in context.term() until the batch ended
    finally:
        release.set()
        thread.join(10)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130)])
def test_a_second_signal_exits_at_once_with_a_hung_engine(hubs, workers, sig, code):  # noqa: F811
    hub = hubs()
    proc = workers(hub.endpoint, *SIM, "--simulate-ms", "60000", *FAST, "--name", "w8")
    ident, *_ = hub.recv(proto.READY, timeout=30)
    hub.send_batch(ident, 1, exact_pixels(1))
    hub.recv(proto.HEARTBEAT)
    proc.send_signal(sig)
    assert hub.recv(proto.DISCONNECT)[2] == {"reason": "stopped"}  # the first one was handled
    proc.send_signal(sig)
    assert proc.wait(5) == code
    assert "Traceback" not in stderr_of(proc)


def test_an_engine_that_cannot_be_built_is_reported(hubs, in_thread):  # noqa: F811
    hub = hubs()

    def broken():
        raise OSError("no such device")

    worker = Worker(hub.endpoint, broken, heartbeat_s=0.1, timeout_s=0.5)
    thread = in_thread(worker)
    thread.join(10)
    assert not thread.is_alive() and worker.ready.is_set()
    assert isinstance(worker.error, OSError) and worker.connections == 0
    with pytest.raises(AssertionError):  # it never announced itself
        hub.recv(proto.READY, timeout=0.3)


def test_stop_before_and_during_the_engine_build(hubs, in_thread):  # noqa: F811
    hub = hubs()
    early = Worker(hub.endpoint, lambda: SimulatedEngine(0), heartbeat_s=0.1, timeout_s=0.5)
    early.stop()
    thread = in_thread(early)
    thread.join(5)
    assert not thread.is_alive() and early.connections == 0

    building = threading.Event()
    release = threading.Event()

    def slow_build():
        building.set()
        release.wait(10)
        return SimulatedEngine(0)

    late = Worker(hub.endpoint, slow_build, heartbeat_s=0.1, timeout_s=0.5)
    thread = in_thread(late)
    assert building.wait(5)
    late.stop()
    thread.join(5)  # returns without waiting for the build
    assert not thread.is_alive() and late.connections == 0
    release.set()
