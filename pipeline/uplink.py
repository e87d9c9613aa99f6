"""Uplink stage (camera host side of `depthstream capture`): one stream's frames to a hub.

    capture:<id> --inproc PUSH--> [PULL] uplink --tcp PUSH (JPEG or raw, CURVE)--> hub's ingest

Frames are encoded here (pipeline.framecodec: JPEG at `jpeg_quality`, or raw) and pushed to the
hub's `--ingest` endpoint, a CURVE client when it has keys. Frames are queued only for a hub
that is connected and completed its handshake (ZMQ_IMMEDIATE): none wait for a hub that is not
there, or that refused this camera's key. A live stream never waits: when the hub is not taking
frames (slow, or not connected) the frame is dropped and counted, before it is encoded. A lossless
stream waits for the hub instead (backpressure up to the capture). The end of the stream is
forwarded, then the stage ends. `frames_sent` counts frames handed to a connected hub.

The hub may restart at any time: ZeroMQ reconnects by itself (every RECONNECT_MAX_MS at most),
and a connection whose hub vanished without closing it (a host cut off) is noticed by ZeroMQ
heartbeats within HEARTBEAT_TIMEOUT_MS and reconnected, so the camera never needs a restart.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from . import curve, framecodec, messages
from .stage import Stage

RECONNECT_MAX_MS = 1000  # reconnect backoff cap (ZeroMQ starts at 100 ms)
HEARTBEAT_IVL_MS = 1000  # ZMTP heartbeats on the hub connection
HEARTBEAT_TIMEOUT_MS = 3000  # no traffic from the hub for this long: reconnect


class UplinkStage(Stage):
    def __init__(
        self,
        *,
        stream: str,
        mode: str,
        input: str,
        hub: str,
        encoding: str = "jpeg",
        jpeg_quality: int = framecodec.DEFAULT_QUALITY,
        keys: curve.Keys | None = None,
        insecure: bool = False,
        hwm: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__("uplink", **kwargs)
        self.stream = stream  # the stream id, as the hub's config names it (--remote ID)
        self.mode = mode  # live: drop when the hub is not taking frames; lossless: wait
        self.input = input  # endpoint the capture stage connects to (this stage binds it)
        self.hub = hub  # tcp://HOST:PORT of the hub's ingest (connect)
        self.encoding = encoding  # "jpeg" | "raw" (pipeline.framecodec)
        self.jpeg_quality = framecodec.check_quality(jpeg_quality)
        self.keys = keys  # CURVE client keys (with the hub's public key); None: no CURVE
        self.insecure = insecure  # allow a non-loopback hub without keys
        self.hwm = hwm
        self.frames_sent = 0
        self.bytes_sent = 0  # message bytes of the frames sent (header and image)

    def setup(self) -> None:
        curve.check_exposure(self.hub, self.keys, self.insecure, "capture --hub")
        self.inp = self.socket(zmq.PULL, bind=self.input, hwm=self.hwm, role="input", keys=None)
        out = self.socket(zmq.PUSH, hwm=self.hwm, keys=None)
        curve.client(out, self.keys)
        out.setsockopt(zmq.IMMEDIATE, 1)  # queue only for a hub that completed a handshake
        out.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_MAX_MS)
        out.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        out.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        out.connect(self.hub)
        self.out = out

    def loop(self) -> None:
        while True:
            self.poll([(self.inp, zmq.POLLIN)])
            for msg in self.incoming(self.inp, (self.stream,)):
                if msg.kind == "eos":
                    self.forward_eos(self.out, self.stream)
                    return
                self._send(msg)

    def _send(self, msg: messages.Message) -> None:
        live = self.mode == "live"
        if live and not self.out.poll(0, zmq.POLLOUT):  # dropped now: not worth encoding
            self.metrics.drop("hub_busy")
            return
        t0 = time.monotonic()
        arrays = framecodec.encode_image(msg.arrays["image"], self.encoding, self.jpeg_quality)
        t1 = time.monotonic()
        header = messages.stamp(msg.header, "uplink", t0, t1)  # the encoding; wait: since capture
        header["encoding"] = self.encoding
        parts = messages.encode(header, arrays)
        self.metrics.record((t1 - t0) * 1000)
        self.metrics.record_wait(header["wait_ms"]["uplink"])
        if self.emit(self.out, parts, live=live, drop_reason="hub_busy"):
            self.frames_sent += 1
            self.bytes_sent += framecodec.message_bytes(parts)
