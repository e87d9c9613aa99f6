"""Saving and loading an image processor the way transformers' ImageProcessingMixin (v5.24) does.

The same file (`preprocessor_config.json`, sorted keys, indent 2), the same `to_dict` keys, and the
same keyword arguments on `from_pretrained` / `from_dict`, so a processor moves between the two
libraries in either direction. Deliberate differences: a checkpoint directory without a processor
file gives the default processor (transformers raises OSError; GLPN's defaults are the published
ones), and `push_to_hub` is not supported.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, ClassVar

import numpy as np

from .fileio import atomic_write
from .hub import resolve_checkpoint_dir

PREPROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_NAME = "processor_config.json"  # newer nested layout: {"image_processor": {...}}

# What transformers' from_dict lets a keyword override (GLPNImageProcessorKwargs, v5.24); other
# keywords only set attributes that already exist, or come back as unused.
PROCESSOR_KWARGS = frozenset(
    {
        "do_convert_rgb", "do_resize", "size", "default_to_square", "crop_size", "resample",
        "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std", "do_pad",
        "pad_size", "do_center_crop", "data_format", "input_data_format", "device",
        "return_tensors", "disable_grouping", "image_seq_length", "size_divisor",
    }
)  # fmt: skip

# Keys that name a class, not a setting (to_dict writes image_processor_type itself).
_DROPPED_KEYS = ("image_processor_type", "feature_extractor_type", "processor_class")

# from_pretrained's download options, consumed before the settings are applied (as transformers
# does). The hub fetch itself is glpn.hub's: revision/cache_dir/token/proxies are accepted and
# not passed on.
_LOAD_KWARGS = ("proxies", "subfolder", "image_processor_filename", "_from_pipeline", "_from_auto")


class ImageProcessorIO:
    """Mixin: `to_dict`/`from_dict`, JSON files and `save_pretrained`/`from_pretrained`.

    The settings are the instance's public attributes, as in transformers; None values are left
    out of `to_dict`.
    """

    image_processor_type: ClassVar[str]  # written to the file; transformers' class name

    def _set_extra(self, settings: dict[str, Any]) -> None:
        """Keep settings this class has no parameter for as attributes (transformers does), so
        they survive a save and load; keys that name a class are dropped."""
        for key, value in settings.items():
            if key not in _DROPPED_KEYS:
                setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        out = {
            k: copy.deepcopy(v)
            for k, v in vars(self).items()
            if v is not None and not k.startswith("_")
        }
        out["image_processor_type"] = self.image_processor_type
        return out

    def to_json_string(self) -> str:
        settings = {
            k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in self.to_dict().items()
        }
        return json.dumps(settings, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike) -> None:
        atomic_write(os.fspath(json_file_path), self.to_json_string().encode("utf-8"))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike):
        with open(json_file, encoding="utf-8") as f:
            return cls(**json.load(f))

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs: Any):
        """A processor from `image_processor_dict`; keyword arguments that are processor settings
        override it. With `return_unused_kwargs=True`, returns (processor, unused kwargs), where
        "unused" is exactly what transformers returns (it includes the overriding settings)."""
        settings = dict(image_processor_dict)
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        settings.update({k: v for k, v in kwargs.items() if k in PROCESSOR_KWARGS})
        processor = cls(**settings)
        for key in list(kwargs):  # an existing attribute that is not a setting: set it too
            if key not in PROCESSOR_KWARGS and hasattr(processor, key):
                setattr(processor, key, kwargs.pop(key))
        return (processor, kwargs) if return_unused_kwargs else processor

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        revision: str = "main",
        **kwargs: Any,
    ):
        """From a checkpoint directory, a hub id, or a processor JSON file; keyword arguments
        are applied as in `from_dict`."""
        load = {k: kwargs.pop(k) for k in _LOAD_KWARGS if k in kwargs}
        path = os.fspath(pretrained_model_name_or_path)
        if os.path.isfile(path):
            return cls.from_dict(_read_json(path), **kwargs)
        folder = os.path.join(resolve_checkpoint_dir(path), load.get("subfolder", ""))
        settings: dict[str, Any] = {}
        nested = os.path.join(folder, PROCESSOR_NAME)
        single = os.path.join(folder, load.get("image_processor_filename", PREPROCESSOR_NAME))
        if os.path.isfile(nested) and "image_processor" in (data := _read_json(nested)):
            settings = data["image_processor"]
        elif os.path.isfile(single):
            settings = _read_json(single)
        return cls.from_dict(settings, **kwargs)

    def save_pretrained(
        self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any
    ) -> list[str]:
        """Write `preprocessor_config.json` into `save_directory`; returns [its path]."""
        if push_to_hub:
            raise NotImplementedError(
                "push_to_hub is not supported: save_pretrained, then upload the directory "
                "(`hf upload REPO DIR`)"
            )
        save_directory = os.fspath(save_directory)
        if os.path.isfile(save_directory):
            # AssertionError, as transformers raises, so code that catches it keeps working
            raise AssertionError(
                f"Provided path ({save_directory}) should be a directory, not a file"
            )
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PREPROCESSOR_NAME)
        self.to_json_file(path)
        return [path]


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
