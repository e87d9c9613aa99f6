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
frame with the checkpoint's own weights (glpn/gate.py, GATE: mean relative error < 1%, 99th
percentile < 5%); the first that passes is used, and the choice and the reason are logged once.
fp32 candidates are not checked (tests/test_engine_backends.py holds them to 1e-4).

Where things are: the options and the order of candidates in glpn/planning.py (EngineOptions,
plan), whether a backend can run here in its own module (glpn/backends/*.py, `unavailable`), the
accuracy gate in glpn/gate.py; this file builds the engine and runs it.

Impossible requests (tensorrt without CUDA, fp16 or bf16 on a CPU without them in hardware, an
unknown option) raise EngineError naming the option. Nothing falls back silently.
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings

import numpy as np
import torch

from . import backends, hardware
from .backends import BackendUnavailable, BuildSpec, Runner
from .engine_cache import weights_digest
from .fused import InferenceGLPN
from .gate import DEFAULT_SIZE, GateResult, LoadGate
from .model import GLPNDepth
from .planning import (
    PRECISIONS,
    SIZE_DIVISOR,
    Candidate,
    EngineError,
    EngineOptions,
    plan,
    resolve_device,
)

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Candidate",
    "Engine",
    "EngineError",
    "EngineOptions",
    "GateResult",
    "from_model",
    "load",
    "resolve_device",
]

log = logging.getLogger(__name__)

BACKENDS = backends.BACKENDS


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
        h, w = self.input_size or DEFAULT_SIZE
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
            where += f" ({hardware.gpu_description(self._device)})"
        else:
            where += f" ({hardware.cpu_features().summary()}, {torch.get_num_threads()} threads)"
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
            parts.append(f"accuracy gate {verdict}: {self.gate}")
        parts += [f"not used: {r}" for r in self.rejected]
        return "; ".join(parts)


# ---- public constructors -------------------------------------------------------------------------


def from_model(model: GLPNDepth, *, options: EngineOptions | None = None, **kwargs) -> Engine:
    """An engine around an in-memory GLPNDepth (or GLPNForDepthEstimation), left unchanged.

    Options (fields of planning.EngineOptions, by keyword or as `options`, keywords winning):
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
    opts = EngineOptions.from_kwargs(options, **kwargs)
    if not isinstance(model, GLPNDepth):
        raise EngineError(f"model must be a glpn.GLPNDepth, got {type(model).__name__}")
    device = resolve_device(opts.device)
    opts = opts.checked()
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    candidates = plan(opts, device)
    if device.type == "cpu" and opts.tune_allocator:
        hardware.tune_cpu_allocator()
    source = copy.deepcopy(model).eval()
    if opts.flip_tta is not None:
        source.flip_tta = bool(opts.flip_tta)
    fused = InferenceGLPN(source, fold_batchnorm=opts.fold, fold_upsampling=opts.fold)
    digest = weights_digest(fused) + f"|flip={fused.flip_tta}"
    gate = LoadGate(
        source, opts.gate, input_size=opts.input_size, batch=opts.batch_sizes[0], device=device
    )
    rejected: list[str] = []
    for i, (cand, why) in enumerate(candidates):
        final = opts.explicit or i == len(candidates) - 1  # no next candidate: failures raise
        start = time.perf_counter()
        try:
            spec = _spec(opts, cand, device, digest)
            runner = backends.build(cand.backend, copy.deepcopy(fused), spec)
        except BackendUnavailable as e:
            if final:
                raise EngineError(f"backend={cand.backend!r} cannot run here: {e}") from None
            rejected.append(f"{cand.label()} ({e})")
            log.warning("engine: %s unavailable (%s); trying the next candidate", cand.label(), e)
            continue
        engine = Engine(
            runner,
            cand,
            device=device,
            input_size=opts.input_size,
            batch_sizes=opts.batch_sizes,
            max_depth=float(model.config.max_depth),
            reason=why,
            build_seconds=time.perf_counter() - start,
            rejected=rejected,
        )
        if opts.warmup:
            engine.warm_up()
        if opts.gated(cand.precision):
            engine.gate = result = gate.check(engine)
            if not result.passed:
                if final:
                    raise EngineError(
                        f"{cand.label()} fails the accuracy gate: {result.reason} "
                        f"({opts.gate.describe()})"
                    )
                rejected.append(f"{cand.label()} (accuracy gate: {result.reason})")
                log.warning("engine: %s fails the accuracy gate (%s)", cand.label(), result.reason)
                continue
        if not opts.explicit:
            log.info("engine: auto chose %s on %s: %s", cand.label(), engine.device, why)
        return engine
    raise EngineError("no backend candidate could be built")  # unreachable: the last raises


def load(
    checkpoint: str | os.PathLike, *, options: EngineOptions | None = None, **kwargs
) -> Engine:
    """An engine for a checkpoint directory (config.json + safetensors); see from_model's options.

    Checkpoint problems raise glpn.CheckpointError; engine options raise EngineError.
    """
    model = GLPNDepth.from_pretrained(checkpoint)
    return from_model(model, options=options, **kwargs)


def _spec(opts: EngineOptions, cand: Candidate, device: torch.device, digest: str) -> BuildSpec:
    return BuildSpec(
        device=device,
        precision=cand.precision,
        input_size=opts.input_size,
        batch_sizes=opts.batch_sizes,
        channels_last=opts.channels_last,
        keep_fp32=cand.keep_fp32,
        cache_dir=os.fspath(opts.cache_dir) if opts.cache_dir is not None else None,
        weights_digest=digest,
        compile_mode=opts.compile_mode,
        threads=opts.threads,
    )
