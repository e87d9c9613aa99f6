"""The `depthstream` command (also `python run_stream.py`): options -> Config -> Pipeline -> report.

    depthstream                          # the demo: bundled clip -> ./outputs/demo/
    depthstream --source clip.mp4 --checkpoint checkpoints/glpn-kitti --save-depth out/
    depthstream --config multi_stream --checkpoint checkpoints/glpn-nyu

Modules: options (the parser), configure (options -> Config), checkpoint (checks and hints),
report (logging, progress, results), run (one run), exits (exit codes, classify).
"""

from __future__ import annotations

import os

# OpenMP (libgomp) worker threads spin while they wait for work. On a machine with few cores that
# steals the CPU from the pipeline's other threads: measured on 2 cores, each model call took
# 2-2.5x as long inside the pipeline as alone; with PASSIVE, about 1.1x. Read when torch loads,
# so it is set before torch is imported (`import pipeline` imports nothing heavy); an explicit
# OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from .configure import apply_options, build_config, parse_source, read_config_file  # noqa: E402
from .exits import EXIT_SIGNAL, CliError, classify  # noqa: E402
from .options import build_parser  # noqa: E402

__all__ = [
    "CliError",
    "apply_options",
    "build_config",
    "build_parser",
    "main",
    "parse_source",
    "read_config_file",
    "run_command",
]


# `depthstream NAME ...`: a module of this package with build_parser() and run(args) -> exit code.
SUBCOMMANDS = {
    "worker": "worker",  # an inference worker of a hub (--workers)
    "capture": "capture_cmd",  # a camera feeding a hub's --ingest from another host
    "keys": "keys",  # a CURVE key pair
}


def run_command(argv: list[str] | None = None) -> int:
    """Parse `argv`, run, report; the exit code (user errors printed as one `error:` line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        command = importlib.import_module(f".{SUBCOMMANDS[argv[0]]}", __name__)
        args = command.build_parser().parse_args(argv[1:])
        run = command.run
    else:
        args = build_parser().parse_args(argv)
        from .run import run
    from .report import setup_logging

    setup_logging(args.log_level)
    try:
        return run(args)
    except CliError as e:
        if args.log_level == "debug":
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGNAL["SIGINT"]
    except Exception as e:  # pipeline errors, and anything unexpected: still one line
        if args.log_level == "debug":
            traceback.print_exc()
        code, text = classify(e)
        print(f"error: {text}", file=sys.stderr)
        return code


def main(argv: list[str] | None = None) -> int:
    """The program's entry point (the console script and run_stream.py): run_command, with the
    process-wide parts a library call must not do: a SIGTERM handler, and os._exit when a camera
    or URL open is still stuck inside OpenCV."""
    # SIGTERM before the pipeline installs its handler (while loading): exit cleanly, same code.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_SIGNAL["SIGTERM"]))
    code = run_command(argv)
    capture = sys.modules.get("pipeline.capture")
    if capture is not None and capture.opens_in_flight():
        # A stop left a camera/URL open running inside OpenCV, which cannot interrupt it: exit
        # now rather than wait for it (see pipeline.capture._wait_for_abandoned_opens).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
