"""Model outputs that behave like transformers' `ModelOutput` (v5.24), without importing it.

An output is a dataclass and a read-only mapping of its non-None fields, in field order:
`out.predicted_depth`, `out["predicted_depth"]`, `out[0]` (the first non-None field), iterating
yields the keys, `out.keys()` / `.items()` / `.values()`, `out.to_tuple()`, `dict(out)`, `**out`.
Each class is a registered pytree node, so `torch.export` can return it.

Deliberately a `Mapping` and not a `dict` subclass as transformers' is: transformers' pipelines
turn every dict that is not their own ModelOutput into a plain dict, which loses
`.predicted_depth` and breaks `pipeline("depth-estimation", model=ours)`; a Mapping passes
through unchanged. `isinstance(out, dict)` is therefore False.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree


class ModelOutput(Mapping):
    """Base of the output dataclasses; every field defaults to None and is a key only when set."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register_pytree(cls)

    def _keys(self) -> list[str]:
        names = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        # Entries added with out[key] = value (transformers' depth pipeline adds "target_size").
        return names + list(self.__dict__.get("_extra_keys", ()))

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self._keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in {f.name for f in dataclasses.fields(self)}:
            self.__dict__.setdefault("_extra_keys", {})[key] = None  # an ordered set
        setattr(self, key, value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    # Snapshots as plain dict views: their repr lists the keys, not the whole output.
    def keys(self):  # type: ignore[override]
        return self._as_dict().keys()

    def values(self):  # type: ignore[override]
        return self._as_dict().values()

    def items(self):  # type: ignore[override]
        return self._as_dict().items()

    def _as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._keys()}

    def to_tuple(self) -> tuple[Any, ...]:
        """The non-None values, in order."""
        return tuple(getattr(self, k) for k in self._keys())


def _register_pytree(cls: type[ModelOutput]) -> None:
    """Flattens to the non-None values with their names as context, as transformers does, so an
    exported graph's outputs are the same leaves in the same order as the reference's."""

    def flatten(out: ModelOutput) -> tuple[list[Any], list[str]]:
        return list(out.to_tuple()), list(out.keys())

    def flatten_with_keys(out: ModelOutput):
        return [(pytree.MappingKey(k), v) for k, v in out.items()], list(out.keys())

    def unflatten(values, keys: list[str]) -> ModelOutput:
        out = cls()
        for k, v in zip(keys, values):
            out[k] = v
        return out

    pytree.register_pytree_node(
        cls,
        flatten,
        unflatten,
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        flatten_with_keys_fn=flatten_with_keys,
    )


@dataclass
class BaseModelOutput(ModelOutput):
    last_hidden_state: torch.Tensor | None = None  # (B, C, H/32, W/32) deepest feature map
    hidden_states: tuple[torch.Tensor, ...] | None = None  # every stage's (B, C_i, H_i, W_i)
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, heads, N, N / sr^2)


@dataclass
class DepthEstimatorOutput(ModelOutput):
    # Field order is transformers': with labels, `out[0]` is the loss.
    loss: torch.Tensor | None = None  # scale-invariant log loss when labels are given
    predicted_depth: torch.Tensor | None = None  # (B, H, W) metres
    hidden_states: tuple[torch.Tensor, ...] | None = None  # encoder feature maps when asked for
    attentions: tuple[torch.Tensor, ...] | None = None  # per encoder layer, when asked for
