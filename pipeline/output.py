"""Sink stage: hands every finished frame to all configured sinks and to the Python API.

With `outputs.zmq.wait_subscribers: N`, nothing goes out until N subscribers are connected (see
SinkStage._await_subscribers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import zmq

from . import messages
from .config import OutputsConfig, PostprocessConfig
from .display import WindowSink, display_available
from .errors import EndpointError, MessageError
from .geometry import check_frame
from .results import DepthResult
from .sinks import CallbackSink, FileSink, PublishSink, Sink
from .stage import Stage
from .video_sink import VideoSink

log = logging.getLogger(__name__)

# Subscriptions are topic prefixes, depth/<stream id>/ (tens of bytes): the publishing socket
# disconnects a peer that sends a longer message.
MAX_SUBSCRIPTION_BYTES = 4096


class SinkStage(Stage):
    def __init__(
        self,
        outputs: OutputsConfig,
        *,
        streams: Sequence[str],
        input: str,
        results: str | None = None,
        callback: Callable[[DepthResult], object] | None = None,
        request_stop: Callable[[str], None] = lambda reason: None,
        postprocess: PostprocessConfig | None = None,
        hwm: int = 2,
        **kwargs,
    ) -> None:
        super().__init__("sink", **kwargs)
        self.outputs = outputs
        self.postprocess = postprocess  # the view's colours, for the web view's colour bar
        self.streams = list(streams)
        self.input = input  # bound here
        self.results_endpoint = results  # bound here when Python code iterates over results
        self.callback = callback
        self.request_stop = request_stop
        self.hwm = hwm
        self.sinks: list[Sink] = []
        self.publisher: PublishSink | None = None
        self.delivered: dict[str, int] = {s: 0 for s in self.streams}

    def setup(self) -> None:
        self.inp = self.socket(zmq.PULL, bind=self.input, hwm=self.hwm, role="input")
        self.results = None
        if self.results_endpoint:
            self.results = self.socket(
                zmq.PUSH, bind=self.results_endpoint, hwm=self.hwm, role="results"
            )
        out = self.outputs
        if out.zmq is not None:
            pub = self.socket(zmq.XPUB, hwm=out.zmq.hwm, max_part_bytes=MAX_SUBSCRIPTION_BYTES)
            pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # subscriptions are counted (PublishSink)
            PublishSink.secure(pub, out.zmq)  # CURVE keys, or a refusal of an open endpoint
            try:
                pub.bind(out.zmq.endpoint)
            except zmq.ZMQError as e:
                raise EndpointError(f"outputs.zmq: cannot bind {out.zmq.endpoint}: {e}") from None
            self.bound["publish"] = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.publisher = PublishSink(pub, publish_view=out.zmq.publish_view)
            self.sinks.append(self.publisher)
            self._count_subscribers()
        if out.files is not None:
            self.sinks.append(FileSink(out.files))
        if out.video is not None:
            self.video = VideoSink(out.video, self.streams)
            self.sinks.append(self.video)
        if out.depth_video is not None:  # imports av (PyAV) only when asked for
            from .depth_video import DepthVideoSink

            self.sinks.append(DepthVideoSink(out.depth_video, self.streams))
        if out.window is not None:
            if display_available():
                self.sinks.append(WindowSink(out.window, self.request_stop))
            else:
                log.warning("outputs.window: no display found; the window output is off")
        if out.record is not None:  # imports mcap-ros2-support only when asked for
            from .record_mcap import RecordSink

            self.sinks.append(RecordSink(out.record, self.streams))
        if out.points is not None:
            from .ply import PlySink

            self.sinks.append(PlySink(out.points))
        if out.foxglove is not None:  # imports foxglove-sdk only when asked for
            from .foxglove_sink import FoxgloveSink

            fox = FoxgloveSink(out.foxglove, self.streams, gauges=self.metrics.gauges)
            self.sinks.append(fox)
            self.bound["foxglove"] = fox.url  # ws://HOST:PORT, the port bound (config's may be 0)
        if out.rerun is not None:  # imports rerun-sdk only when asked for
            from .rerun_sink import RerunSink

            self.sinks.append(RerunSink(out.rerun, gauges=self.metrics.gauges))
        if out.web is not None:  # imports websockets only when asked for
            from .web_sink import WebSink

            web = WebSink(out.web, self.streams, self.postprocess, gauges=self.metrics.gauges)
            self.sinks.append(web)
            self.bound["web"] = web.url  # http://HOST:PORT/, the port bound (config's may be 0)
        if self.callback is not None:
            self.sinks.append(CallbackSink(self.callback))

    def files(self) -> dict[str, str]:
        """Every complete file or folder the sinks wrote: label -> path (for the summary)."""
        return {label: path for sink in self.sinks for label, path in sink.files().items()}

    def teardown(self) -> None:
        errors = []
        for sink in self.sinks:  # every sink gets closed, even if one fails
            try:
                sink.close()
            except Exception as e:
                errors.append(e)
                log.error("sink %s: close failed: %s", type(sink).__name__, e)
        self._count_subscribers()
        if errors:
            raise errors[0]

    def loop(self) -> None:
        ended: set[str] = set()
        streams = set(self.streams)
        waiting = self.publisher is not None and self.outputs.zmq.wait_subscribers > 0
        while ended != streams:
            self.poll([(self.inp, zmq.POLLIN)])
            if waiting:  # the first message is here: it goes out once the subscribers are
                self._await_subscribers()
                waiting = False
            for msg in self.incoming(self.inp, streams):
                if msg.kind == "eos":
                    for sink in self.sinks:
                        sink.end_stream(msg.stream)
                    if self.results is not None:  # to Python code; metrics.sent counts sinks
                        self.forward_eos(self.results, msg.stream, count=False)
                    ended.add(msg.stream)
                else:
                    self._deliver(msg)

    def _await_subscribers(self) -> None:
        """Wait until `outputs.zmq.wait_subscribers` subscribers are connected (their
        subscriptions in effect: they get every frame from the first), polling the publishing
        socket for subscriptions and the control socket for a stop. Meanwhile nothing is read:
        lossless sources wait (full queues push back), live ones drop frames as usual. EndpointError
        (exit code 5) when they are not there within `wait_timeout_s`."""
        cfg, pub = self.outputs.zmq, self.publisher
        if pub.update() < cfg.wait_subscribers:  # say why nothing is sent yet
            log.info("outputs.zmq: the first frame waits for %d subscriber(s) on %s",
                     cfg.wait_subscribers, self.bound.get("publish", cfg.endpoint))  # fmt: skip
        deadline = time.monotonic() + cfg.wait_timeout_s
        while pub.update() < cfg.wait_subscribers:
            self._count_subscribers()
            left = deadline - time.monotonic()
            if left <= 0:
                raise EndpointError(
                    f"outputs.zmq: {pub.subscribers} of {cfg.wait_subscribers} subscribers "
                    f"connected to {self.bound['publish']} within {cfg.wait_timeout_s:g} s "
                    "(outputs.zmq.wait_subscribers)"
                )
            self.poll([(pub.sock, zmq.POLLIN)], left * 1000)
        self._count_subscribers()
        log.info("outputs.zmq: %d subscriber(s) connected; sending", pub.subscribers)

    def _count_subscribers(self) -> None:
        if self.publisher is not None:
            self.metrics.gauges["subscribers"] = self.publisher.subscribers
            self.metrics.gauges["subscribers_peak"] = self.publisher.peak

    def _deliver(self, msg: messages.Message) -> None:
        try:  # what the sinks rely on; only a foreign peer sends anything else
            msg.array("depth", dtype="float32", ndim=2)
            if "view" in msg.arrays and msg.array("view", dtype="uint8", ndim=3).shape[2] != 3:
                raise MessageError(f"view of shape {msg.arrays['view'].shape} is not (H, W, 3)")
            check_frame(msg.header, msg.arrays)  # camera, points
        except MessageError as e:
            self.malformed(e)
            return
        t0 = time.monotonic()
        header = messages.stamp(msg.header, "sink", t0, t0)  # the wait before the sinks
        del header["stage_ms"]["sink"]
        self.metrics.record_wait(header["wait_ms"]["sink"])
        e2e = (t0 - header["t_mono"]) * 1000
        header["latency_ms"] = round(e2e, 3)  # capture -> depth ready for the sinks
        self.metrics.record_e2e(e2e)
        result = DepthResult.from_message(messages.Message(header, msg.arrays))
        for sink in self.sinks:
            sink.write(result)
        if self.results is not None:
            parts = messages.encode(header, result.arrays())
            live = header["mode"] == "live"
            self.emit(self.results, parts, live=live, drop_reason="results_full", count=False)
        self.delivered[result.stream] += 1
        self._count_subscribers()
        self.metrics.record((time.monotonic() - t0) * 1000)
        self.metrics.sent += 1
