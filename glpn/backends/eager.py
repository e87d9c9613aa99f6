"""Plain PyTorch: fp32, bf16 or fp16 weights, channels_last activations, no compilation."""

from __future__ import annotations

import torch
from torch import nn

from ..precision import DTYPES, cast_model
from . import BuildSpec, Runner


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
