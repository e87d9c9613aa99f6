"""Typed configuration of the whole program: frozen dataclasses that validate their values.

Every number has a finite range that the code and the OS accept (a `linger_ms` zmq can take, a
timeout `time.monotonic() + t` can add); a bad value raises `ConfigError` giving the range. Loading
(a file or a dict -> Config, with the dotted key in every message) is in `config_file.py`;
`load_config`, `config_from_dict` and `read_config_file` are importable from here as well.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from .colour import COLORMAPS
from .errors import ConfigError
from .limits import MAX_FPS, MAX_IMAGE_SIDE, MAX_INPUT_SIDE, STREAM_ID

SOURCE_KINDS = ("auto", "camera", "file", "url", "images", "external")
SOURCE_MODES = ("auto", "live", "lossless")
TRANSPORTS = ("inproc", "ipc", "tcp")
FILE_LAYOUTS = ("per_stream", "flat")

MAX_SOURCES = 256  # each source is a capture thread with its own sockets

# Ranges of numbers (inclusive). Upper ends are what the code and the OS accept (zmq options are
# C ints, `time.monotonic() + timeout` must stay a time) and far beyond any sensible setting.
MAX_SECONDS = 3600.0  # timeouts and reconnect delays
MIN_FPS = 0.01  # one frame per 100 s; OpenCV's video writers refuse much less
MAX_DEPTH_M = 10_000.0  # colour range of the view, metres
MAX_HWM = 1_000_000  # zmq high-water marks, messages
MAX_MESSAGE_BYTES = 1 << 31  # 2 GiB; zmq's MAXMSGSIZE takes an int64, a frame is far smaller
MAX_LINGER_MS = 60_000  # zmq's LINGER is a C int of milliseconds

_repr = reprlib.Repr()  # never builds more than a few hundred characters, whatever the value
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6
_repr.maxlevel = 3


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


def to_dict(config: Config) -> dict[str, Any]:
    """Config -> plain dict (lists instead of tuples), e.g. for logging or writing back to YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


# Loading lives in config_file.py, which imports this module; importers of these names from here
# (`from pipeline.config import load_config`) get them on first use, without an import cycle.
_LOADING = ("load_config", "config_from_dict", "read_config_file", "relative_to_file")


def __getattr__(name: str) -> Any:
    if name in _LOADING or name in ("MAX_FILE_BYTES", "MAX_NESTING", "MAX_VALUES"):
        from . import config_file

        return getattr(config_file, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
