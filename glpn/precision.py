"""Reduced-precision copies of a model, with chosen layers kept in float32.

MiT/SegFormer encoders can lose accuracy in fp16 through LayerNorm statistics and attention
logits (TensorRT runs reductions in the layer's precision). `cast_model(m, torch.float16,
keep_fp32=("layer_norm",))` converts every weight to fp16 except those layers, which receive
float32 inputs and return the model's dtype: explicit casts that torch.export, ONNX and TensorRT's
strongly typed mode all honour.
"""

from __future__ import annotations

import torch
from torch import nn

from .mit import EfficientSelfAttention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Names accepted in keep_fp32, and the layer types they keep in float32.
FP32_LAYERS: dict[str, tuple[type[nn.Module], ...]] = {
    "layer_norm": (nn.LayerNorm,),
    "attention": (EfficientSelfAttention,),  # projections, reduction conv, softmax(QK^T)V
}


class Float32Island(nn.Module):
    """Runs the wrapped module in float32 inside a reduced-precision model."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.float()

    def forward(self, x: torch.Tensor, *args):
        return self.module(x.float(), *args).to(x.dtype)


def check_keep_fp32(keep_fp32: tuple[str, ...]) -> None:
    unknown = [k for k in keep_fp32 if k not in FP32_LAYERS]
    if unknown:
        raise ValueError(f"keep_fp32 has unknown layers {unknown}; valid: {sorted(FP32_LAYERS)}")


def cast_model(model: nn.Module, dtype: torch.dtype, keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """Convert `model` in place to `dtype`, except the layer kinds named in keep_fp32."""
    check_keep_fp32(keep_fp32)
    model = model.to(dtype)
    if dtype == torch.float32 or not keep_fp32:
        return model
    types = tuple(t for k in keep_fp32 for t in FP32_LAYERS[k])
    _wrap(model, types)
    return model


def _wrap(module: nn.Module, types: tuple[type[nn.Module], ...]) -> None:
    for name, child in module.named_children():
        if isinstance(child, types):
            setattr(module, name, Float32Island(child))
        else:
            _wrap(child, types)
