"""A Prometheus endpoint for a running pipeline (`metrics.port`, --metrics-port): prometheus-client.

Nothing is counted twice: on each scrape a Collector reads the pipeline's own metrics (the stage
snapshots of Pipeline.metrics(), the sink's frames per stream, the engine), as the status line and
the summary do. Names follow Prometheus' conventions (base unit seconds, counters end in _total):

    depthstream_stage_{received,processed,sent,malformed}_total{stage}   messages / items
    depthstream_stage_dropped_total{stage,reason}    frames dropped on purpose (live mode, ...)
    depthstream_stage_events_total{stage,event}      reconnects and other notable things
    depthstream_stage_queue_depth{stage}             messages waiting for the stage + held in it
    depthstream_stage_latency_seconds{stage}         histogram: work per item
    depthstream_stage_wait_seconds{stage}            histogram: time items waited before the stage
    depthstream_end_to_end_latency_seconds           histogram: capture -> depth ready for the sinks
    depthstream_frames_captured_total{stream}, depthstream_frames_delivered_total{stream}
    depthstream_stage_<gauge>{stage}                 levels the stages keep (subscribers, ...)
    depthstream_engine_info{backend,precision,device} 1, depthstream_startup_seconds
    depthstream_worker_{frames,batches,failures}_total{worker}   inference workers (--workers)
    depthstream_worker_state{worker,state} 1 for its state (ready, busy, lost, left), else 0
    depthstream_worker_in_flight{worker}             batches sent to it, not yet answered
    depthstream_worker_latency_seconds{worker,quantile}  batch sent -> result (0.5, 0.95, 1)

The three latencies are histograms (_bucket{le}, _sum, _count since the start; bounds in
pipeline.metrics.BUCKETS_S, 0.5 ms .. 60 s), which each stage counts as it records a latency, so
quantiles over any range come from histogram_quantile() on the server. The worker latency stays
gauges over each worker's last batches (its registry keeps a window, no buckets).

The server is prometheus-client's WSGI app on the standard library's threading WSGI server, made
here rather than with `start_http_server` (which since 0.20 also returns (server, thread)): its
serve_forever polls for shutdown every 0.5 s, which every pipeline end would wait for; this one
polls every 0.05 s, and close() joins its threads, so nothing outlives the pipeline.
"""

from __future__ import annotations

import logging
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import ConfigError, EndpointError
from .metrics import Histogram

if TYPE_CHECKING:
    from .runner import Pipeline

log = logging.getLogger(__name__)

METRICS_INSTALL = "pip install depthstream[metrics]"
POLL_S = 0.05  # how often the server thread looks for close(): what a pipeline end waits at most
CLIENT_TIMEOUT_S = 5.0  # a scraper silent this long is cut off (close() joins its thread)
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _library() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            f"metrics.port (--metrics-port) needs prometheus-client: {METRICS_INSTALL}"
        ) from None
    return prometheus_client


class PipelineCollector:
    """A prometheus-client Collector: each collect() reads the pipeline's live metrics."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self._engine: dict[str, str] | None = None  # kept: the stage drops its engine at the end

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        stages = self.pipe.metrics()  # one snapshot per stage, in flow order
        by_name = {s.name: s for s in self.pipe.stages}

        def counter(name: str, doc: str, labels: list[str]) -> Any:
            return CounterMetricFamily(f"depthstream_{name}", doc, labels=labels)

        def gauge(name: str, doc: str, labels: list[str]) -> Any:
            return GaugeMetricFamily(f"depthstream_{name}", doc, labels=labels)

        counts = {
            key: counter(f"stage_{key}", doc, ["stage"])
            for key, doc in (
                ("received", "Messages the stage took from its input socket(s)."),
                ("processed", "Items the stage finished work on."),
                ("sent", "Messages the stage handed to the next stage."),
                ("malformed", "Messages dropped because they did not decode."),
            )
        }
        dropped = counter("stage_dropped", "Frames dropped on purpose.", ["stage", "reason"])
        events = counter(
            "stage_events", "Other notable things (reconnects, ...).", ["stage", "event"]
        )
        queue = gauge(
            "stage_queue_depth", "Messages sent to the stage not yet taken, plus held in it.",
            ["stage"],
        )  # fmt: skip
        latency = HistogramMetricFamily(
            "depthstream_stage_latency_seconds", "Work per item.", labels=["stage"]
        )
        wait = HistogramMetricFamily(
            "depthstream_stage_wait_seconds", "Time items waited before the stage.",
            labels=["stage"],
        )  # fmt: skip
        levels: dict[str, Any] = {}
        for stage, s in stages.items():
            for key, family in counts.items():
                family.add_metric([stage], s[key])
            for reason, n in s["drops"].items():
                dropped.add_metric([stage, reason], n)
            for event, n in s.get("events", {}).items():
                events.add_metric([stage, event], n)
            queue.add_metric([stage], s["queue"])
            histograms = s["histograms"]
            _histogram(latency, [stage], histograms["latency"])
            if "wait" in histograms:  # a stage that records no wait (capture) has none
                _histogram(wait, [stage], histograms["wait"])
            for name, value in s.get("gauges", {}).items():
                metric = f"stage_{_NAME.sub('_', name)}"
                if metric not in levels:
                    levels[metric] = gauge(metric, f"Level kept by the stage: {name}.", ["stage"])
                levels[metric].add_metric([stage], value)
        yield from counts.values()
        yield from (dropped, events, queue, latency, wait, *levels.values())

        e2e = HistogramMetricFamily(
            "depthstream_end_to_end_latency_seconds", "Capture to depth ready for the sinks."
        )
        if "sink" in stages:  # zeros until the first frame, so rate() has a start
            histograms = stages["sink"]["histograms"]
            _histogram(e2e, [], histograms.get("e2e") or Histogram().snapshot())
        yield e2e
        captured = counter("frames_captured", "Frames read from each source.", ["stream"])
        for stream in self.pipe.streams:
            if f"capture:{stream}" in stages:  # an external source has no capture stage
                captured.add_metric([stream], stages[f"capture:{stream}"]["processed"])
        yield captured
        delivered = counter("frames_delivered", "Frames delivered to the sinks.", ["stream"])
        sink = by_name.get("sink")
        for stream, n in dict(getattr(sink, "delivered", {})).items():
            delivered.add_metric([stream], n)
        yield delivered

        yield from _worker_families(stages.get("inference", {}).get("workers", []))
        engine = self._engine_labels(by_name.get("inference"))
        if engine is not None:
            yield InfoMetricFamily("depthstream_engine", "The inference engine.", value=engine)
        if self.pipe.startup_s is not None:
            yield GaugeMetricFamily(
                "depthstream_startup_seconds",
                "Start-up: until every stage was ready (engine built and warmed up).",
                value=self.pipe.startup_s,
            )

    def _engine_labels(self, stage: Any) -> dict[str, str] | None:
        engine = getattr(stage, "engine", None)
        if self._engine is None and engine is not None:
            self._engine = {
                key: str(getattr(engine, key, "")) for key in ("backend", "precision", "device")
            }
        return self._engine


def _worker_families(workers: list[dict[str, Any]]) -> Iterator[Any]:
    """Per-worker metrics of the worker pool (Summary.workers rows), labelled by worker name."""
    if not workers:
        return
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    from .pool_workers import STATES

    counts = {
        key: CounterMetricFamily(f"depthstream_worker_{key}", doc, labels=["worker"])
        for key, doc in (
            ("frames", "Frames the worker returned depth for."),
            ("batches", "Batches the worker returned depth for."),
            ("failures", "Batches the worker answered FAILED (redone elsewhere once)."),
        )
    }
    state = GaugeMetricFamily(
        "depthstream_worker_state", "1 for the worker's state, else 0.", labels=["worker", "state"]
    )
    in_flight = GaugeMetricFamily(
        "depthstream_worker_in_flight", "Batches sent to the worker, not yet answered.",
        labels=["worker"],
    )  # fmt: skip
    latency = HistogramMetricFamily(
        "depthstream_worker_latency_seconds", "Batch sent -> result, every batch of the worker.",
        labels=["worker"],
    )  # fmt: skip
    for w in workers:
        for key, family in counts.items():
            family.add_metric([w["name"]], w[key])
        for s in STATES:
            state.add_metric([w["name"], s], int(w["state"] == s))
        in_flight.add_metric([w["name"]], w["in_flight"])
        _histogram(latency, [w["name"]], w["latency_histogram"])
    yield from (*counts.values(), state, in_flight, latency)


def _histogram(family: Any, labels: list[str], h: dict[str, Any]) -> None:
    """One histogram (a Histogram.snapshot()) into a HistogramMetricFamily."""
    from prometheus_client.utils import floatToGoString  # how prometheus-client writes `le`

    buckets = [(floatToGoString(b), n) for b, n in zip(h["buckets"], h["counts"])]
    family.add_metric(labels, [*buckets, ("+Inf", h["count"])], h["sum"])


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = False  # joined by server_close(): no request thread outlives close()
    block_on_close = True


class _QuietHandler(WSGIRequestHandler):
    timeout = CLIENT_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


class MetricsServer:
    """Serves the pipeline's metrics at http://HOST:PORT/metrics until close()."""

    def __init__(self, pipe: Pipeline, host: str, port: int) -> None:
        prom = _library()
        registry = prom.CollectorRegistry(auto_describe=False)  # this pipeline's only
        registry.register(PipelineCollector(pipe))
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server = type("_Server", (_Server,), {"address_family": family})
            self._httpd = make_server(
                host, port, prom.make_wsgi_app(registry), server, handler_class=_QuietHandler
            )
        except OSError as e:
            raise EndpointError(
                f"metrics.port: cannot serve on {where}: {e.strerror or e}"
            ) from None
        bound = self._httpd.server_address[1]
        self.url = f"http://{where.rsplit(':', 1)[0]}:{bound}/metrics"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": POLL_S},
            name="depthstream-prometheus", daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info("depthstream: Prometheus metrics on %s", self.url)

    def close(self) -> None:
        """Stop serving, close the port, join the server's threads."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
