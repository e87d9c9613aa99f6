"""Live view in a browser (outputs.web, --web [HOST:]PORT): every stream's colourised depth with
its colour bar in metres, the depth under the mouse pointer, and fps, latency and drops per stream,
at http://HOST:PORT/ (the page: pipeline/web/; the server: pipeline.web_server).

What a browser gets per frame: one binary WebSocket message, little-endian,

    u32 n | n bytes of JSON (padded with spaces to an even length) | depth | JPEG

JSON: {"type": "frame", "stream", "index", "t_wall", "latency_ms", "fps", "drops", "delivered",
"view": [h, w], "depth": {"x", "width", "height", "scale"}, "range": [near, far], "jpeg": bytes}.
The JPEG is the picture shown (`view` pixels: the colourised depth, or with outputs.web.side_by_side
the input frame left of it; the depth's columns start at depth.x). The depth is uint16 per pixel,
row-major, at the depth's full resolution: round(metres * scale), scale 256 (the KITTI convention of
the 16-bit PNGs, pipeline.sinks.depth_to_png16), so a value read back is within 1/512 m (2 mm) of
the float depth, up to 255.99 m; 0 = no depth. The page shows it to the centimetre.

The colours are those of the pipeline's own view (pipeline.colour.colorize with postprocess's
depth_range and colormap): its depth part when postprocess made one for another output, else made
here, in the server's thread, only for the frames a browser is sent (at most outputs.web.max_fps
per stream); the input beside it is the frame as captured (result.image, which the pipeline
forwards to the sinks for this), put beside it as postprocess does (colour.side_by_side). Per
stream, `fps` is the sink's delivery rate over the last FPS_WINDOW_S, `latency_ms`
the frame's capture-to-sink latency, `drops` the frames of the stream that never reached the sink
(gaps in its frame indices: dropped on purpose in live mode, or lost).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import time
from collections import deque
from collections.abc import MutableMapping, Sequence
from typing import Any

import cv2
import numpy as np

from .colour import COLORMAPS, colorize, side_by_side
from .config import PostprocessConfig, WebConfig
from .errors import ConfigError
from .foxglove_sink import is_loopback
from .results import DepthResult
from .sinks import PNG_SCALE, Sink, depth_to_png16
from .web_server import WebServer

log = logging.getLogger(__name__)

WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
PAGE_FILES = {  # URL path -> (file in WEB_DIR, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
FPS_WINDOW_S = 2.0  # fps is measured over the deliveries of this long


def page_files() -> dict[str, tuple[str, bytes]]:
    """URL path -> (content type, bytes) of the page, read once."""
    files = {}
    for path, (name, content_type) in PAGE_FILES.items():
        try:
            with open(os.path.join(WEB_DIR, name), "rb") as f:
                files[path] = (content_type, f.read())
        except OSError as e:
            raise ConfigError(f"outputs.web: the page is not installed ({e.filename}: "
                              f"{e.strerror}); reinstall depthstream") from None  # fmt: skip
    return files


def colour_table(colormap: str) -> list[list[int]]:
    """The colormap's 256 colours as RGB, level 0 (far) first: the page draws its colour bar."""
    levels = np.arange(256, dtype=np.uint8).reshape(1, 256)
    bgr = cv2.applyColorMap(levels, COLORMAPS[colormap])[0]
    return bgr[:, ::-1].tolist()


class _Stats:
    """One stream's fps, drops and deliveries, updated in the sink thread (O(1) per frame)."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.delivered = 0
        self.base: int | None = None  # first index counted from (a restarted sender resets it)
        self.since_base = 0
        self.last = -1

    def add(self, result: DepthResult) -> dict[str, Any]:
        now = time.monotonic()
        self.times.append(now)
        while now - self.times[0] > FPS_WINDOW_S:
            self.times.popleft()
        span = self.times[-1] - self.times[0]
        fps = (len(self.times) - 1) / span if span > 0 else 0.0
        index = result.index
        if self.base is None or index <= self.last:
            self.base, self.since_base = index, 0
        self.last = index
        self.since_base += 1
        self.delivered += 1
        return {
            "fps": round(fps, 2),
            "latency_ms": round(result.latency_ms, 1),
            "drops": index - self.base + 1 - self.since_base,
            "delivered": self.delivered,
        }


class WebSink(Sink):
    """Serves the live view, started here and stopped by close(); `url` is where it is."""

    def __init__(
        self,
        config: WebConfig,
        streams: Sequence[str],
        postprocess: PostprocessConfig | None = None,
        *,
        gauges: MutableMapping[str, int] | None = None,
    ) -> None:
        self.config = config
        self.postprocess = postprocess or PostprocessConfig()
        self.streams = list(streams)
        self._stats: dict[str, _Stats] = {s: _Stats() for s in self.streams}
        self._ended: set[str] = set()
        hello = {
            "type": "hello",
            "streams": self.streams,
            "colormap": colour_table(self.postprocess.colormap),
            "max_fps": config.max_fps,
        }
        self.server = WebServer(
            config.host, config.port, streams=self.streams, hello=hello, encode=self.encode,
            files=page_files(), max_fps=config.max_fps, gauges=gauges,
        )  # fmt: skip
        self.url = self.server.url
        log.info("outputs.web: live view on %s", self.url)
        if not is_loopback(config.host):
            log.warning("outputs.web: %s can be reached from the network, by anyone: the view "
                        "has no authentication", self.url)  # fmt: skip

    def write(self, result: DepthResult) -> None:
        stats = self._stats.setdefault(result.stream, _Stats()).add(result)
        self.server.offer(result.stream, (result, stats))  # never waits

    def end_stream(self, stream: str) -> None:
        self._ended.add(stream)
        self.server.end(stream)

    def close(self) -> None:
        finished = set(self.streams) <= self._ended
        self.server.close("every stream ended" if finished else "the run was stopped")

    def view_range(self, result: DepthResult) -> tuple[float, float]:
        """The colours' metric range, as postprocess chooses it for its view."""
        return self.postprocess.depth_range or (0.0, result.header.get("max_depth") or 10.0)

    def encode(self, item: tuple[DepthResult, dict[str, Any]]) -> bytes:
        """One frame's message (module docstring); runs in the server's thread."""
        result, stats = item
        depth = result.depth
        near, far = self.view_range(result)
        h, w = depth.shape
        view = result.view
        if view is None:
            view = colorize(depth, (near, far), self.postprocess.colormap)
        elif view.shape[1] != w:  # postprocess.side_by_side for another output: its depth part
            view = view[:, -w:]
        if self.config.side_by_side and result.image is not None:
            view = side_by_side(result.image, view)
        ok, jpeg = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise ValueError(f"JPEG encoding of a {view.shape} view failed")
        meta = {
            "type": "frame",
            "stream": result.stream,
            "index": result.index,
            "t_wall": result.header.get("t_wall"),
            **stats,
            "view": [int(view.shape[0]), int(view.shape[1])],
            "depth": {"x": int(view.shape[1]) - w, "width": w, "height": h, "scale": PNG_SCALE},
            "range": [near, far],
            "jpeg": int(jpeg.size),
        }
        text = json.dumps(meta).encode()
        text += b" " * (len(text) % 2)  # the depth starts at an even offset (a Uint16Array)
        depth16 = depth_to_png16(depth).astype("<u2", copy=False)
        return b"".join((struct.pack("<I", len(text)), text, depth16.tobytes(), jpeg.tobytes()))
