"""Postprocess stage: depth back to each frame's source size in metres, plus a colour view."""

from __future__ import annotations

import time
from collections.abc import Sequence

import zmq

from glpn.processing import resize_depth

from . import messages
from .colour import colorize, side_by_side
from .config import PostprocessConfig
from .errors import MessageError
from .stage import Stage


class PostprocessStage(Stage):
    def __init__(
        self,
        config: PostprocessConfig,
        *,
        streams: Sequence[str],
        make_view: bool,
        input: str,
        output: str,
        hwm: int = 2,
        **kwargs,
    ) -> None:
        super().__init__("postprocess", **kwargs)
        self.config = config
        self.streams = set(streams)
        self.make_view = make_view  # some sink wants the colourised view
        self.input = input  # bound here
        self.output = output  # sink input (connect)
        self.hwm = hwm

    def setup(self) -> None:
        self.inp = self.socket(zmq.PULL, bind=self.input, hwm=self.hwm, role="input")
        self.out = self.socket(zmq.PUSH, connect=self.output, hwm=self.hwm)

    def loop(self) -> None:
        ended: set[str] = set()
        while ended != self.streams:
            self.poll([(self.inp, zmq.POLLIN)])
            for msg in self.incoming(self.inp, self.streams):
                if msg.kind == "eos":
                    self.forward_eos(self.out, msg.stream)
                    ended.add(msg.stream)
                else:
                    try:
                        header, arrays = self.process(msg)
                    except MessageError as e:
                        self.malformed(e)
                        continue
                    live = header["mode"] == "live"
                    self.emit(self.out, messages.encode(header, arrays), live=live)

    def process(self, msg: messages.Message) -> tuple[dict, dict]:
        t0 = time.monotonic()
        depth = msg.array("depth", dtype="float32", ndim=2)
        if self.config.resize_to_source:
            depth = resize_depth(depth, tuple(msg.header["source_shape"]))
        arrays = {"depth": depth}
        if self.make_view:
            view_range = self.config.depth_range or (0.0, msg.header.get("max_depth") or 10.0)
            view = colorize(depth, view_range, self.config.colormap)
            if self.config.side_by_side:
                image = msg.array("image", dtype="uint8", ndim=3)
                if image.shape[2] != 3:
                    raise MessageError(f"image of shape {image.shape} is not (H, W, 3) BGR")
                view = side_by_side(image, view)
            arrays["view"] = view
        t1 = time.monotonic()
        self.metrics.record((t1 - t0) * 1000)
        header = messages.stamp(msg.header, "postprocess", t0, t1)
        self.metrics.record_wait(header["wait_ms"]["postprocess"])
        header["units"] = "m"
        header["depth_shape"] = list(depth.shape)
        return header, arrays
