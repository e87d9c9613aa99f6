"""Recording: one MCAP file per run with ROS 2 messages (outputs.record, --record out.mcap).

Per stream (see pipeline.ros_msgs for the messages):

    /depthstream/<stream>/depth        sensor_msgs/msg/Image, 32FC1, metres, invalid = NaN
    /depthstream/<stream>/camera_info  sensor_msgs/msg/CameraInfo, when the intrinsics are known
    /depthstream/<stream>/points       sensor_msgs/msg/PointCloud2 (outputs.record.points)
    /depthstream/<stream>/image        sensor_msgs/msg/Image, bgr8 (outputs.record.image): the
                                       colourised view (view) or the input frame (input)

Schemas are "ros2msg" definitions, messages CDR, profile "ros2": Foxglove opens the file and
`ros2 bag play` replays it. Every message of a frame has the frame's capture wall-clock time
(header["t_wall"]) as its header stamp, log time and publish time.

The file is written as NAME.partial.mcap and renamed to NAME.mcap when the sink closes (the end of
the run, Ctrl-C, an error: the summary and index are written first), so the final name is always a
complete, indexed file. A killed process (SIGKILL, power loss) leaves NAME.partial.mcap without
summary and index: every chunk written before the kill reads with an MCAP reader that streams the
file instead of seeking to its index (``mcap.reader.NonSeekingReader``; the `mcap recover` CLI
rewrites it whole); the chunk being filled, up to CHUNK_BYTES of messages (one 480x640 depth
frame, more of smaller ones), is lost.

Writing is synchronous in the sink thread, like the .npy files. Per 480x640 frame
(benchmarks/bench_points.py): depth + camera_info ~1 ms uncompressed, ~2.5 ms with zstd (the
default without points); with a full-resolution cloud (3.7 MB) ~4 ms uncompressed, ~6 ms with lz4
(the default with points), ~16 ms with zstd, which saves only 8% of a cloud's bytes. A disk slower
than the frames pushes back on lossless sources, live ones drop as usual.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from glpn.fileio import partial_path

from . import ros_msgs
from .config import RecordConfig
from .errors import ROBOTICS_INSTALL, ConfigError
from .results import DepthResult
from .sinks import Sink

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # a killed run loses at most the chunk being filled (about one VGA frame)



def _writer_class() -> Any:
    try:
        from mcap.writer import CompressionType
        from mcap_ros2.writer import Writer
    except ImportError as e:
        raise ConfigError(
            f"outputs.record (--record) needs mcap-ros2-support: {ROBOTICS_INSTALL} ({e})"
        ) from None
    return Writer, CompressionType


class RecordSink(Sink):
    """Writes every frame's ROS 2 messages to one MCAP file (see the module docstring)."""

    def __init__(self, config: RecordConfig, streams: Sequence[str]) -> None:
        writer_class, compression = _writer_class()
        self.config = config
        self.streams = list(streams)
        self.partial = partial_path(config.path)
        self.path: str | None = None  # the complete file, once closed
        self.messages: dict[str, int] = {}  # topic -> messages written
        self._warned: set[str] = set()
        folder = os.path.dirname(config.path)
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
            self._file = open(self.partial, "wb")  # noqa: SIM115 (closed in close())
        except OSError as e:
            raise OSError(f"cannot write recording {config.path}: {e.strerror or e}") from None
        self.compression = config.compression  # the chunks' (auto resolved)
        if self.compression == "auto":  # clouds barely compress: zstd would triple their cost
            self.compression = "lz4" if config.points else "zstd"
        self._writer = writer_class(
            self._file,
            chunk_size=CHUNK_BYTES,
            compression=getattr(compression, self.compression.upper()),
        )
        self._schemas = {
            name: self._writer.register_msgdef(name, text)
            for name, text in ros_msgs.SCHEMAS.items()
        }

    def write(self, result: DepthResult) -> None:
        t = ros_msgs.stamp_ns(result)
        self._put(result, "depth", ros_msgs.depth_image(result), t)
        self._put(result, "camera_info", ros_msgs.camera_info(result), t)
        if self.config.points:
            self._put(result, "points", ros_msgs.point_cloud(result), t,
                      missing="the frames carry no point cloud (intrinsics and "
                      "postprocess.points needed)")  # fmt: skip
        if self.config.image == "view":
            self._put(result, "image", ros_msgs.bgr_image(result, result.view), t,
                      missing="the frames carry no colourised view (postprocess.view)")  # fmt: skip
        elif self.config.image == "input":
            self._put(result, "image", ros_msgs.bgr_image(result, result.image), t,
                      missing="the frames carry no input frame")  # fmt: skip

    def _put(self, result: DepthResult, kind: str, message: dict | None, t: int,
             missing: str = "") -> None:  # fmt: skip
        topic = ros_msgs.topic(result.stream, kind)
        if message is None:
            if missing and topic not in self._warned:
                self._warned.add(topic)
                log.warning("outputs.record: no %s: %s", topic, missing)
            return
        schema = self._schemas[ros_msgs.TOPICS[kind]]
        seq = self.messages.get(topic, 0)
        self._writer.write_message(topic, schema, message, log_time=t, publish_time=t,
                                   sequence=seq & 0xFFFFFFFF)  # fmt: skip
        self.messages[topic] = seq + 1

    def close(self) -> None:
        """Write the summary and index, close the file and give it its final name."""
        if self._file.closed:
            return
        try:
            self._writer.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise OSError(
                f"cannot finish recording {self.config.path}: {e.strerror or e} "
                f"(what was written is in {self.partial})"
            ) from None
        finally:
            self._file.close()
        os.replace(self.partial, self.config.path)
        self.path = self.config.path
        total = sum(self.messages.values())
        log.info("outputs.record: %d messages on %d topics in %s", total, len(self.messages),
                 self.path)  # fmt: skip

    def files(self) -> dict[str, str]:
        return {"recording (MCAP, ROS 2)": self.path} if self.path else {}
