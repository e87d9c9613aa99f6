"""torch.compile (inductor) at fixed shapes: one graph per batch size, compiled during warm-up.

On CUDA the default mode is "reduce-overhead" (CUDA graphs: one launch per frame instead of
hundreds of kernel launches). On CPU compilation works but takes minutes for the real models and
measured slower than eager + the fused model on the build machine (see FACTS.md); `auto` does not
choose it there.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from . import BackendUnavailable, BuildSpec, Runner
from .eager import input_adapter, precision_unavailable, prepare


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def unavailable(precision: str, device: torch.device, input_size) -> str | None:
    if input_size is None:
        return "backend='compile' compiles for a fixed shape: pass input_size=(h, w)"
    if device.type == "cuda" and not _has_triton():
        return "backend='compile' on CUDA needs triton"
    return precision_unavailable(precision, device)


def build(model: nn.Module, spec: BuildSpec) -> Runner:
    if spec.input_size is None:
        raise BackendUnavailable("compiles for a fixed input size: pass input_size=(h, w)")
    cuda = spec.device.type == "cuda"
    if cuda and not _has_triton():
        raise BackendUnavailable("needs triton on CUDA (it ships with CUDA builds of torch)")
    mode = spec.compile_mode or ("reduce-overhead" if cuda else "default")
    # One graph per batch size: recompiles must not hit dynamo's limit and fall back to eager.
    dynamo_config = torch._dynamo.config
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, len(spec.batch_sizes) + 4)
    prepared = prepare(model, spec)
    compiled = torch.compile(prepared, mode=mode, fullgraph=True, dynamic=False)
    adapt = input_adapter(spec)
    cuda_graphs = cuda and mode in ("reduce-overhead", "max-autotune")

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        if cuda_graphs:  # outputs of the previous replay may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        out = compiled(adapt(x))
        return out.clone() if cuda_graphs else out

    return Runner(run=run, fixed_batch=True, notes={"mode": mode})
