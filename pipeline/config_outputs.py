"""Configs of the outputs (sinks): PUB, files, video, window, point clouds, recordings, live
views. Part of pipeline.config, which re-exports every name here."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .config_checks import (
    FILE_LAYOUTS,
    MAX_HWM,
    MAX_SECONDS,
    MIN_FPS,
    RECORD_COMPRESSIONS,
    RECORD_IMAGES,
    WEB_ENCODINGS,
    _endpoint_ok,
    _in_range,
    _require,
    _short,
)
from .curve import CurveConfig
from .limits import MAX_FPS


@dataclass(frozen=True)
class ZmqSinkConfig:
    endpoint: str = "tcp://127.0.0.1:5556"  # PUB endpoint subscribers connect to (loopback default)
    publish_view: bool = False  # also send the colourised view (BGR uint8) after the depth
    hwm: int = 4  # messages queued per subscriber; a slow subscriber loses frames beyond this
    wait_subscribers: int = 0  # send only once this many subscriptions arrived; 0: don't wait
    wait_timeout_s: float = 10.0  # from the first frame, how long to wait for them; then an error
    curve: CurveConfig = field(default_factory=CurveConfig)  # keys: secret + allow (subscribers')

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
    path: str  # .mp4 (H.264) or .avi (MJPG); "{stream}" is replaced, and added with several streams
    fps: float | None = None  # None: the source's frame rate and timestamps (30 when it has none)

    def __post_init__(self) -> None:
        ext = os.path.splitext(self.path)[1].lower()
        _require(ext in (".avi", ".mp4"), "path", f"{_short(self.path)} must end in .avi or .mp4")
        _in_range(self.fps, "fps", MIN_FPS, MAX_FPS)


@dataclass(frozen=True)
class DepthVideoConfig:
    path: str  # .mkv, lossless 16-bit grey FFV1; "{stream}" is replaced, added with several streams
    scale: float = 256.0  # uint16 value = metres * scale (KITTI: 256, to 255.99 m); 0 = no depth

    def __post_init__(self) -> None:
        _require(self.path.lower().endswith(".mkv"), "path",
                 f"{_short(self.path)} must end in .mkv")  # fmt: skip
        _in_range(self.scale, "scale", 1.0, 10000.0)


@dataclass(frozen=True)
class WindowSinkConfig:
    title: str = "depthstream"  # window title prefix (one window per stream); q or Esc stops


@dataclass(frozen=True)
class PointsSinkConfig:
    directory: str  # DIRECTORY/<stream>/<index:06d>.ply: binary PLY, x y z float32 m (+ colour)
    layout: str = "per_stream"  # per_stream: DIRECTORY/<stream>/...; flat: DIRECTORY/... (1 stream)

    def __post_init__(self) -> None:
        _require(self.directory != "", "directory", "must not be empty")
        _require(self.layout in FILE_LAYOUTS, "layout",
                 f"{_short(self.layout)} is not one of {FILE_LAYOUTS}")  # fmt: skip

    def folder(self, stream: str) -> str:
        """Where the point clouds of `stream` go."""
        return self.directory if self.layout == "flat" else os.path.join(self.directory, stream)


@dataclass(frozen=True)
class RecordConfig:
    path: str  # one .mcap file per run, ROS 2 messages (pipeline.record_mcap); topics per stream
    points: bool = False  # also .../points (PointCloud2) when the frame has a point cloud
    image: str = "none"  # also .../image (bgr8): none | view (colourised) | input (as captured)
    # auto: zstd, or lz4 with points (zstd saves 8% of a cloud for ~10 ms a VGA frame) | zstd
    # (~20% smaller depth, ~2-5 ms a VGA frame) | lz4 | none
    compression: str = "auto"

    def __post_init__(self) -> None:
        _require(self.path.lower().endswith(".mcap"), "path",
                 f"{_short(self.path)} must end in .mcap")  # fmt: skip
        _require(self.image in RECORD_IMAGES, "image",
                 f"{_short(self.image)} is not one of {RECORD_IMAGES}")  # fmt: skip
        _require(self.compression in RECORD_COMPRESSIONS, "compression",
                 f"{_short(self.compression)} is not one of {RECORD_COMPRESSIONS}")  # fmt: skip


@dataclass(frozen=True)
class FoxgloveConfig:
    host: str = "127.0.0.1"  # address the Foxglove WebSocket server binds to (loopback default)
    port: int = 8765  # its port; 0: any free port (the bound one is in Pipeline.endpoints)
    backlog: int = 8  # messages queued per client (all topics); a slow one loses the oldest
    points: bool = True  # publish .../points (PointCloud2) when the frame has a point cloud
    image: str = "none"  # also .../image (bgr8): none | view (colourised) | input (as captured)

    def __post_init__(self) -> None:
        _require(isinstance(self.host, str) and self.host.strip() == self.host != "", "host",
                 f"{_short(self.host)} is not a host name or address")  # fmt: skip
        _in_range(self.port, "port", 0, 65535)
        _in_range(self.backlog, "backlog", 4, MAX_HWM)
        _require(self.image in RECORD_IMAGES, "image",
                 f"{_short(self.image)} is not one of {RECORD_IMAGES}")  # fmt: skip


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"  # address the live browser view binds to (loopback default)
    port: int = 8080  # its port; 0: any free port (logged, Pipeline.endpoints["web"])
    side_by_side: bool = False  # the input frame beside the depth (the frame travels to the sink)
    jpeg_quality: int = 90  # JPEG quality of the picture sent to browsers (10..100)
    max_fps: float = 30.0  # frames per second per stream sent at most (bounds the encoding work)
    # How the colourised depth travels: levels = 1 byte a pixel the page colours itself (no JPEG
    # to encode or decode: the least CPU), jpeg = JPEG (~10x fewer bytes); auto: levels to a
    # browser on this host (it shares the CPU, the bytes are free), JPEG to one elsewhere.
    encoding: str = "auto"

    def __post_init__(self) -> None:
        _require(self.encoding in WEB_ENCODINGS, "encoding",
                 f"{_short(self.encoding)} is not one of {WEB_ENCODINGS}")  # fmt: skip
        _require(isinstance(self.host, str) and self.host.strip() == self.host != "", "host",
                 f"{_short(self.host)} is not a host name or address")  # fmt: skip
        _in_range(self.port, "port", 0, 65535)
        _in_range(self.jpeg_quality, "jpeg_quality", 10, 100)
        _require(isinstance(self.jpeg_quality, int), "jpeg_quality", "must be an integer")
        _in_range(self.max_fps, "max_fps", MIN_FPS, MAX_FPS)


@dataclass(frozen=True)
class RerunConfig:
    path: str = ""  # .rrd file per run (pipeline.rerun_sink); "": none
    connect: str = ""  # live viewer, e.g. rerun+http://127.0.0.1:9876/proxy; "": none
    image: str = "none"  # also <stream>/camera/image (BGR): none | view | input (the frame)

    def __post_init__(self) -> None:
        _require(bool(self.path or self.connect), "path", "give path (.rrd), connect, or both")
        _require(not self.path or self.path.lower().endswith(".rrd"), "path",
                 f"{_short(self.path)} must end in .rrd")  # fmt: skip
        _require(not self.connect or bool(re.match(r"^rerun(\+https?)?://.+", self.connect)),
                 "connect", f"{_short(self.connect)} is not a Rerun URL "
                 "(rerun+http://HOST:PORT/proxy)")  # fmt: skip
        _require(self.image in RECORD_IMAGES, "image",
                 f"{_short(self.image)} is not one of {RECORD_IMAGES}")  # fmt: skip


@dataclass(frozen=True)
class OutputsConfig:
    zmq: ZmqSinkConfig | None = None  # publish depth for other programs (pipeline.client)
    files: FilesSinkConfig | None = None  # per-frame .npy / 16-bit .png
    video: VideoSinkConfig | None = None  # colourised depth video
    depth_video: DepthVideoConfig | None = None  # lossless depth video (--save-depth-video)
    window: WindowSinkConfig | None = (
        None  # on-screen view; skipped with a warning without a display
    )
    foxglove: FoxgloveConfig | None = None  # Foxglove WebSocket server (ROS 2 topics, live)
    record: RecordConfig | None = None  # ROS 2 recording (.mcap): depth, camera_info, ...
    points: PointsSinkConfig | None = None  # per-frame point clouds, binary PLY (--save-points)
    rerun: RerunConfig | None = None  # Rerun: .rrd file and/or live viewer (--rerun)
    web: WebConfig | None = None  # live view in a browser, served by the pipeline (--web)
