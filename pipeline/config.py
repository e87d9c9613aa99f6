"""Typed configuration of the whole program: frozen dataclasses that validate their values.

Every number has a finite range that the code and the OS accept (a `linger_ms` zmq can take, a
timeout `time.monotonic() + t` can add); a bad value raises `ConfigError` giving the range. Loading
(a file or a dict -> Config, with the dotted key in every message) is in `config_file.py`, the
ranges and checks in `config_checks.py`, the outputs' configs in `config_outputs.py`; all of
them, `load_config`, `config_from_dict` and `read_config_file` are importable from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .colour import COLORMAPS
from .config_checks import (  # noqa: F401 (some only re-exported)
    FRAME_ID,
    MAX_DEPTH_M,
    MAX_HWM,
    MAX_LINGER_MS,
    MAX_MESSAGE_BYTES,
    MAX_POINTS_STRIDE,
    MAX_SECONDS,
    MAX_SOURCES,
    MIN_FPS,
    RTSP_TRANSPORTS,
    SOURCE_KINDS,
    SOURCE_MODES,
    SOURCE_READERS,
    TRANSPORTS,
    _check_camera,
    _check_size,
    _in_range,
    _Invalid,
    _is_number,
    _require,
    _short,
)
from .config_network import ENCODINGS, IngestConfig, WorkersConfig  # noqa: F401
from .config_outputs import (  # noqa: F401 (part of this module's API)
    DepthVideoConfig,
    FilesSinkConfig,
    FoxgloveConfig,
    OutputsConfig,
    PointsSinkConfig,
    RecordConfig,
    RerunConfig,
    VideoSinkConfig,
    WebConfig,
    WindowSinkConfig,
    ZmqSinkConfig,
)
from .curve import CurveConfig  # noqa: F401
from .limits import MAX_FPS, MAX_IMAGE_SIDE, MAX_INPUT_SIDE, STREAM_ID  # noqa: F401


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
    reader: str = "auto"  # what reads a URL: auto (PyAV if installed, else OpenCV) | opencv | pyav
    rtsp_transport: str = "auto"  # rtsp:// through PyAV: auto (FFmpeg's choice) | tcp | udp
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)  # live sources only
    intrinsics: tuple[float, float, float, float] | None = (
        None  # fx, fy, cx, cy in pixels at the source resolution
    )
    hfov_deg: float | None = (
        None  # or a horizontal field of view (square pixels, centred principal point)
    )
    frame_id: str = ""  # "" -> "<stream>_optical" (REP-103 optical: z forward, x right, y down)

    def __post_init__(self) -> None:
        _require(self.uri != "", "uri", "must not be empty")
        _check_camera(self.intrinsics, self.hfov_deg)
        _require(self.frame_id == "" or bool(FRAME_ID.fullmatch(self.frame_id)), "frame_id",
                 f"{_short(self.frame_id)} must match {FRAME_ID.pattern}")  # fmt: skip
        _require(self.id == "" or bool(STREAM_ID.fullmatch(self.id)), "id",
                 f"{_short(self.id)} must match {STREAM_ID.pattern}")  # fmt: skip
        _require(self.kind in SOURCE_KINDS, "kind",
                 f"{_short(self.kind)} is not one of {SOURCE_KINDS}")  # fmt: skip
        _require(self.mode in SOURCE_MODES, "mode",
                 f"{_short(self.mode)} is not one of {SOURCE_MODES}")  # fmt: skip
        _require(self.reader in SOURCE_READERS, "reader",
                 f"{_short(self.reader)} is not one of {SOURCE_READERS}")  # fmt: skip
        _require(self.rtsp_transport in RTSP_TRANSPORTS, "rtsp_transport",
                 f"{_short(self.rtsp_transport)} is not one of {RTSP_TRANSPORTS}")  # fmt: skip
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
    simulate_ms: float = 40.0  # backend simulate: the delay of one batch (no model is run)

    def __post_init__(self) -> None:
        _check_size(self.input_size, "input_size")
        _in_range(self.simulate_ms, "simulate_ms", 0, 60_000)
        _require(
            1 <= self.max_batch <= 256, "max_batch", f"must be in 1..256, got {self.max_batch}"
        )
        _in_range(self.max_wait_ms, "max_wait_ms", 0, 10_000)


@dataclass(frozen=True)
class PointsConfig:
    stride: int = 1  # keep every stride-th pixel in each direction (2: a quarter of the points)
    max_range_m: float | None = None  # drop points whose depth is beyond this (m); None: keep all
    colour: bool = False  # colour each point from the input frame (RGB uint8)

    def __post_init__(self) -> None:
        _in_range(self.stride, "stride", 1, MAX_POINTS_STRIDE)
        _in_range(self.max_range_m, "max_range_m", 0, MAX_DEPTH_M, above=True)


@dataclass(frozen=True)
class TemporalConfig:
    alpha: float = 0.4  # weight of the new frame in the moving average, (0..1]; 1: no smoothing
    reset: float = 0.1  # relative change |d - avg| / avg above which a pixel takes the new value

    def __post_init__(self) -> None:
        _in_range(self.alpha, "alpha", 0, 1, above=True)
        _in_range(self.reset, "reset", 0, 10, above=True)


@dataclass(frozen=True)
class PostprocessConfig:
    resize_to_source: bool = True  # depth back to each frame's source size (else the model's size)
    depth_range: tuple[float, float] | None = None  # fixed colour range (near, far) m; None: 0..max
    colormap: str = "inferno"  # OpenCV colormap of the colourised view (near is bright)
    side_by_side: bool = False  # view = input frame | colourised depth
    view: bool | None = None  # make the colourised view; None: only when a sink needs it
    points: PointsConfig | None = None  # point clouds; None: defaults only when a sink needs them
    temporal: TemporalConfig | None = None  # flicker control per stream; None: off

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
    port: int | None = None  # Prometheus endpoint (pipeline.prometheus); 0: any free one; None: off
    host: str = "127.0.0.1"  # address it binds to (loopback: only this machine can scrape it)

    def __post_init__(self) -> None:
        v = self.interval_s  # a tiny period would only flood the log
        _require(v == 0 or (_is_number(v) and 0.01 <= v <= 86_400), "interval_s",
                 f"must be 0 (off) or in 0.01..86400, got {_short(v)}")  # fmt: skip
        _in_range(self.window, "window", 16, 1_000_000)
        _in_range(self.port, "port", 0, 65535)
        _require(isinstance(self.host, str) and self.host.strip() == self.host != "", "host",
                 f"{_short(self.host)} is not a host name or address")  # fmt: skip


@dataclass(frozen=True)
class Config:
    sources: tuple[SourceConfig, ...]  # at least one; stream ids unique
    model: ModelConfig = field(default_factory=ModelConfig)  # engine and micro-batching
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)  # depth + view
    outputs: OutputsConfig = field(default_factory=OutputsConfig)  # sinks (any number)
    transport: TransportConfig = field(default_factory=TransportConfig)  # links between stages
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # log, summary, Prometheus
    workers: WorkersConfig | None = None  # inference on worker processes/hosts; None: in process
    ingest: IngestConfig | None = None  # remote cameras (external sources) push frames here

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
        self._check_points()

    def _check_points(self) -> None:
        """Point clouds asked for explicitly need every source's camera."""
        ply = self.outputs.points
        _require(ply is None or ply.layout != "flat" or len(self.sources) == 1,
                 "outputs.points.layout", "flat needs a single source")  # fmt: skip
        asked = "postprocess.points" if self.postprocess.points else "outputs.points" if ply else ""
        for i, s in enumerate(self.sources):
            _require(not asked or s.intrinsics is not None or s.hfov_deg is not None,
                     f"sources[{i}].intrinsics",
                     f"{asked} needs the camera: set intrinsics or hfov_deg")  # fmt: skip

    def points_config(self) -> PointsConfig | None:
        """The point clouds postprocess computes, once per frame: postprocess.points, or its
        defaults when an output wants them (PLY files, a recording's or Foxglove's points);
        None: none. Only frames whose stream has a camera get one."""
        if self.postprocess.points is not None:
            return self.postprocess.points
        out = self.outputs
        wanted = (
            out.points is not None
            or (out.record is not None and out.record.points)
            or (out.foxglove is not None and out.foxglove.points)
        )
        return PointsConfig() if wanted else None

    def stream_ids(self) -> list[str]:
        return [s.id for s in self.sources]


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
