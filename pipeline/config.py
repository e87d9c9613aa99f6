"""Typed configuration of the whole program, loaded from YAML/JSON or a dict and validated.

`load_config(path_or_dict)` builds frozen dataclasses; an unknown key or a bad value raises
`ConfigError` naming the dotted key (`model.max_batch`, `sources[1].mode`) and, for unknown keys,
listing the valid ones. Shorthands accepted in files: a source may be a bare string (its uri);
`input_size: auto` means None; a sink section may be `true` for its defaults.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from .colour import COLORMAPS
from .errors import ConfigError

SOURCE_KINDS = ("auto", "camera", "file", "url", "images", "external")
SOURCE_MODES = ("auto", "live", "lossless")
TRANSPORTS = ("inproc", "ipc", "tcp")
STREAM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe in file names and topics


class _Invalid(ConfigError):
    """A field's value is invalid; load_config adds the dotted path of the section to the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise _Invalid(key, message)


def _check_size(value: tuple[int, int] | None, key: str) -> None:
    if value is None:
        return
    _require(
        len(value) == 2 and all(v >= 32 and v % 32 == 0 for v in value),
        key,
        f"must be [height, width], multiples of 32 and >= 32, got {list(value)}",
    )


@dataclass(frozen=True)
class ReconnectConfig:
    max_attempts: int = (
        10  # failed reopen attempts in a row before the source is an error; -1: forever
    )
    initial_delay_s: float = 0.5  # wait before the first reopen; doubles after each failed attempt
    max_delay_s: float = 5.0  # cap on the wait between attempts

    def __post_init__(self) -> None:
        _require(self.max_attempts >= -1, "max_attempts", "must be >= -1 (-1 = forever)")
        _require(self.initial_delay_s >= 0, "initial_delay_s", "must be >= 0")
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
    open_timeout_s: float = 5.0  # URL open timeout (FFmpeg); bounds how long a stop can wait
    read_timeout_s: float = 1.0  # URL read timeout; a longer stall is a failure (reconnect)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)  # live sources only

    def __post_init__(self) -> None:
        _require(self.uri != "", "uri", "must not be empty")
        _require(self.id == "" or bool(STREAM_ID.match(self.id)), "id",
                 f"{self.id!r} must match {STREAM_ID.pattern}")  # fmt: skip
        _require(self.kind in SOURCE_KINDS, "kind", f"{self.kind!r} is not one of {SOURCE_KINDS}")
        _require(self.mode in SOURCE_MODES, "mode", f"{self.mode!r} is not one of {SOURCE_MODES}")
        _check_size(self.input_size, "input_size")
        _require(self.fps is None or self.fps > 0, "fps", "must be > 0")
        _require(self.max_frames is None or self.max_frames >= 1, "max_frames", "must be >= 1")
        _require(
            self.camera_size is None or (len(self.camera_size) == 2 and min(self.camera_size) > 0),
            "camera_size",
            "must be [height, width], both > 0",
        )
        _require(self.open_timeout_s > 0, "open_timeout_s", "must be > 0")
        _require(self.read_timeout_s > 0, "read_timeout_s", "must be > 0")


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
        _require(self.max_wait_ms >= 0, "max_wait_ms", "must be >= 0")


@dataclass(frozen=True)
class PostprocessConfig:
    resize_to_source: bool = True  # depth back to each frame's source size (else the model's size)
    depth_range: tuple[float, float] | None = None  # fixed colour range (near, far) m; None: 0..max
    colormap: str = "inferno"  # OpenCV colormap of the colourised view (near is bright)
    side_by_side: bool = False  # view = input frame | colourised depth
    view: bool | None = None  # make the colourised view; None: only when a sink needs it

    def __post_init__(self) -> None:
        r = self.depth_range
        _require(r is None or (len(r) == 2 and 0 <= r[0] < r[1]), "depth_range",
                 f"must be [near, far] with 0 <= near < far, got {r}")  # fmt: skip
        _require(
            self.colormap in COLORMAPS, "colormap", f"{self.colormap!r} not in {sorted(COLORMAPS)}"
        )


@dataclass(frozen=True)
class ZmqSinkConfig:
    endpoint: str = "tcp://127.0.0.1:5556"  # PUB endpoint subscribers connect to (loopback default)
    publish_view: bool = False  # also send the colourised view (BGR uint8) after the depth
    hwm: int = 4  # messages queued per subscriber; a slow subscriber loses frames beyond this

    def __post_init__(self) -> None:
        _require(
            _endpoint_ok(self.endpoint), "endpoint", f"{self.endpoint!r} is not a ZeroMQ endpoint"
        )
        _require(self.hwm >= 1, "hwm", "must be >= 1")


@dataclass(frozen=True)
class FilesSinkConfig:
    directory: str  # files go to DIRECTORY/<stream>/<index:06d>.npy and .png
    npy: bool = True  # float32 metres
    png: bool = True  # uint16 depth * 256 (KITTI convention), saturating at 255.99 m

    def __post_init__(self) -> None:
        _require(self.directory != "", "directory", "must not be empty")
        _require(self.npy or self.png, "npy", "at least one of npy and png must be true")


@dataclass(frozen=True)
class VideoSinkConfig:
    path: str  # .avi (MJPG) or .mp4 (mp4v); "{stream}" is replaced, and added with several streams
    fps: float | None = None  # None: the source's frame rate (30 when it has none)

    def __post_init__(self) -> None:
        ext = os.path.splitext(self.path)[1].lower()
        _require(ext in (".avi", ".mp4"), "path", f"{self.path!r} must end in .avi or .mp4")
        _require(self.fps is None or self.fps > 0, "fps", "must be > 0")


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
        _require(self.kind in TRANSPORTS, "kind", f"{self.kind!r} is not one of {TRANSPORTS}")
        _require(self.hwm >= 1, "hwm", "must be >= 1")
        _require(self.max_message_bytes >= 1024, "max_message_bytes", "must be >= 1024")
        _require(self.linger_ms >= 0, "linger_ms", "must be >= 0")


@dataclass(frozen=True)
class MetricsConfig:
    interval_s: float = 5.0  # seconds between metrics log lines; 0 turns them off
    window: int = 4096  # latency samples kept per stage for the percentiles

    def __post_init__(self) -> None:
        _require(self.interval_s >= 0, "interval_s", "must be >= 0")
        _require(self.window >= 16, "window", "must be >= 16")


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
        ids = [s.id for s in self.sources]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        _require(not dup, "sources", f"stream ids must be unique; repeated: {dup}")

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
            raise ConfigError(f"config: {path} must be a mapping, got {value!r}")
        return _build(tp, value, path)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {path} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config: {path} must have {len(args)} entries, got {list(value)}")
        return tuple(_convert(v, t, f"{path}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {path} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {path} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config: {path} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigError(f"config: {path} must be a string, got {value!r}")
        return str(value)  # a camera index may be written as a number
    raise ConfigError(f"config: {path}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = _dotted(path, str(key))
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
            raise ConfigError(f"config: sources[{i}] must be a uri string or a mapping, got {s!r}")
        out.append(s)
    return {**data, "sources": out}


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """A plain dict (as parsed from YAML/JSON) -> validated Config."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    if "sources" not in data:
        raise ConfigError("config: missing key 'sources'")
    return _build(Config, _normalise_sources(dict(data)), "")


def load_config(source: Config | Mapping[str, Any] | str | os.PathLike) -> Config:
    """A Config, a dict or a YAML/JSON file path -> validated Config (ConfigError if not)."""
    if isinstance(source, Config):
        return source
    if isinstance(source, Mapping):
        return config_from_dict(source)
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot parse config ({e})".replace("\n", " ")) from None
    try:
        return config_from_dict(data if data is not None else {})
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
