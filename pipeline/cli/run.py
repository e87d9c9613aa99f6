"""One run of the command: options -> Config -> Pipeline.run() -> the results, and an exit code.

The pipeline does the work (checks its sources, tunes the allocator before its threads start,
builds the engine in the inference thread); this module only warns about what the user may not
expect, shows progress, and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from pipeline.config import Config
from pipeline.curve import is_loopback
from pipeline.summary import Summary

from .checkpoint import check_checkpoint, random_weights_warning
from .configure import build_config
from .exits import EXIT_OK, EXIT_OUTPUT, EXIT_SIGNAL, CliError
from .report import InputSizes, Progress, print_results

log = logging.getLogger("depthstream")


def _creatable(directory: str) -> None:
    """CliError (exit 5) when `directory` cannot be made: an existing part of it is a file, or
    not writable. Nothing is created here: the outputs make their folders when they write."""
    path = os.path.abspath(directory)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        reason = "Not a directory"
    elif not os.access(path, os.W_OK | os.X_OK):
        reason = "Permission denied"
    else:
        return
    raise CliError(f"cannot create output directory {directory}: {reason}", EXIT_OUTPUT)


def check_outputs(config: Config) -> None:
    """Output folders that cannot be made are an error before anything runs; files that a run
    would replace, and publishing to the network without keys (insecure), are a warning."""
    files = config.outputs.files
    if files is not None:
        _creatable(files.directory)
        for folder in {files.folder(s) for s in config.stream_ids()}:
            old = os.listdir(folder) if os.path.isdir(folder) else []
            if any(n.endswith((".npy", ".png")) for n in old):
                log.warning(
                    "%s already holds depth files; this run replaces those with the same frame "
                    "index and leaves the others", folder,
                )  # fmt: skip
    video_dir = os.path.dirname(config.outputs.video.path) if config.outputs.video else ""
    if video_dir and "{stream}" not in video_dir:  # per-stream folders: made by the sink
        _creatable(video_dir)
    pub = config.outputs.zmq
    if pub is not None and pub.curve.insecure and not pub.curve.enabled:
        if not is_loopback(pub.endpoint):  # without insecure: refused (PublishSink.secure)
            log.warning("publishing on %s without CURVE keys (insecure): anyone who can reach it "
                        "receives the depth", pub.endpoint)  # fmt: skip


def warn_live_files(config: Config) -> None:
    """One line when files or images run live without pacing: read as fast as they decode, most
    frames are dropped (measured: 30 in / 2 out)."""
    from pipeline.sources import resolve_kind, resolve_mode

    ids = [
        s.id
        for s in config.sources
        if resolve_kind(s) in ("file", "images")
        and resolve_mode(s, resolve_kind(s)) == "live"
        and not s.pace
    ]
    if ids:
        log.warning(
            "live mode on a file (%s): frames are read as fast as they decode and those inference "
            "cannot keep up with are dropped; add --pace to replay at the file's frame rate, or "
            "use --mode lossless for every frame", ", ".join(ids),
        )  # fmt: skip


def write_summary_json(path: str, summary: Summary, sizes: InputSizes) -> None:
    from glpn.fileio import atomic_write

    text = json.dumps({**summary.to_dict(), "input_sizes": sizes.as_dict()}, indent=2) + "\n"
    try:
        atomic_write(path, text.encode())
    except OSError as e:
        raise CliError(f"--summary-json: {e}", EXIT_OUTPUT) from None


def run(args: argparse.Namespace) -> int:
    from pipeline import EngineSpec, Pipeline, PipelineError

    config = build_config(args)
    # No model here: the load-test engine, or a hub whose workers run it (they say what they run).
    workers_only = config.workers is not None and not config.workers.local_worker
    no_model = config.model.backend == "simulate" or workers_only
    random_weights = not no_model and not config.model.checkpoint
    if not no_model and config.model.checkpoint:
        check_checkpoint(config.model.checkpoint)
    check_outputs(config)
    warn_live_files(config)
    if random_weights:
        print(random_weights_warning(), file=sys.stderr, flush=True)

    with contextlib.ExitStack() as cleanup:
        progress = Progress(config)  # makes no thread: Pipeline.start() tunes the allocator first
        cleanup.callback(progress.close)
        for s, n in zip(config.sources, progress.counts):
            log.info("source %s: %s%s", s.id, s.uri, f" ({n} frames)" if n is not None else "")
        # Without a checkpoint: the demo's random weights, built in the inference thread.
        engine = EngineSpec.from_config(config, random_weights=True) if random_weights else None
        sizes = InputSizes(config)

        def on_result(result) -> None:
            sizes.update(result)
            progress.update(result)

        pipe = Pipeline(  # its summary is printed below
            config, engine_factory=engine, on_result=on_result, log_summary=False
        )
        progress.pipe = pipe
        failure: BaseException | None = None
        try:
            summary = pipe.run()
        except (PipelineError, OSError) as e:
            failure = e
            summary = pipe.summary()
        except KeyboardInterrupt:  # a second Ctrl-C while stopping: stop waiting
            progress.close()
            print("interrupted", file=sys.stderr)
            return EXIT_SIGNAL["SIGINT"]
        progress.close(summary)

        ran = summary.duration_s > 0 and (failure is None or sum(summary.frames.values()) > 0)
        if ran:
            print_results(summary, config, pipe.endpoints, sizes)
            if args.summary_json:
                write_summary_json(args.summary_json, summary, sizes)
            if random_weights:
                print("note: RANDOM weights (no --checkpoint): the depth is not meaningful.",
                      file=sys.stderr)  # fmt: skip
        if summary.stopped_by in EXIT_SIGNAL:
            return EXIT_SIGNAL[summary.stopped_by]
        if failure is not None:
            raise failure
        return EXIT_OK
