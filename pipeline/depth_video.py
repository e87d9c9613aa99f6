"""Lossless depth video (outputs.depth_video, --save-depth-video depth.mkv): one Matroska file per
stream, 16-bit grey FFV1 (gray16le), every frame a keyframe.

Each pixel is round(metres * scale), 0 for no depth (NaN, <= 0), saturating at 65535 (the
16-bit PNG's conversion, pipeline.sinks.depth_to_png16); scale 256 is KITTI's convention (1/256 m
steps, up to 255.99 m). The video stream's tags say how to read it back:

    DEPTH_SCALE=256  DEPTH_UNITS=m  DEPTH_INVALID=0    (metres = value / DEPTH_SCALE)

so depth = frame.to_ndarray() / DEPTH_SCALE is the .npy depth within half a step (0.5 / scale).
Timestamps are the source's (pipeline.video_av.SourceClock), as in the colourised video.

Written as NAME.partial.mkv and renamed when the stream ends or the sink closes (the end of the
run, Ctrl-C, an error elsewhere): every frame written is in the final file. A file that cannot be
written (a full disk) is an error naming it, and its partial file is removed. Needs PyAV
(pip install depthstream[video]).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from glpn.fileio import partial_path

from .config import DepthVideoConfig
from .errors import ConfigError
from .results import DepthResult
from .sinks import Sink, depth_to_png16
from .video_av import TIME_BASE, VIDEO_INSTALL, SourceClock, import_av
from .video_sink import video_path

FFV1_OPTIONS = {"level": "3", "slicecrc": "1", "g": "1"}  # intra-only, a CRC per slice


@dataclass
class _DepthVideo:
    """One stream's depth video while it is written."""

    container: Any  # av OutputContainer, on `partial`
    stream: Any  # its FFV1 video stream
    partial: str
    path: str
    size: tuple[int, int]  # (h, w) of the first frame: every frame must have it
    clock: SourceClock
    frames: int = 0


class DepthVideoSink(Sink):
    """Depth in metres -> uint16 FFV1 .mkv per stream (see the module docstring)."""

    def __init__(self, config: DepthVideoConfig, streams: Sequence[str]) -> None:
        try:
            self._av = import_av()
        except ImportError:
            raise ConfigError(
                f"outputs.depth_video (--save-depth-video) needs PyAV: {VIDEO_INSTALL}"
            ) from None
        self.config = config
        self.several = len(streams) > 1
        self._videos: dict[str, _DepthVideo] = {}
        self.paths: dict[str, str] = {}  # stream -> its complete depth video

    def write(self, result: DepthResult) -> None:
        video = self._videos.get(result.stream) or self._open(result)
        depth = result.depth
        if depth.shape != video.size:
            raise OSError(
                f"cannot write depth video {video.path}: a {depth.shape} frame after "
                f"{video.size} ones (the size must not change within a video)"
            )
        frame = self._av.VideoFrame.from_ndarray(
            depth_to_png16(depth, self.config.scale), format="gray16le"
        )
        frame.pts, frame.time_base = video.clock.pts(result.header), TIME_BASE
        try:
            video.container.mux(video.stream.encode(frame))
        except self._av.FFmpegError as e:
            self._videos.pop(result.stream)
            self._fail(video, e)
        video.frames += 1

    def _open(self, result: DepthResult) -> _DepthVideo:
        av, scale = self._av, self.config.scale
        path = video_path(self.config.path, result.stream, self.several)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        partial = partial_path(path)
        h, w = result.depth.shape
        try:
            container = av.open(partial, "w", format="matroska")
        except av.FFmpegError as e:
            raise OSError(f"cannot write depth video {path}: {e.strerror or e}") from None
        stream = container.add_stream("ffv1", options=FFV1_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = w, h, "gray16le"
        stream.time_base = stream.codec_context.time_base = TIME_BASE
        stream.metadata.update(
            {"DEPTH_SCALE": f"{scale:g}", "DEPTH_UNITS": "m", "DEPTH_INVALID": "0"}
        )
        video = _DepthVideo(container, stream, partial, path, (h, w), SourceClock())
        self._videos[result.stream] = video
        return video

    def end_stream(self, stream: str) -> None:
        video = self._videos.pop(stream, None)
        if video is None:
            return
        try:
            try:
                video.container.mux(video.stream.encode(None))
            finally:
                video.container.close()
        except self._av.FFmpegError as e:
            self._fail(video, e)
        os.replace(video.partial, video.path)
        self.paths[stream] = video.path

    def _fail(self, video: _DepthVideo, error: Exception) -> None:
        """Remove the unusable partial file and raise the error that names the video."""
        with contextlib.suppress(Exception):
            video.container.close()
        with contextlib.suppress(OSError):
            os.remove(video.partial)
        cause = getattr(error, "strerror", None) or str(error)
        raise OSError(
            f"cannot write depth video {video.path}: {cause} after {video.frames} frames "
            "(the incomplete file was removed)"
        )

    def files(self) -> dict[str, str]:
        return {f"depth video, {stream}": path for stream, path in self.paths.items()}

    def close(self) -> None:
        self.end_all(self._videos)


def read_depth_video(path: str) -> tuple[list[np.ndarray], float]:
    """Every frame of a depth video in metres (0 where there is no depth) and its scale."""
    av = import_av()
    with av.open(path) as container:
        stream = container.streams.video[0]
        scale = float(stream.metadata["DEPTH_SCALE"])
        frames = [f.to_ndarray().astype(np.float32) / scale for f in container.decode(stream)]
    return frames, scale
