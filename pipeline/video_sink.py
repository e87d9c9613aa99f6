"""The colourised video output: H.264 .mp4 through PyAV (pipeline.video_av), MJPG .avi through
OpenCV; written as NAME.partial.EXT and renamed only once it plays to its last frame."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import cv2
import numpy as np

from glpn.fileio import partial_path

from . import video_av
from .config import VideoSinkConfig
from .results import DepthResult
from .sinks import Sink
from .video_av import SourceClock

log = logging.getLogger(__name__)


def video_path(template: str, stream: str, several: bool) -> str:
    """The video file of `stream`: "{stream}" replaced, or added before the extension if several."""
    if "{stream}" in template:
        return template.replace("{stream}", stream)
    if several:
        root, ext = os.path.splitext(template)
        return f"{root}_{stream}{ext}"
    return template


@dataclass
class _Video:
    """One stream's video while it is written."""

    writer: Any  # H264Writer (pipeline.video_av) or _OpenCvWriter: write(bgr, pts), close, abort
    partial: str  # written here, renamed to `path` once it plays to its last frame
    path: str
    size: tuple[int, int]  # (w, h): every frame is resized to the first one's size
    clock: SourceClock  # pts from the source's timing (used by the H.264 writer)
    check: Callable[[str, int], bool]  # whether the closed file decodes to its last frame
    frames: int = 0


class _OpenCvWriter:
    """MJPG (.avi) or mp4v (.mp4 without PyAV) through OpenCV: a fixed rate, the pts unused."""

    def __init__(self, path: str, size: tuple[int, int], fps: float, fourcc: str) -> None:
        self.writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), float(fps), size)
        if not self.writer.isOpened():
            raise OSError(f"cannot write video {path} ({fourcc}, {size[0]}x{size[1]})")

    def write(self, bgr: np.ndarray, pts: int) -> None:
        self.writer.write(bgr)

    def close(self) -> None:
        self.writer.release()

    abort = close


class VideoSink(Sink):
    """Colourised view to a video per stream: .mp4 as H.264 (PyAV, pipeline.video_av; browsers
    play it), .avi as MJPG (OpenCV). Without PyAV, .mp4 is mp4v through OpenCV, with a warning.

    Written as NAME.partial.EXT and renamed when closed, so the final name is always a complete
    file. OpenCV's writer reports no write errors (a full disk gives a truncated file and no
    error), so the sink checks for itself: it stops with an error naming the file as soon as the
    disk is full (or the encoder reports an error), and on closing it renames a video only once
    it holds every frame and its last frame decodes; one that does not is removed and is an error.
    """

    FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}  # what OpenCV writes
    MIN_FREE_BYTES = 64 * 1024  # less free space than this after a frame: the disk is full

    def __init__(self, config: VideoSinkConfig, streams: Sequence[str]) -> None:
        self.config = config
        self.several = len(streams) > 1
        self._videos: dict[str, _Video] = {}
        self._warned = False
        self.frames: dict[str, int] = {}
        self.paths: dict[str, str] = {}  # stream -> its complete video (only once it is one)

    def write(self, result: DepthResult) -> None:
        view = result.view
        if view is None:
            return
        video = self._videos.get(result.stream) or self._open(result, view)
        w, h = video.size
        if view.shape[:2] != (h, w):  # size must not change within a video
            view = cv2.resize(view, (w, h), interpolation=cv2.INTER_AREA)
        try:
            video.writer.write(np.ascontiguousarray(view), video.clock.pts(result.header))
        except OSError as e:
            self._videos.pop(result.stream)
            self._fail(video, self._cause(video, e))
        video.frames += 1
        self.frames[result.stream] = video.frames
        if _free_bytes(video.partial) < self.MIN_FREE_BYTES:
            self._videos.pop(result.stream)
            self._fail(video, "no space left on device")

    def _open(self, result: DepthResult, view: np.ndarray) -> _Video:
        path = video_path(self.config.path, result.stream, self.several)
        ext = os.path.splitext(path)[1].lower()
        fps = self.config.fps or result.header.get("fps") or 30.0
        h, w = view.shape[:2]
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        partial = partial_path(path)
        writer, check = self._writer(ext, partial, (w, h), fps)
        video = _Video(writer, partial, path, (w, h), SourceClock(self.config.fps), check)
        self._videos[result.stream] = video
        return video

    def _writer(self, ext: str, partial: str, size: tuple[int, int], fps: float):
        """The writer for `ext` and the check of its closed file."""
        if ext == ".mp4":
            try:
                video_av.import_av()
            except ImportError:
                if not self._warned:
                    log.warning(
                        "outputs.video: PyAV is not installed, so .mp4 is mp4v, which "
                        "browsers don't play (H.264 needs: %s)",
                        video_av.VIDEO_INSTALL,
                    )
                    self._warned = True
            else:
                try:
                    writer = video_av.H264Writer(partial, size, fps)
                except OSError as e:
                    raise OSError(f"cannot write video {partial}: {e.strerror or e}") from None
                return writer, video_av.decodes_to_last_frame
        return _OpenCvWriter(partial, size, fps, self.FOURCC[ext]), _plays_to_last_frame

    def _cause(self, video: _Video, error: OSError) -> str:
        if _free_bytes(video.partial) < self.MIN_FREE_BYTES or error.errno == errno.ENOSPC:
            return "no space left on device"
        return error.strerror or str(error)

    def end_stream(self, stream: str) -> None:
        video = self._videos.pop(stream, None)
        if video is None:
            return
        try:
            video.writer.close()
        except OSError as e:
            self._fail(video, self._cause(video, e))
        if video.check(video.partial, video.frames):
            os.replace(video.partial, video.path)
            self.paths[stream] = video.path
            return
        full = _free_bytes(video.partial) < self.MIN_FREE_BYTES
        self._fail(video, "no space left on device" if full else "the file does not play back")

    def _fail(self, video: _Video, cause: str) -> NoReturn:
        """Remove the unusable partial video and raise the error that names it."""
        video.writer.abort()
        with contextlib.suppress(OSError):
            os.remove(video.partial)
        raise OSError(
            f"cannot write video {video.path}: {cause} after {video.frames} frames "
            "(the incomplete file was removed)"
        )

    def files(self) -> dict[str, str]:
        return {f"video, {stream}": path for stream, path in self.paths.items()}

    def close(self) -> None:
        self.end_all(self._videos)


def _free_bytes(path: str) -> int:
    """Space left for this process on the filesystem holding `path`."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return 1 << 62  # unknown: the check on closing still applies
    return st.f_bavail * st.f_frsize


def _plays_to_last_frame(path: str, frames: int) -> bool:
    """Whether `path` opens in OpenCV, says it holds `frames` frames, and its last one decodes."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened() or int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) < frames:
            return False
        cap.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
        ok, _ = cap.read()
        return ok
    finally:
        cap.release()
