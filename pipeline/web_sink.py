"""Live view in a browser (outputs.web, --web [HOST:]PORT): every stream's colourised depth with
its colour bar in metres, the depth under the mouse pointer, and fps, latency and drops per stream,
at http://HOST:PORT/ (the page: pipeline/web/; the server: pipeline.web_server).

What a browser gets per frame: one binary WebSocket message, little-endian,

    u32 n | n bytes of JSON (padded with spaces to an even length) | [depth] | [levels] | JPEG

JSON: {"type": "frame", "stream", "index", "t_wall", "latency_ms", "fps", "drops", "delivered",
"view": [h, w], "depth": {"x", "width", "height", "scale", "values"}, "levels": bool, "range":
[near, far], "jpeg": bytes}. The picture shown is `view` pixels: the colourised depth, or with
outputs.web.side_by_side the input frame left of it (the depth's columns start at depth.x).

- depth, present when depth.values is true: uint16 per pixel, row-major, at the depth's full
  resolution: round(metres * scale), scale 256 (the KITTI convention of the 16-bit PNGs,
  pipeline.sinks.depth_to_png16), so a value read back is within 1/512 m (2 mm) of the float
  depth, up to 255.99 m; 0 = no depth. The page shows it to the centimetre.
- levels, present when "levels" is true: the colourised depth as uint8 colour levels
  (pipeline.colour.levels, row-major, depth.width x depth.height); a pixel's colour is the
  colormap's entry at its level (the 256 colours come in the hello message). The JPEG then holds
  only the input frame beside it (or is empty, 0 bytes).
- JPEG: the whole picture, or with levels the input part only.

How the picture travels (outputs.web.encoding): as levels the page colours it itself with a
lookup, no JPEG to encode here or to decode there (a 480x640 frame: ~1 ms less CPU here and
~3 ms less in a software-rendering Chromium) but 300 KB; as JPEG ~30-60 KB. `auto`: levels to a
browser on this host (loopback, or this host's own address: it shares the CPU, bytes cost
nothing), JPEG to a browser elsewhere.

The depth values travel only where they are read: for the streams the page has the pointer over
(it says so: {"depth": [STREAM, ...]}), and with each stream's last frame at the end of the run,
so the picture left on the page stays readable. They are 600 KB a 480x640 frame (18 MB/s a
stream at 30 fps, per browser), for a number read only under the pointer.

The colours are those of the pipeline's own view (pipeline.colour.colorize with postprocess's
depth_range and colormap): as JPEG its depth part when postprocess made one for another output,
else made here; as levels always made here from the depth (the same levels colorize maps); here
means in the server's thread, only for the frames a browser is sent (at most outputs.web.max_fps
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
from functools import cached_property
from typing import Any

import cv2
import numpy as np

from .colour import COLORMAPS, colorize, fit, levels, side_by_side
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

    def encode(self, item: tuple[DepthResult, dict[str, Any]]) -> ViewFrame:
        """One frame for the browsers; its parts are made when a browser first wants them, in
        the server's thread."""
        result, stats = item
        return ViewFrame(self, result, stats)

    def as_levels(self, local: bool) -> bool:
        """Whether a browser gets the depth's colours as levels (on this host) or in a JPEG."""
        return self.config.encoding == "levels" or (self.config.encoding == "auto" and local)

    def jpeg(self, image: np.ndarray) -> bytes:
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.config.jpeg_quality])
        if not ok:
            raise ValueError(f"JPEG encoding of a {image.shape} picture failed")
        return jpeg.tobytes()

    def picture(self, result: DepthResult) -> np.ndarray:
        """The colourised depth, with the input beside it when asked for (BGR)."""
        view, w = result.view, result.depth.shape[1]
        if view is None:
            view = colorize(result.depth, self.view_range(result), self.postprocess.colormap)
        elif view.shape[1] != w:  # postprocess.side_by_side for another output: its depth part
            view = view[:, -w:]
        if self.config.side_by_side and result.image is not None:
            view = side_by_side(result.image, view)
        return view


class ViewFrame:
    """One frame's message (module docstring) in each form a browser is sent (with or without
    the depth values, levels or JPEG), each made once, when first wanted, and the same bytes for
    every browser that wants that form."""

    def __init__(self, sink: WebSink, result: DepthResult, stats: dict[str, Any]) -> None:
        self.sink, self.result, self.stats = sink, result, stats
        self.beside = sink.config.side_by_side and result.image is not None
        self._payloads: dict[tuple[bool, bool], bytes] = {}

    @cached_property
    def depth16(self) -> bytes:
        return depth_to_png16(self.result.depth).astype("<u2", copy=False).tobytes()

    @cached_property
    def level_bytes(self) -> bytes:
        return levels(self.result.depth, self.sink.view_range(self.result)).tobytes()

    @cached_property
    def input_jpeg(self) -> bytes:
        """The input frame beside the levels (none without side_by_side)."""
        if not self.beside:
            return b""
        return self.sink.jpeg(fit(self.result.image, *self.result.depth.shape))

    @cached_property
    def picture_jpeg(self) -> bytes:
        return self.sink.jpeg(self.sink.picture(self.result))

    def payload(self, values: bool, local: bool) -> bytes:
        """The message with the depth values or not, for a browser on this host or not."""
        as_levels = self.sink.as_levels(local)
        got = self._payloads.get((values, as_levels))
        if got is None:
            result = self.result
            h, w = result.depth.shape
            x = w if self.beside else 0
            jpeg = self.input_jpeg if as_levels else self.picture_jpeg
            meta = {
                "type": "frame",
                "stream": result.stream,
                "index": result.index,
                "t_wall": result.header.get("t_wall"),
                **self.stats,
                "view": [h, x + w],
                "depth": {"x": x, "width": w, "height": h, "scale": PNG_SCALE, "values": values},
                "levels": as_levels,
                "range": list(self.sink.view_range(result)),
                "jpeg": len(jpeg),
            }
            text = json.dumps(meta).encode()
            text += b" " * (len(text) % 2)  # the depth starts at an even offset (a Uint16Array)
            parts = [struct.pack("<I", len(text)), text]
            parts += [self.depth16] if values else []
            parts += [self.level_bytes] if as_levels else []
            got = self._payloads[(values, as_levels)] = b"".join((*parts, jpeg))
        return got
