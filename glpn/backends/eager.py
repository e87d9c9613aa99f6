"""Plain PyTorch: fp32, bf16 or fp16 weights, channels_last activations, no compilation."""

from __future__ import annotations

import torch
from torch import nn

from .. import hardware
from ..precision import DTYPES, cast_model
from . import BuildSpec, Runner


def precision_unavailable(precision: str, device: torch.device) -> str | None:
    """Why PyTorch kernels cannot run `precision` fast on `device`, or None: emulated fp16 / bf16
    on a CPU are many times slower than fp32, so they are refused rather than run."""
    if device.type == "cpu":
        cpu = hardware.cpu_features()  # looked up at call time: tests make it another CPU
        if precision == "fp16" and not cpu.native_fp16:
            return (
                f"precision='fp16' on CPU needs AVX512-FP16 or AMX-FP16, which {cpu.name} lacks "
                "(torch would emulate it, slower than fp32); use precision='fp32'"
            )
        if precision == "bf16" and not cpu.native_bf16:
            return (
                f"precision='bf16' on CPU needs AVX512-BF16 or AMX, which {cpu.name} lacks "
                "(torch would emulate it, many times slower than fp32); use precision='fp32'"
            )
    elif precision == "bf16" and not torch.cuda.is_bf16_supported():
        gpu = hardware.gpu_description(device)
        return f"precision='bf16' needs an Ampere or newer GPU, not {gpu}"
    return None


def unavailable(precision: str, device: torch.device, input_size) -> str | None:
    return precision_unavailable(precision, device)


def prepare(model: nn.Module, spec: BuildSpec) -> nn.Module:
    """The model as every PyTorch-based backend runs it: cast, on the device, channels_last."""
    model = cast_model(model, DTYPES[spec.precision], spec.keep_fp32).to(spec.device).eval()
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def input_adapter(spec: BuildSpec):
    """float32 input -> the dtype and memory layout the prepared model expects."""
    dtype = DTYPES[spec.precision]
    layout = torch.channels_last if spec.channels_last else torch.contiguous_format

    def adapt(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype).contiguous(memory_format=layout)

    return adapt


def build(model: nn.Module, spec: BuildSpec) -> Runner:
    prepared = prepare(model, spec)
    adapt = input_adapter(spec)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return prepared(adapt(x))

    return Runner(run=run, fixed_batch=False)
