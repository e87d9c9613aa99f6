"""Videos written through PyAV (FFmpeg): H.264 .mp4 for the colourised view (pipeline.sinks
VideoSink) and the timing both it and the lossless depth video (pipeline.depth_video) use.

H.264 (libx264, which PyAV's wheels bundle), yuv420p, in MP4 with `movflags=+faststart` (the index
before the data): what browsers play, and start playing before the whole file is read. yuv420p
needs an even width and height: an odd one gets one more column or row, a copy of the last one
(padding keeps every pixel of the view; scaling would blur all of them).

Timestamps are the source's, not the rate frames arrive at (`SourceClock`). PyAV raises on every
encoder and write error (a full disk included), unlike OpenCV's writer, which fails silently.

`av` is an optional extra (pip install depthstream[video]); it is imported only here, when a
video is opened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

VIDEO_INSTALL = "pip install depthstream[video]"  # what .mp4 as H.264 and depth videos need
TIME_BASE = Fraction(1, 90_000)  # the MPEG clock: 1/25, 1/30 and 1001/30000 s are whole ticks
X264_OPTIONS = {"preset": "veryfast", "crf": "20"}  # ~3 ms per 640x480 frame; PSNR > 40 dB


def import_av() -> Any:
    """The `av` module; ImportError when it is not installed."""
    import av

    return av


class SourceClock:
    """Seconds since a stream's first frame, from the frame headers, in the source's own time.

    A file's frames carry their number (position.frame) and the file's rate (fps): its frame
    N is at N / fps, whatever the pipeline's speed, and frames a live run dropped leave gaps.
    Other sources (cameras, URLs, image folders) use the capture time (t_mono). `fps` set
    (outputs.video.fps) overrides both: frame k written is at k / fps. Times never go back:
    a frame at or before the previous one is put one tick after it.
    """

    def __init__(self, fps: float | None = None) -> None:
        self.fps = fps  # a fixed rate, or None: the source's timing
        self._first: float | None = None
        self._count = 0
        self._last_pts = -1

    def pts(self, header: dict[str, Any]) -> int:
        """The frame's presentation time in TIME_BASE ticks (0 for the first frame)."""
        t = self._seconds(header)
        if self._first is None:
            self._first = t
        self._count += 1
        pts = max(round((t - self._first) / TIME_BASE), self._last_pts + 1)
        self._last_pts = pts
        return pts

    def _seconds(self, header: dict[str, Any]) -> float:
        if self.fps:
            return self._count / self.fps
        position, fps = header.get("position"), header.get("fps")
        frame = position.get("frame") if isinstance(position, dict) else None
        if isinstance(frame, int) and isinstance(fps, (int, float)) and fps > 0:
            return frame / fps
        return float(header["t_mono"])


def even_size(w: int, h: int) -> tuple[int, int]:
    """The size yuv420p can hold: odd sides one pixel larger."""
    return w + w % 2, h + h % 2


def pad_to(image: np.ndarray, w: int, h: int) -> np.ndarray:
    """`image` with its last column / row repeated up to w x h (at most one of each)."""
    dh, dw = h - image.shape[0], w - image.shape[1]
    if dh or dw:
        image = np.pad(image, ((0, dh), (0, dw), (0, 0)), mode="edge")
    return image


class H264Writer:
    """One .mp4 file: BGR frames in, H.264 yuv420p out, timed by `SourceClock` pts.

    Every error FFmpeg reports is raised as an OSError with FFmpeg's message (errno ENOSPC for a
    full disk).
    """

    def __init__(self, path: str, size: tuple[int, int], fps: float) -> None:
        av = import_av()
        self.size = even_size(*size)  # (w, h) in the file
        self.container = av.open(path, "w", format="mp4", options={"movflags": "+faststart"})
        try:
            rate = Fraction(fps).limit_denominator(1001)  # nominal rate (the pts are the timing)
            stream = self.container.add_stream("libx264", rate=rate, options=X264_OPTIONS)
            stream.width, stream.height = self.size
            stream.pix_fmt = "yuv420p"
            stream.time_base = stream.codec_context.time_base = TIME_BASE
        except BaseException:
            self.container.close()
            raise
        self.stream = stream
        self._av = av

    def write(self, bgr: np.ndarray, pts: int) -> None:
        frame = self._av.VideoFrame.from_ndarray(pad_to(bgr, *self.size), format="bgr24")
        frame.pts, frame.time_base = pts, TIME_BASE
        with self._as_oserror():
            self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        """Flush the encoder, write the index (moved to the front) and close the file."""
        with self._as_oserror():
            try:
                self.container.mux(self.stream.encode(None))
            finally:
                self.container.close()

    @contextlib.contextmanager
    def _as_oserror(self) -> Iterator[None]:
        try:
            yield
        except self._av.FFmpegError as e:
            if isinstance(e, OSError):
                raise
            raise OSError(e.errno, e.strerror or str(e)) from None

    def abort(self) -> None:
        """Close without raising (the file is being removed)."""
        with contextlib.suppress(Exception):  # the file is unusable either way
            self.container.close()


def decodes_to_last_frame(path: str, frames: int) -> bool:
    """Whether `path` holds `frames` video packets and its last group of pictures (from the last
    keyframe to the end) decodes to as many frames: the whole file is read, only the end decoded."""
    av = import_av()
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            count, tail = 0, []
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                count += 1
                if packet.is_keyframe:
                    tail = []
                tail.append(packet)
            if count != frames or not tail:
                return False
            decoder = av.CodecContext.create(stream.codec_context.name, "r")
            decoder.extradata = stream.codec_context.extradata
            decoded = sum(len(decoder.decode(p)) for p in tail) + len(decoder.decode(None))
            return decoded == len(tail)
    except (av.FFmpegError, OSError, IndexError):
        return False
