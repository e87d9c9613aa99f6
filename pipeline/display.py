"""The on-screen window output: the X11 probe, the one HighGUI thread, and WindowSink.

Kept apart from the file and network sinks: this is the only code that talks to a display server,
and its failure modes (a stale DISPLAY that makes Qt abort the process, HighGUI calls from the
wrong thread) are its own.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from .config import WindowSinkConfig
from .results import DepthResult
from .sinks import Sink

log = logging.getLogger(__name__)


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
