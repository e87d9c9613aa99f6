"""Inference-only rewrites of a GLPN model that keep its numbers (to float rounding).

1. BatchNorm folded into the convolution before it (the decoder's Selective Feature Fusion).
2. The head's first convolution folded through the decoder's last two x2 bilinear upsamplings.
   The reference upsamples the (B, 64, H/4, W/4) decoder output to full resolution and then runs a
   3x3 64->64 convolution there: ~60% of the small model's FLOPs. Both steps are linear, so each of
   the 16 output phases (row and column mod 4) is a fixed mix of the 9 per-tap projections
   `W[:, :, ky, kx] @ x` of the low-resolution map over its 3x3 neighbourhood.
   `PolyphaseUpsampleConv` computes it as a 1x1 convolution (64 -> 9*64) plus a grouped 3x3
   convolution (9 -> 16 per output channel) at 1/4 resolution and a pixel shuffle: ~4.6 instead of
   22.6 GFLOP at 480x640, and the full-resolution input of that convolution is never built.
3. The head's last convolution (64 -> 1 at full resolution) as a 1x1 convolution to its 9 tap maps
   and 9 shifted adds (`TapSumConv`): the direct form runs far below GEMM speed on CPU.

The depth itself is never reduced precision: the head's last convolution, the sigmoid and the
scale to metres (`DepthOutput`) are a float32 island (glpn.precision) in every precision and
backend. A bf16 output has 8 significant bits: at 40-80 m that is 0.25-0.5 m steps, banding that
the mean relative error hides. The island costs one cast of the (B, 64, H, W) map to float32.

`InferenceGLPN` is what every engine backend runs (eager, torch.compile, ONNX, TensorRT); the
weights it derives are not a checkpoint format. tests/test_engine_fused.py checks it against
`GLPNDepth` for several sizes, including ones that are not multiples of 32.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .decoder import HEAD_UPSAMPLINGS, upsample_x2
from .model import GLPNDepth, flip_averaged
from .precision import Float32Island


def _upsample_taps(steps: int) -> torch.Tensor:
    """taps[m + 1, d + 1]: weight of input sample i + d in output sample s*i + m (s = 2**steps).

    Measured by upsampling impulses with the decoder's own interpolation (float64), away from the
    borders, for m in [-1, s] (the 3x3 convolution reaches one output sample beyond each phase).
    """
    s, n, i0 = 2**steps, 16, 8
    taps = torch.zeros(s + 2, 3, dtype=torch.float64)
    for d in (-1, 0, 1):
        x = torch.zeros(1, 1, 1, n, dtype=torch.float64)
        x[..., i0 + d] = 1.0
        u = x
        for _ in range(steps):  # 1-D: height stays 1
            u = F.interpolate(u, size=(1, 2 * u.shape[-1]), mode="bilinear", align_corners=False)
        u = u[0, 0, 0]
        taps[:, d + 1] = u[s * i0 - 1 : s * i0 + s + 1]
        # Bilinear x2 only reaches one input sample either side, so nothing may fall outside d in
        # {-1, 0, 1}; check rather than assume.
        reach = u.nonzero().flatten()
        if reach.min() < s * (i0 + d) - s or reach.max() >= s * (i0 + d) + 2 * s:
            raise AssertionError("bilinear x2 reaches further than the polyphase form assumes")
    return taps


class PolyphaseUpsampleConv(nn.Module):
    """conv3x3(upsample_x2^steps(x)) with zero padding, computed at the input's resolution.

    (B, C, h, w) -> (B, Co, s*h, s*w). The interior is a 1x1 conv (C -> 9*Co), a grouped 3x3 conv
    (per output channel: 9 taps -> s*s phases) on the replicate-padded map, and a pixel shuffle.
    Replicate padding reproduces the interpolation's edge clamping, but the reference convolution
    sees zeros beyond the full-resolution border, so the outermost output rows and columns are
    recomputed exactly from thin strips of the input.
    """

    def __init__(self, conv: nn.Conv2d, steps: int = HEAD_UPSAMPLINGS) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
            raise ValueError("PolyphaseUpsampleConv needs a 3x3, stride 1, padding 1 convolution")
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise ValueError("PolyphaseUpsampleConv needs an ungrouped, undilated convolution")
        self.steps = steps
        self.scale = s = 2**steps
        weight = conv.weight.detach().double()  # (Co, C, 3, 3)
        co, c = weight.shape[:2]
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(co).double()
        # z[(o, k)] = W[o, :, ky, kx] @ x, k = 3 * ky + kx: the per-tap projections.
        self.mix = nn.Conv2d(c, 9 * co, kernel_size=1, bias=False)
        self.mix.weight.data = weight.permute(0, 2, 3, 1).reshape(9 * co, c, 1, 1).float()
        # Phase (ry, rx) of output channel o gathers z[(o, k)] over the 3x3 input neighbourhood with
        # weight taps[ry + ky, dy] * taps[rx + kx, dx] (output offset m = r + k - 1).
        taps = _upsample_taps(steps)
        g = torch.empty(s, s, 3, 3, 3, 3, dtype=torch.float64)  # (ry, rx, ky, kx, dy, dx)
        for ry in range(s):
            for rx in range(s):
                for ky in range(3):
                    for kx in range(3):
                        g[ry, rx, ky, kx] = torch.outer(taps[ry + ky], taps[rx + kx])
        g = g.reshape(s * s, 9, 3, 3).repeat(co, 1, 1, 1)  # (Co * s^2, 9, 3, 3)
        self.phases = nn.Conv2d(9 * co, s * s * co, kernel_size=3, groups=co, bias=True)
        self.phases.weight.data = g.float()
        self.phases.bias.data = bias.repeat_interleave(s * s).float()
        # The original convolution, for the exact border rows and columns.
        self.edge = nn.Conv2d(c, co, kernel_size=3, padding=0, bias=True)
        self.edge.weight.data = weight.float()
        self.edge.bias.data = bias.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
        if x.is_contiguous(memory_format=torch.channels_last):  # pad returns NCHW; keep the layout
            xp = xp.contiguous(memory_format=torch.channels_last)
        z = self.mix(xp)  # (B, 9 Co, h + 2, w + 2)
        y = F.pixel_shuffle(self.phases(z), self.scale)  # (B, Co, s h, s w)
        top, bottom, left, right = self._edges(x)
        if _graph_capture():
            # Out-of-place assembly: export formats and graph compilers prefer it to slice writes.
            middle = torch.cat((left[:, :, 1:-1], y[:, :, 1:-1, 1:-1], right[:, :, 1:-1]), dim=3)
            return torch.cat((top, middle, bottom), dim=2)
        y[:, :, :1] = top
        y[:, :, -1:] = bottom
        y[:, :, :, :1] = left
        y[:, :, :, -1:] = right
        return y

    def _edges(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Exact outermost output rows (B, Co, 1, W) and columns (B, Co, H, 1).

        The first two upsampled rows depend only on the first three input rows (likewise for the
        other sides), so upsampling a 3-row strip reproduces them exactly.
        """
        up = upsample_x2
        n = self.steps
        top = up(x[:, :, :3], n)[:, :, :2]
        bottom = up(x[:, :, -3:], n)[:, :, -2:]
        left = up(x[:, :, :, :3], n)[:, :, :, :2]
        right = up(x[:, :, :, -3:], n)[:, :, :, -2:]
        conv = self.edge
        return (
            conv(F.pad(top, (1, 1, 1, 0))),
            conv(F.pad(bottom, (1, 1, 0, 1))),
            conv(F.pad(left, (1, 0, 1, 1))),
            conv(F.pad(right, (0, 1, 1, 1))),
        )


class TapSumConv(nn.Module):
    """A 3x3 convolution (padding 1) with few output channels, as one 1x1 convolution to the 9 tap
    maps followed by 9 shifted adds: on CPU the direct form runs far below GEMM speed when the
    output has 1 channel (the depth head's last layer, at full resolution)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1):
            raise ValueError("TapSumConv needs a 3x3, stride 1, padding 1 convolution")
        co, c = conv.weight.shape[:2]
        self.out_channels = co
        self.taps = nn.Conv2d(c, 9 * co, kernel_size=1, bias=False)  # channel k * Co + o
        self.taps.weight.data = conv.weight.detach().permute(2, 3, 0, 1).reshape(9 * co, c, 1, 1)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(co)
        self.bias = nn.Parameter(bias.clone().view(1, co, 1, 1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        co = self.out_channels
        t = F.pad(self.taps(x), (1, 1, 1, 1))  # (B, 9 Co, H + 2, W + 2), zero border
        out = self.bias
        for k in range(9):
            ky, kx = divmod(k, 3)
            out = out + t[:, k * co : (k + 1) * co, ky : ky + H, kx : kx + W]
        return out


class DepthOutput(nn.Module):
    """(B, C, H, W) -> (B, H, W) metres: sigmoid(conv(x)) * max_depth, the head's last steps."""

    def __init__(self, conv: nn.Module, max_depth: float) -> None:
        super().__init__()
        self.conv = conv  # C -> 1, 3x3 (nn.Conv2d or its TapSumConv form)
        self.max_depth = float(max_depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.conv(x)) * self.max_depth).squeeze(1)


def _graph_capture() -> bool:
    """True while torch.jit tracing, ONNX export, torch.compile or torch.export capture a graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def fold_batchnorms_(module: nn.Module) -> nn.Module:
    """Replace every (Conv2d, BatchNorm2d) pair inside an nn.Sequential by the folded Conv2d."""
    for seq in module.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i + 1] = nn.Identity()
    return module


class InferenceGLPN(nn.Module):
    """GLPNDepth for inference: (B, 3, H, W) in [0, 1] -> (B, H, W) metres; same numbers, less work.

    Built from a copy; the model passed in is not modified. `flip_tta` follows the source model.
    """

    def __init__(
        self, model: GLPNDepth, *, fold_batchnorm: bool = True, fold_upsampling: bool = True
    ) -> None:
        super().__init__()
        model = copy.deepcopy(model).eval()
        if fold_batchnorm:
            fold_batchnorms_(model)
        self.config = model.config
        self.flip_tta = bool(model.flip_tta)
        self.encoder = model.glpn.encoder
        self.decoder = model.decoder
        head = model.head.head  # Sequential(conv 3x3 C->C, ReLU, conv 3x3 C->1)
        n = self.config.num_encoder_blocks
        # Folding needs the head to read the last decoder output, which is exactly 2 x2 steps above
        # the last stage's fused map whatever the input size.
        self.folded = fold_upsampling and self.config.head_in_index in (-1, n - 1)
        self.head_in_index = self.config.head_in_index
        self.head_conv1 = PolyphaseUpsampleConv(head[0]) if self.folded else head[0]
        last = TapSumConv(head[2]) if self.folded else head[2]
        # float32 whatever the model is cast to (glpn.precision.cast_model): see the docstring.
        self.output = Float32Island(DepthOutput(last, self.config.max_depth), float32_output=True)
        self.max_depth = float(self.config.max_depth)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.flip_tta:
            return self._depth(pixel_values)
        return flip_averaged(self._depth, pixel_values)

    def _depth(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.encoder(pixel_values)
        if self.folded:
            # (B, C, H/4, W/4): the decoder's last map, before the two x2 upsamplings that the
            # folded convolution absorbs.
            x = self.decoder.stage_outputs(features)[-1]
        else:
            x = self.decoder(features)[self.head_in_index]  # (B, C, H, W)
        x = self.head_conv1(x).relu_()  # (B, C, H, W)
        return self.output(x)  # (B, H, W) float32 metres
