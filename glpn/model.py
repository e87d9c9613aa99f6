"""GLPN models: a tensors-only depth network and the transformers-shaped classes on top of it."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from .checkpoint import load_pretrained, save_pretrained
from .config import GLPNConfig
from .decoder import Decoder, DepthHead
from .mit import MixTransformer
from .outputs import BaseModelOutput, DepthEstimatorOutput

# transformers' PretrainedConfig defaults, used while a config does not carry these fields.
_OUTPUT_FLAG_DEFAULTS = {
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict": True,
}


def _output_flag(config: GLPNConfig, name: str, value: bool | None) -> bool:
    """The forward's argument when given, else the config's (transformers' rule)."""
    if value is not None:
        return bool(value)
    return bool(getattr(config, name, _OUTPUT_FLAG_DEFAULTS[name]))


class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` in the Hugging Face directory format."""

    config: GLPNConfig

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        *,
        config: GLPNConfig | str | os.PathLike | None = None,
        map_location: str | torch.device = "cpu",
        **kwargs: object,
    ):
        """transformers' keywords (dtype, state_dict, output_loading_info, hub options, config
        overrides): see checkpoint.load_pretrained."""
        return load_pretrained(
            cls, pretrained_model_name_or_path, config=config, map_location=map_location, **kwargs
        )

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, safe_serialization: bool = True
    ) -> None:
        save_pretrained(self, save_directory, safe_serialization=safe_serialization)


class GLPNPreTrainedModel(PretrainedMixin, nn.Module):
    """The attributes transformers' PreTrainedModel gives every GLPN class (v5.24 names)."""

    config_class = GLPNConfig
    base_model_prefix = "glpn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @property
    def device(self) -> torch.device:
        """The first parameter's device (all are on one)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The first floating-point parameter's dtype."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameter count; GLPN has no embedding tables, so exclude_embeddings changes nothing."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    @classmethod
    def can_generate(cls) -> bool:
        return False


class GLPNModel(GLPNPreTrainedModel):
    """The Mix Transformer encoder alone; returns every stage's feature map."""

    checkpoint_prefix = "glpn."  # where these weights sit inside a depth checkpoint

    def __init__(self, config: GLPNConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = MixTransformer(config)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **_,
    ) -> BaseModelOutput | tuple:
        attentions: list[torch.Tensor] | None = (
            [] if _output_flag(self.config, "output_attentions", output_attentions) else None
        )
        features = self.encoder(pixel_values, attentions)
        hidden = _output_flag(self.config, "output_hidden_states", output_hidden_states)
        out = BaseModelOutput(
            last_hidden_state=features[-1],
            hidden_states=tuple(features) if hidden else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )
        return out if _output_flag(self.config, "return_dict", return_dict) else out.to_tuple()


class GLPNDepth(GLPNPreTrainedModel):
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

    def _depth_and_features(
        self, pixel_values: torch.Tensor, attentions: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.glpn.encoder(pixel_values, attentions)
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
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **_,
    ) -> DepthEstimatorOutput | tuple:
        want_attentions = _output_flag(self.config, "output_attentions", output_attentions)
        want_hidden = _output_flag(self.config, "output_hidden_states", output_hidden_states)
        attentions: list[torch.Tensor] | None = [] if want_attentions else None
        if not self.flip_tta:
            depth, features = self._depth_and_features(pixel_values, attentions)
        elif want_attentions or want_hidden:
            raise ValueError(
                "flip_tta averages two passes (the image and its mirror), so no single set of "
                "hidden states or attentions produced the depth: set flip_tta=False to get them"
            )
        else:
            depth, features = super().forward(pixel_values), []
        out = DepthEstimatorOutput(
            loss=SiLogLoss()(depth, labels) if labels is not None else None,
            predicted_depth=depth,
            hidden_states=tuple(features) if want_hidden else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )
        return out if _output_flag(self.config, "return_dict", return_dict) else out.to_tuple()

    def depth(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tensors-only prediction (same as GLPNDepth.forward)."""
        return GLPNDepth.forward(self, pixel_values)
