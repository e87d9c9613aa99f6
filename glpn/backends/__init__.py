"""Inference backends: each module has `build(model, spec) -> Runner`; engine.py picks one.

A backend receives an `InferenceGLPN` (float32, CPU) and a `BuildSpec`, and returns a `Runner`: a
callable from a (b, 3, h, w) float32 tensor on the spec's device to (b, h, w) depth in metres. It
raises `BackendUnavailable` when the machine cannot run it; engine.py turns that into an
EngineError naming the option.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (missing package, wrong device...); the message says why."""


@dataclass(frozen=True)
class BuildSpec:
    device: torch.device  # where inference runs
    precision: str  # "fp32", "bf16" or "fp16"
    input_size: tuple[int, int] | None  # (h, w); None only for shape-agnostic backends
    batch_sizes: tuple[int, ...]  # sorted batch sizes that fixed-shape backends compile for
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (oneDNN) and GPU
    keep_fp32: tuple[str, ...] = ()  # layer kinds kept in float32 under fp16/bf16 (precision.py)
    cache_dir: str | None = None  # engine cache directory (TensorRT plans, ONNX models)
    weights_digest: str = ""  # SHA-256 of the weights and config: part of every cache key
    compile_mode: str | None = None  # torch.compile mode; None: reduce-overhead on CUDA
    threads: int | None = None  # CPU threads for runtimes with their own pool (onnxruntime)


@dataclass
class Runner:
    run: Callable[[torch.Tensor], torch.Tensor]  # (b, 3, h, w) float32 -> (b, h, w) metres
    fixed_batch: bool  # True: only spec.batch_sizes can run (the engine pads to one of them)
    notes: dict = field(default_factory=dict)  # what describe() reports: cache status, paths...


BACKENDS = ("eager", "compile", "tensorrt", "onnxruntime")
ALIASES = {"onnx": "onnxruntime", "compiled": "compile", "trt": "tensorrt"}  # accepted spellings


def canonical_name(name: str) -> str:
    """"auto", a backend's name, or an alias of one -> the name; ValueError listing the valid."""
    name = ALIASES.get(name, name)
    if name != "auto" and name not in BACKENDS:
        valid = ", ".join(("auto", *BACKENDS, *ALIASES))
        raise ValueError(f"backend {name!r} is unknown; valid: {valid}")
    return name


def build(name: str, model: torch.nn.Module, spec: BuildSpec) -> Runner:
    if name == "eager":
        from . import eager as backend
    elif name == "compile":
        from . import compiled as backend
    elif name == "tensorrt":
        from . import tensorrt as backend
    elif name == "onnxruntime":
        from . import onnxrt as backend
    else:
        raise ValueError(f"unknown backend {name!r}")
    return backend.build(model, spec)
