"""Streaming depth: capture -> preprocess -> inference -> postprocess -> sinks over ZeroMQ.

from pipeline import Pipeline, load_config
summary = Pipeline(load_config("configs/video.yaml")).run()

The names below are imported on first use: `import pipeline` loads nothing heavy, so the
`depthstream` command (pipeline.cli) can set OMP_WAIT_POLICY before anything imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Exported name -> the submodule that defines it.
_EXPORTS = {
    "Config": "config",
    "ConfigError": "errors",
    "DepthResult": "results",
    "DepthSubscriber": "client",
    "EndpointError": "errors",
    "EngineSpec": "engine_spec",
    "FrameSender": "client",
    "MessageError": "errors",
    "Pipeline": "runner",
    "PipelineError": "errors",
    "SourceError": "errors",
    "StageError": "errors",
    "Summary": "summary",
    "load_config": "config",
}

__all__ = [
    "Config",
    "ConfigError",
    "DepthResult",
    "DepthSubscriber",
    "EndpointError",
    "EngineSpec",
    "FrameSender",
    "MessageError",
    "Pipeline",
    "PipelineError",
    "SourceError",
    "StageError",
    "Summary",
    "load_config",
]

if TYPE_CHECKING:
    from .client import DepthSubscriber, FrameSender
    from .config import Config, load_config
    from .engine_spec import EngineSpec
    from .errors import (
        ConfigError,
        EndpointError,
        MessageError,
        PipelineError,
        SourceError,
        StageError,
    )
    from .results import DepthResult
    from .runner import Pipeline
    from .summary import Summary


def __getattr__(name: str) -> Any:
    """An exported name, or a submodule (`pipeline.runner` after a bare `import pipeline`)."""
    if name.startswith("__"):
        raise AttributeError(name)
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
