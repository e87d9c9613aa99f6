"""`depthstream capture --source SRC --hub tcp://HOST:PORT`: a camera on this host feeding a hub.

    capture:<id> --inproc--> uplink --tcp (JPEG by default, CURVE with keys)--> hub's --ingest

The hub runs `depthstream --ingest tcp://ADDR:PORT --remote ID ...`; this process reads SRC
(camera, URL, file, images: the same sources and errors as the main command) with the pipeline's
CaptureStage and pushes its frames with an UplinkStage (pipeline/uplink.py), both built from
StageSpecs and run on a ThreadLauncher, as the pipeline runs its stages. It exits 0 once the source
ended and the hub took the end of the stream; Ctrl-C / SIGTERM stop the capture and still send the
end of the stream (waiting at most EOS_WAIT_S for the hub to take it). A one-line summary: frames
sent, dropped, mean bytes per frame.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import uuid
from typing import Any

import zmq

from pipeline import curve, messages
from pipeline.capture import CaptureStage
from pipeline.config import SourceConfig
from pipeline.config_network import ENCODINGS
from pipeline.errors import ConfigError, StageError
from pipeline.framecodec import DEFAULT_QUALITY
from pipeline.launch import ThreadLauncher
from pipeline.sources import check_source, resolve_kind, resolve_mode
from pipeline.stage import STOP, Stage
from pipeline.topology import Bind, Connect, StageSpec, Topology
from pipeline.uplink import UplinkStage

from .configure import parse_source, source_options
from .exits import EXIT_OK, EXIT_SIGNAL, CliError
from .options import _Parser, _positive_int, _tcp_endpoint

log = logging.getLogger("depthstream")

EOS_WAIT_S = 5.0  # after a signal, how long the end of the stream may take to reach the hub
HWM = 2  # frames queued per link (as transport.hwm)


def _quality(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in 1..100, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="depthstream capture",
        description="Read a camera, stream URL, video file or images on this host and push its "
        "frames to a hub (`depthstream --ingest tcp://ADDR:PORT --remote ID`) on another host. "
        "Frames travel JPEG-encoded by default; capture times in this host's wall clock "
        "(keep the clocks NTP-synchronised: skew shows up in the hub's latency).",
    )
    add = p.add_argument
    add("--source", required=True, metavar="SRC", help=(
        "camera index (0), video file, stream URL, image directory or glob; ID=SRC also names "
        "the stream"))  # fmt: skip
    add("--hub", required=True, type=_tcp_endpoint, metavar="tcp://HOST:PORT",
        help="the hub's --ingest endpoint")  # fmt: skip
    add("--id", metavar="ID", help="stream id, the hub's --remote ID (default source0)")
    add("--mode", choices=("live", "lossless"), help=(
        "live: frames the hub does not take at once are dropped (default for cameras and "
        "URLs); lossless: every frame, waiting for the hub (default for files and images). "
        "The hub's own --mode for the stream decides how it treats them"))  # fmt: skip
    add("--pace", action="store_true", help="replay a file or images at its frame rate")
    add("--max-frames", type=_positive_int, metavar="N", help="end after N frames")
    add("--encoding", choices=ENCODINGS, default="jpeg", help=(
        "how frames travel: jpeg (default; a 720p frame 10-40x smaller at quality 90) or raw "
        "(exact pixels, 2.7 MB per 720p frame)"))  # fmt: skip
    add("--jpeg-quality", type=_quality, default=DEFAULT_QUALITY, metavar="Q",
        help=f"JPEG quality 1..100 (default {DEFAULT_QUALITY})")  # fmt: skip
    add("--curve-secret", metavar="FILE", help=(
        "this camera's CURVE key pair (NAME.key_secret, `depthstream keys`); its NAME.key must "
        "be in the hub's --curve-allow directory"))  # fmt: skip
    add("--curve-server", metavar="FILE", help="the hub's public key (HUB.key)")
    add("--insecure", action="store_true", help=(
        "allow a hub on a non-loopback address without CURVE keys (anyone on the path can read "
        "and inject frames)"))  # fmt: skip
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"),
        help="logging detail (default info); debug also prints tracebacks")  # fmt: skip
    return p


def _source(args: argparse.Namespace) -> SourceConfig:
    parsed = parse_source(args.source)
    fields: dict[str, Any] = {"uri": parsed["uri"], "id": args.id or parsed.get("id", "source0")}
    fields.update(source_options(args))
    try:
        source = SourceConfig(**fields)
    except ConfigError as e:
        raise CliError(f"capture: source: {e}") from None
    if resolve_kind(source) == "external":
        raise CliError("capture: --source must be a camera, URL, file or images")
    return source


def _specs(source: SourceConfig, args: argparse.Namespace, keys: curve.Keys | None) -> Topology:
    """capture:<id> -> uplink, as the pipeline's topology describes its stages."""
    kind = resolve_kind(source)
    mode = resolve_mode(source, kind)
    base = f"inproc://depthstream-capture-{uuid.uuid4().hex[:10]}"
    capture = StageSpec(
        f"capture:{source.id}", CaptureStage, (source,),
        options=dict(kind=kind, mode=mode, hwm=HWM),
        connects=(Connect("output", "uplink", "input"),),
        control=f"{base}/control/capture",
    )  # fmt: skip
    uplink = StageSpec(
        "uplink", UplinkStage,
        options=dict(stream=source.id, mode=mode, hub=args.hub, encoding=args.encoding,
                     jpeg_quality=args.jpeg_quality, keys=keys, insecure=args.insecure, hwm=HWM),
        binds=(Bind("input", "input", f"{base}/uplink"),),
        control=f"{base}/control/uplink",
        # lossless: closing waits until the hub took every frame and the end (Ctrl-C: bounded)
        linger_ms=-1 if mode == "lossless" else 1000,
    )  # fmt: skip
    return Topology((capture, uplink))


class _Run:
    """The two stages on a ThreadLauncher, stopped by SIGINT / SIGTERM (main thread)."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.launcher = ThreadLauncher()
        self.stages: dict[str, Stage] = {}
        self.controls: dict[str, zmq.Socket] = {}
        self.signalled: str | None = None

    def start(self) -> None:
        for spec in self.topology.launch_order():  # the uplink first: it binds the capture's output
            connect = {c.arg: self.stages[c.stage].bound[c.role] for c in spec.connects}
            stage = self.launcher.build(spec, connect, {})
            ctl = self.launcher.context.socket(zmq.PUSH)
            ctl.setsockopt(zmq.LINGER, 0)
            ctl.connect(spec.control)
            self.controls[spec.name], self.stages[spec.name] = ctl, stage
            self.launcher.start(stage)
            stage.ready.wait()
            if stage.error is not None:
                raise StageError(stage.name, stage.error) from stage.error

    def stop(self, name: str) -> None:
        if not self.stages[name].done.is_set():
            self.controls[name].send(STOP, zmq.NOBLOCK)

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.signalled is not None:  # a second Ctrl-C: stop waiting for the hub
            raise KeyboardInterrupt
        self.signalled = signal.Signals(signum).name
        print(f"{self.signalled} received: ending the stream", file=sys.stderr, flush=True)

    def _wait(self, done: threading.Event | Stage) -> None:
        """Until `done` is set; once a signal came, EOS_WAIT_S at most (then give up)."""
        event = done.done if isinstance(done, Stage) else done
        deadline: float | None = None
        while not event.wait(0.1):
            if self.signalled and deadline is None:
                deadline = time.monotonic() + EOS_WAIT_S
                if "uplink" in self.stages:  # its linger, read when it ends
                    self.stages["uplink"].linger_ms = int(EOS_WAIT_S * 1000)
            if deadline is not None and time.monotonic() > deadline:
                return

    def run(self, stream: str) -> None:
        capture, uplink = self.stages[f"capture:{stream}"], self.stages["uplink"]
        while not (capture.done.wait(0.1) or uplink.done.is_set() or self.signalled):
            pass
        self.stop(capture.name)  # a no-op once it ended
        capture.done.wait()  # prompt: every wait in a stage watches its control socket
        if capture.outcome != "finished" and not uplink.done.is_set():
            # Stopped or failed before its end of stream: the hub still gets one.
            end = self.launcher.context.socket(zmq.PUSH)
            end.connect(uplink.bound["input"])
            end.send_multipart(messages.encode(messages.eos_header(stream)))
            end.close(linger=-1)  # inproc: delivered at once
        self._wait(uplink)
        if not uplink.done.is_set():
            print("capture: the hub did not take the end of the stream", file=sys.stderr)
            self.stop(uplink.name)
            uplink.done.wait()

    def close(self) -> None:
        for name in self.stages:
            self.stop(name)
        for stage in self.stages.values():
            stage.done.wait()
        for ctl in self.controls.values():
            ctl.close(linger=0)
        # A lossless uplink closes with an unlimited linger: term() returns once the hub took the
        # last frames. On a thread, so that a signal still ends the wait.
        term = threading.Event()
        threading.Thread(target=lambda: (self.launcher.context.term(), term.set()),
                         name="depthstream-capture-term", daemon=True).start()  # fmt: skip
        self._wait(term)
        if not term.is_set():
            print("capture: the hub did not take the last frames", file=sys.stderr)


def summary_line(stream: str, hub: str, capture: Stage, uplink: UplinkStage) -> str:
    dropped = sum(capture.metrics.drops.values()) + sum(uplink.metrics.drops.values())
    sent = uplink.frames_sent
    mean = uplink.bytes_sent / sent if sent else 0.0
    what = f"jpeg q{uplink.jpeg_quality}" if uplink.encoding == "jpeg" else "raw"
    return (
        f"capture {stream} -> {hub}: {sent} frames sent, {dropped} dropped, "
        f"{mean / 1024:.1f} KiB/frame ({what})"
    )


def run(args: argparse.Namespace) -> int:
    source = _source(args)
    secure = curve.CurveConfig(
        secret=args.curve_secret or "", server=args.curve_server or "", insecure=args.insecure
    )
    keys = curve.file_keys(secure, server=False)
    curve.check_exposure(args.hub, keys, args.insecure, "capture --hub")
    check_source(source)  # a missing file: one line, exit 3, before any thread starts
    runner = _Run(_specs(source, args, keys))
    previous = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            runner.start()
            what = f"jpeg q{args.jpeg_quality}" if args.encoding == "jpeg" else "raw"
            log.info("capture %s: %s -> %s (%s, %s)", source.id, source.uri, args.hub, what,
                     resolve_mode(source, resolve_kind(source)))  # fmt: skip
            runner.run(source.id)
        finally:
            runner.close()  # a signal during its wait for the hub still counts (EOS_WAIT_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    capture, uplink = runner.stages[f"capture:{source.id}"], runner.stages["uplink"]
    print(summary_line(source.id, args.hub, capture, uplink), flush=True)
    for stage in (capture, uplink):
        if stage.outcome == "failed":
            raise StageError(stage.name, stage.error) from stage.error
    if runner.signalled:
        return EXIT_SIGNAL[runner.signalled]
    return EXIT_OK
