"""Postprocess stage: depth back to each frame's source size in metres, plus a colour view, the
camera of the depth as delivered and, when asked for, its point cloud and the input frame."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import zmq

from glpn.processing import resize_depth

from . import messages
from .colour import colorize, side_by_side
from .config import PointsConfig, PostprocessConfig, SourceConfig
from .errors import MessageError
from .geometry import Intrinsics, backproject, backproject_torch, point_colours, source_camera
from .stage import Stage
from .temporal import TemporalFilter


class PostprocessStage(Stage):
    def __init__(
        self,
        config: PostprocessConfig,
        *,
        streams: Sequence[str],
        make_view: bool,
        input: str,
        output: str,
        sources: Sequence[SourceConfig] = (),
        points: PointsConfig | None = None,
        forward_image: bool = False,
        device: str = "cpu",
        hwm: int = 2,
        **kwargs,
    ) -> None:
        super().__init__("postprocess", **kwargs)
        self.config = config
        self.streams = set(streams)
        self.make_view = make_view  # some sink wants the colourised view
        self.sources = {s.id: s for s in sources}  # each stream's camera and frame id
        self.points = points  # point clouds to compute (Config.points_config()); None: none
        self.forward_image = forward_image  # pass the input frame on (an output records it)
        self.device = device  # model.device: clouds are computed on it when it is a GPU
        self._points_device: str | None = None  # the torch device of the clouds; None: numpy
        self.input = input  # bound here
        self.output = output  # sink input (connect)
        self.hwm = hwm
        # (stream, source (h, w), depth (h, w)) -> the camera of the depth as delivered
        self._cameras: dict[tuple[str, tuple[int, int], tuple[int, int]], Intrinsics | None] = {}
        self._temporal: dict[str, TemporalFilter] = {}  # config.temporal's state per stream

    def setup(self) -> None:
        self._points_device = self._torch_device() if self.points else None
        self.inp = self.socket(zmq.PULL, bind=self.input, hwm=self.hwm, role="input")
        self.out = self.socket(zmq.PUSH, connect=self.output, hwm=self.hwm)

    def loop(self) -> None:
        ended: set[str] = set()
        while ended != self.streams:
            self.poll([(self.inp, zmq.POLLIN)])
            for msg in self.incoming(self.inp, self.streams):
                if msg.kind == "eos":
                    self.forward_eos(self.out, msg.stream)
                    self._temporal.pop(msg.stream, None)
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
        if self.config.temporal is not None:  # at the size every output gets; a new size resets
            depth = self._stabiliser(msg.stream)(depth)
        arrays = {"depth": depth}
        if self.make_view:
            view_range = self.config.depth_range or (0.0, msg.header.get("max_depth") or 10.0)
            view = colorize(depth, view_range, self.config.colormap)
            if self.config.side_by_side:
                view = side_by_side(self._image(msg), view)
            arrays["view"] = view
        camera = self._camera(msg.stream, tuple(msg.header["source_shape"]), depth.shape)
        cloud = self._points(msg, depth, camera) if self.points and camera else None
        if cloud:
            arrays.update(cloud)
        if self.forward_image:  # as received: shares the message's memory, no copy
            arrays["image"] = self._image(msg)
        t1 = time.monotonic()
        self.metrics.record((t1 - t0) * 1000)
        header = messages.stamp(msg.header, "postprocess", t0, t1)
        self.metrics.record_wait(header["wait_ms"]["postprocess"])
        header["units"] = "m"
        header["depth_shape"] = list(depth.shape)
        source = self.sources.get(msg.stream)
        header["frame_id"] = (source and source.frame_id) or f"{msg.stream}_optical"
        header.pop("camera", None)  # never a foreign peer's
        header.pop("points", None)
        if camera is not None:
            header["camera"] = camera.as_header()
        if cloud is not None:
            count = len(cloud["points"]) if cloud else 0
            header["points"] = {"stride": self.points.stride, "count": count,
                                "colour": self.points.colour}  # fmt: skip
        return header, arrays

    def _torch_device(self) -> str | None:
        """The model's device when it resolves to a GPU (point clouds are computed there, where
        inference is); None: numpy on the CPU, also when this process has no GPU (remote
        workers have it)."""
        if self.device == "cpu":
            return None
        from glpn.planning import EngineError, resolve_device  # imports torch

        try:
            device = resolve_device(self.device)
        except EngineError:
            return None
        return str(device) if device.type == "cuda" else None

    def _stabiliser(self, stream: str) -> TemporalFilter:
        if stream not in self._temporal:
            self._temporal[stream] = TemporalFilter(self.config.temporal)
        return self._temporal[stream]

    def _image(self, msg: messages.Message) -> np.ndarray:
        image = msg.array("image", dtype="uint8", ndim=3)
        if image.shape[2] != 3:
            raise MessageError(f"image of shape {image.shape} is not (H, W, 3) BGR")
        return image

    def _camera(
        self, stream: str, source: tuple[int, int], shape: tuple[int, int]
    ) -> Intrinsics | None:
        """The stream's camera (configured at the source's size) scaled to the depth's size."""
        key = (stream, source, shape)
        if key not in self._cameras:
            if len(self._cameras) > 64:  # sizes change rarely; a foreign peer's never fill memory
                self._cameras.clear()
            s = self.sources.get(stream)
            camera = s and source_camera(s.intrinsics, s.hfov_deg, source[1], source[0])
            self._cameras[key] = camera.scaled(shape[1], shape[0]) if camera else None
        return self._cameras[key]

    def _points(
        self, msg: messages.Message, depth: np.ndarray, camera: Intrinsics
    ) -> dict[str, np.ndarray]:
        """"points" (N, 3) float32 and, with colour, "points_rgb" (N, 3) uint8; {} when no pixel
        has a valid depth (a message cannot carry an empty array: header["points"]["count"])."""
        cfg = self.points
        if self._points_device is None:
            points, index = backproject(depth, camera, stride=cfg.stride, max_range=cfg.max_range_m)
        else:
            points, index = backproject_torch(depth, camera, stride=cfg.stride,
                                              max_range=cfg.max_range_m,
                                              device=self._points_device)  # fmt: skip
        if len(points) == 0:
            return {}
        cloud = {"points": points}
        if cfg.colour:
            cloud["points_rgb"] = point_colours(self._image(msg), index, depth.shape)
        return cloud
