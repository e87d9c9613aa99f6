"""Reduced-precision copies of a model, with chosen layers kept in float32.

MiT/SegFormer encoders can lose accuracy in fp16 through LayerNorm statistics and attention
logits (TensorRT runs reductions in the layer's precision). `cast_model(m, torch.float16,
keep_fp32=("layer_norm",))` converts every weight to fp16 except those layers, which receive
float32 inputs and return the model's dtype: explicit casts that torch.export, ONNX and TensorRT's
strongly typed mode all honour.

A model may also carry its own islands (glpn.fused.InferenceGLPN keeps the depth head's last
convolution, sigmoid and scale in float32, whose output must not be rounded to bf16/fp16 steps):
`cast_model` leaves every Float32Island's weights in float32, never rounding them through `dtype`.
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
    """Runs the wrapped module in float32 inside a reduced-precision model.

    Returns the input's dtype, or float32 with `float32_output=True` (a model's final output).
    """

    def __init__(self, module: nn.Module, *, float32_output: bool = False) -> None:
        super().__init__()
        self.module = module.float()
        self.float32_output = float32_output

    def forward(self, x: torch.Tensor, *args):
        y = self.module(x.float(), *args)
        return y if self.float32_output else y.to(x.dtype)


def check_keep_fp32(keep_fp32: tuple[str, ...]) -> None:
    unknown = [k for k in keep_fp32 if k not in FP32_LAYERS]
    if unknown:
        raise ValueError(f"keep_fp32 has unknown layers {unknown}; valid: {sorted(FP32_LAYERS)}")


def cast_model(model: nn.Module, dtype: torch.dtype, keep_fp32: tuple[str, ...] = ()) -> nn.Module:
    """Convert `model` in place to `dtype`, except the layer kinds named in keep_fp32 and the
    model's own Float32Islands."""
    check_keep_fp32(keep_fp32)
    if dtype != torch.float32 and keep_fp32:
        # Wrapped before the cast, so their weights are never rounded to `dtype` and back.
        _wrap(model, tuple(t for k in keep_fp32 for t in FP32_LAYERS[k]))
    _cast_outside_islands(model, dtype)
    return model


def _cast_outside_islands(module: nn.Module, dtype: torch.dtype) -> None:
    """module.to(dtype) for every floating parameter and buffer not inside a Float32Island."""
    if isinstance(module, Float32Island):
        return
    for p in module.parameters(recurse=False):
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    for name, b in module.named_buffers(recurse=False):
        if b is not None and b.is_floating_point():
            module._buffers[name] = b.to(dtype)
    for child in module.children():
        _cast_outside_islands(child, dtype)


def _wrap(module: nn.Module, types: tuple[type[nn.Module], ...]) -> None:
    for name, child in module.named_children():
        if isinstance(child, types):
            setattr(module, name, Float32Island(child))
        elif not isinstance(child, Float32Island):  # already float32 throughout
            _wrap(child, types)
