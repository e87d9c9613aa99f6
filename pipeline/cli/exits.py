"""Exit codes, the one-line user error, and which code an exception out of a run gets."""

from __future__ import annotations

from pipeline.errors import one_line

# Exit codes (also in --help): scripts can tell what kind of problem stopped a run.
EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error inside the pipeline (a bug, or a device failure)
EXIT_USAGE = 2  # bad command line or config file (unknown key, invalid value)
EXIT_SOURCE = 3  # a source is missing, cannot be opened or decoded, or a live source gave up
EXIT_MODEL = 4  # the checkpoint cannot be loaded, or the engine cannot run as asked
EXIT_OUTPUT = 5  # an output cannot be written or an endpoint cannot be bound
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}  # stopped by a signal (128 + its number)

EPILOG = (
    "exit codes: 0 success; 1 unexpected failure; 2 bad command line or config; "
    "3 source missing or unreadable; 4 checkpoint or engine problem; 5 output cannot be "
    "written or endpoint cannot be bound; 130/143 stopped by Ctrl-C/SIGTERM (after a clean "
    "shutdown and the summary)."
)


class CliError(Exception):
    """A user-facing problem: printed as one line, exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(one_line(message))  # one short line, whatever the cause says
        self.code = code


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception out of the pipeline."""
    import glpn
    import glpn.engine
    from pipeline.errors import (
        ConfigError,
        EndpointError,
        PipelineError,
        SourceError,
        StageError,
    )

    stage = exc.stage if isinstance(exc, StageError) else None
    inner = exc.error if isinstance(exc, StageError) else exc
    engine_error = getattr(glpn.engine, "EngineError", None)
    if isinstance(inner, ConfigError):
        code, text = EXIT_USAGE, str(inner)
    elif isinstance(inner, SourceError):
        code, text = EXIT_SOURCE, str(inner)
    elif isinstance(inner, (glpn.CheckpointError, glpn.ConfigError)):
        code, text = EXIT_MODEL, f"bad checkpoint: {inner}"
    elif engine_error is not None and isinstance(inner, engine_error):
        code, text = EXIT_MODEL, f"engine: {inner}"
    elif isinstance(inner, EndpointError) or (
        isinstance(inner, OSError) and stage in (None, "sink")  # a file the outputs write
    ):
        code, text = EXIT_OUTPUT, str(inner)
    elif isinstance(inner, PipelineError):
        code, text = EXIT_FAILURE, str(inner)
    elif stage is not None:
        code, text = EXIT_FAILURE, f"stage {stage!r} failed: {type(inner).__name__}: {inner}"
    else:
        code, text = EXIT_FAILURE, f"{type(inner).__name__}: {inner}"
    return code, one_line(text)
