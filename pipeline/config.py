"""Typed configuration of the whole program, loaded from YAML/JSON or a dict and validated.

`load_config(path_or_dict)` builds frozen dataclasses; an unknown key or a bad value raises
`ConfigError` naming the dotted key (`model.max_batch`, `sources[1].mode`) and, for unknown keys,
listing the valid ones. Shorthands accepted in files: a source may be a bare string (its uri);
`input_size: auto` means None; a sink section may be `true` for its defaults.

Every number has a finite range that the code and the OS accept (a `linger_ms` zmq can take, a
timeout `time.monotonic() + t` can add), and the message gives the range. `read_config_file` is
the one reader of config files: it bounds the file's size, its nesting and what YAML aliases
expand to, so a hostile or broken file is one ConfigError, never a hang or gigabytes of memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import reprlib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import yaml
from yaml.composer import ComposerError

from .colour import COLORMAPS
from .errors import ConfigError

SOURCE_KINDS = ("auto", "camera", "file", "url", "images", "external")
SOURCE_MODES = ("auto", "live", "lossless")
TRANSPORTS = ("inproc", "ipc", "tcp")
FILE_LAYOUTS = ("per_stream", "flat")
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe in file names and topics

# Limits of a config file (read_config_file). A real config is a few KiB, 5 levels deep, a few
# hundred values; these leave room for generated ones and refuse what would only exhaust memory.
MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_NESTING = 32  # nesting of lists and mappings
MAX_VALUES = 20_000  # keys and values once YAML aliases are expanded (a billion laughs: 10**9)
MAX_SOURCES = 256  # each source is a capture thread with its own sockets

# Ranges of numbers (inclusive). Upper ends are what the code and the OS accept (zmq options are
# C ints, `time.monotonic() + timeout` must stay a time) and far beyond any sensible setting.
MAX_SECONDS = 3600.0  # timeouts and reconnect delays
MAX_FPS = 1000.0  # frame rates: sources, pacing and video files
MIN_FPS = 0.01  # one frame per 100 s; OpenCV's video writers refuse much less
MAX_IMAGE_SIDE = 16384  # camera resolution
MAX_INPUT_SIDE = 8192  # model input
MAX_DEPTH_M = 10_000.0  # colour range of the view, metres
MAX_HWM = 1_000_000  # zmq high-water marks, messages
MAX_MESSAGE_BYTES = 1 << 31  # 2 GiB; zmq's MAXMSGSIZE takes an int64, a frame is far smaller
MAX_LINGER_MS = 60_000  # zmq's LINGER is a C int of milliseconds

_repr = reprlib.Repr()  # never builds more than a few hundred characters, whatever the value
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6
_repr.maxlevel = 3


def _short_text(text: str, limit: int = 200) -> str:
    """text on one line, at most `limit` characters."""
    text = " ".join(text[: 2 * limit].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any) -> str:
    """repr(value) in at most 100 characters, without ever building the whole repr."""
    try:
        text = _repr.repr(value)
    except Exception:  # e.g. an int too long to print
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else text[:97] + "..."


class _Invalid(ConfigError):
    """A field's value is invalid; load_config adds the dotted path of the section to the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _Invalid(key, message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)  # 3600, not 3600.0 or 3.6e+03


def _in_range(value: Any, key: str, lo: float, hi: float, *, above: bool = False) -> None:
    """value must be a finite number in lo..hi (above=True: > lo); None passes (auto)."""
    if value is None:
        return
    ok = _is_number(value) and (isinstance(value, int) or math.isfinite(value))
    ok = ok and (value > lo if above else value >= lo) and value <= hi
    where = f"> {_num(lo)} and <= {_num(hi)}" if above else f"in {_num(lo)}..{_num(hi)}"
    _require(ok, key, f"must be {where}, got {_short(value)}")


def _check_size(value: tuple[int, int] | None, key: str, hi: int = MAX_INPUT_SIDE) -> None:
    if value is None:
        return
    _require(
        len(value) == 2 and all(_is_number(v) and 32 <= v <= hi and v % 32 == 0 for v in value),
        key,
        f"must be [height, width], multiples of 32 in 32..{hi}, got {_short(list(value))}",
    )


@dataclass(frozen=True)
class ReconnectConfig:
    max_attempts: int = (
        10  # failed reopen attempts in a row before the source is an error; -1: forever
    )
    initial_delay_s: float = 0.5  # wait before the first reopen; doubles after each failed attempt
    max_delay_s: float = 5.0  # cap on the wait between attempts

    def __post_init__(self) -> None:
        _in_range(self.max_attempts, "max_attempts", -1, 1_000_000)  # -1: forever
        _in_range(self.initial_delay_s, "initial_delay_s", 0, MAX_SECONDS)
        _in_range(self.max_delay_s, "max_delay_s", 0, MAX_SECONDS)
        _require(
            self.max_delay_s >= self.initial_delay_s, "max_delay_s", "must be >= initial_delay_s"
        )


@dataclass(frozen=True)
class SourceConfig:
    uri: str  # camera index ("0"), video file, stream URL (rtsp/http/udp/tcp), image dir or glob
    id: str = ""  # stream id carried in every header; "" -> "source<i>"
    kind: str = (
        "auto"  # auto | camera | file | url | images | external (frames pushed from outside)
    )
    mode: str = "auto"  # auto | live | lossless; auto: live for cameras and URLs, else lossless
    input_size: tuple[int, int] | None = None  # model input (h, w) for this stream; None: model's
    pace: bool = False  # replay a file or images at its frame rate, like a live camera
    fps: float | None = None  # frame rate of images / for pacing; None: the source's (images: 30)
    max_frames: int | None = None  # end this source after this many frames
    camera_size: tuple[int, int] | None = None  # camera resolution to ask for (h, w); None: default
    open_timeout_s: float = 5.0  # URL open timeout (FFmpeg); a stop does not wait for it
    read_timeout_s: float = 1.0  # URL read timeout; a longer stall is a failure (reconnect)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)  # live sources only

    def __post_init__(self) -> None:
        _require(self.uri != "", "uri", "must not be empty")
        _require(self.id == "" or bool(STREAM_ID.fullmatch(self.id)), "id",
                 f"{_short(self.id)} must match {STREAM_ID.pattern}")  # fmt: skip
        _require(self.kind in SOURCE_KINDS, "kind",
                 f"{_short(self.kind)} is not one of {SOURCE_KINDS}")  # fmt: skip
        _require(self.mode in SOURCE_MODES, "mode",
                 f"{_short(self.mode)} is not one of {SOURCE_MODES}")  # fmt: skip
        _check_size(self.input_size, "input_size")
        _in_range(self.fps, "fps", MIN_FPS, MAX_FPS)
        _in_range(self.max_frames, "max_frames", 1, 10**9)
        size = self.camera_size
        _require(
            size is None
            or (len(size) == 2 and all(_is_number(v) and 1 <= v <= MAX_IMAGE_SIDE for v in size)),
            "camera_size",
            f"must be [height, width], both in 1..{MAX_IMAGE_SIDE}, got {_short(size)}",
        )
        # Passed to FFmpeg in whole milliseconds, where 0 would mean no timeout at all.
        _in_range(self.open_timeout_s, "open_timeout_s", 0.001, MAX_SECONDS)
        _in_range(self.read_timeout_s, "read_timeout_s", 0.001, MAX_SECONDS)


@dataclass(frozen=True)
class ModelConfig:
    checkpoint: str = (
        ""  # checkpoint directory (HF format); required unless an engine factory is given
    )
    backend: str = "auto"  # glpn.engine backend (eager, compiled, onnx, ...); auto picks the best
    precision: str = "auto"  # fp32 | bf16 | fp16 | auto
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    input_size: tuple[int, int] | None = (
        None  # model input (h, w); None: source size rounded to /32
    )
    max_batch: int = 1  # most frames per model call (micro-batching across frames and streams)
    max_wait_ms: float = 5.0  # how long a partial batch waits for more frames

    def __post_init__(self) -> None:
        _check_size(self.input_size, "input_size")
        _require(
            1 <= self.max_batch <= 256, "max_batch", f"must be in 1..256, got {self.max_batch}"
        )
        _in_range(self.max_wait_ms, "max_wait_ms", 0, 10_000)


@dataclass(frozen=True)
class PostprocessConfig:
    resize_to_source: bool = True  # depth back to each frame's source size (else the model's size)
    depth_range: tuple[float, float] | None = None  # fixed colour range (near, far) m; None: 0..max
    colormap: str = "inferno"  # OpenCV colormap of the colourised view (near is bright)
    side_by_side: bool = False  # view = input frame | colourised depth
    view: bool | None = None  # make the colourised view; None: only when a sink needs it

    def __post_init__(self) -> None:
        r = self.depth_range
        ok = r is None or (
            len(r) == 2 and all(_is_number(v) for v in r) and 0 <= r[0] < r[1] <= MAX_DEPTH_M
        )
        _require(ok, "depth_range",
                 f"must be [near, far] with 0 <= near < far <= {MAX_DEPTH_M:g}, "
                 f"got {_short(r)}")  # fmt: skip
        _require(self.colormap in COLORMAPS, "colormap",
                 f"{_short(self.colormap)} not in {sorted(COLORMAPS)}")  # fmt: skip


@dataclass(frozen=True)
class ZmqSinkConfig:
    endpoint: str = "tcp://127.0.0.1:5556"  # PUB endpoint subscribers connect to (loopback default)
    publish_view: bool = False  # also send the colourised view (BGR uint8) after the depth
    hwm: int = 4  # messages queued per subscriber; a slow subscriber loses frames beyond this
    wait_subscribers: int = 0  # send only once this many subscriptions arrived; 0: don't wait
    wait_timeout_s: float = 10.0  # from the first frame, how long to wait for them; then an error

    def __post_init__(self) -> None:
        _require(_endpoint_ok(self.endpoint), "endpoint",
                 f"{_short(self.endpoint)} is not a ZeroMQ endpoint")  # fmt: skip
        _in_range(self.hwm, "hwm", 1, MAX_HWM)
        _in_range(self.wait_subscribers, "wait_subscribers", 0, 1000)
        _in_range(self.wait_timeout_s, "wait_timeout_s", 0, MAX_SECONDS, above=True)


@dataclass(frozen=True)
class FilesSinkConfig:
    directory: str  # files go to DIRECTORY/<stream>/<index:06d>.npy and .png
    npy: bool = True  # float32 metres
    png: bool = True  # uint16 depth * 256 (KITTI convention), saturating at 255.99 m
    layout: str = "per_stream"  # per_stream: DIRECTORY/<stream>/...; flat: DIRECTORY/... (1 stream)

    def __post_init__(self) -> None:
        _require(self.directory != "", "directory", "must not be empty")
        _require(self.npy or self.png, "npy", "at least one of npy and png must be true")
        _require(self.layout in FILE_LAYOUTS, "layout",
                 f"{_short(self.layout)} is not one of {FILE_LAYOUTS}")  # fmt: skip

    def folder(self, stream: str) -> str:
        """Where the files of `stream` go."""
        return self.directory if self.layout == "flat" else os.path.join(self.directory, stream)


@dataclass(frozen=True)
class VideoSinkConfig:
    path: str  # .avi (MJPG) or .mp4 (mp4v); "{stream}" is replaced, and added with several streams
    fps: float | None = None  # None: the source's frame rate (30 when it has none)

    def __post_init__(self) -> None:
        ext = os.path.splitext(self.path)[1].lower()
        _require(ext in (".avi", ".mp4"), "path", f"{_short(self.path)} must end in .avi or .mp4")
        _in_range(self.fps, "fps", MIN_FPS, MAX_FPS)


@dataclass(frozen=True)
class WindowSinkConfig:
    title: str = "depthstream"  # window title prefix (one window per stream); q or Esc stops


@dataclass(frozen=True)
class OutputsConfig:
    zmq: ZmqSinkConfig | None = None  # publish depth for other programs (pipeline.client)
    files: FilesSinkConfig | None = None  # per-frame .npy / 16-bit .png
    video: VideoSinkConfig | None = None  # colourised depth video
    window: WindowSinkConfig | None = (
        None  # on-screen view; skipped with a warning without a display
    )


@dataclass(frozen=True)
class TransportConfig:
    kind: str = "inproc"  # inproc | ipc | tcp between stages (same stage code for all three)
    host: str = "127.0.0.1"  # tcp: address stages bind to (random ports)
    ipc_dir: str = ""  # ipc: directory of the socket files; "" = a fresh temp dir
    hwm: int = 2  # high-water mark per link, in messages: bounds memory and gives backpressure
    max_message_bytes: int = 256 * 1024 * 1024  # larger incoming messages are dropped as malformed
    linger_ms: int = 1000  # after EOS, how long unsent messages may delay closing (tcp/ipc)

    def __post_init__(self) -> None:
        _require(self.kind in TRANSPORTS, "kind",
                 f"{_short(self.kind)} is not one of {TRANSPORTS}")  # fmt: skip
        _in_range(self.hwm, "hwm", 1, MAX_HWM)
        _in_range(self.max_message_bytes, "max_message_bytes", 1024, MAX_MESSAGE_BYTES)
        _in_range(self.linger_ms, "linger_ms", 0, MAX_LINGER_MS)


@dataclass(frozen=True)
class MetricsConfig:
    interval_s: float = 5.0  # seconds between metrics log lines; 0 turns them off
    window: int = 4096  # latency samples kept per stage for the percentiles

    def __post_init__(self) -> None:
        v = self.interval_s  # a tiny period would only flood the log
        _require(v == 0 or (_is_number(v) and 0.01 <= v <= 86_400), "interval_s",
                 f"must be 0 (off) or in 0.01..86400, got {_short(v)}")  # fmt: skip
        _in_range(self.window, "window", 16, 1_000_000)


@dataclass(frozen=True)
class Config:
    sources: tuple[SourceConfig, ...]  # at least one; stream ids unique
    model: ModelConfig = field(default_factory=ModelConfig)  # engine and micro-batching
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)  # depth + view
    outputs: OutputsConfig = field(default_factory=OutputsConfig)  # sinks (any number)
    transport: TransportConfig = field(default_factory=TransportConfig)  # links between stages
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # periodic log + summary

    def __post_init__(self) -> None:
        sources = tuple(
            s if s.id else dataclasses.replace(s, id=f"source{i}")
            for i, s in enumerate(self.sources)
        )
        object.__setattr__(self, "sources", sources)
        _require(len(self.sources) >= 1, "sources", "at least one source is needed")
        _require(len(self.sources) <= MAX_SOURCES, "sources",
                 f"at most {MAX_SOURCES} sources, got {len(self.sources)}")  # fmt: skip
        ids = [s.id for s in self.sources]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        _require(not dup, "sources", f"stream ids must be unique; repeated: {dup}")
        files = self.outputs.files
        _require(files is None or files.layout != "flat" or len(self.sources) == 1,
                 "outputs.files.layout", "flat needs a single source")  # fmt: skip

    def stream_ids(self) -> list[str]:
        return [s.id for s in self.sources]


def _endpoint_ok(endpoint: str) -> bool:
    return bool(re.match(r"^(tcp|ipc|inproc)://.+", endpoint))


# ---- loading ------------------------------------------------------------------------------------


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


def load_config(source: Config | Mapping[str, Any] | str | os.PathLike) -> Config:
    """A Config, a dict or a YAML/JSON file path -> validated Config (ConfigError if not)."""
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return config_from_dict(source)
    path = os.fspath(source)
    data = read_config_file(path)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def to_dict(config: Config) -> dict[str, Any]:
    """Config -> plain dict (lists instead of tuples), e.g. for logging or writing back to YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))
