"""Launchers: where a stage built from its StageSpec runs. Only threads for now.

As in pyzmq's `zmq/devices/basedevice.py`, the stage body is the same wherever it runs; a launcher
differs only in what it runs the body on and in its context factory. `ThreadLauncher` (like
ThreadDevice) runs every stage on a thread of this process, all sharing one ZeroMQ context, so
inproc:// endpoints work between them. A `ProcessLauncher` (like ProcessDevice) would pickle the
StageSpec into a child process, make a fresh context there (inproc does not cross processes: the
topology would use ipc or tcp links), build the stage and run its body, and hand back a proxy
with the same attributes, fed by the child over a pipe. Stages with `hooks` stay in this process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import zmq

from . import curve
from .stage import Stage
from .topology import StageSpec

log = logging.getLogger(__name__)

TERM_WAIT_S = 2.0  # how long closing waits for sockets someone else left open in the context


class Launcher(Protocol):
    """What the runner needs from a launcher.

    `build` returns a handle with a Stage's status attributes: name, ready and done (Events),
    error, outcome, bound, metrics (snapshot()), on_exit; plus stage-specific read-outs the
    summary uses (the sink's delivered / files(), inference's description).
    """

    context: zmq.Context  # this process's context: control sockets, inproc endpoints

    def build(
        self, spec: StageSpec, connect: Mapping[str, str], hooks: Mapping[str, Any]
    ) -> Any: ...

    def start(self, stage: Any) -> None: ...

    def join(self, stage: Any, timeout: float | None = None) -> None: ...

    def close(self, terminate: bool = True) -> None: ...


class ThreadLauncher:
    """Every stage on a daemon thread named depthstream-<stage>, one shared ZeroMQ context."""

    def __init__(self, context_factory: Callable[[], zmq.Context] = zmq.Context) -> None:
        # Made now: the caller decides when (after glpn.hardware.tune_cpu_allocator, so that the
        # context's I/O threads do not get a malloc arena of their own first).
        self.context = context_factory()
        self._threads: dict[str, threading.Thread] = {}

    def build(self, spec: StageSpec, connect: Mapping[str, str], hooks: Mapping[str, Any]) -> Stage:
        return spec.build(self.context, connect, hooks)

    def start(self, stage: Stage) -> None:
        # Stage.run is the body (sockets made, loop run, sockets closed in it), as
        # pyzmq's Device.run; Stage.start() would make the same thread, but hard-wired.
        thread = threading.Thread(
            target=stage.run, name=f"depthstream-{stage.name}", daemon=True
        )
        self._threads[stage.name] = thread
        thread.start()

    def join(self, stage: Stage, timeout: float | None = None) -> None:
        thread = self._threads.get(stage.name)
        if thread is not None:
            thread.join(timeout)

    def close(self, terminate: bool = True) -> None:
        """Terminate the context once every stage's sockets are closed. `terminate=False` when a
        stage is stuck in a native call: its sockets are open, and term() would hang on them.

        A socket someone else made in the context and left open would block term() as well: warn
        instead of hanging.
        """
        curve.stop_authenticator(self.context)  # its ZAP socket is in the context too
        if not terminate:
            return
        term = threading.Thread(
            target=self.context.term, name="depthstream-context-term", daemon=True
        )
        term.start()
        term.join(TERM_WAIT_S)
        if term.is_alive():
            log.warning("sockets made with pipeline.context are still open; not waiting for them")
