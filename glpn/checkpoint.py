"""Hugging Face checkpoint directories: config.json + model.safetensors (or pytorch_model.bin).

Loading never executes code: safetensors, or torch.load(weights_only=True). Every key and shape is
checked; a partial or mismatched load is an error that lists what is wrong.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import re
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from .config import (
    HUB_OPTIONS,
    ConfigError,
    GLPNConfig,
    apply_kwargs,
    config_file,
    resolve_directory,
)
from .fileio import atomic_write
from .hub import CheckpointError, resolve_checkpoint_dir

__all__ = [  # CheckpointError and resolve_checkpoint_dir live in hub.py (no import cycle)
    "CheckpointError",
    "check_and_load",
    "load_pretrained",
    "load_state_dict",
    "resolve_checkpoint_dir",
    "save_pretrained",
]

log = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# BatchNorm step counters: only used in training, absent from some older checkpoints.
_OPTIONAL_KEYS = re.compile(r".*num_batches_tracked$")


def _load_file(file: str, map_location) -> dict[str, torch.Tensor]:
    try:
        if file.endswith(".safetensors"):
            return load_file(file, device=str(map_location))
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read weights ({type(e).__name__}: {e})") from None


def load_state_dict(directory: str, map_location="cpu") -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint directory (safetensors preferred, sharded or not)."""
    for index_name in (SAFE_INDEX, TORCH_INDEX):
        index = os.path.join(directory, index_name)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid weight index ({e})") from None
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_load_file(os.path.join(directory, shard), map_location))
            return state
    for name in (SAFE_WEIGHTS, TORCH_WEIGHTS):
        file = os.path.join(directory, name)
        if os.path.isfile(file):
            state = _load_file(file, map_location)
            if not isinstance(state, dict) or not all(
                isinstance(v, torch.Tensor) for v in state.values()
            ):
                raise CheckpointError(f"{file}: not a state dict of tensors")
            return state
    raise CheckpointError(
        f"{directory}: no weights found (expected {SAFE_WEIGHTS} or {TORCH_WEIGHTS})"
    )


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_and_load(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that names every missing, unexpected or mis-shaped key."""
    prefix = getattr(model, "checkpoint_prefix", "")
    if prefix and any(k.startswith(prefix) for k in state):
        # The encoder alone out of a full depth checkpoint: the decoder and head are expected
        # extras.
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not _OPTIONAL_KEYS.match(k)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"mis-shaped keys: {_listing(shapes)}")
    if problems:
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__name__}({_config_summary(model)}); "
            + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)  # strictness checked above, with better messages


def _config_summary(model: nn.Module) -> str:
    c = getattr(model, "config", None)
    if c is None:
        return ""
    return f"hidden_sizes={list(c.hidden_sizes)}, depths={list(c.depths)}"


def load_pretrained(
    cls,
    pretrained_model_name_or_path: str | os.PathLike | None = None,
    *,
    config: GLPNConfig | str | os.PathLike | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype | str | None = None,
    torch_dtype: torch.dtype | str | None = None,
    output_loading_info: bool = False,
    map_location: str | torch.device = "cpu",
    **kwargs: Any,
):
    """`cls` from a checkpoint directory or hub id, with transformers' keywords.

    `config=`: a GLPNConfig (copied) or where to read one. `state_dict=`: these weights instead of
    the files (then the path may be None, given `config=`). `dtype=` (or `torch_dtype=`): a torch
    dtype or its name, or "auto" for the config's dtype else the weights'; default float32 (the
    engine's accuracy gate needs a float32 reference). Hub options (`revision`, `cache_dir`,
    `token`, `local_files_only`, `force_download`) are used only for a hub id. Keywords that are
    config attributes override the config; the others go to `cls(config, ...)`, so an unknown one
    is a TypeError, as in transformers. Any mismatch between model and weights raises, so
    `output_loading_info=True` returns empty lists beside the model.
    """
    path = pretrained_model_name_or_path
    hub = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs}
    directory = resolve_directory(path, hub) if path is not None else None
    if isinstance(config, GLPNConfig):
        config = copy.deepcopy(config)  # the caller's config is not changed
    else:
        where = config if config is not None else directory
        if where is None:
            raise CheckpointError("from_pretrained needs a checkpoint path or config=")
        try:
            config = GLPNConfig.from_json_file(config_file(where, hub))
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
    config, model_kwargs = apply_kwargs(config, {**kwargs, "return_unused_kwargs": True})
    model = cls(config, **model_kwargs)
    if state_dict is None:
        if directory is None:
            raise CheckpointError("from_pretrained needs a checkpoint path or state_dict=")
        state_dict = load_state_dict(directory, map_location)
    check_and_load(model, state_dict, directory or "state_dict")
    target = _target_dtype(dtype if dtype is not None else torch_dtype, config, state_dict)
    model.to(target)
    config.dtype = target
    if path is not None:
        config.name_or_path = os.fspath(path)
    model.eval()
    if output_loading_info:
        # transformers' shape; our loader raises on any mismatch, so a loaded model has none.
        info = {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set()}
        return model, {**info, "error_msgs": []}
    return model


def _target_dtype(requested, config: GLPNConfig, state: dict[str, torch.Tensor]) -> torch.dtype:
    if requested is None:
        return torch.get_default_dtype()
    if requested == "auto":
        weights = (t.dtype for t in state.values() if t.is_floating_point())
        return config.dtype or next(weights, torch.get_default_dtype())
    dtype = getattr(torch, requested, None) if isinstance(requested, str) else requested
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be 'auto' or a floating torch dtype, got {requested!r}")
    return dtype


# The class name transformers records for each of ours (GLPNDepth has the depth model's weights).
_ARCHITECTURES = ("GLPNModel", "GLPNForDepthEstimation")


def save_pretrained(
    model: nn.Module, save_directory: str | os.PathLike, *, safe_serialization: bool = True
) -> None:
    """Write config.json and the weights; files are replaced atomically so a failure corrupts
    nothing. config.json records the architecture and the weights' dtype, as transformers does."""
    path = os.fspath(save_directory)
    os.makedirs(path, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    name = SAFE_WEIGHTS if safe_serialization else TORCH_WEIGHTS
    if safe_serialization:
        data = save(state, metadata={"format": "pt"})
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    atomic_write(os.path.join(path, name), data)  # usual permissions (0666 less the umask)
    config = copy.deepcopy(model.config)
    names = [c.__name__ for c in type(model).__mro__ if c.__name__ in _ARCHITECTURES]
    config.architectures = [names[0] if names else "GLPNForDepthEstimation"]
    config.dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    config.save_pretrained(path)
