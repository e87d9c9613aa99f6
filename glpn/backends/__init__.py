"""Inference backends: a registry of name -> module; glpn/planning.py and engine.py pick one.

Each backend module has two functions:
    unavailable(precision, device, input_size) -> str | None
        why it cannot run this request here (a message naming the option), or None if it can;
    build(model, spec) -> Runner.
Modules are imported on first use (the registry holds their names), so listing or checking
backends never imports an optional package.

`build` receives an `InferenceGLPN` (float32, CPU) and a `BuildSpec`, and returns a `Runner`: a
callable from a (b, 3, h, w) float32 tensor on the spec's device to (b, h, w) depth in metres. It
raises `BackendUnavailable` when the machine cannot run it after all (a failed TensorRT build);
engine.py turns that into an EngineError naming the option.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

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


# Backend name -> module in this package (imported on first use).
_MODULES = {
    "eager": "eager",
    "compile": "compiled",
    "tensorrt": "tensorrt",
    "onnxruntime": "onnxrt",
}
BACKENDS = tuple(_MODULES)
ALIASES = {"onnx": "onnxruntime", "compiled": "compile", "trt": "tensorrt"}  # accepted spellings


def canonical_name(name: str) -> str:
    """ "auto", a backend's name, or an alias of one -> the name; ValueError listing the valid."""
    name = ALIASES.get(name, name)
    if name != "auto" and name not in BACKENDS:
        valid = ", ".join(("auto", *BACKENDS, *ALIASES))
        raise ValueError(f"backend {name!r} is unknown; valid: {valid}")
    return name


def module(name: str) -> ModuleType:
    """The module of backend `name` (a canonical name, see canonical_name)."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}")
    return importlib.import_module(f".{_MODULES[name]}", __name__)


def unavailable(
    name: str, precision: str, device: torch.device, input_size: tuple[int, int] | None
) -> str | None:
    """Why backend `name` cannot run `precision` on `device` here, or None if it can."""
    return module(name).unavailable(precision, device, input_size)


def build(name: str, model: torch.nn.Module, spec: BuildSpec) -> Runner:
    return module(name).build(model, spec)
