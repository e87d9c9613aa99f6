"""Engine options and the policy on them: the device, and which backends and precisions to try.

`EngineOptions` holds what glpn.engine.load / from_model accept; `EngineOptions.checked()` refuses
an invalid value with an EngineError naming it. `plan(options, device)` turns backend / precision
("auto" or not) into the candidates to build, fastest first, each with why it is there; every
candidate that cannot run here is left out by its backend's own `unavailable()`
(glpn/backends/), and when none is left the first reason is the error. The order of `auto` is
described in glpn/engine.py's docstring.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from . import backends, hardware
from .gate import GATE, Gate
from .precision import DTYPES, check_keep_fp32

PRECISIONS = tuple(DTYPES)
SIZE_DIVISOR = 32  # GLPN input sizes are multiples of 32 (processing.input_size_for)


class EngineError(ValueError):
    """An engine option is invalid or impossible on this machine; the message names the option."""


@dataclass(frozen=True)
class EngineOptions:
    backend: str = "auto"  # "auto", a name in backends.BACKENDS, or an alias ("onnx")
    precision: str = "auto"  # "auto", "fp32", "bf16" or "fp16"
    device: str | torch.device = "auto"  # "auto", "cpu" or "cuda[:N]"
    input_size: tuple[int, int] | None = None  # (h, w), multiples of 32; None: any size (eager,
    # onnxruntime); compile and tensorrt need one
    batch_sizes: tuple[int, ...] = (1,)  # what fixed-shape backends build for; larger batches split
    flip_tta: bool | None = None  # override the model's flip_tta; None: keep it
    keep_fp32: tuple[str, ...] | None = None  # layer kinds kept in float32 under fp16/bf16
    # ("layer_norm", "attention"); None: LayerNorm for TensorRT fp16, nothing elsewhere
    verify: bool | None = None  # check the accuracy gate at load; None: auto's reduced precisions
    gate: Gate = GATE  # what a gated candidate must meet against fp32 eager
    warmup: bool = True  # run every batch size at load (lazy compilation happens there)
    cache_dir: str | os.PathLike | None = None  # engine cache; None: default_cache_dir()
    threads: int | None = None  # torch.set_num_threads (process-wide) and onnxruntime's pool
    compile_mode: str | None = None  # torch.compile mode; None: reduce-overhead on CUDA
    channels_last: bool = True  # NHWC activations (faster convolutions on CPU and GPU)
    fold: bool = True  # run the fused model (glpn/fused.py); False: GLPNDepth's own graph
    tune_allocator: bool = True  # on CPU, hardware.tune_cpu_allocator() (process-wide)

    @classmethod
    def from_kwargs(cls, base: EngineOptions | None = None, **kwargs) -> EngineOptions:
        """`base` (default: the defaults) with `kwargs` replaced; a TypeError lists the valid
        names when one is unknown."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown engine options {unknown}; valid: {sorted(names)}")
        return dataclasses.replace(base or cls(), **kwargs)

    @property
    def explicit(self) -> bool:
        """Both backend and precision named: no fallback, and no gate unless verify=True."""
        return self.backend != "auto" and self.precision != "auto"

    def gated(self, precision: str) -> bool:
        """Whether a candidate at `precision` is checked against the gate at load."""
        if self.verify is not None:
            return self.verify
        return not self.explicit and precision != "fp32"  # auto's reduced precisions

    def checked(self) -> EngineOptions:
        """A copy with every value checked and normalised (canonical backend name, tuples,
        sorted batch sizes); EngineError naming the first invalid option."""
        input_size = self.input_size
        if input_size is not None:
            try:
                h, w = (int(v) for v in input_size)
            except (TypeError, ValueError):
                raise EngineError(
                    f"input_size must be (height, width), got {input_size!r}"
                ) from None
            if h < SIZE_DIVISOR or w < SIZE_DIVISOR or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
                raise EngineError(
                    f"input_size={input_size!r}: height and width must be multiples of "
                    f"{SIZE_DIVISOR} (glpn.processing.input_size_for rounds a frame size down to "
                    "them)"
                )
            input_size = (h, w)
        try:
            sizes = tuple(sorted({int(b) for b in self.batch_sizes}))
        except (TypeError, ValueError):
            raise EngineError(
                f"batch_sizes must be positive integers, got {self.batch_sizes!r}"
            ) from None
        if not sizes or sizes[0] < 1:
            raise EngineError(f"batch_sizes must be positive integers, got {self.batch_sizes!r}")
        if self.threads is not None and int(self.threads) < 1:
            raise EngineError(f"threads must be >= 1, got {self.threads}")
        try:
            backend = backends.canonical_name(self.backend)
        except ValueError:
            valid = ", ".join(backends.BACKENDS)
            raise EngineError(
                f"backend={self.backend!r} is unknown; valid: 'auto', {valid}"
            ) from None
        if self.precision != "auto" and self.precision not in PRECISIONS:
            raise EngineError(
                f"precision={self.precision!r} is unknown; valid: 'auto', {', '.join(PRECISIONS)}"
            )
        keep = self.keep_fp32
        if keep is not None:
            keep = tuple(keep)
            try:
                check_keep_fp32(keep)
            except ValueError as e:
                raise EngineError(str(e)) from None
        return dataclasses.replace(
            self,
            backend=backend,
            input_size=input_size,
            batch_sizes=sizes,
            keep_fp32=keep,
            threads=int(self.threads) if self.threads is not None else None,
        )


@dataclass(frozen=True)
class Candidate:
    backend: str  # a name in backends.BACKENDS
    precision: str  # "fp32", "bf16" or "fp16"
    keep_fp32: tuple[str, ...] = ()  # layer kinds kept in float32 (precision.FP32_LAYERS)

    def label(self) -> str:
        kept = f" ({' and '.join(self.keep_fp32)} in fp32)" if self.keep_fp32 else ""
        return f"{self.backend} {self.precision}{kept}"


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" -> cuda if available else cpu; "cuda" -> the current GPU; EngineError otherwise."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EngineError(f"device={device!r} is not a device (use 'auto', 'cpu' or 'cuda[:N]')")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(
                f"device={device!r} but CUDA is not available (torch {torch.__version__}, "
                f"built with CUDA: {torch.version.cuda is not None})"
            )
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise EngineError(f"device={device!r}: only {torch.cuda.device_count()} GPU(s) here")
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise EngineError(f"device={device!r} is not supported (use 'auto', 'cpu' or 'cuda[:N]')")
    return dev


def auto_candidates(device: torch.device, input_size) -> list[tuple[Candidate, str]]:
    """Every candidate auto may use on this device, fastest first, each with why it is there."""
    out: list[tuple[Candidate, str]] = []
    if device.type == "cuda":
        gpu = hardware.gpu_description(device)
        trt = hardware.package_version("torch_tensorrt")
        if trt and input_size is not None:
            why = f"CUDA ({gpu}) with torch-tensorrt {trt}: TensorRT fp16 is the fastest path"
            out.append((Candidate("tensorrt", "fp16", ("layer_norm",)), why))
            out.append((Candidate("tensorrt", "fp16", ("layer_norm", "attention")), why))
            out.append((Candidate("tensorrt", "fp32"), why))
        if input_size is not None and hardware.package_version("triton"):
            why = f"CUDA ({gpu}) without torch-tensorrt: torch.compile fp16 with CUDA graphs"
            out.append((Candidate("compile", "fp16"), why))
            out.append((Candidate("compile", "fp32"), why))
        why = f"CUDA ({gpu}), " + ("no input_size for a compiled shape" if not input_size else "")
        out.append((Candidate("eager", "fp16"), why.rstrip(", ") + ": eager fp16"))
        out.append((Candidate("eager", "fp32"), "eager fp32: every faster candidate was rejected"))
    else:
        cpu = hardware.cpu_features()
        if cpu.native_bf16:
            why = f"CPU {cpu.name} has native bf16: bf16 weights + channels_last is the fastest"
            out.append((Candidate("eager", "bf16"), why))
        why = (
            f"CPU {cpu.name}: eager fp32 channels_last with the fused model is the fastest "
            "measured without native bf16 (compile ~107 s to build for no gain, onnxruntime slower)"
        )
        if cpu.native_bf16:
            why = "eager fp32: bf16 was rejected"
        out.append((Candidate("eager", "fp32"), why))
    return out


def backend_candidates(backend: str, device: torch.device) -> list[Candidate]:
    """Precisions to try, fastest first, for an explicitly requested backend."""
    if backend == "tensorrt":
        return [
            Candidate("tensorrt", "fp16", ("layer_norm",)),
            Candidate("tensorrt", "fp16", ("layer_norm", "attention")),
            Candidate("tensorrt", "fp32"),
        ]
    if backend == "onnxruntime":
        return [Candidate("onnxruntime", "fp32")]
    if device.type == "cuda":
        return [Candidate(backend, "fp16"), Candidate(backend, "fp32")]
    precisions = ("bf16", "fp32") if hardware.cpu_features().native_bf16 else ("fp32",)
    return [Candidate(backend, p) for p in precisions]


def default_keep(backend: str, precision: str) -> tuple[str, ...]:
    """Layers kept in float32 when keep_fp32 is not given."""
    # The MiT fp16 trap is TensorRT's (reductions in fp16); PyTorch accumulates LayerNorm in fp32.
    return ("layer_norm",) if backend == "tensorrt" and precision == "fp16" else ()


def plan(options: EngineOptions, device: torch.device) -> list[tuple[Candidate, str]]:
    """The candidates to build, in order, each with why; `options` must be checked()."""
    backend, precision, keep = options.backend, options.precision, options.keep_fp32
    if options.explicit:
        wanted = [(Candidate(backend, precision), "requested")]
    elif backend != "auto":
        why = f"requested backend {backend!r}"
        wanted = [(c, why) for c in backend_candidates(backend, device)]
    else:
        wanted = auto_candidates(device, options.input_size)
        wanted = [(c, why) for c, why in wanted if precision in ("auto", c.precision)]
        if not wanted:  # e.g. precision="bf16" on a CPU without it: report eager's reason
            wanted = [(Candidate("eager", precision), "requested")]
    out: list[tuple[Candidate, str]] = []
    first_reason = None
    for c, why in wanted:
        if keep is not None:
            c = Candidate(c.backend, c.precision, keep if c.precision != "fp32" else ())
        elif c.keep_fp32 == ():
            c = Candidate(c.backend, c.precision, default_keep(c.backend, c.precision))
        reason = backends.unavailable(c.backend, c.precision, device, options.input_size)
        if reason is None and c not in [p for p, _ in out]:
            out.append((c, why))
        first_reason = first_reason or reason
    if not out:
        raise EngineError(first_reason or "no backend can run this request")
    return out
