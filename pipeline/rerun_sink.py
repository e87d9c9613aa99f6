"""Rerun output (rerun-sdk): per stream a Pinhole camera and its DepthImage in metres, so the
Rerun viewer back-projects the depth in 3D, to an .rrd file and/or a live viewer.

Entities, per stream (frames on the timelines "frame" = header["index"] and "capture_time" =
header["t_wall"], the capture wall-clock time):

    <stream>               ViewCoordinates RDF (static): the 3D view is the camera's optical frame
    <stream>/camera        Pinhole (header["camera"], the depth's own size; camera_xyz RDF = REP-103
                           optical: x right, y down, z forward); logged when it changes
    <stream>/camera/depth  DepthImage, float32 metres (meter = 1.0), NaN = no depth
    <stream>/camera/image  Image, BGR (outputs.rerun.image): the colourised view (view) or the
                           input frame as captured (input; at the source size)

Rerun puts pixel centres at +0.5 (an image spans 0..W), OpenCV and ROS at integers (-0.5..W-0.5),
so the principal point is logged as (cx + 0.5, cy + 0.5).

Each sink has its own RecordingStream (never rerun's global one), so pipelines in one process do not
mix. The file is written as NAME.partial.rrd and renamed when the sink closes (every exit path: end,
Ctrl-C, error), after a flush that writes its footer; a killed process leaves the .partial.rrd,
readable without its footer (`RrdReader(path).stream()`).

A live viewer (`connect`) is fed by a thread of its own, newest frame per stream wins: the SDK's
queues are bounded (measured with 0.41: about 280 VGA depth frames, ~300 MB, buffered with no
viewer listening) and `log` then blocks until the viewer takes data. That thread blocks, never the
sink stage: frames that arrive meanwhile replace the waiting one and are counted (gauges
rerun_live_sent, rerun_live_dropped). On closing, it gets CLOSE_TIMEOUT_S to hand over what it
holds; after that the data is abandoned with a warning (the SDK gives up on its own 5 s later).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import MutableMapping
from typing import Any

import numpy as np

from glpn.fileio import partial_path

from .config import RerunConfig
from .errors import ROBOTICS_INSTALL, ConfigError
from .geometry import Intrinsics
from .results import DepthResult
from .ros_msgs import stamp_ns
from .sinks import Sink

log = logging.getLogger(__name__)

APPLICATION_ID = "depthstream"
CLOSE_TIMEOUT_S = 2.0  # how long closing waits for a live viewer to take the last frames



def _rerun() -> Any:
    try:
        import rerun
    except ImportError as e:
        raise ConfigError(
            f"outputs.rerun (--rerun) needs rerun-sdk: {ROBOTICS_INSTALL} ({e})"
        ) from None
    return rerun


class _Logger:
    """Logs frames to one RecordingStream, from one thread (rerun's time is per thread)."""

    def __init__(self, rr: Any, rec: Any, image: str) -> None:
        self.rr = rr
        self.rec = rec
        self.image = image
        self._cameras: dict[str, Intrinsics | None] = {}  # stream -> the Pinhole logged last
        self.frames = 0

    def log(self, result: DepthResult) -> None:
        rr, rec, stream = self.rr, self.rec, result.stream
        rec.set_time("frame", sequence=int(result.index))
        if result.header.get("t_wall") is not None:  # exact ns (rerun's float * 1e9 is not)
            rec.set_time("capture_time", timestamp=np.datetime64(stamp_ns(result), "ns"))
        if stream not in self._cameras:
            rec.log(stream, rr.ViewCoordinates.RDF, static=True)
            self._cameras[stream] = None
        camera = Intrinsics.from_header(result.header)
        if camera is not None and camera != self._cameras[stream]:
            rec.log(f"{stream}/camera", rr.Pinhole(
                focal_length=[camera.fx, camera.fy],
                principal_point=[camera.cx + 0.5, camera.cy + 0.5],
                resolution=[camera.width, camera.height],
                camera_xyz=rr.ViewCoordinates.RDF,
            ))  # fmt: skip
            self._cameras[stream] = camera
        rec.log(f"{stream}/camera/depth", rr.DepthImage(result.depth, meter=1.0))
        image = {"view": result.view, "input": result.image}.get(self.image)
        if image is not None:
            rec.log(f"{stream}/camera/image", rr.Image(image, color_model="BGR"))
        self.frames += 1


class _LiveLink:
    """A live viewer connection fed newest-wins by its own thread (see the module docstring)."""

    def __init__(self, rr: Any, url: str, recording_id: str, image: str,
                 gauges: MutableMapping[str, int]) -> None:  # fmt: skip
        rec = rr.RecordingStream(application_id=APPLICATION_ID, recording_id=recording_id)
        try:
            rec.connect_grpc(url)
        except ValueError as e:  # a malformed URL
            raise ConfigError(f"outputs.rerun.connect: {e}") from None
        self.url = url
        self.logger = _Logger(rr, rec, image)
        self.gauges = gauges
        self.dropped = 0
        self._pending: dict[str, DepthResult] = {}  # stream -> its newest frame not yet logged
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="rerun-live", daemon=True)
        self._thread.start()

    def put(self, result: DepthResult) -> None:
        with self._cond:
            if self._pending.pop(result.stream, None) is not None:
                self.dropped += 1
                self.gauges["rerun_live_dropped"] = self.dropped
            self._pending[result.stream] = result  # to the back: streams take turns
            self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending:
                        break
                    result = self._pending.pop(next(iter(self._pending)))
                self.logger.log(result)
                self.gauges["rerun_live_sent"] = self.logger.frames
            self.logger.rec.flush()
            self.logger.rec.disconnect()
        except Exception as e:  # the viewer's problem must not become the pipeline's
            log.warning("outputs.rerun.connect: %s: %s", self.url, e)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(CLOSE_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("outputs.rerun.connect: no viewer took the data at %s within %g s; "
                        "the frames not yet sent are abandoned",
                        self.url, CLOSE_TIMEOUT_S)  # fmt: skip
        log.info("outputs.rerun.connect: %d frames sent to %s, %d dropped (newest wins)",
                 self.logger.frames, self.url, self.dropped)  # fmt: skip


class RerunSink(Sink):
    """Every frame to an .rrd file (lossless, in the sink thread; disk-speed like the .npy files)
    and/or a live viewer (newest-wins, never blocks); see the module docstring."""

    def __init__(self, config: RerunConfig, gauges: MutableMapping[str, int] | None = None) -> None:
        rr = _rerun()
        self.config = config
        self.path: str | None = None  # the complete .rrd, once closed
        self.partial = partial_path(config.path) if config.path else ""
        recording_id = str(uuid.uuid4())  # file and viewer: one recording, no other pipeline's
        self._file: _Logger | None = None
        self._live: _LiveLink | None = None
        if config.path:
            folder = os.path.dirname(config.path)
            try:
                if folder:
                    os.makedirs(folder, exist_ok=True)
                open(self.partial, "wb").close()  # a clear error now, not in rerun's thread
            except OSError as e:
                raise OSError(f"cannot write {config.path}: {e.strerror or e}") from None
            rec = rr.RecordingStream(application_id=APPLICATION_ID, recording_id=recording_id)
            rec.save(self.partial)
            self._file = _Logger(rr, rec, config.image)
        if config.connect:
            gauges = gauges if gauges is not None else {}
            self._live = _LiveLink(rr, config.connect, recording_id, config.image, gauges)

    def write(self, result: DepthResult) -> None:
        if self._file is not None:
            self._file.log(result)
        if self._live is not None:
            self._live.put(result)

    def close(self) -> None:
        """Flush and finish the file (footer), give it its final name; let the viewer go."""
        live, self._live = self._live, None
        try:
            if self._file is not None:
                rec, frames = self._file.rec, self._file.frames
                self._file = None
                rec.flush()  # everything logged is in the file
                rec.disconnect()  # the footer is written, the file closed
                os.replace(self.partial, self.config.path)
                self.path = self.config.path
                log.info("outputs.rerun: %d frames in %s", frames, self.path)
        finally:
            if live is not None:
                live.close()

    def files(self) -> dict[str, str]:
        return {"recording (Rerun .rrd)": self.path} if self.path else {}
