"""`depthstream worker --hub tcp://HOST:PORT`: an inference worker of a hub run with --workers.

    depthstream worker --hub tcp://gpu-hub:5560 --checkpoint checkpoints/glpn-kitti --batch 4
    depthstream worker --hub tcp://127.0.0.1:5560 --backend simulate --simulate-ms 40

It builds the engine the usual model options describe, announces itself to the hub and serves
its batches until Ctrl-C/SIGTERM, across hub restarts (pipeline.worker.Worker). A worker never
runs random weights: it needs --checkpoint, unless --backend simulate.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any

from pipeline import curve

from .exits import EPILOG, EXIT_OK, EXIT_SIGNAL, CliError
from .options import _backend, _input_size, _Parser, _positive_int, _seconds, _tcp_endpoint

log = logging.getLogger("depthstream")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="depthstream worker",
        description="Run inference for a hub (`depthstream --workers tcp://ADDR:PORT ...`): "
        "connect to it, announce this worker, and run the batches it hands out until stopped. "
        "A hub that restarts is rejoined on its own.",
        epilog=EPILOG,
    )
    options: list[tuple[str, dict[str, Any]]] = [
        ("--hub", dict(type=_tcp_endpoint, required=True, metavar="tcp://HOST:PORT", help=(
            "the hub's --workers endpoint"))),
        ("--checkpoint", dict(metavar="DIR", help=(
            "Hugging Face format checkpoint directory, or a hub id (required unless --backend "
            "simulate: a worker never runs random weights)"))),
        ("--backend", dict(type=_backend, help=(
            "auto (default), eager, compile, onnx, tensorrt, or simulate (no model: a synthetic "
            "depth after --simulate-ms per batch, for load tests)"))),
        ("--simulate-ms", dict(type=_seconds, default=40.0, metavar="MS", help=(
            "delay of one batch with --backend simulate (default 40)"))),
        ("--precision", dict(choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                             help="numeric precision")),
        ("--device", dict(default="auto", help="auto, cpu, cuda or cuda:N")),
        ("--batch", dict(type=_positive_int, default=1, metavar="N", help=(
            "most frames per model call; the hub batches up to this (default 1)"))),
        ("--input-size", dict(type=_input_size, metavar="HxW", help=(
            "fixed model input size the hub sends (backends compile for it); default: any"))),
        ("--name", dict(default="", help="this worker's name on the hub (default HOST-PID)")),
        ("--credit", dict(type=_positive_int, default=2, metavar="N", help=(
            "batches the hub may have here at once: one running, the next ones waiting "
            "(default 2, at most 64)"))),
        ("--heartbeat", dict(type=_seconds, default=1.0, metavar="SEC", help=(
            "heartbeat period, both ways (default 1)"))),
        ("--timeout", dict(type=_seconds, default=3.0, metavar="SEC", help=(
            "silence after which the hub is gone and this worker reconnects (default 3)"))),
        ("--curve-secret", dict(metavar="FILE", help=(
            "this worker's CURVE key pair (NAME.key_secret, from `depthstream keys`); its "
            "NAME.key must be in the hub's --curve-allow directory"))),
        ("--curve-server", dict(metavar="FILE", help="the hub's CURVE public key (NAME.key)")),
        ("--insecure", dict(action="store_true", help=(
            "allow a non-loopback hub without CURVE keys: anyone on the way can read and "
            "forge the frames"))),
        ("--log-level", dict(default="info", choices=("debug", "info", "warning", "error"),
                             help="logging detail (default info)")),
    ]  # fmt: skip
    for flag, kwargs in options:
        p.add_argument(flag, **kwargs)
    return p


def _engine_factory(args: argparse.Namespace):
    """The EngineSpec the options describe; CliError for what cannot work."""
    from pipeline.config import ModelConfig
    from pipeline.engine_spec import EngineSpec
    from pipeline.errors import ConfigError

    simulate = args.backend == "simulate"
    if not simulate and not args.checkpoint:
        raise CliError("worker: --checkpoint is required (a worker never runs random weights); "
                       "use --backend simulate for a load test without a model")  # fmt: skip
    if args.checkpoint and not simulate:
        from .checkpoint import check_checkpoint  # imports torch: only when a model is run

        check_checkpoint(args.checkpoint)
    input_size = None if args.input_size in (None, "auto") else tuple(args.input_size)
    try:
        model = ModelConfig(
            checkpoint=args.checkpoint or "",
            backend=args.backend or "auto",
            precision=args.precision,
            device=args.device,
            input_size=input_size,
            max_batch=args.batch,
            simulate_ms=args.simulate_ms,
        )
    except ConfigError as e:
        raise CliError(f"worker: model.{e}") from None
    return EngineSpec(model, input_size, tuple(sorted({1, args.batch})))


def run(args: argparse.Namespace) -> int:
    from pipeline.worker import Worker

    if not 1 <= int(args.hub.rsplit(":", 1)[1]) <= 65535:
        raise CliError(f"worker: --hub {args.hub}: the port must be in 1..65535")
    if not args.heartbeat > 0 or args.timeout < 2 * args.heartbeat:
        raise CliError("worker: --timeout must be at least twice --heartbeat (> 0)")
    if args.credit > 64:
        raise CliError("worker: --credit must be at most 64")
    if args.batch > 256:
        raise CliError("worker: --batch must be at most 256")
    config = curve.CurveConfig(args.curve_secret or "", server=args.curve_server or "")
    try:
        keys = curve.file_keys(config, server=False)
        curve.check_exposure(args.hub, keys, args.insecure, "worker --hub")
    except curve.CurveError as e:  # one line here: classify() would import torch to say it
        raise CliError(str(e)) from None
    factory = _engine_factory(args)
    worker = Worker(
        args.hub,
        factory,
        name=args.name,
        batch=args.batch,
        credit=args.credit,
        heartbeat_s=args.heartbeat,
        timeout_s=args.timeout,
        keys=keys,
    )
    stopped_by: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        if stopped_by:  # a second signal: the engine is stuck in a batch; do not wait for it
            os._exit(EXIT_SIGNAL[signal.Signals(signum).name])
        stopped_by.append(signum)
        log.info("worker %s: stopping (a second Ctrl-C/SIGTERM exits at once)", worker.name)
        worker.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    done = threading.Event()
    thread = threading.Thread(target=lambda: (worker.run(), done.set()), name="worker-io")
    try:
        log.info("worker %s: building the engine, then connecting to %s", worker.name, args.hub)
        thread.start()
        while not done.wait():  # interruptible: the handlers run here, in the main thread
            pass
        thread.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if worker.error is not None:
        raise worker.error  # classified by the caller: checkpoint/engine problems exit 4
    print(f"worker {worker.name}: {worker.batches} batches, {worker.frames} frames"
          f"{f', {worker.failed} failed' if worker.failed else ''}, "
          f"{worker.connections} connection(s) to {args.hub}", file=sys.stderr)  # fmt: skip
    if stopped_by:
        return EXIT_SIGNAL[signal.Signals(stopped_by[0]).name]
    return EXIT_OK
