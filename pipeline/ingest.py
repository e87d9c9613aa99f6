"""Ingest stage (hub side): frames of cameras on other hosts, into this pipeline's preprocess.

    depthstream capture --hub tcp://HUB:PORT (one per camera) --PUSH--> [PULL] ingest
        --> preprocess live / lossless (as a local capture stage would)

One PULL socket at `ingest.endpoint` takes every remote stream (ZeroMQ fair-queues between the
cameras), a CURVE server when the config has keys (only cameras whose public key is in the allow
directory complete a handshake: a refused one is logged once per address by pipeline.curve). The
config says which streams may come: the sources of kind external, each with the mode the hub's
config gives it, whatever the camera's header says. A frame of any other stream, or one that
does not decode (pipeline.framecodec: JPEG or raw), is dropped and counted as malformed. Each
stream's end is forwarded once; the stage ends when every external stream ended (so, with an
ingest, every external source is a remote camera).

Clocks. A frame's `t_wall` is the capture host's wall clock when the frame was read; monotonic
clocks of two hosts cannot be compared. The frame's hub-side capture time is rebased as
``t_mono = hub monotonic now - clamp(hub wall now - t_wall, 0, MAX_AGE_S)``, so end-to-end
latency includes the network and the camera's queue when the hosts' clocks are synchronised
(NTP, PTP). Clock skew shows up in the latency as is: a camera clock ahead of the hub's makes
frames look younger, down to an age of 0 (negative ages are clamped), one behind makes them look
older (at most MAX_AGE_S). `wait_ms["ingest"]` is that age: capture to arrival at the hub.

Indices. A remote stream's `index` is this hub's count of the frames it received (0, 1, ...:
consecutive even when the camera dropped frames or restarted, or this hub restarted mid-stream);
the camera's own number is kept as `position["remote_index"]`. For a lossless stream a forward
jump of that number is frames lost on the way (a link cut for longer than the camera's retry, a
hub restart): counted as drops "lost_in_transit" (one warning per stream); a smaller number means
the camera restarted and counting starts over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import zmq

from . import curve, framecodec, messages
from .config_network import IngestConfig
from .errors import ConfigError, MessageError
from .stage import Stage

log = logging.getLogger(__name__)

MAX_AGE_S = 60.0  # a frame older than this (or a clock that far behind) counts as this old
_POSITION_ITEMS = 8  # what of a peer's `position` travels on: a few short scalars
_POSITION_TEXT = 256


class IngestStage(Stage):
    def __init__(
        self,
        ingest: IngestConfig,
        *,
        modes: Mapping[str, str],
        endpoint: str,
        live_output: str,
        lossless_output: str,
        hwm: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__("ingest", **kwargs)
        self.ingest = ingest
        self.modes = dict(modes)  # external stream id -> "live" | "lossless" (the hub's config)
        self.endpoint = endpoint  # tcp://ADDR:PORT this stage binds (remote cameras connect)
        self.live_output = live_output  # preprocess inputs (connect)
        self.lossless_output = lossless_output
        self.hwm = hwm
        self.frames: dict[str, int] = {s: 0 for s in self.modes}  # decoded (numbered) per stream
        self.bytes_received = 0  # image bytes of the frames received (JPEG or raw)
        self.remote_index: dict[str, int] = {}  # the camera's index of its last frame here
        self._gap_warned: set[str] = set()  # streams whose lost frames were logged

    def setup(self) -> None:
        if not self.modes:
            raise ConfigError("ingest: no source of kind external to receive (add --remote ID)")
        cfg = self.ingest.curve
        keys = curve.file_keys(cfg, server=True)
        curve.check_exposure(self.endpoint, keys, cfg.insecure, "ingest")
        if keys is None and not curve.is_loopback(self.endpoint):
            log.warning("ingest: %s takes frames from anyone who can reach it (insecure, no "
                        "CURVE keys)", self.endpoint)  # fmt: skip
        self.inp = self.socket(
            zmq.PULL, bind=self.endpoint, hwm=self.hwm, role="ingest", keys=keys, domain="ingest"
        )
        self.out = {
            "live": self.socket(zmq.PUSH, connect=self.live_output, hwm=self.hwm),
            "lossless": self.socket(zmq.PUSH, connect=self.lossless_output, hwm=self.hwm),
        }
        log.info("ingest: remote cameras connect to %s (streams %s, CURVE %s)",
                 self.bound["ingest"], ", ".join(self.modes), "on" if keys else "off")  # fmt: skip

    def loop(self) -> None:
        streams = set(self.modes)
        ended: set[str] = set()
        while ended != streams:
            self.poll([(self.inp, zmq.POLLIN)])
            for msg in self.incoming(self.inp, streams):
                if msg.kind == "eos":
                    if msg.stream not in ended:  # a repeated end is ignored
                        ended.add(msg.stream)
                        self.forward_eos(self.out[self.modes[msg.stream]], msg.stream)
                elif msg.stream in ended:
                    self.malformed(MessageError(f"frame of {msg.stream!r} after its end"))
                else:
                    self._forward(msg)
                if ended == streams:
                    return

    def _forward(self, msg: messages.Message) -> None:
        t0, wall = time.monotonic(), time.time()
        try:
            image = framecodec.decode_image(msg)
        except MessageError as e:
            self.malformed(e)
            return
        t1 = time.monotonic()
        h, stream = msg.header, msg.stream
        self.bytes_received += sum(a.nbytes for a in msg.arrays.values())
        age = min(max(wall - h["t_wall"], 0.0), MAX_AGE_S)
        mode = self.modes[stream]
        self._check_gap(stream, mode, h["index"])
        index = self.frames[stream]
        if index == 0:
            log.info("ingest: first frame of %s (%s, %dx%d, %s on the hub)", stream,
                     h.get("encoding", "raw"), *image.shape[:2], mode)  # fmt: skip
        timings = h.get("stage_ms", {})
        header = {
            "kind": "frame",
            "stream": stream,
            "index": index,
            "t_mono": t0 - age,  # see the module docstring: hub time of the capture
            "t_wall": h["t_wall"],
            "mode": mode,
            "source_shape": h["source_shape"],
            "position": {**_position(h.get("position")), "remote_index": h["index"]},
            "fps": h.get("fps"),
            "stage_ms": {k: v for k, v in timings.items() if k in ("capture", "uplink")},
            "t_last": t0 - age,  # so wait_ms["ingest"] is the frame's age on arrival
        }
        header = messages.stamp(header, "ingest", t0, t1)
        self.metrics.record((t1 - t0) * 1000)
        self.metrics.record_wait(header["wait_ms"]["ingest"])
        self.frames[stream] = index + 1
        self.emit(self.out[mode], messages.encode(header, {"image": image}), live=mode == "live")


    def _check_gap(self, stream: str, mode: str, remote: int) -> None:
        """Count the lossless frames the camera numbered but this hub never got."""
        last = self.remote_index.get(stream)
        self.remote_index[stream] = remote
        if last is None or mode != "lossless":
            return
        if remote <= last:
            log.info("ingest: %s restarted (its index went from %d to %d)", stream, last, remote)
        elif remote > last + 1:
            self.metrics.drop("lost_in_transit", remote - last - 1)
            if stream not in self._gap_warned:
                self._gap_warned.add(stream)
                log.warning("ingest: %s: %d lossless frames lost on the way (camera index %d "
                            "after %d); later gaps are only counted", stream,
                            remote - last - 1, remote, last)  # fmt: skip


def _text(value: str) -> str:
    """A peer's text as the sinks can write it: UTF-8 (a lone surrogate from a file name that
    was not UTF-8 becomes "?"), printable."""
    text = value.encode("utf-8", "replace").decode("utf-8")
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _position(value: Any) -> dict[str, Any]:
    """The few short scalar entries of a peer's `position` (frame, msec, file) that travel on."""
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    for key, v in value.items():
        if len(out) == _POSITION_ITEMS:
            break
        if isinstance(key, str) and len(key) <= 32 and key != "remote_index":
            key = _text(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key] = v
            elif isinstance(v, str) and len(v) <= _POSITION_TEXT:
                out[key] = _text(v)
    return out
