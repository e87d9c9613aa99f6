"""The Pipeline: builds the stages from a Config, wires their endpoints, runs and stops them.

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
(bounded by the source's open/read timeouts).
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import zmq

from glpn.fileio import pid_temp_dir
from glpn.hardware import tune_cpu_allocator

from . import messages
from .capture import CaptureStage
from .config import Config, load_config
from .errors import ConfigError, MessageError, StageError
from .inference import EngineFactory, InferenceStage
from .metrics import StageMetrics, percentiles
from .output import SinkStage
from .postprocess import PostprocessStage
from .preprocess import PreprocessStage
from .results import DepthResult
from .sources import check_source, resolve_kind, resolve_mode

if TYPE_CHECKING:
    from torch import nn

from .stage import STOP, Stage
from .summary import Summary

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # after stop(), how long join() waits for a stage stuck in a native call


class _StartAborted(Exception):
    """stop() (or a signal) arrived while the stages were starting."""


def default_engine_factory(config: Config, model: nn.Module | None = None) -> EngineFactory:
    """Builds the engine of config.model (called inside the inference thread): from the
    checkpoint (glpn.engine.load), or from `model`, a GLPN already in memory
    (glpn.engine.from_model: the demo's random weights are never written to disk)."""
    weights = model
    model = config.model
    if weights is None and not model.checkpoint:
        raise ConfigError("config: model.checkpoint is required (or pass engine_factory)")
    # A fixed input size lets backends compile for it; only when every stream uses the same one.
    sizes = {s.input_size or model.input_size for s in config.sources}
    input_size = next(iter(sizes)) if len(sizes) == 1 else None
    batch_sizes = tuple(sorted({1, model.max_batch}))

    def build():
        from glpn import engine

        options = dict(
            backend=model.backend,
            precision=model.precision,
            device=model.device,
            input_size=input_size,
            batch_sizes=batch_sizes,
        )
        if weights is not None:
            return engine.from_model(weights, **options)
        return engine.load(model.checkpoint, **options)

    return build


class Pipeline:
    """Capture -> preprocess -> inference -> postprocess -> sinks, as threads joined by ZeroMQ."""

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
        self.engine_factory = engine_factory or default_engine_factory(self.config)
        self.on_result = on_result
        self.streams = self.config.stream_ids()
        self.endpoints: dict[str, str] = {}  # role -> endpoint, once started
        self.stages: list[Stage] = []
        self._uid = uuid.uuid4().hex[:10]
        self._lock = threading.RLock()  # guards the control sockets and state changes
        self._state = "new"  # new -> running -> done
        self._want_results = False
        self._context: zmq.Context | None = None
        self._controls: list[zmq.Socket] = []
        self._failure: tuple[str, BaseException] | None = None
        self._stopped_by: str | None = None
        self._t_start = 0.0
        self._t_end: float | None = None
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._ipc_dir: tempfile.TemporaryDirectory | None = None
        self._summary: Summary | None = None

    @property
    def context(self) -> zmq.Context | None:
        """The ZeroMQ context of the stages (inproc:// endpoints only work inside it)."""
        return self._context

    # ---- endpoints ---------------------------------------------------------------------------

    def _endpoint(self, name: str) -> str:
        t = self.config.transport
        if t.kind == "inproc":
            return f"inproc://depthstream-{self._uid}/{name}"
        if t.kind == "ipc":
            if t.ipc_dir:
                return f"ipc://{os.path.join(t.ipc_dir, f'ds-{self._uid}-{name}')}"
            if self._ipc_dir is None:
                self._ipc_dir = pid_temp_dir("depthstream-ipc-")
            return f"ipc://{os.path.join(self._ipc_dir.name, name)}"
        return f"tcp://{t.host}:*"  # a free port; the bound endpoint is read back after setup

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
        cfg = self.config
        t = cfg.transport
        # Before the stage threads and the context's I/O threads allocate: otherwise the inference
        # thread may get a secondary malloc arena and page-fault its activations on every call.
        tune_cpu_allocator()
        self._context = zmq.Context()
        self._t_start = time.monotonic()
        common = dict(
            context=self._context, linger_ms=t.linger_ms, max_message_bytes=t.max_message_bytes
        )
        window = cfg.metrics.window
        outputs = cfg.outputs
        make_view = (
            cfg.postprocess.view
            if cfg.postprocess.view is not None
            else bool(outputs.video or outputs.window or (outputs.zmq and outputs.zmq.publish_view))
        )
        live = any(resolve_mode(s, resolve_kind(s)) == "live" for s in cfg.sources)
        try:
            sink = SinkStage(
                outputs,
                streams=self.streams,
                input=self._endpoint("sink"),
                results=self._endpoint("results") if self._want_results else None,
                callback=self.on_result,
                request_stop=self.stop,
                hwm=t.hwm,
                control=self._control_endpoint("sink"),
                metrics=StageMetrics("sink", window),
                **common,
            )
            self._launch(sink)
            post = PostprocessStage(
                cfg.postprocess,
                streams=self.streams,
                make_view=make_view,
                input=self._endpoint("postprocess"),
                output=sink.bound["input"],
                hwm=t.hwm,
                control=self._control_endpoint("postprocess"),
                metrics=StageMetrics("postprocess", window),
                **common,
            )
            self._launch(post)
            infer = InferenceStage(
                self.engine_factory,
                streams=self.streams,
                input=self._endpoint("inference"),
                credit=self._endpoint("credit"),
                output=post.bound["input"],
                max_batch=cfg.model.max_batch,
                max_wait_ms=cfg.model.max_wait_ms,
                prefetch=0 if live else cfg.model.max_batch,
                hwm=t.hwm,
                control=self._control_endpoint("inference"),
                metrics=StageMetrics("inference", window),
                **common,
            )
            self._launch(infer)
            sizes = {s.id: s.input_size or cfg.model.input_size for s in cfg.sources}
            pre = PreprocessStage(
                input_sizes=sizes,
                live_input=self._endpoint("preprocess-live"),
                lossless_input=self._endpoint("preprocess-lossless"),
                output=infer.bound["input"],
                credit=infer.bound["credit"],
                keep_image=make_view and cfg.postprocess.side_by_side,
                max_pending=3 * cfg.model.max_batch,
                hwm=t.hwm,
                control=self._control_endpoint("preprocess"),
                metrics=StageMetrics("preprocess", window),
                **common,
            )
            self._launch(pre)
            for source in cfg.sources:
                kind = resolve_kind(source)
                if kind == "external":
                    continue  # frames come from another process (pipeline.client.FrameSender)
                mode = resolve_mode(source, kind)
                name = f"capture:{source.id}"
                cap = CaptureStage(
                    source,
                    kind=kind,
                    mode=mode,
                    output=pre.bound["live" if mode == "live" else "lossless"],
                    hwm=t.hwm,
                    control=self._control_endpoint(name.replace(":", "-")),
                    metrics=StageMetrics(name, window),
                    **common,
                )
                self._launch(cap)
        except _StartAborted:  # stop() or a signal while the engine was loading
            self._finish_quietly()
            return self
        except BaseException:
            self.stop()
            self.join()  # raises the failed stage's StageError, if that is what happened
            raise
        self.endpoints = {
            "preprocess.live": pre.bound["live"],
            "preprocess.lossless": pre.bound["lossless"],
            "inference": infer.bound["input"],
            "postprocess": post.bound["input"],
            "sink": sink.bound["input"],
        }
        if "publish" in sink.bound:
            self.endpoints["publish"] = sink.bound["publish"]
        if "results" in sink.bound:
            self.endpoints["results"] = sink.bound["results"]
        log.info(
            "depthstream: %d stream(s) %s, engine %s, transport %s",
            len(self.streams), ", ".join(self.streams), infer.description, t.kind,
        )  # fmt: skip
        if cfg.metrics.interval_s > 0:
            self._monitor = threading.Thread(
                target=self._report, name="depthstream-metrics", daemon=True
            )
            self._monitor.start()
        return self

    def _control_endpoint(self, name: str) -> str:
        return f"inproc://depthstream-{self._uid}/control/{name}"

    def _launch(self, stage: Stage) -> None:
        """Start a stage and wait until its sockets exist; raise if its setup failed."""
        with self._lock:
            ctl = self._context.socket(zmq.PUSH)
            ctl.setsockopt(zmq.LINGER, 0)
            ctl.connect(stage.control_endpoint)  # inproc connect-before-bind queues the message
            self._controls.append(ctl)
            self.stages.append(stage)
        stage.on_exit = self._stage_exited
        stage.start()
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
                    try:
                        ctl.send(STOP, zmq.NOBLOCK)
                    except zmq.ZMQError:
                        pass  # its queue is full of earlier stop messages

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
            self._monitor_stop.set()
            for ctl in self._controls:
                ctl.close(linger=0)
            self._controls = []
        if self._monitor is not None:
            self._monitor.join()
        for stage in self.stages:
            stage.join(0)
        if alive:  # a stage stuck in a native call: leave the context rather than hang on it
            log.error("stages did not stop within %.0f s: %s", STOP_GRACE_S, ", ".join(alive))
        elif self._context is not None:
            self._terminate_context()
        if self._ipc_dir is not None:
            self._ipc_dir.cleanup()
        self._summary = self.summary()
        if self.log_summary:
            log.info("%s", self._summary.format())

    def _terminate_context(self) -> None:
        """Terminate the ZeroMQ context; all stage sockets are closed by now. A socket someone else
        made in `pipeline.context` and left open would block term(): warn instead of hanging."""
        term = threading.Thread(
            target=self._context.term, name="depthstream-context-term", daemon=True
        )
        term.start()
        term.join(2.0)
        if term.is_alive():
            log.warning("sockets made with pipeline.context are still open; not waiting for them")

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
        try:
            self.join()
        except StageError:
            pass

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
        sock = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.config.transport.hwm)
        max_bytes = self.config.transport.max_message_bytes
        sock.setsockopt(zmq.MAXMSGSIZE, max(max_bytes, messages.MAX_HEADER_BYTES))
        sock.connect(self.endpoints["results"])
        ended: set[str] = set()
        completed = False
        last = time.monotonic()
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
        """Each stage's metrics snapshot, with `queue`: messages sent to it not yet taken."""
        snaps = {s.name: s.metrics.snapshot() for s in self.stages}
        upstream = {
            "preprocess": [n for n in snaps if n.startswith("capture:")],
            "inference": ["preprocess"],
            "postprocess": ["inference"],
            "sink": ["postprocess"],
        }
        for name, snap in snaps.items():
            sent = sum(snaps[u]["sent"] for u in upstream.get(name, []) if u in snaps)
            snap["queue"] = max(0, sent - snap["received"]) + snap["backlog"]
        order = ["capture:", "preprocess", "inference", "postprocess", "sink"]

        def rank(name: str) -> int:
            return next(i for i, prefix in enumerate(order) if name.startswith(prefix))

        return {name: snaps[name] for name in sorted(snaps, key=rank)}

    def summary(self) -> Summary:
        """Metrics so far (final once the pipeline ended)."""
        stages = self.metrics()
        sink = next((s for s in self.stages if isinstance(s, SinkStage)), None)
        infer = next((s for s in self.stages if isinstance(s, InferenceStage)), None)
        end = self._t_end if self._t_end is not None else time.monotonic()
        outcome = self._state if self._state != "done" else "finished"
        if self._state == "done":
            if self._failure is not None:
                outcome = "failed"
            elif self._stopped_by is not None:
                outcome = "stopped"
        e2e = stages.get("sink", {}).get("e2e_ms") or percentiles([])
        return Summary(
            outcome=outcome,
            stopped_by=self._stopped_by,
            duration_s=round(end - self._t_start, 3) if self._t_start else 0.0,
            frames=dict(sink.delivered) if sink else {s: 0 for s in self.streams},
            stages=stages,
            e2e_ms=e2e,
            engine=infer.description if infer else "",
            error=str(StageError(*self._failure)) if self._failure else None,
            outputs=sink.files() if sink else {},
        )

    def _report(self) -> None:
        interval = self.config.metrics.interval_s
        while not self._monitor_stop.wait(interval):
            log.info("depthstream: %s", self.status_line())

    def status_line(self) -> str:
        """One line: output fps, end-to-end latency, per-stage p95 / queue / drops."""
        m = self.metrics()
        sink = m.get("sink", {})
        e2e = sink.get("e2e_ms", percentiles([]))
        parts = [
            f"out {sink.get('fps', 0):.1f} fps",
            f"e2e p50 {e2e['p50']:.0f} p95 {e2e['p95']:.0f} ms",
        ]
        for name, s in m.items():
            item = f"{name} p95 {s['latency_ms']['p95']:.1f}ms q{s['queue']}"
            if s["dropped"]:
                item += f" drop {s['dropped']}"
            if s["malformed"]:
                item += f" bad {s['malformed']}"
            parts.append(item)
        return " | ".join(parts)
