"""GLPN configuration: the fields of transformers' GLPNConfig plus those every transformers config
carries (PreTrainedConfig, v5.24), validated, with the published presets.

Not frozen (`config.max_depth = 20` works, as in transformers), but never invalid: an assignment
that would make the config inconsistent raises ConfigError naming the field and leaves the config
unchanged. Change linked fields together (the number of stages) with `config.update({...})`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar

import torch

from .config_fields import (
    ACTIVATIONS,
    ALIASES,
    HUB_OPTIONS,
    IGNORED_OPTIONS,
    PER_STAGE,
    PROBLEM_TYPES,
    ConfigError,
    check_types,
    normalized,
    plain,
)
from .fileio import atomic_write
from .hub import CONFIG_NAME, CheckpointError, resolve_checkpoint_dir

log = logging.getLogger(__name__)


@dataclass(init=False)
class GLPNConfig:
    model_type: ClassVar[str] = "glpn"

    num_channels: int = 3  # input image channels (RGB)
    num_encoder_blocks: int = 4  # stages of the Mix Transformer encoder
    depths: tuple[int, ...] = (2, 2, 2, 2)  # transformer layers per stage
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)  # sequence reduction ratio of attention per stage
    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)  # channels per stage
    patch_sizes: tuple[int, ...] = (7, 3, 3, 3)  # kernel of the overlapping patch embedding
    strides: tuple[int, ...] = (4, 2, 2, 2)  # stride of the overlapping patch embedding per stage
    num_attention_heads: tuple[int, ...] = (1, 2, 5, 8)  # attention heads per stage
    mlp_ratios: tuple[int, ...] = (4, 4, 4, 4)  # Mix-FFN hidden size / stage channels
    hidden_act: str = "gelu"  # activation inside Mix-FFN
    hidden_dropout_prob: float = 0.0  # dropout after FFN / attention projections (training only)
    attention_probs_dropout_prob: float = 0.0  # dropout on attention weights (training only)
    initializer_range: float = 0.02  # std of the truncated-normal init of linear layers
    drop_path_rate: float = 0.1  # stochastic depth, linear over all layers (training only)
    layer_norm_eps: float = 1e-6  # kept for file compatibility; see mit.LAYER_NORM_EPS
    decoder_hidden_size: int = 64  # channels of every decoder stage and of the head
    max_depth: float = 10.0  # metres; the head outputs sigmoid(x) * max_depth
    head_in_index: int = -1  # which decoder output feeds the head (-1 = full resolution)
    # ---- what every transformers config carries; the models read the three flags as defaults
    output_hidden_states: bool = False  # return every encoder stage's feature map
    output_attentions: bool = False  # return the attention maps
    return_dict: bool = True  # return an output object rather than a tuple
    id2label: dict | None = None  # unused by depth; defaults to 2 labels, as in transformers
    label2id: dict | None = None
    problem_type: str | None = None
    chunk_size_feed_forward: int = 0
    is_encoder_decoder: bool = False
    # ---- bookkeeping: where the config came from, not what the model is (not compared)
    dtype: torch.dtype | None = field(default=None, compare=False)  # dtype of the weights
    architectures: list[str] | None = field(default=None, compare=False)
    name_or_path: str = field(default="", compare=False)  # what from_pretrained was given
    transformers_version: str | None = field(default=None, compare=False)
    extra: dict = field(default_factory=dict, compare=False)  # unknown keys, kept verbatim

    def __init__(self, **kwargs: Any) -> None:
        """Any keyword a transformers config takes; unknown ones are kept (attributes and
        config.json), as transformers does."""
        object.__setattr__(self, "_ready", False)  # no validation until every field is set
        object.__setattr__(self, "extra", dict(kwargs.pop("extra", None) or {}))
        object.__setattr__(self, "_attn_implementation", None)
        model_type = kwargs.pop("model_type", self.model_type)
        if model_type != self.model_type:
            raise ConfigError(f"model_type is {model_type!r}, expected {self.model_type!r}")
        num_labels = kwargs.pop("num_labels", None)
        for f in dataclasses.fields(self):
            if f.name != "extra":
                setattr(
                    self, f.name, f.default if f.default is not MISSING else f.default_factory()
                )
        for key in IGNORED_OPTIONS:
            kwargs.pop(key, None)
        for key, value in kwargs.items():
            setattr(self, key, value)
        if self.id2label is None:
            self.num_labels = 2 if num_labels is None else num_labels
        elif num_labels is not None and num_labels != len(self.id2label):
            log.warning(
                "num_labels=%s does not match id2label (%d entries); id2label kept",
                num_labels,
                len(self.id2label),
            )
        self.validate()
        object.__setattr__(self, "_ready", True)

    # ---- attributes -------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        name = ALIASES.get(name, name)
        if name.startswith("_") or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)  # private state, or a property's setter
        elif name not in _FIELD_NAMES:
            self.extra[name] = value  # unknown keys are kept and written, as in transformers
        elif not self.__dict__.get("_ready"):
            object.__setattr__(self, name, normalized(name, value))
        else:
            old = self.__dict__[name]
            object.__setattr__(self, name, normalized(name, value))
            try:
                self.validate()
            except ConfigError:
                object.__setattr__(self, name, old)
                raise

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: unknown keys read back like attributes.
        extra = self.__dict__.get("extra")
        if extra is not None and not name.startswith("__") and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"num_labels must be an integer >= 0, got {n!r}")
        if self.id2label is None or len(self.id2label) != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return self.dtype  # transformers' older name

    @property
    def use_return_dict(self) -> bool:
        return self.return_dict  # transformers' older name

    def update(self, values: dict[str, Any]) -> None:
        """Set several attributes at once, validated together (all or nothing)."""
        before, extra = dict(self.__dict__), dict(self.extra)
        object.__setattr__(self, "_ready", False)
        try:
            for key, value in values.items():
                setattr(self, key, value)
            self.validate()
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            object.__setattr__(self, "extra", extra)
            raise
        object.__setattr__(self, "_ready", True)

    # ---- validation ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ConfigError naming the first inconsistent field."""
        check_types(self)
        n = self.num_encoder_blocks
        if n < 1:
            raise ConfigError(f"num_encoder_blocks must be a positive integer, got {n!r}")
        for name in PER_STAGE:
            value = getattr(self, name)
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
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not one of {list(ACTIVATIONS)}")
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
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type must be one of {list(PROBLEM_TYPES)}")

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

    # ---- dict and JSON, as transformers' PreTrainedConfig ----------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field, under transformers' keys (its `to_dict`)."""
        data = {f.name: plain(getattr(self, f.name)) for f in _FIELDS}
        data["_name_or_path"] = data.pop("name_or_path")
        if float(self.max_depth).is_integer():
            data["max_depth"] = int(self.max_depth)  # transformers' strict config wants an int
        data.update(self.extra)
        data["model_type"] = self.model_type
        return data

    def to_diff_dict(self) -> dict[str, Any]:
        """What config.json holds: the model's fields, and the common ones that differ from
        transformers' defaults (its `to_diff_dict`)."""
        defaults = _common_defaults()
        return {
            k: v
            for k, v in self.to_dict().items()
            if k != "_name_or_path" and (k not in defaults or v != defaults[k])
        }

    def to_json_string(self, use_diff: bool = True) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        atomic_write(os.fspath(json_file_path), self.to_json_string(use_diff).encode("utf-8"))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """A config from config.json's keys; `kwargs` override attributes, and those that are not
        attributes come back with `return_unused_kwargs=True` (transformers' `from_dict`)."""
        return apply_kwargs(cls(**config_dict), kwargs)

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike) -> GLPNConfig:
        try:
            with open(json_file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{json_file}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{json_file}: expected a JSON object")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{json_file}: {e}") from None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """From a checkpoint directory, a hub id or a config.json file. The hub options
        (`revision`, `cache_dir`, `token`, ...) are used only for a hub id; other keywords as in
        `from_dict`."""
        hub = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs}
        config = cls.from_json_file(config_file(pretrained_model_name_or_path, hub))
        return apply_kwargs(config, kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        if os.path.isfile(save_directory):
            raise ConfigError(f"{save_directory}: is a file, expected a directory")
        os.makedirs(save_directory, exist_ok=True)
        self.to_json_file(os.path.join(save_directory, CONFIG_NAME))


_FIELDS = tuple(f for f in dataclasses.fields(GLPNConfig) if f.name != "extra")
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(GLPNConfig))
# The fields that define the network (the rest are output defaults and bookkeeping): what a cache
# of built engines should key on.
_NAMES = [f.name for f in _FIELDS]
MODEL_FIELDS = tuple(_NAMES[: _NAMES.index("head_in_index") + 1])


@functools.cache
def _common_defaults() -> dict[str, Any]:
    """transformers' defaults for the keys every config has: config.json leaves them out."""
    data = GLPNConfig().to_dict()
    return {k: v for k, v in data.items() if k not in MODEL_FIELDS and k != "model_type"}


def apply_kwargs(config: GLPNConfig, kwargs: dict[str, Any]):
    """Set the from_dict / from_pretrained keywords that are attributes (validated together), as
    transformers does; the others come back too when `return_unused_kwargs` asks for them."""
    return_unused = kwargs.pop("return_unused_kwargs", False)
    for key in IGNORED_OPTIONS:
        kwargs.pop(key, None)
    if kwargs.get("dtype", kwargs.get("torch_dtype")) == "auto":  # a loading choice, not a value
        kwargs = {k: v for k, v in kwargs.items() if k not in ("dtype", "torch_dtype")}
    used = {k: v for k, v in kwargs.items() if k in ALIASES or hasattr(config, k)}
    config.update(used)
    unused = {k: v for k, v in kwargs.items() if k not in used}
    return (config, unused) if return_unused else config


def resolve_directory(path: str | os.PathLike, hub: dict[str, Any]) -> str:
    """The checkpoint directory for `path`; hub options only matter for a hub id (a local
    directory ignores them, as in transformers)."""
    hub = {k: v for k, v in hub.items() if v not in (None, False, "main")}
    if not hub or os.path.isdir(os.fspath(path)):
        return resolve_checkpoint_dir(path)
    return resolve_checkpoint_dir(path, **hub)


def config_file(path: str | os.PathLike, hub: dict[str, Any]) -> str:
    """config.json of a checkpoint directory or hub id, or `path` itself if it is a file."""
    if os.path.isfile(path):
        return os.fspath(path)
    directory = resolve_directory(path, hub)
    file = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(file):
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}")
    return file


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
