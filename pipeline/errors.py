"""Exceptions of the streaming pipeline; each message names the thing that is wrong."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a user-facing problem, printed as one line by command-line tools."""


class ConfigError(PipelineError, ValueError):
    """A config key is unknown or a value is invalid; the message names the dotted key."""


class SourceError(PipelineError):
    """A source cannot be opened or read (file, camera, URL); the message names the source."""


class EndpointError(PipelineError, OSError):
    """A ZeroMQ endpoint cannot be bound (in use, bad address); the message names it."""


class MessageError(PipelineError, ValueError):
    """A malformed message arrived on a socket; it is dropped and counted, never fatal."""


class StageError(PipelineError):
    """A stage failed; the pipeline stopped. `stage` is its name, `__cause__` the original error."""

    def __init__(self, stage: str, error: BaseException) -> None:
        self.stage = stage
        self.error = error
        detail = (
            str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"
        )
        super().__init__(f"stage {stage!r} failed: {detail}")
