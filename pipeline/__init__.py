"""Streaming depth: capture -> preprocess -> inference -> postprocess -> sinks over ZeroMQ.

from pipeline import Pipeline, load_config
summary = Pipeline(load_config("configs/video.yaml")).run()
"""

from .client import DepthSubscriber, FrameSender
from .config import Config, load_config
from .errors import ConfigError, EndpointError, MessageError, PipelineError, SourceError, StageError
from .results import DepthResult
from .runner import Pipeline, default_engine_factory
from .summary import Summary

__all__ = [
    "Config",
    "ConfigError",
    "DepthResult",
    "DepthSubscriber",
    "EndpointError",
    "FrameSender",
    "MessageError",
    "Pipeline",
    "PipelineError",
    "SourceError",
    "StageError",
    "Summary",
    "default_engine_factory",
    "load_config",
]
