"""Exceptions of the streaming pipeline; each message names the thing that is wrong."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a user-facing problem, printed as one line by command-line tools."""


class ConfigError(PipelineError, ValueError):
    """A config key is unknown or a value is invalid; the message names the dotted key."""


class SourceError(PipelineError):
    """A source cannot be opened or read (file, camera, URL); the message names the source."""


class NoWorkersError(SourceError):
    """No inference worker connected to the hub for workers.wait_s while frames waited (exit 3,
    like a source that gave up: nothing can be made of the input)."""


class EndpointError(PipelineError, OSError):
    """A ZeroMQ endpoint cannot be bound (in use, bad address), or its subscribers did not come in
    time (outputs.zmq.wait_subscribers); the message names it."""


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


MESSAGE_LIMIT = 400  # characters of an error line: 5 rows of an 80-column terminal


def one_line(text: object, limit: int = MESSAGE_LIMIT) -> str:
    """text as one line (runs of whitespace -> one space) of at most `limit` characters; a longer
    one keeps its start, which names the key or the thing that is wrong, and ends in "…"."""
    s = str(text)
    head = " ".join(s[: 4 * limit].split())  # never splits a huge text
    if len(head) <= limit and len(s) <= 4 * limit:
        return head
    return head[: limit - 1].rstrip() + "…"


ROBOTICS_INSTALL = "pip install depthstream[robotics]"  # what the optional robotics outputs need
