"""What each GLPNConfig field may hold: names, aliases, the stored form of a value and its type
check. Cross-field consistency is GLPNConfig.validate's."""

from __future__ import annotations

from typing import Any

import torch

# Fields that are per encoder stage and must have num_encoder_blocks entries.
PER_STAGE = (
    "depths",
    "sr_ratios",
    "hidden_sizes",
    "patch_sizes",
    "strides",
    "num_attention_heads",
    "mlp_ratios",
)
ACTIVATIONS = ("gelu", "relu", "silu", "swish", "gelu_new", "gelu_pytorch_tanh", "tanh", "sigmoid")
_INTS = ("num_channels", "num_encoder_blocks", "decoder_hidden_size", "head_in_index")
_NUMBERS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "drop_path_rate",
    "layer_norm_eps",
    "max_depth",
)
_BOOLS = ("output_hidden_states", "output_attentions", "return_dict", "is_encoder_decoder")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
# Other spellings transformers accepts for a field (keyword, config.json key or attribute).
ALIASES = {
    "torch_dtype": "dtype",
    "_name_or_path": "name_or_path",
    "use_return_dict": "return_dict",
    "attn_implementation": "_attn_implementation",
    "experts_implementation": "_experts_implementation",
}
# Keywords of from_pretrained that say where to find the files, not what the config holds.
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "token", "revision")
# Accepted for compatibility and ignored: transformers' telemetry, its remote-code switch (we run no
# checkpoint code) and proxies (huggingface_hub >= 1 takes them from the environment).
IGNORED_OPTIONS = ("trust_remote_code", "proxies", "_from_auto", "_from_pipeline", "_commit_hash")


class ConfigError(ValueError):
    """A config value is unknown or inconsistent; the message names the field."""


def normalized(name: str, value: Any) -> Any:
    """The stored form of a value: lists of stages as tuples, numbers as floats, dtype names as
    torch dtypes, label ids as ints (JSON keys are strings), containers copied (presets are
    shared)."""
    if name in PER_STAGE and isinstance(value, list):
        return tuple(value)
    if name in _NUMBERS and _is_int(value):
        return float(value)  # config.json has `"max_depth": 10` (transformers wants an int there)
    if name == "dtype" and isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"dtype must be a torch dtype or its name, got {value!r}")
        return dtype
    if name == "id2label" and isinstance(value, dict):
        try:
            return {int(k): v for k, v in value.items()}
        except ValueError:
            raise ConfigError(f"id2label keys must be integers, got {list(value)}") from None
    if name in ("label2id", "extra") and isinstance(value, dict):
        return dict(value)
    if name == "architectures" and isinstance(value, (list, tuple)):
        return list(value)
    if name == "name_or_path":
        return str(value)  # transformers keeps it a string (JSON)
    return value


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_types(c: Any) -> None:
    """ConfigError naming the first field whose value has the wrong type."""
    for name in PER_STAGE:
        value = getattr(c, name)
        if not isinstance(value, tuple) or not all(_is_int(v) for v in value):
            raise ConfigError(f"{name} must be a list of integers, got {value!r}")
    for name in (*_INTS, "chunk_size_feed_forward"):
        if not _is_int(getattr(c, name)):
            raise ConfigError(f"{name} must be an integer, got {getattr(c, name)!r}")
    for name in _NUMBERS:
        if not (_is_int(getattr(c, name)) or isinstance(getattr(c, name), float)):
            raise ConfigError(f"{name} must be a number, got {getattr(c, name)!r}")
    for name in _BOOLS:
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(c, name)!r}")
    if not isinstance(c.hidden_act, str):
        raise ConfigError(f"hidden_act must be a string, got {c.hidden_act!r}")
    for name in ("id2label", "label2id"):
        if not isinstance(getattr(c, name), (dict, type(None))):
            raise ConfigError(f"{name} must be a mapping, got {getattr(c, name)!r}")
    if not isinstance(c.dtype, (torch.dtype, type(None))):
        raise ConfigError(f"dtype must be a torch dtype or its name, got {c.dtype!r}")
    if c.architectures is not None and not all(isinstance(a, str) for a in c.architectures):
        raise ConfigError(f"architectures must be a list of class names, got {c.architectures!r}")


def plain(value: Any) -> Any:
    """A JSON-ready copy (transformers' to_dict: tuples as lists, dtypes by name)."""
    if isinstance(value, tuple | list):
        return list(value)
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, dict):
        return dict(value)
    return value
