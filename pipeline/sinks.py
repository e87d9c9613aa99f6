"""Outputs: ZeroMQ PUB, per-frame .npy / 16-bit .png, callback; the Sink base class.

Every sink takes finished DepthResults in the sink stage's thread and is closed on every exit path.
Files are written under a temporary name and renamed, so an interrupted run never leaves a
half-written file under a final name (and never corrupts one from an earlier run). The colourised
video is in pipeline.video_sink, the on-screen window in pipeline.display.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import time
from collections.abc import Callable, Iterable

import cv2
import numpy as np
import zmq

from glpn.fileio import atomic_write, remove_stale_tmp

from . import curve, messages
from .config import FilesSinkConfig, ZmqSinkConfig
from .results import DepthResult

log = logging.getLogger(__name__)

PNG_SCALE = 256.0  # KITTI convention: uint16 value = depth in metres * 256; 0 = no depth


def depth_to_png16(depth: np.ndarray, scale: float = PNG_SCALE) -> np.ndarray:
    """Metres -> uint16 depth * scale (KITTI 256); invalid (NaN, <= 0) -> 0; saturates at 65535."""
    scaled = np.nan_to_num(depth * scale, nan=0.0, posinf=65535.0, neginf=0.0)
    return np.clip(np.round(scaled), 0, 65535).astype(np.uint16)


class Sink:
    def write(self, result: DepthResult) -> None:
        raise NotImplementedError

    def end_stream(self, stream: str) -> None:
        """All frames of `stream` were written."""

    def close(self) -> None:
        """Release everything; called once, on every exit path."""

    def files(self) -> dict[str, str]:
        """What this sink has written so far that is complete: label -> file or folder."""
        return {}

    def end_all(self, streams: Iterable[str]) -> None:
        """end_stream() for every one of `streams`, even when one fails; then the first error."""
        errors = []
        for stream in list(streams):
            try:
                self.end_stream(stream)
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]


class PublishSink(Sink):
    """Depth (and optionally the view) on an XPUB socket, topic depth/<stream>/; never blocks.

    When a stream ends (a file finished, `max_frames` reached), an end-of-stream message follows
    its last frame on the same topic: ``[topic, {"v": 1, "kind": "eos", "stream": ID,
    "arrays": []}]``, no buffers (pipeline.client.DepthSubscriber records it in `ended`). PUB
    semantics apply to it as to frames: a subscriber that connected later, or fell so far behind
    that it loses frames, can lose it too. A pipeline that is stopped (Ctrl-C, q, an error) sends
    none for the streams it cut short.

    Subscribers are counted from the subscriptions that reach the socket (XPUB with
    XPUB_VERBOSER: every subscribe, and an unsubscribe for each when a subscriber leaves); a
    subscriber is counted once its subscription is in effect, so it receives every frame sent
    after that. A subscriber to several streams counts once per stream. What a subscriber loses
    when it falls more than the high-water mark behind cannot be known here (ZeroMQ drops it
    silently, per subscriber, and sending never fails): `DepthSubscriber.lost` counts it there.

    With `outputs.zmq.curve` keys the socket is a CURVE server (`secure`): only subscribers whose
    public key is in `curve.allow` complete a handshake; any other gets nothing, and its
    subscription never reaches the socket (it is not counted).
    """

    DOMAIN = "outputs.zmq"  # ZAP domain of the publishing socket (the allowed keys are its own)

    @classmethod
    def secure(cls, sock: zmq.Socket, config: ZmqSinkConfig) -> None:
        """Before bind: `sock` becomes a CURVE server with `config.curve`'s keys. CurveError (a
        ConfigError) for a missing key file, or a non-loopback endpoint without keys unless
        `curve.insecure`."""
        keys = curve.file_keys(config.curve, server=True)
        curve.check_exposure(config.endpoint, keys, config.curve.insecure, "outputs.zmq.endpoint")
        curve.server(sock, keys, cls.DOMAIN)

    def __init__(self, sock: zmq.Socket, *, publish_view: bool) -> None:
        self.sock = sock  # XPUB, XPUB_VERBOSER set
        self.publish_view = publish_view
        self.subscribers = 0  # subscriptions in effect now
        self.peak = 0  # the most at any time

    def update(self) -> int:
        """Take the subscription messages waiting on the socket; returns `subscribers`."""
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.subscribers
            if msg[:1] == b"\x01":
                self.subscribers += 1
                self.peak = max(self.peak, self.subscribers)
            elif msg[:1] == b"\x00":  # a foreign peer may unsubscribe what it never subscribed
                self.subscribers = max(0, self.subscribers - 1)

    def write(self, result: DepthResult) -> None:
        arrays = {"depth": result.depth}
        if self.publish_view and result.view is not None:
            arrays["view"] = result.view
        self._send(result.stream, result.header, arrays)

    def end_stream(self, stream: str) -> None:
        self._send(stream, messages.eos_header(stream), {})

    def _send(self, stream: str, header: dict, arrays: dict) -> None:
        self.update()
        parts = messages.encode(header, arrays, topic=messages.stream_topic(stream))
        # XPUB, like PUB, never blocks and never fails at the high-water mark: a subscriber whose
        # queue is full misses the message.
        self.sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)

    def close(self) -> None:
        self.update()  # the subscribers at the end (the stage closes the socket)


class FileSink(Sink):
    """DIR/<stream>/<index:06d>.npy (float32 metres) and .png (uint16 depth * 256); DIR/<index>
    with the flat layout. A file that cannot be written (a full disk) is an error naming it.

    Frames read from image files (their position names a `file`) are numbered like any others,
    so each such folder also gets INDEX_NAME, a CSV file mapping output files to source files:

        npy,png,source
        000000.npy,000000.png,img_000.png

    It lists the frames written, in order; it is written whole (atomic_write) when the stream ends,
    when the sink closes (a stopped or failed run too), and every INDEX_INTERVAL_S while frames
    come, so it is never half-written and a killed run leaves all but its last frames in it. An
    index left by an earlier run in a folder this run writes to is removed first: it would name
    files this run replaces.
    """

    INDEX_NAME = "index.csv"
    INDEX_INTERVAL_S = 10.0  # a long run rewrites its index this often (each time whole)

    def __init__(self, config: FilesSinkConfig) -> None:
        self.config = config
        self._dirs: set[str] = set()
        self._streams: dict[str, str] = {}  # stream -> its folder, once a file is in it
        self._index: dict[str, list[list[str]]] = {}  # folder -> rows: output names, source
        self._index_due: dict[str, float] = {}  # folder -> when to write its index next
        self._index_saved: dict[str, int] = {}  # folder -> rows in its index file now
        self.written = 0

    def write(self, result: DepthResult) -> None:
        folder = self.config.folder(result.stream)
        if folder not in self._dirs:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create {folder}: {e.strerror or e}") from None
            remove_stale_tmp(folder)  # left by a run that was killed while writing
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(folder, self.INDEX_NAME))  # an earlier run's
            self._dirs.add(folder)
        name = f"{result.index:06d}"
        base = os.path.join(folder, name)
        if self.config.npy:
            buf = io.BytesIO()
            np.save(buf, np.asarray(result.depth, dtype=np.float32), allow_pickle=False)
            atomic_write(base + ".npy", buf.getvalue())
        if self.config.png:
            ok, png = cv2.imencode(".png", depth_to_png16(result.depth))
            if not ok:
                raise OSError(f"cannot encode {base}.png")
            atomic_write(base + ".png", png.tobytes())
        self.written += 1
        self._streams.setdefault(result.stream, folder)
        self._add_to_index(folder, name, result.header.get("position"))

    def _add_to_index(self, folder: str, name: str, position: object) -> None:
        source = position.get("file") if isinstance(position, dict) else None
        if not isinstance(source, str):  # not from an image file (a foreign peer's: anything)
            return
        rows = self._index.setdefault(folder, [])
        rows.append([f"{name}.{ext}" for ext in self._kinds()] + [source])
        now = time.monotonic()
        if now >= self._index_due.setdefault(folder, now + self.INDEX_INTERVAL_S):
            self._write_index(folder)

    def _kinds(self) -> list[str]:
        return [ext for ext, on in (("npy", self.config.npy), ("png", self.config.png)) if on]

    def _write_index(self, folder: str) -> None:
        rows = self._index.get(folder, [])
        if len(rows) == self._index_saved.get(folder, 0):
            return  # nothing new
        text = io.StringIO()
        out = csv.writer(text, lineterminator="\n")
        out.writerow([*self._kinds(), "source"])
        out.writerows(rows)
        atomic_write(os.path.join(folder, self.INDEX_NAME), text.getvalue().encode())
        self._index_saved[folder] = len(rows)
        self._index_due[folder] = time.monotonic() + self.INDEX_INTERVAL_S

    def end_stream(self, stream: str) -> None:
        folder = self._streams.get(stream)
        if folder is not None:
            self._write_index(folder)

    def close(self) -> None:
        for folder in self._index:
            self._write_index(folder)

    def files(self) -> dict[str, str]:
        c = self.config
        kinds = " + ".join(k for k, on in (("npy", c.npy), ("png16", c.png)) if on)
        flat = c.layout == "flat"
        return {
            f"depth files ({kinds})" + ("" if flat else f", {s}"): os.path.join(folder, "")
            for s, folder in self._streams.items()
        }


class CallbackSink(Sink):
    """Calls fn(result) in the sink thread; an exception stops the pipeline (stage 'sink')."""

    def __init__(self, fn: Callable[[DepthResult], object]) -> None:
        self.fn = fn

    def write(self, result: DepthResult) -> None:
        self.fn(result)
