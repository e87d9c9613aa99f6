"""Inference engines: a GLPN model behind one call, on the fastest backend that passes the gate.

    engine = glpn.engine.load("ckpt/", input_size=(480, 640), batch_sizes=(1, 4))
    depth = engine(pixel_values)  # (B, 3, 480, 640) float32 in [0, 1] -> (B, 480, 640) float32 m
    print(engine.describe())

Backends (glpn/backends/): eager, compile (torch.compile), tensorrt (torch-tensorrt), onnxruntime.
Precisions: fp32, bf16, fp16. Every backend runs `InferenceGLPN` (glpn/fused.py), the model with
BatchNorm and the head's upsampling folded away, which gives the same depth to float rounding.

`auto` (backend or precision) tries, in order, the candidates that fit the machine:
  CUDA: tensorrt fp16 (LayerNorm in fp32), tensorrt fp16 (LayerNorm and attention in fp32),
        tensorrt fp32 when torch-tensorrt is installed; compile fp16, compile fp32 when triton is;
        (these need input_size); eager fp16; eager fp32.
  CPU:  eager bf16 when the CPU has AVX512-BF16 or AMX (the fastest path measured there);
        eager fp32 (the fastest measured on CPUs without them: compile took ~107 s to build for no
        gain, onnxruntime ran slower, emulated bf16/fp16 are many times slower than fp32).
Each reduced-precision candidate is checked at load against fp32 eager on a structured synthetic
frame with the checkpoint's own weights (metrics.GATE: mean relative error < 1%, 99th percentile
< 5%); the first that passes is used, and the choice and the reason are logged once. fp32
candidates are not checked (tests/test_engine_backends.py holds them to 1e-4).

Impossible requests (tensorrt without CUDA, fp16 or bf16 on a CPU without them in hardware, an
unknown option) raise EngineError naming the option. Nothing falls back silently.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import backends
from .backends import BackendUnavailable, BuildSpec, Runner
from .engine_cache import weights_digest
from .fused import InferenceGLPN
from .hardware import cpu_features, gpu_description, package_version, tune_cpu_allocator
from .metrics import GATE, DepthError, Gate, depth_error
from .model import GLPNDepth
from .precision import DTYPES, FP32_LAYERS
from .synthetic import synthetic_image

log = logging.getLogger(__name__)

BACKENDS = backends.BACKENDS
PRECISIONS = tuple(DTYPES)
SIZE_DIVISOR = 32  # GLPN input sizes are multiples of 32 (processing.input_size_for)


class EngineError(ValueError):
    """An engine option is invalid or impossible on this machine; the message names the option."""


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str
    keep_fp32: tuple[str, ...] = ()

    def label(self) -> str:
        kept = f" ({' and '.join(self.keep_fp32)} in fp32)" if self.keep_fp32 else ""
        return f"{self.backend} {self.precision}{kept}"


@dataclass(frozen=True)
class GateResult:
    passed: bool
    error: DepthError
    reason: str


class Engine:
    """Callable: (B, 3, h, w) float32 in [0, 1] -> (B, h, w) float32 metres (numpy). Single-thread.

    Any B works: batches are padded up to the next compiled batch size, and split into chunks of
    max(batch_sizes). Attributes: backend, precision, device, input_size, batch_sizes, max_depth,
    build_seconds, warmup_seconds, gate (GateResult when checked), reason (why this backend).
    """

    def __init__(
        self,
        runner: Runner,
        candidate: Candidate,
        *,
        device: torch.device,
        input_size: tuple[int, int] | None,
        batch_sizes: tuple[int, ...],
        max_depth: float,
        reason: str,
        build_seconds: float,
        rejected: list[str],
    ) -> None:
        self._runner = runner
        self.backend = candidate.backend
        self.precision = candidate.precision
        self.keep_fp32 = candidate.keep_fp32
        self._device = device
        self.device = str(device)
        self.input_size = input_size
        self.batch_sizes = batch_sizes
        self.max_depth = max_depth
        self.reason = reason
        self.build_seconds = build_seconds
        self.warmup_seconds = 0.0
        self.gate: GateResult | None = None
        self.rejected = rejected  # candidates auto tried first, with why they were not used

    def __call__(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        x = self._validate(pixel_values)
        largest = self.batch_sizes[-1]
        if x.shape[0] <= largest:
            return self._run(x)
        return np.concatenate([self._run(x[i : i + largest]) for i in range(0, len(x), largest)])

    def _validate(self, pixel_values) -> torch.Tensor:
        if isinstance(pixel_values, np.ndarray):
            if not np.issubdtype(pixel_values.dtype, np.floating):
                raise EngineError(
                    f"pixel_values must be float in [0, 1], got dtype {pixel_values.dtype}"
                )
            array = np.ascontiguousarray(pixel_values, dtype=np.float32)
            with warnings.catch_warnings():  # read-only arrays (e.g. views of ZeroMQ frames) are
                warnings.simplefilter("ignore")  # fine: inference never writes to its input
                x = torch.from_numpy(array)
        elif isinstance(pixel_values, torch.Tensor):
            if not pixel_values.is_floating_point():
                raise EngineError(
                    f"pixel_values must be float in [0, 1], got dtype {pixel_values.dtype}"
                )
            x = pixel_values.detach()
        else:
            raise EngineError(
                f"pixel_values must be a numpy array or a torch tensor, got {type(pixel_values)}"
            )
        shape = tuple(x.shape)
        if x.ndim != 4 or shape[1] != 3:
            raise EngineError(f"pixel_values must have shape (B, 3, h, w), got {shape}")
        if self.input_size is not None and shape[2:] != self.input_size:
            h, w = self.input_size
            raise EngineError(
                f"pixel_values are {shape[2]}x{shape[3]} but this engine was built for {h}x{w}"
            )
        if self.input_size is None and (shape[2] % SIZE_DIVISOR or shape[3] % SIZE_DIVISOR):
            raise EngineError(
                f"pixel_values height and width must be multiples of {SIZE_DIVISOR}, got {shape}"
            )
        return x

    def _run(self, x: torch.Tensor) -> np.ndarray:
        b = x.shape[0]
        if b == 0:
            return np.zeros((0, *x.shape[2:]), dtype=np.float32)
        x = x.to(self._device, torch.float32, non_blocking=True)
        if self._runner.fixed_batch:
            target = next(s for s in self.batch_sizes if s >= b)
            if target > b:  # pad with zeros to a compiled shape; the extra outputs are dropped
                x = torch.cat((x, x.new_zeros((target - b, *x.shape[1:]))))
        depth = self._runner.run(x)[:b]
        return depth.float().cpu().numpy()

    def warm_up(self, repeats: int | None = None) -> float:
        """Run every batch size a few times (lazy compilation happens here); seconds spent.

        Fixed-shape backends get 3 runs: torch.compile's CUDA graphs are recorded on the second
        call and replayed from the third."""
        repeats = repeats or (3 if self._runner.fixed_batch else 2)
        h, w = self.input_size or (256, 320)
        start = time.perf_counter()
        for b in self.batch_sizes:
            x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(b))
            for _ in range(repeats):
                self._run(x)
        self.warmup_seconds = time.perf_counter() - start
        return self.warmup_seconds

    def describe(self) -> str:
        where = self.device
        if self._device.type == "cuda":
            where += f" ({gpu_description(self._device)})"
        else:
            where += f" ({cpu_features().summary()}, {torch.get_num_threads()} threads)"
        size = f"{self.input_size[0]}x{self.input_size[1]}" if self.input_size else "any size"
        parts = [
            f"{Candidate(self.backend, self.precision, self.keep_fp32).label()} on {where}",
            f"input {size}, batch sizes {list(self.batch_sizes)}",
            f"why: {self.reason}",
            f"build {self.build_seconds:.1f} s, warm-up {self.warmup_seconds:.1f} s",
        ]
        parts += [f"{k}: {v}" for k, v in self._runner.notes.items()]
        if self.gate is not None:
            verdict = "passed" if self.gate.passed else "FAILED"
            parts.append(f"accuracy gate {verdict}: {self.gate.error}")
        parts += [f"not used: {r}" for r in self.rejected]
        return "; ".join(parts)


# ---- option checking and the auto policy ---------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
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


def _feasibility(c: Candidate, device: torch.device, input_size) -> str | None:
    """Why candidate `c` cannot run here, or None if it can."""
    if device.type == "cpu" and c.backend == "tensorrt":
        return "backend='tensorrt' needs a CUDA device; on CPU use 'eager' or 'onnxruntime'"
    if c.backend in ("compile", "tensorrt") and input_size is None:
        return f"backend={c.backend!r} compiles for a fixed shape: pass input_size=(h, w)"
    if c.backend == "tensorrt":
        from .backends.tensorrt import available

        ok, why = available(device)
        if not ok:
            return f"backend='tensorrt' {why}"
        if c.precision == "bf16":
            return "backend='tensorrt' is built for fp16 or fp32 here; use precision='fp16'"
    if c.backend == "onnxruntime":
        if package_version("onnxruntime") is None and package_version("onnxruntime-gpu") is None:
            return "backend='onnxruntime' needs onnxruntime (pip install depthstream[onnx])"
        if c.precision != "fp32":
            return f"backend='onnxruntime' runs fp32 graphs only, not precision={c.precision!r}"
    if c.backend == "compile" and device.type == "cuda" and package_version("triton") is None:
        return "backend='compile' on CUDA needs triton"
    if device.type == "cpu":
        cpu = cpu_features()
        if c.precision == "fp16" and not cpu.native_fp16:
            return (
                f"precision='fp16' on CPU needs AVX512-FP16 or AMX-FP16, which {cpu.name} lacks "
                "(torch would emulate it, slower than fp32); use precision='fp32'"
            )
        if c.precision == "bf16" and not cpu.native_bf16:
            return (
                f"precision='bf16' on CPU needs AVX512-BF16 or AMX, which {cpu.name} lacks "
                "(torch would emulate it, many times slower than fp32); use precision='fp32'"
            )
    elif c.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return f"precision='bf16' needs an Ampere or newer GPU, not {gpu_description(device)}"
    return None


def _auto_candidates(device: torch.device, input_size) -> list[tuple[Candidate, str]]:
    """Every candidate auto may use on this device, fastest first, each with why it is there."""
    out: list[tuple[Candidate, str]] = []
    if device.type == "cuda":
        gpu = gpu_description(device)
        trt = package_version("torch_tensorrt")
        if trt and input_size is not None:
            why = f"CUDA ({gpu}) with torch-tensorrt {trt}: TensorRT fp16 is the fastest path"
            out.append((Candidate("tensorrt", "fp16", ("layer_norm",)), why))
            out.append((Candidate("tensorrt", "fp16", ("layer_norm", "attention")), why))
            out.append((Candidate("tensorrt", "fp32"), why))
        if input_size is not None and package_version("triton"):
            why = f"CUDA ({gpu}) without torch-tensorrt: torch.compile fp16 with CUDA graphs"
            out.append((Candidate("compile", "fp16"), why))
            out.append((Candidate("compile", "fp32"), why))
        why = f"CUDA ({gpu}), " + ("no input_size for a compiled shape" if not input_size else "")
        out.append((Candidate("eager", "fp16"), why.rstrip(", ") + ": eager fp16"))
        out.append((Candidate("eager", "fp32"), "eager fp32: every faster candidate was rejected"))
    else:
        cpu = cpu_features()
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


def _backend_candidates(backend: str, device: torch.device) -> list[Candidate]:
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
    precisions = ("bf16", "fp32") if cpu_features().native_bf16 else ("fp32",)
    return [Candidate(backend, p) for p in precisions]


def _plan(
    backend: str, precision: str, keep_fp32, device: torch.device, input_size
) -> list[tuple[Candidate, str]]:
    if backend != "auto" and backend not in BACKENDS:
        raise EngineError(f"backend={backend!r} is unknown; valid: 'auto', {', '.join(BACKENDS)}")
    if precision != "auto" and precision not in PRECISIONS:
        raise EngineError(
            f"precision={precision!r} is unknown; valid: 'auto', {', '.join(PRECISIONS)}"
        )
    if keep_fp32 is not None:
        keep_fp32 = tuple(keep_fp32)
        unknown = [k for k in keep_fp32 if k not in FP32_LAYERS]
        if unknown:
            raise EngineError(f"keep_fp32 has unknown layers {unknown}; valid: {list(FP32_LAYERS)}")
    if backend != "auto" and precision != "auto":
        options = [(Candidate(backend, precision), "requested")]
    elif backend != "auto":
        why = f"requested backend {backend!r}"
        options = [(c, why) for c in _backend_candidates(backend, device)]
    else:
        options = [(c, why) for c, why in _auto_candidates(device, input_size)]
        options = [(c, why) for c, why in options if precision in ("auto", c.precision)]
        if not options:  # e.g. precision="bf16" on a CPU without it: report eager's reason
            options = [(Candidate("eager", precision), "requested")]
    plan: list[tuple[Candidate, str]] = []
    first_reason = None
    for c, why in options:
        if keep_fp32 is not None:
            c = Candidate(c.backend, c.precision, keep_fp32 if c.precision != "fp32" else ())
        elif c.keep_fp32 == ():
            c = Candidate(c.backend, c.precision, _default_keep(c.backend, c.precision, None))
        reason = _feasibility(c, device, input_size)
        if reason is None and c not in [p for p, _ in plan]:
            plan.append((c, why))
        first_reason = first_reason or reason
    if not plan:
        raise EngineError(first_reason or "no backend can run this request")
    return plan


def _default_keep(backend: str, precision: str, keep_fp32) -> tuple[str, ...]:
    if keep_fp32 is not None:
        return tuple(keep_fp32)
    # The MiT fp16 trap is TensorRT's (reductions in fp16); PyTorch accumulates LayerNorm in fp32.
    return ("layer_norm",) if backend == "tensorrt" and precision == "fp16" else ()


def _gate_frame(input_size, batch: int) -> torch.Tensor:
    h, w = input_size or (256, 320)
    frames = np.stack([synthetic_image(h, w, seed=11 + i) for i in range(batch)])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@torch.inference_mode()
def _reference_depth(model: GLPNDepth, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """fp32 eager on the engine's device, TF32 off: what every backend is gated against."""
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = copy.deepcopy(model).float().to(device).eval()
        return ref(x.to(device)).float().cpu().numpy()
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


# ---- public constructors -------------------------------------------------------------------------


def from_model(
    model: GLPNDepth,
    *,
    backend: str = "auto",
    precision: str = "auto",
    device: str | torch.device = "auto",
    input_size: tuple[int, int] | None = None,
    batch_sizes: tuple[int, ...] = (1,),
    flip_tta: bool | None = None,
    keep_fp32: tuple[str, ...] | None = None,
    verify: bool | None = None,
    gate: Gate = GATE,
    warmup: bool = True,
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
    compile_mode: str | None = None,
    channels_last: bool = True,
    fold: bool = True,
    tune_allocator: bool = True,
) -> Engine:
    """An engine around an in-memory GLPNDepth (or GLPNForDepthEstimation), left unchanged.

    backend / precision: see the module docstring; "auto" picks. device: "auto", "cpu", "cuda[:N]".
    input_size: (h, w), multiples of 32; required by compile and tensorrt; None lets eager and
    onnxruntime take any size. batch_sizes: what fixed-shape backends build for; larger batches
    are split. flip_tta: override the model's flip_tta. keep_fp32: layer kinds kept in float32
    under fp16/bf16 ("layer_norm", "attention"); default: LayerNorm for TensorRT fp16.
    verify: check the accuracy gate at load (default: for auto's reduced-precision candidates);
    an explicitly requested backend that fails it raises EngineError. cache_dir: engine cache
    (default: engine_cache.default_cache_dir()). threads: torch.set_num_threads (process-wide).
    fold: run the fused model (fused.py); False runs GLPNDepth's graph. tune_allocator: on CPU,
    hardware.tune_cpu_allocator() (process-wide; best called at program start).
    """
    if not isinstance(model, GLPNDepth):
        raise EngineError(f"model must be a glpn.GLPNDepth, got {type(model).__name__}")
    dev = resolve_device(device)
    if input_size is not None:
        try:
            h, w = (int(v) for v in input_size)
        except (TypeError, ValueError):
            raise EngineError(f"input_size must be (height, width), got {input_size!r}") from None
        if h < SIZE_DIVISOR or w < SIZE_DIVISOR or h % SIZE_DIVISOR or w % SIZE_DIVISOR:
            raise EngineError(
                f"input_size={input_size!r}: height and width must be multiples of {SIZE_DIVISOR} "
                "(glpn.processing.input_size_for rounds a frame size down to them)"
            )
        input_size = (h, w)
    try:
        sizes = sorted({int(b) for b in batch_sizes})
    except (TypeError, ValueError):
        raise EngineError(f"batch_sizes must be positive integers, got {batch_sizes!r}") from None
    if not sizes or sizes[0] < 1:
        raise EngineError(f"batch_sizes must be positive integers, got {batch_sizes!r}")
    if threads is not None:
        if int(threads) < 1:
            raise EngineError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    plan = _plan(backend, precision, keep_fp32, dev, input_size)
    explicit = backend != "auto" and precision != "auto"
    if dev.type == "cpu" and tune_allocator:
        tune_cpu_allocator()

    source = copy.deepcopy(model).eval()
    if flip_tta is not None:
        source.flip_tta = bool(flip_tta)
    fused = InferenceGLPN(source, fold_batchnorm=fold, fold_upsampling=fold)
    digest = weights_digest(fused) + f"|flip={fused.flip_tta}"
    reference = None
    rejected: list[str] = []
    for i, (cand, why) in enumerate(plan):
        spec = BuildSpec(
            device=dev,
            precision=cand.precision,
            input_size=input_size,
            batch_sizes=tuple(sizes),
            channels_last=channels_last,
            keep_fp32=cand.keep_fp32,
            cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
            weights_digest=digest,
            compile_mode=compile_mode,
            threads=threads,
        )
        last = i == len(plan) - 1
        start = time.perf_counter()
        try:
            runner = backends.build(cand.backend, copy.deepcopy(fused), spec)
        except BackendUnavailable as e:
            if explicit or last:
                raise EngineError(f"backend={cand.backend!r} cannot run here: {e}") from None
            rejected.append(f"{cand.label()} ({e})")
            log.warning("engine: %s unavailable (%s); trying the next candidate", cand.label(), e)
            continue
        engine = Engine(
            runner,
            cand,
            device=dev,
            input_size=input_size,
            batch_sizes=tuple(sizes),
            max_depth=float(model.config.max_depth),
            reason=why,
            build_seconds=time.perf_counter() - start,
            rejected=rejected,
        )
        if warmup:
            engine.warm_up()
        check = verify if verify is not None else (not explicit and cand.precision != "fp32")
        if check:
            x = _gate_frame(input_size, sizes[0])
            if reference is None:
                reference = _reference_depth(source, x, dev)
            err = depth_error(engine(x), reference)
            passed, verdict = gate.check(err)
            engine.gate = GateResult(passed, err, verdict)
            if not passed:
                if explicit or last:
                    raise EngineError(
                        f"{cand.label()} fails the accuracy gate: {verdict} ({gate.describe()})"
                    )
                rejected.append(f"{cand.label()} (accuracy gate: {verdict})")
                log.warning("engine: %s fails the accuracy gate (%s)", cand.label(), verdict)
                continue
        if not explicit:
            log.info("engine: auto chose %s on %s: %s", cand.label(), engine.device, why)
        return engine
    raise EngineError("no backend candidate could be built")  # unreachable: the last raises


def load(
    checkpoint: str | os.PathLike,
    *,
    backend: str = "auto",
    precision: str = "auto",
    device: str | torch.device = "auto",
    input_size: tuple[int, int] | None = None,
    batch_sizes: tuple[int, ...] = (1,),
    **options,
) -> Engine:
    """An engine for a checkpoint directory (config.json + safetensors); see from_model's options.

    Checkpoint problems raise glpn.CheckpointError; engine options raise EngineError.
    """
    model = GLPNDepth.from_pretrained(checkpoint)
    return from_model(
        model,
        backend=backend,
        precision=precision,
        device=device,
        input_size=input_size,
        batch_sizes=batch_sizes,
        **options,
    )

