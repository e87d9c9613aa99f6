"""GLPN configuration: the fields of transformers' GLPNConfig, validated, with the published
presets."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from .fileio import atomic_write
from .hub import CONFIG_NAME, resolve_checkpoint_dir

# Fields that are per encoder stage and must have num_encoder_blocks entries.
_PER_STAGE = (
    "depths",
    "sr_ratios",
    "hidden_sizes",
    "patch_sizes",
    "strides",
    "num_attention_heads",
    "mlp_ratios",
)
_ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh", "tanh", "sigmoid")
# Keys transformers writes into config.json that carry no model information.
_HF_BOOKKEEPING = {
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tie_word_embeddings",
    "use_return_dict",
    "_attn_implementation_autoset",
}


class ConfigError(ValueError):
    """A config value is unknown or inconsistent; the message names the field."""


@dataclass(frozen=True)
class GLPNConfig:
    num_channels: int = 3  # input image channels (RGB)
    num_encoder_blocks: int = 4  # stages of the Mix Transformer encoder
    depths: tuple[int, ...] = (2, 2, 2, 2)  # transformer layers per stage
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # sequence reduction ratio of attention per stage
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)  # channels per stage
    patch_sizes: tuple[int, ...] = (
        7,
        3,
        3,
        3,
    )  # kernel of the overlapping patch embedding per stage
    strides: tuple[int, ...] = (4, 2, 2, 2)  # stride of the overlapping patch embedding per stage
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)  # attention heads per stage
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)  # Mix-FFN hidden size / stage channels
    hidden_act: str = "gelu"  # activation inside Mix-FFN
    hidden_dropout_prob: float = 0.0  # dropout after FFN / attention projections (training only)
    attention_probs_dropout_prob: float = 0.0  # dropout on attention weights (training only)
    initializer_range: float = 0.02  # std of the truncated-normal init of linear layers
    drop_path_rate: float = (
        0.1  # stochastic depth, linearly increasing over all layers (training only)
    )
    layer_norm_eps: float = (
        1e-6  # kept for file compatibility; see mit.LAYER_NORM_EPS for the value used
    )
    decoder_hidden_size: int = 64  # channels of every decoder stage and of the head
    max_depth: float = 10.0  # metres; the head outputs sigmoid(x) * max_depth
    head_in_index: int = -1  # which decoder output feeds the head (-1 = full resolution)
    extra: dict = field(
        default_factory=dict, compare=False
    )  # unknown keys of config.json, kept verbatim

    def __post_init__(self) -> None:
        for name in _PER_STAGE:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        n = self.num_encoder_blocks
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"num_encoder_blocks must be a positive integer, got {n!r}")
        for name in _PER_STAGE:
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise ConfigError(f"{name} must be a list of integers, got {value!r}")
            if len(value) != n:
                raise ConfigError(
                    f"{name} has {len(value)} entries but num_encoder_blocks is {n}: {list(value)}"
                )
            if any(v < 1 for v in value):
                raise ConfigError(f"{name} entries must be >= 1, got {list(value)}")
        for i, (h, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if h % heads:
                raise ConfigError(
                    f"hidden_sizes[{i}]={h} is not divisible by num_attention_heads[{i}]={heads}"
                )
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {list(_ACTIVATIONS)}")
        if self.decoder_hidden_size < 2 or self.decoder_hidden_size % 2:
            raise ConfigError(
                f"decoder_hidden_size must be an even integer >= 2, got {self.decoder_hidden_size}"
            )
        if not self.max_depth > 0:
            raise ConfigError(f"max_depth must be > 0 metres, got {self.max_depth}")
        if not -n <= self.head_in_index < n:
            raise ConfigError(f"head_in_index must be in [{-n}, {n - 1}], got {self.head_in_index}")
        if self.num_channels < 1:
            raise ConfigError(f"num_channels must be >= 1, got {self.num_channels}")

    # ---- presets -----------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides) -> GLPNConfig:
        """`default` (transformers' default, small), `kitti` (MiT-b4, 80 m), `nyu` (b4, 10 m);
        `tiny` (no published weights) for tests and benchmarks."""
        if name not in PRESETS:
            published = sorted(k for k in PRESETS if k not in _UNPUBLISHED)
            raise ConfigError(
                f"unknown preset {name!r}; valid presets: {published}, "
                f"or {', '.join(map(repr, sorted(_UNPUBLISHED)))} (tests and benchmarks)"
            )
        return dataclasses.replace(PRESETS[name], **overrides)

    # ---- config.json ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict) -> GLPNConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs, extra = {}, {}
        for key, value in data.items():
            if key in known:
                kwargs[key] = value
            elif key in _HF_BOOKKEEPING:
                continue
            else:
                extra[key] = value
        if data.get("model_type", "glpn") != "glpn":
            raise ConfigError(f"model_type is {data['model_type']!r}, expected 'glpn'")
        try:
            return cls(**kwargs, extra=extra)
        except TypeError as e:  # e.g. a string where a number is expected
            raise ConfigError(str(e)) from None

    def to_dict(self) -> dict:
        data = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"
        }
        for name in _PER_STAGE:
            data[name] = list(data[name])
        if float(self.max_depth).is_integer():
            data["max_depth"] = int(self.max_depth)  # transformers' strict config wants an int
        data.update(self.extra)
        data["model_type"] = "glpn"
        data["architectures"] = ["GLPNForDepthEstimation"]
        return data

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GLPNConfig:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> GLPNConfig:
        return cls.from_json_file(os.path.join(resolve_checkpoint_dir(path), CONFIG_NAME))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        os.makedirs(path, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        atomic_write(os.path.join(path, CONFIG_NAME), text.encode("utf-8"))


_B4 = dict(
    depths=(3, 8, 27, 3),
    hidden_sizes=(64, 128, 320, 512),
    num_attention_heads=(1, 2, 5, 8),
)
PRESETS: dict[str, GLPNConfig] = {
    "default": GLPNConfig(),
    "kitti": GLPNConfig(**_B4, max_depth=80.0),
    "nyu": GLPNConfig(**_B4, max_depth=10.0),
    # Small enough for fast CPU tests, with every structural feature of the real model: four
    # stages, sequence reduction, several heads, a decoder stage whose input width equals the
    # decoder width (64 -> 16 is a 1x1 conv, 16 -> 16 is not).
    "tiny": GLPNConfig(
        depths=(1, 1, 2, 1),
        hidden_sizes=(16, 32, 48, 64),
        num_attention_heads=(1, 2, 3, 4),
        decoder_hidden_size=16,
        max_depth=10.0,
    ),
}
_UNPUBLISHED = {"tiny"}  # presets without published weights
