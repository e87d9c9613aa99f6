"""Outputs: ZeroMQ PUB, per-frame .npy / 16-bit .png, colourised video, window, callback.

Every sink takes finished DepthResults in the sink stage's thread and is closed on every exit path.
Files are written under a temporary name and renamed, so an interrupted run never leaves a
half-written file under a final name (and never corrupts one from an earlier run).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import zmq

from glpn.fileio import atomic_write, remove_stale_tmp

from . import messages
from .config import FilesSinkConfig, VideoSinkConfig, WindowSinkConfig
from .results import DepthResult

log = logging.getLogger(__name__)

PNG_SCALE = 256.0  # KITTI convention: uint16 value = depth in metres * 256; 0 = no depth


def depth_to_png16(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 depth * 256 (KITTI); invalid (NaN, <= 0) -> 0, saturating at 65535."""
    scaled = np.nan_to_num(depth * PNG_SCALE, nan=0.0, posinf=65535.0, neginf=0.0)
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
    """

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
    with the flat layout. A file that cannot be written (a full disk) is an error naming it."""

    def __init__(self, config: FilesSinkConfig) -> None:
        self.config = config
        self._dirs: set[str] = set()
        self._streams: dict[str, str] = {}  # stream -> its folder, once a file is in it
        self.written = 0

    def write(self, result: DepthResult) -> None:
        folder = self.config.folder(result.stream)
        if folder not in self._dirs:
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create {folder}: {e.strerror or e}") from None
            remove_stale_tmp(folder)  # left by a run that was killed while writing
            self._dirs.add(folder)
        base = os.path.join(folder, f"{result.index:06d}")
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

    def files(self) -> dict[str, str]:
        c = self.config
        kinds = " + ".join(k for k, on in (("npy", c.npy), ("png16", c.png)) if on)
        flat = c.layout == "flat"
        return {
            f"depth files ({kinds})" + ("" if flat else f", {s}"): os.path.join(folder, "")
            for s, folder in self._streams.items()
        }


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

    writer: cv2.VideoWriter
    partial: str  # written here, renamed to `path` once it plays to its last frame
    path: str
    size: tuple[int, int]  # (w, h): every frame is resized to the first one's size
    frames: int = 0


class VideoSink(Sink):
    """Colourised view to a video per stream: MJPG in .avi or mp4v in .mp4 (OpenCV can encode).

    Written as NAME.partial.EXT and renamed when closed, so the final name is always a complete
    file. OpenCV's writer reports no write errors (a full disk gives a truncated file and no
    error), so the sink checks for itself: it stops with an error naming the file as soon as the
    disk is full, and on closing it renames a video only once it opens and plays to its last
    frame; one that does not is removed and is an error.
    """

    FOURCC = {".avi": "MJPG", ".mp4": "mp4v"}
    MIN_FREE_BYTES = 64 * 1024  # less free space than this after a frame: the disk is full

    def __init__(self, config: VideoSinkConfig, streams: Sequence[str]) -> None:
        self.config = config
        self.several = len(streams) > 1
        self._videos: dict[str, _Video] = {}
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
        video.writer.write(np.ascontiguousarray(view))
        video.frames += 1
        self.frames[result.stream] = video.frames
        if _free_bytes(video.partial) < self.MIN_FREE_BYTES:
            self._videos.pop(result.stream)
            self._fail(video, "no space left on device")

    def _open(self, result: DepthResult, view: np.ndarray) -> _Video:
        path = video_path(self.config.path, result.stream, self.several)
        root, ext = os.path.splitext(path)
        fps = self.config.fps or result.header.get("fps") or 30.0
        h, w = view.shape[:2]
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*self.FOURCC[ext.lower()])
        video = _Video(None, f"{root}.partial{ext}", path, (w, h))  # type: ignore[arg-type]
        video.writer = cv2.VideoWriter(video.partial, fourcc, float(fps), (w, h))
        if not video.writer.isOpened():
            raise OSError(f"cannot write video {path} ({self.FOURCC[ext.lower()]}, {w}x{h})")
        self._videos[result.stream] = video
        return video

    def end_stream(self, stream: str) -> None:
        video = self._videos.pop(stream, None)
        if video is None:
            return
        video.writer.release()
        if _plays_to_last_frame(video.partial, video.frames):
            os.replace(video.partial, video.path)
            self.paths[stream] = video.path
            return
        full = _free_bytes(video.partial) < self.MIN_FREE_BYTES
        self._fail(video, "no space left on device" if full else "the file does not play back")

    def _fail(self, video: _Video, cause: str) -> None:
        """Remove the unusable partial video and raise the error that names it."""
        video.writer.release()
        with contextlib.suppress(OSError):
            os.remove(video.partial)
        raise OSError(
            f"cannot write video {video.path}: {cause} after {video.frames} frames "
            "(the incomplete file was removed)"
        )

    def files(self) -> dict[str, str]:
        return {f"video, {stream}": path for stream, path in self.paths.items()}

    def close(self) -> None:
        errors = []
        for stream in list(self._videos):  # every video is closed, even if one fails
            try:
                self.end_stream(stream)
            except OSError as e:
                errors.append(e)
        if errors:
            raise errors[0]


def _free_bytes(path: str) -> int:
    """Space left for this process on the filesystem holding `path`."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return 1 << 62  # unknown: the check on closing still applies
    return st.f_bavail * st.f_frsize


def _plays_to_last_frame(path: str, frames: int) -> bool:
    """Whether `path` opens, says it holds `frames` frames, and its last frame decodes."""
    cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened() or int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) < frames:
            return False
        cap.set(cv2.CAP_PROP_POS_FRAMES, frames - 1)
        ok, _ = cap.read()
        return ok
    finally:
        cap.release()


def display_available() -> bool:
    """Whether OpenCV can open a window here; the reason is logged when it cannot.

    On Linux the X server named by DISPLAY is contacted first: OpenCV's Qt backend (the one in the
    opencv-python wheels) aborts the whole process, outputs unfinished, when it cannot reach it,
    e.g. with a stale DISPLAY over ssh. That backend speaks X only, so WAYLAND_DISPLAY alone is
    not enough for it. A build without a GUI (opencv-python-headless) has no windows at all.
    """
    framework = cv2.currentUIFramework() if hasattr(cv2, "currentUIFramework") else None
    if framework is not None and framework.upper() in ("", "NONE"):
        log.warning("window: this OpenCV has no GUI backend (opencv-python-headless?)")
        return False
    if not sys.platform.startswith("linux"):
        return True
    display = os.environ.get("DISPLAY")
    if display:
        if _x_server_answers(display):
            return True
        log.warning("window: DISPLAY=%s, but that X server cannot be reached", display)
        return False
    if os.environ.get("WAYLAND_DISPLAY") and framework is not None:
        if framework.upper() != "QT":
            return True
        log.warning("window: OpenCV's Qt backend needs an X server (DISPLAY, e.g. Xwayland)")
    return False


_X_PROBES: dict[str, int] = {}  # DISPLAY -> the open xcb connection of its last probe


def _x_server_answers(display: str) -> bool:
    """True when the X server named by `display` accepts a connection (libxcb, as Qt uses it).

    The connection stays open (a new probe replaces it): an X server resets when its last client
    disconnects (Xvfb and xvfb-run do by default) and drops connections while it resets, so
    closing it could make Qt's own connection a moment later fail, which aborts the process. A
    reset already under way is ridden out by trying again.
    """
    try:
        xcb = ctypes.CDLL("libxcb.so.1")
    except OSError:
        return False  # no libxcb: Qt's X platform plugin cannot load either
    xcb.xcb_connect.restype = ctypes.c_void_p
    xcb.xcb_connect.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    xcb.xcb_connection_has_error.argtypes = [ctypes.c_void_p]
    xcb.xcb_disconnect.argtypes = [ctypes.c_void_p]
    for attempt in range(3):
        if attempt:
            time.sleep(0.05)
        conn = xcb.xcb_connect(display.encode(), None)  # never NULL: an error is reported
        if xcb.xcb_connection_has_error(conn) == 0:
            old = _X_PROBES.pop(display, None)
            _X_PROBES[display] = conn
            if old is not None:
                xcb.xcb_disconnect(old)  # after the new one is open: the server is never idle
            return True
        xcb.xcb_disconnect(conn)
    return False


STOP_KEYS = (ord("q"), ord("Q"), 27)  # Esc


class _HighGui:
    """The one thread that makes every OpenCV HighGUI call of this process (windows, keys).

    OpenCV's Qt backend belongs to the thread that first used it; from any other thread `imshow`
    shows nothing (Qt prints "QMetaObject::invokeMethod: No such method"). The sink stage is a new
    thread in every pipeline, so before this thread a second pipeline in one process never showed
    its window. Pumping events here every POLL_MS also keeps the windows repainted and q / Esc
    answered between frames, however slowly they come. Started on first use, it lives as long as
    the process and sleeps, without polling, while no window is open. At exit it closes what is
    still open and ends before Python abandons daemon threads: a thread stopped inside a HighGUI
    call aborts the process ("terminate called without an active exception").
    """

    POLL_MS = 15
    _shared: _HighGui | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> _HighGui:
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # In arrival order: ["show", name, image, owner] (a newer frame replaces the image of a
        # pending show) and ["destroy", names, done-event].
        self._ops: list[list] = []
        self._pending_show: dict[str, list] = {}
        self._quit = False
        self._thread = threading.Thread(target=self._run, name="opencv-highgui", daemon=True)
        self._thread.start()
        atexit.register(self.shutdown)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Close every window and end the thread (called at exit)."""
        with self._cond:
            self._quit = True
            self._cond.notify()
        self._thread.join(timeout)

    def show(self, name: str, image: np.ndarray, owner: WindowSink) -> None:
        with self._cond:
            op = self._pending_show.get(name)
            if op is not None:
                op[2], op[3] = image, owner  # the window shows only the newest frame
            else:
                op = ["show", name, image, owner]
                self._pending_show[name] = op
                self._ops.append(op)
            self._cond.notify()

    def destroy(self, names: Sequence[str], timeout: float | None) -> bool:
        """Close these windows; wait at most `timeout` s for them to be gone (None: no wait)."""
        done = threading.Event()
        with self._cond:
            for name in names:
                self._pending_show.pop(name, None)  # a later show opens the window anew
            self._ops.append(["destroy", list(names), done])
            self._cond.notify()
        return True if timeout is None else done.wait(timeout)

    def _run(self) -> None:
        windows: dict[str, WindowSink] = {}  # open window -> the sink that shows it
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._ops or windows or self._quit)
                ops, self._ops = self._ops, []
                self._pending_show.clear()
                if self._quit:  # no new windows; close the rest
                    ops = [op for op in ops if op[0] == "destroy"]
                    ops.append(["destroy", list(windows), threading.Event()])
            closed: list[threading.Event] = []
            for op in ops:
                try:
                    if op[0] == "show":
                        _, name, image, owner = op
                        cv2.imshow(name, image)
                        windows[name] = owner
                    else:
                        for name in op[1]:
                            if windows.pop(name, None) is not None:
                                cv2.destroyWindow(name)
                        closed.append(op[2])
                except Exception as e:  # reported to the sink, which raises it in its stage
                    if op[0] == "show":
                        op[3].error = e
                    else:
                        log.warning("window: cannot close %s: %s", op[1], e)
                        closed.append(op[2])
            try:
                key = cv2.waitKey(self.POLL_MS if windows else 1)  # events: paint, close, keys
            except Exception as e:
                log.warning("window: event handling failed: %s", e)
                key = -1
            for done in closed:
                done.set()
            if self._quit:
                return
            if key != -1 and (key & 0xFF) in STOP_KEYS:
                for owner in set(windows.values()):
                    owner.key_pressed(key & 0xFF)


class WindowSink(Sink):
    """One window per stream, titled "<title> <stream>", with the view; q or Esc stops the pipeline.

    The windows live in one process-wide HighGUI thread (see _HighGui): `write` hands the view over
    and returns; the newest view is shown, so a slow screen never slows the pipeline. A stream's
    window closes at its end, every window when the sink closes. A key reaches every pipeline that
    has a window open.
    """

    CLOSE_TIMEOUT_S = 2.0  # how long closing waits for the windows to be gone

    def __init__(
        self,
        config: WindowSinkConfig,
        request_stop: Callable[[str], None],
        *,
        gui: _HighGui | None = None,
    ) -> None:
        self.config = config
        self.request_stop = request_stop
        self.error: BaseException | None = None  # set by the HighGUI thread when imshow fails
        self.shown = 0
        self._gui = gui or _HighGui.shared()
        self._windows: dict[str, str] = {}  # stream -> window name

    def window_name(self, stream: str) -> str:
        return f"{self.config.title} {stream}"

    def write(self, result: DepthResult) -> None:
        if self.error is not None:
            raise RuntimeError(f"window: cannot show the view: {self.error}") from self.error
        if result.view is None:
            return
        name = self._windows.setdefault(result.stream, self.window_name(result.stream))
        self._gui.show(name, result.view, self)
        self.shown += 1

    def key_pressed(self, key: int) -> None:
        """Called in the HighGUI thread when q or Esc is pressed in a window."""
        log.info("window: %s pressed, stopping", "Esc" if key == 27 else repr(chr(key)))
        self.request_stop("window")

    def end_stream(self, stream: str) -> None:
        name = self._windows.pop(stream, None)
        if name is not None:
            self._destroy([name])

    def close(self) -> None:
        names, self._windows = list(self._windows.values()), {}
        if names:
            self._destroy(names)

    def _destroy(self, names: list[str]) -> None:
        if not self._gui.destroy(names, timeout=self.CLOSE_TIMEOUT_S):
            log.warning("window: %s did not close within %.0f s", names, self.CLOSE_TIMEOUT_S)


class CallbackSink(Sink):
    """Calls fn(result) in the sink thread; an exception stops the pipeline (stage 'sink')."""

    def __init__(self, fn: Callable[[DepthResult], object]) -> None:
        self.fn = fn

    def write(self, result: DepthResult) -> None:
        self.fn(result)
