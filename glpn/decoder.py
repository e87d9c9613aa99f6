"""GLPN decoder (Kim et al. 2022, sec. 3.3-3.4): Selective Feature Fusion stages, depth head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import GLPNConfig

# x2 bilinear steps between the last decoder stage's fused map (H/4, W/4) and the full-resolution
# last decoder output: the stage's own x2 and the decoder's final x2. glpn/fused.py folds them into
# the head's first convolution.
HEAD_UPSAMPLINGS = 2


def upsample_x2(x: torch.Tensor, steps: int = HEAD_UPSAMPLINGS) -> torch.Tensor:
    """The decoder's final upsampling: the last stage's x2 (by size) then x2 (by scale factor)."""
    for i in range(steps):
        if i == 0:
            h, w = x.shape[-2:]
            x = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    return x


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    # Indices 0 (conv) and 1 (BatchNorm) are the checkpoint's key names.
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
    )


class SelectiveFeatureFusion(nn.Module):
    """Predicts a two-channel attention map from [local, global] and blends the two with it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.convolutional_layer1 = _conv_bn_relu(2 * channels, channels)
        self.convolutional_layer2 = _conv_bn_relu(channels, channels // 2)
        self.convolutional_layer3 = nn.Conv2d(channels // 2, 2, kernel_size=3, padding=1)

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        a = torch.cat((local, global_), dim=1)  # (B, 2C, H, W)
        a = self.convolutional_layer3(self.convolutional_layer2(self.convolutional_layer1(a)))
        a = torch.sigmoid(a)  # (B, 2, H, W)
        return local * a[:, 0:1] + global_ * a[:, 1:2]


class DecoderStage(nn.Module):
    """1x1 conv to the decoder width, fused with the coarser stage's output (Decoder upsamples)."""

    def __init__(self, in_channels: int, out_channels: int, *, fuse: bool) -> None:
        super().__init__()
        self.convolution = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.fusion = SelectiveFeatureFusion(out_channels) if fuse else None

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None) -> torch.Tensor:
        x = self.convolution(x)
        if self.fusion is not None and coarser is not None:
            x = self.fusion(x, coarser)
        return x


class Decoder(nn.Module):
    """Runs the stages coarse to fine; returns every stage output, the last at the input's size."""

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__()
        width = config.decoder_hidden_size
        self.stages = nn.ModuleList(
            DecoderStage(h, width, fuse=i > 0) for i, h in enumerate(reversed(config.hidden_sizes))
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = self.stage_outputs(features)
        outputs[-1] = upsample_x2(outputs[-1])  # (B, C, H, W)
        return outputs

    def stage_outputs(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every stage's output, coarse to fine, each upsampled to the next stage's size except
        the last: (B, C, H/4, W/4), before the HEAD_UPSAMPLINGS x2 steps that forward() adds and
        that glpn/fused.py folds into the head instead."""
        features = features[::-1]  # deepest first
        outputs = []
        x = None
        for i, (feat, stage) in enumerate(zip(features, self.stages)):
            x = stage(feat, x)
            if i + 1 < len(features):
                # Upsampling to the next stage's size equals x2 for inputs the reference accepts,
                # and also makes any input size work; shapes are static, so export and compile
                # still see one graph.
                size = tuple(features[i + 1].shape[-2:])
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            outputs.append(x)
        return outputs


class DepthHead(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 -> sigmoid, scaled to metres."""

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__()
        c = config.decoder_hidden_size
        self.head = nn.Sequential(
            nn.Conv2d(c, c, kernel_size=3, padding=1), nn.ReLU(), nn.Conv2d(c, 1, 3, padding=1)
        )
        # The model's config, read at each call as transformers does: `config.max_depth = 20`
        # after building rescales the output (the fused engine copies it when it is built).
        self.config = config
        self.head_in_index = config.head_in_index

    def forward(self, decoder_outputs: list[torch.Tensor]) -> torch.Tensor:
        x = self.head(decoder_outputs[self.head_in_index])  # (B, 1, H, W)
        return (torch.sigmoid(x) * float(self.config.max_depth)).squeeze(1)  # (B, H, W) metres
