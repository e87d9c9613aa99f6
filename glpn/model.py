"""GLPN models: a tensors-only depth network and the transformers-shaped classes on top of it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .checkpoint import load_pretrained, save_pretrained
from .config import GLPNConfig
from .decoder import Decoder, DepthHead
from .mit import MixTransformer


@dataclass
class BaseModelOutput:
    last_hidden_state: torch.Tensor  # (B, C, H/32, W/32) deepest feature map
    hidden_states: tuple[torch.Tensor, ...] | None = None  # every stage's (B, C_i, H_i, W_i)
    attentions: None = None  # not computed (fused attention); kept for API compatibility


@dataclass
class DepthEstimatorOutput:
    predicted_depth: torch.Tensor  # (B, H, W) metres
    loss: torch.Tensor | None = None  # scale-invariant log loss when labels are given
    hidden_states: tuple[torch.Tensor, ...] | None = None  # encoder feature maps when asked for
    attentions: None = None  # not computed; kept for API compatibility


class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` in the Hugging Face directory format."""

    config: GLPNConfig

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        config: GLPNConfig | None = None,
        map_location: str | torch.device = "cpu",
        **config_overrides,
    ):
        return load_pretrained(
            cls, path, config=config, map_location=map_location, **config_overrides
        )

    def save_pretrained(self, path: str | os.PathLike, *, safe_serialization: bool = True) -> None:
        save_pretrained(self, path, safe_serialization=safe_serialization)


class GLPNModel(PretrainedMixin, nn.Module):
    """The Mix Transformer encoder alone; returns every stage's feature map."""

    checkpoint_prefix = "glpn."  # where these weights sit inside a depth checkpoint

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MixTransformer(config)

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **_
    ) -> BaseModelOutput:
        features = self.encoder(pixel_values)
        return BaseModelOutput(
            last_hidden_state=features[-1],
            hidden_states=tuple(features) if output_hidden_states else None,
        )


class GLPNDepth(PretrainedMixin, nn.Module):
    """Encoder + decoder + head, tensors only: (B, 3, H, W) in [0, 1] -> (B, H, W) metres.

    This is what torch.compile, torch.export, ONNX and TensorRT see. With `flip_tta` the prediction
    is the mean of the image's and its mirror's (flipped back), computed as one batch of 2B.
    """

    checkpoint_prefix = ""

    def __init__(self, config: GLPNConfig, *, flip_tta: bool = False) -> None:
        super().__init__()
        self.config = config
        self.glpn = GLPNModel(config)
        self.decoder = Decoder(config)
        self.head = DepthHead(config)
        self.flip_tta = flip_tta

    def _depth_and_features(self, pixel_values: torch.Tensor):
        features = self.glpn.encoder(pixel_values)
        return self.head(self.decoder(features)), features

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.flip_tta:
            return self._depth_and_features(pixel_values)[0]
        return flip_averaged(lambda x: self._depth_and_features(x)[0], pixel_values)


def flip_averaged(
    depth: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor
) -> torch.Tensor:
    """Flip TTA: the mean of the images' depth and their mirrors' (flipped back), as one batch of
    2B. GLPNDepth and fused.InferenceGLPN both use it."""
    B = pixel_values.shape[0]
    both = torch.cat((pixel_values, pixel_values.flip(-1)), dim=0)  # (2B, 3, H, W)
    d = depth(both)  # (2B, H, W)
    return 0.5 * (d[:B] + d[B:].flip(-1))


class SiLogLoss(nn.Module):
    """Scale-invariant log loss (Eigen et al. 2014) over pixels with a positive target."""

    def __init__(self, lambd: float = 0.5) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target > 0
        d = torch.log(target[valid]) - torch.log(pred[valid])
        return torch.sqrt(d.pow(2).mean() - self.lambd * d.mean().pow(2))


class GLPNForDepthEstimation(GLPNDepth):
    """transformers-compatible interface: `model(pixel_values).predicted_depth`, `labels=` adds
    `.loss`."""

    def forward(  # type: ignore[override]
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **_,
    ) -> DepthEstimatorOutput | tuple:
        if output_hidden_states and not self.flip_tta:
            depth, features = self._depth_and_features(pixel_values)
            hidden = tuple(features)
        else:
            depth, hidden = super().forward(pixel_values), None
        loss = SiLogLoss()(depth, labels) if labels is not None else None
        if return_dict is False:
            return tuple(v for v in (loss, depth, hidden) if v is not None)
        return DepthEstimatorOutput(predicted_depth=depth, loss=loss, hidden_states=hidden)

    def depth(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tensors-only prediction (same as GLPNDepth.forward)."""
        return GLPNDepth.forward(self, pixel_values)
