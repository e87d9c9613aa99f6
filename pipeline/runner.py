"""The Pipeline: launches the stages of its Topology, stops them, joins them, reports.

    capture:<id> (one per source) -> preprocess -> inference -> postprocess -> sink
                    PUSH/PULL      credits ^     PUSH/PULL    PUSH/PULL  (PUB, files, video, API)

Usage::

    pipe = Pipeline(load_config("configs/camera.yaml"))
    summary = pipe.run()                 # until every source ends, stop(), SIGINT or SIGTERM
    for result in Pipeline(cfg):         # or iterate: DepthResult per frame
        ...
    Pipeline(cfg, on_result=fn).run()    # or a callback (called in the sink thread)

A stage that fails stops the others, and `run()` / `join()` / iteration re-raise it as StageError
naming the stage. Stopping takes well under a second unless a source is blocked inside OpenCV
(bounded by the source's open/read timeouts). What runs is described in pipeline/topology.py, where
it runs in pipeline/launch.py, the engine in pipeline/engine_spec.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from glpn.hardware import tune_cpu_allocator

from . import curve, messages
from .config import Config, load_config
from .errors import MessageError, StageError
from .inference import EngineFactory
from .launch import Launcher, ThreadLauncher
from .metrics import percentiles
from .pool import hub_engine
from .prometheus import MetricsServer
from .report import MetricsLog, stage_metrics, status_line
from .results import DepthResult
from .sources import check_source, resolve_kind
from .stage import STOP, Stage
from .summary import Summary
from .topology import Addresses, StageSpec, Topology

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # after stop(), how long join() waits for a stage stuck in a native call


class _StartAborted(Exception):
    """stop() (or a signal) arrived while the stages were starting."""


class Pipeline:
    """Capture -> preprocess -> inference -> postprocess -> sinks, as threads joined by ZeroMQ."""

    # Where stages run: made by start(), once the allocator is tuned (see pipeline.launch).
    launcher_factory: Callable[[], Launcher] = ThreadLauncher

    def __init__(
        self,
        config: Config | dict | str | os.PathLike,
        *,
        engine_factory: EngineFactory | None = None,
        on_result: Callable[[DepthResult], object] | None = None,
        log_summary: bool = True,
    ) -> None:
        self.config = load_config(config)
        self.log_summary = log_summary  # False when the caller prints summary() itself
        # Any zero-argument callable; the default is data (an EngineSpec), so it can be pickled.
        self.engine_factory = engine_factory or hub_engine(self.config)  # None: workers only
        self.on_result = on_result
        self.streams = self.config.stream_ids()
        self.endpoints: dict[str, str] = {}  # public name -> endpoint, once started
        self.link_keys: curve.Keys | None = None  # tcp: client keys for our endpoints (start())
        self.topology: Topology | None = None  # built by start()
        self.stages: list[Stage] = []  # launched, in launch order
        self._by_name: dict[str, Stage] = {}
        self._uid = uuid.uuid4().hex[:10]
        self._lock = threading.RLock()  # guards the control sockets and state changes
        self._state = "new"  # new -> running -> done
        self._want_results = False
        self._launcher: Launcher | None = None
        self._addresses: Addresses | None = None
        self._controls: list[zmq.Socket] = []
        self._failure: tuple[str, BaseException] | None = None
        self._stopped_by: str | None = None
        self._t_start = 0.0
        self._t_ready: float | None = None  # every stage ready: the start-up ends here
        self._t_end: float | None = None
        self._monitor: MetricsLog | None = None
        self._prometheus: MetricsServer | None = None  # metrics.port: the Prometheus endpoint
        self._summary: Summary | None = None

    @property
    def context(self) -> zmq.Context | None:
        """The ZeroMQ context of the stages (inproc:// endpoints only work inside it)."""
        return self._launcher.context if self._launcher is not None else None

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Start every stage (downstream first), waiting until each is ready (engine built)."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("a Pipeline can be started once")
            self._state = "running"
        for source in self.config.sources:
            if resolve_kind(source) != "external":
                check_source(source)  # a missing file is one clear error before any thread starts
        # Before the stage threads and the context's I/O threads allocate: otherwise the inference
        # thread may get a secondary malloc arena and page-fault its activations on every call.
        tune_cpu_allocator()
        self._launcher = self.launcher_factory()
        self._t_start = time.monotonic()
        self._addresses = Addresses(self.config.transport, self._uid)
        self.topology = Topology.from_config(
            self.config,
            self._addresses,
            engine_factory=self.engine_factory,
            results=self._want_results,
        )
        self.link_keys = next((s.link_keys[1] for s in self.topology.stages if s.link_keys), None)
        try:
            if self.config.metrics.port is not None:  # first: a port in use fails before the engine
                m = self.config.metrics
                self._prometheus = MetricsServer(self, m.host, m.port)
            for spec in self.topology.launch_order():
                self._launch(spec)
        except _StartAborted:  # stop() or a signal while the engine was loading
            self._finish_quietly()
            return self
        except BaseException:
            self.stop()
            self.join()  # raises the failed stage's StageError, if that is what happened
            raise
        # Captures start last: no frame was read before this, so the start-up ends here.
        self._t_ready = time.monotonic()
        self.endpoints = self.topology.public_endpoints(lambda name: self._by_name[name].bound)
        if self._prometheus is not None:
            self.endpoints["metrics"] = self._prometheus.url
        log.info(
            "depthstream: %d stream(s) %s, engine %s, transport %s",
            len(self.streams), ", ".join(self.streams), self._by_name["inference"].description,
            self.config.transport.kind,
        )  # fmt: skip
        if self.config.metrics.interval_s > 0:
            self._monitor = MetricsLog(self.status_line, self.config.metrics.interval_s).start()
        return self

    def _launch(self, spec: StageSpec) -> None:
        """Build and start a stage, wait until its sockets exist; raise if its setup failed."""
        connect = {c.arg: self._by_name[c.stage].bound[c.role] for c in spec.connects}
        hooks = {"callback": self.on_result, "request_stop": self.stop}
        stage = self._launcher.build(spec, connect, {h: hooks[h] for h in spec.hooks})
        with self._lock:
            ctl = self.context.socket(zmq.PUSH)
            ctl.setsockopt(zmq.LINGER, 0)
            ctl.connect(spec.control)  # inproc connect-before-bind queues the message
            self._controls.append(ctl)
            self.stages.append(stage)
            self._by_name[spec.name] = stage
        stage.on_exit = self._stage_exited
        self._launcher.start(stage)
        stage.ready.wait()
        if stage.error is not None:
            raise StageError(stage.name, stage.error) from stage.error
        if self._failure is not None:
            raise StageError(*self._failure) from self._failure[1]
        if self._stopped_by is not None:
            raise _StartAborted

    def _stage_exited(self, stage: Stage) -> None:
        if stage.outcome == "failed":
            with self._lock:
                if self._failure is None:
                    self._failure = (stage.name, stage.error)
                    # DEBUG: the caller gets it as the StageError from run()/join()/iteration.
                    log.debug("stage %s failed: %s; stopping the pipeline", stage.name, stage.error)
            self.stop(reason=None)

    def stop(self, reason: str | None = "stop()") -> None:
        """Ask every stage to stop (any thread; returns at once). Outputs are closed properly."""
        with self._lock:
            if reason is not None and self._stopped_by is None and self._failure is None:
                self._stopped_by = reason
            for ctl, stage in zip(self._controls, self.stages):
                if not stage.done.is_set():
                    with contextlib.suppress(zmq.ZMQError):  # full of earlier stop messages
                        ctl.send(STOP, zmq.NOBLOCK)

    def join(self, timeout: float | None = None) -> Summary:
        """Wait until every stage ended; StageError if one failed. Returns the final summary.

        With `timeout`, TimeoutError if the pipeline is still running then (it keeps running).
        After a stop, a stage stuck in a native call is waited for at most STOP_GRACE_S, then left
        behind.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        grace: float | None = None
        for stage in list(self.stages):
            # Short waits keep the main thread responsive to signals and to a stop from elsewhere.
            while not stage.done.wait(0.25):
                now = time.monotonic()
                if grace is None and (self._stopped_by is not None or self._failure is not None):
                    grace = now + STOP_GRACE_S
                if grace is not None and now >= grace:
                    break
                if deadline is not None and now >= deadline:
                    if grace is None:
                        alive = [s.name for s in self.stages if not s.done.is_set()]
                        raise TimeoutError(f"pipeline still running after {timeout} s: {alive}")
                    break
        self._finish([s.name for s in self.stages if not s.done.is_set()])
        if self._failure is not None:
            stage, error = self._failure
            raise StageError(stage, error) from error
        return self._summary

    def _finish(self, alive: list[str]) -> None:
        with self._lock:
            if self._state == "done":
                return
            self._state = "done"
            self._t_end = time.monotonic()
            for ctl in self._controls:
                ctl.close(linger=0)
            self._controls = []
        if self._monitor is not None:
            self._monitor.stop()
        if self._prometheus is not None:
            self._prometheus.close()
        if self._launcher is not None:
            for stage in self.stages:
                self._launcher.join(stage, 0)
            if alive:  # a stage stuck in a native call: leave the context rather than hang on it
                log.error("stages did not stop within %.0f s: %s", STOP_GRACE_S, ", ".join(alive))
            self._launcher.close(terminate=not alive)
        if self._addresses is not None:
            self._addresses.cleanup()
        self._summary = self.summary()
        if self.log_summary:
            log.info("%s", self._summary.format())

    def run(self, *, handle_signals: bool = True) -> Summary:
        """Start, wait until done. SIGINT/SIGTERM (main thread only) stop the pipeline cleanly."""
        previous: dict[int, Any] = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            if self._state == "new":
                self.start()
            return self.join()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._state != "done":  # an exception (e.g. KeyboardInterrupt) got here first
                self.stop()
                self._finish_quietly()

    def _finish_quietly(self) -> None:
        with contextlib.suppress(StageError):
            self.join()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stopped_by == name:  # a second Ctrl-C: give up waiting
            raise KeyboardInterrupt
        log.warning("%s received: stopping", name)
        with self._lock:
            if self._failure is None:
                self._stopped_by = name
        self.stop(reason=None)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._state == "running":
            self.stop()
            if exc[0] is None:
                self.join()
            else:
                self._finish_quietly()

    # ---- results for Python code ------------------------------------------------------------

    def __iter__(self) -> Iterator[DepthResult]:
        return self.results()

    def results(self, timeout: float | None = None) -> Iterator[DepthResult]:
        """Yield DepthResults until every stream ended; starts the pipeline if needed.

        Must be called before start(). Breaking out of the loop stops the pipeline. `timeout`: give
        up (TimeoutError) when no result came for that many seconds.
        """
        if self._state == "new":
            self._want_results = True
            self.start()
        elif not self._want_results:
            raise RuntimeError("iterate over a Pipeline before calling start() or run()")
        return self._iterate(timeout)

    def _iterate(self, timeout: float | None) -> Iterator[DepthResult]:
        if "results" not in self.endpoints:  # stopped while starting
            self.join()
            return
        sock = self.context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.config.transport.hwm)
        max_bytes = self.config.transport.max_message_bytes
        sock.setsockopt(zmq.MAXMSGSIZE, max(max_bytes, messages.MAX_HEADER_BYTES))
        curve.client(sock, self.link_keys)  # the sink's results socket is a link like the others
        sock.connect(self.endpoints["results"])
        ended: set[str] = set()
        completed, last = False, time.monotonic()
        try:
            while len(ended) < len(self.streams):
                # Bounded poll: also notices a pipeline that stopped or failed without an EOS.
                if not sock.poll(200):
                    if all(s.done.is_set() for s in self.stages) and not sock.poll(0):
                        break
                    if timeout is not None and time.monotonic() - last > timeout:
                        raise TimeoutError(f"no result for {timeout} s")
                    continue
                parts = sock.recv_multipart(copy=False)
                last = time.monotonic()
                try:
                    msg = messages.decode(parts, max_bytes=max_bytes)
                except MessageError as e:  # only our own sink writes here; be safe anyway
                    log.error("results: dropped malformed message: %s", e)
                    continue
                if msg.kind == "eos":
                    ended.add(msg.stream)
                else:
                    yield DepthResult.from_message(msg)
            completed = len(ended) == len(self.streams)
        finally:
            sock.close(linger=0)
            if not completed:
                self.stop()
                self._finish_quietly()
        self.join()

    # ---- metrics -----------------------------------------------------------------------------

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Each stage's metrics snapshot, in flow order, with `queue`: messages sent to it not yet
        taken (see pipeline.report)."""
        if self.topology is None:
            return {}
        return stage_metrics(self.topology, self._by_name)

    @property
    def startup_s(self) -> float | None:
        """Seconds from start() until every stage was ready; None until then."""
        return None if self._t_ready is None else round(self._t_ready - self._t_start, 3)

    def status_line(self) -> str:
        """One line: output fps, end-to-end latency, per-stage p95 / queue / drops."""
        return status_line(self.metrics())

    def summary(self) -> Summary:
        """Metrics so far (final once the pipeline ended). Its fps excludes the start-up."""
        stages = self.metrics()
        sink, infer = self._by_name.get("sink"), self._by_name.get("inference")
        end = self._t_end if self._t_end is not None else time.monotonic()
        outcome = self._state if self._state != "done" else "finished"
        if self._state == "done":
            if self._failure is not None:
                outcome = "failed"
            elif self._stopped_by is not None:
                outcome = "stopped"
        duration = round(end - self._t_start, 3) if self._t_start else 0.0
        # Still starting, or ended while starting: all of it was start-up.
        ready = self._t_ready if self._t_ready is not None else end
        startup = round(ready - self._t_start, 3) if self._t_start else 0.0
        e2e = stages.get("sink", {}).get("e2e_ms") or percentiles([])
        return Summary(
            outcome=outcome,
            stopped_by=self._stopped_by,
            duration_s=duration,
            startup_s=min(startup, duration),
            frames=dict(sink.delivered) if sink else {s: 0 for s in self.streams},
            stages=stages,
            e2e_ms=e2e,
            engine=infer.description if infer else "",
            workers=stages.get("inference", {}).pop("workers", []),  # once, here
            error=str(StageError(*self._failure)) if self._failure else None,
            outputs=sink.files() if sink else {},
        )

