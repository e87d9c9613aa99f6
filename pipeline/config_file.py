"""Loading a Config: from a YAML/JSON file or a plain dict, with errors that name the key.

`load_config(path_or_dict)` builds the frozen dataclasses of config.py; an unknown key or a bad
value raises `ConfigError` naming the dotted key (`model.max_batch`, `sources[1].mode`) and, for
unknown keys, listing the valid ones. Shorthands accepted in files: a source may be a bare string
(its uri); `input_size: auto` means None; a sink section may be `true` for its defaults.

`read_config_file` is the one reader of config files: it bounds the file's size, its nesting and
what YAML aliases expand to, so a hostile or broken file is one ConfigError, never a hang or
gigabytes of memory. Input paths in a file are relative to the file (`relative_to_file`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Union

import yaml
from yaml.composer import ComposerError

from .config import Config, _Invalid, _short
from .errors import ConfigError

# Limits of a config file (read_config_file). A real config is a few KiB, 5 levels deep, a few
# hundred values; these leave room for generated ones and refuse what would only exhaust memory.
MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_NESTING = 32  # nesting of lists and mappings
MAX_VALUES = 20_000  # keys and values once YAML aliases are expanded (a billion laughs: 10**9)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # rtsp://, http://, ... (file:// is a path)


def _short_text(text: str, limit: int = 200) -> str:
    """text on one line, at most `limit` characters."""
    text = " ".join(text[: 2 * limit].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- dict -> Config -----------------------------------------------------------------------------


def _dotted(path: str, key: str) -> str:
    if not path:
        return key
    return f"{path}.{key}" if not key.startswith("[") else f"{path}{key}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _hint(value: Any, tp: type) -> str:
    """For '1e6' and the like: YAML 1.1 (PyYAML) reads a number without a dot as text."""
    if isinstance(value, str) and len(value) < 40 and any(c.isdigit() for c in value):
        with contextlib.suppress(ValueError):
            float(value)
            return f" (YAML reads 1e6 as text: write {'1000000' if tp is int else '1.0e+6'})"
    return ""


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        if isinstance(value, str) and value.lower() in ("auto", "none") and type(None) in options:
            return None
        non_none = [t for t in options if t is not type(None)]
        if len(non_none) == 1:
            return _convert(value, non_none[0], path)
        raise ConfigError(f"config: {path}: unsupported type {tp}")  # not used by the schema
    if dataclasses.is_dataclass(tp):
        if value is True:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: {path} must be a mapping, got {_short(value)}")
        return _build(tp, value, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {path} must be a list, got {_short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"config: {path} must have {len(args)} entries, got {_short(list(value))}"
            )
        return tuple(_convert(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {path} must be true or false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                f"config: {path} must be an integer, got {_short(value)}{_hint(value, int)}"
            )
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(
                f"config: {path} must be a number, got {_short(value)}{_hint(value, float)}"
            )
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            raise ConfigError(f"config: {path} is out of range, got {_short(value)}") from None
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"config: {path} must be a string, got {_short(value)}")
        return str(value)  # a camera index may be written as a number
    raise ConfigError(f"config: {path}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = _dotted(path, _short(key) if not isinstance(key, str) else key[:60])
            raise ConfigError(f"config: unknown key {where!r}; valid keys: {', '.join(fields)}")
    kwargs = {key: _convert(value, hints[key], _dotted(path, key)) for key, value in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"config: missing key {_dotted(path, missing[0])!r}")
    try:
        return cls(**kwargs)
    except _Invalid as e:
        raise ConfigError(f"config: {_dotted(path, e.key)}: {e.message}") from None


def _normalise_sources(data: dict[str, Any]) -> dict[str, Any]:
    sources = data.get("sources")
    if isinstance(sources, (str, int, Mapping)):
        sources = [sources]  # one source may be written without a list
    if not isinstance(sources, list):
        raise ConfigError("config: 'sources' must be a list of sources (uri strings or mappings)")
    out = []
    for i, s in enumerate(sources):
        if isinstance(s, (str, int)) and not isinstance(s, bool):
            s = {"uri": str(s)}
        if not isinstance(s, Mapping):
            raise ConfigError(
                f"config: sources[{i}] must be a uri string or a mapping, got {_short(s)}"
            )
        out.append(s)
    return {**data, "sources": out}


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """A plain dict (as parsed from YAML/JSON) -> validated Config."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    if "sources" not in data:
        raise ConfigError("config: missing key 'sources'")
    return _build(Config, _normalise_sources(dict(data)), "")


# ---- the file ---------------------------------------------------------------------------------


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses, while composing (before any data is built), nesting deeper
    than MAX_NESTING and more than MAX_VALUES keys and values with every alias expanded. The data
    keeps aliases shared, but anything that walks it (a message, a copy, the schema) expands them.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0  # values composed so far, an alias counting all the values it stands for

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self._depth >= MAX_NESTING:
            raise ComposerError(None, None, f"nested deeper than {MAX_NESTING} levels", mark)
        alias = self.check_event(yaml.AliasEvent)
        if not alias:
            self._count(1, mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if alias:  # an earlier node: its expanded size is known, unless it contains this alias
            if not hasattr(node, "expanded"):
                raise ComposerError(None, None, "recursive alias", mark)
            self._count(node.expanded, mark)
            return node
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        node.expanded = 1 + sum(child.expanded for child in children)
        return node

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            problem = f"more than {MAX_VALUES} values once aliases are expanded"
            raise ComposerError(None, None, problem, mark)


def _check_shape(data: Any) -> None:
    """The same bounds as _BoundedLoader, for JSON (no aliases): walked without recursion."""
    stack, count = [(data, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_NESTING or count > MAX_VALUES:
            raise ValueError(
                f"nested deeper than {MAX_NESTING} levels" if depth > MAX_NESTING
                else f"more than {MAX_VALUES} values"
            )  # fmt: skip
        if isinstance(value, dict):
            count += len(value)  # the keys
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML (or .json) config file -> its top-level mapping ({} for an empty file), unvalidated.

    The one reader of config files: refuses files over MAX_FILE_BYTES, nesting deeper than
    MAX_NESTING and more than MAX_VALUES keys and values (YAML aliases expanded) with a ConfigError
    naming the file; never a RecursionError or a billion-laughs expansion."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({_short_text(str(e))})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: config file larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        if path.endswith(".json"):
            data = json.loads(text)
            _check_shape(data)
        else:
            loader = _BoundedLoader(text)
            loader.name = path  # named in the error marks
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except RecursionError:  # json nested deeper than the interpreter allows
        raise ConfigError(
            f"{path}: cannot parse config (nested deeper than {MAX_NESTING} levels)"
        ) from None
    except (UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        # ValueError: bad JSON, or an integer of more than 4300 digits
        raise ConfigError(f"{path}: cannot parse config ({_short_text(str(e))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: config: expected a mapping at the top level, got {type(data).__name__}"
        )
    return data


# ---- paths relative to the file -----------------------------------------------------------------


def _beside(base: str, path: str) -> str | None:
    """`path` taken relative to directory `base`; None for what is not a relative local path."""
    if not path or path.startswith("~") or os.path.isabs(path):
        return None
    return os.path.normpath(os.path.join(base, path))


def _source_uri(base: str, uri: Any, kind: Any) -> Any:
    """A file or image source's relative path (or glob) -> next to the config file."""
    if not isinstance(uri, str) or kind not in (None, "auto", "file", "images"):
        return uri
    if uri.isdigit() and kind in (None, "auto"):
        return uri  # a camera index
    if uri.lower().startswith("file://"):
        path = _beside(base, uri[len("file://") :])
        return uri if path is None else "file://" + path
    if _URL.match(uri):
        return uri
    path = _beside(base, uri)
    return uri if path is None else path


def relative_to_file(data: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """`data`, read from the config file at `path`, with its input paths resolved against the
    file's directory: a source's uri when it is a relative file path or glob (not a camera index
    or URL), and model.checkpoint when a directory of that name is there (otherwise it stays as
    written: a directory relative to the working directory, or a hub id). Output paths
    (outputs.*, transport.ipc_dir) stay relative to the working directory, like the command
    line's: a packaged config must not write into the installed package. Malformed parts are left
    for validation to report."""
    base = os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(path))))
    data = dict(data)
    sources = data.get("sources")
    single = isinstance(sources, (str, Mapping))
    if single or isinstance(sources, list):
        resolved = []
        for s in [sources] if single else sources:
            if isinstance(s, str):
                s = _source_uri(base, s, None)
            elif isinstance(s, Mapping) and "uri" in s:
                s = {**s, "uri": _source_uri(base, s["uri"], s.get("kind", "auto"))}
            resolved.append(s)
        data["sources"] = resolved[0] if single else resolved
    model = data.get("model")
    if isinstance(model, Mapping) and isinstance(model.get("checkpoint"), str):
        checkpoint = _beside(base, model["checkpoint"])
        if checkpoint is not None and os.path.isdir(checkpoint):
            data["model"] = {**model, "checkpoint": checkpoint}
    return data


def load_config(source: Config | Mapping[str, Any] | str | os.PathLike) -> Config:
    """A Config, a dict or a YAML/JSON file path -> validated Config (ConfigError if not). A file's
    input paths are relative to the file (relative_to_file); a dict's to the working directory."""
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return config_from_dict(source)
    path = os.fspath(source)
    data = relative_to_file(read_config_file(path), path)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
