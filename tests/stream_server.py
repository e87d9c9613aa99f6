"""Real stream servers on 127.0.0.1 for the network-source tests: ffmpeg (http, tcp, udp) and
GStreamer's RTSP server (rtsp)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction

import cv2
from pipeline_helpers import free_port


def _listening(port: int) -> bool:
    """True when something listens on 127.0.0.1:port, or has accepted a client there.

    Read from /proc, without connecting. `-listen 1` closes its listening socket once a client is
    accepted, and a reconnecting pipeline can get in before a poll sees LISTEN: an ESTABLISHED
    socket on the server's port then says the server is up.
    """
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[1].endswith(want) and cols[3] in ("0A", "01"):  # LISTEN, ESTABLISHED
                return True
    return False


# GStreamer's RTSP server (gst-rtsp-server through PyGObject), run by a Python that has `gi`:
# a live test pattern of the given size and rate, JPEG over RTP, at rtsp://127.0.0.1:PORT/s.
RTSP_SERVER_SCRIPT = """
import os
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("videotestsrc", "jpegenc", "rtpjpegpay") if not Gst.ElementFactory.find(e)]
if missing:
    sys.exit("missing GStreamer elements: " + " ".join(missing))
if sys.argv[1] == "check":
    sys.exit(0)
port, width, height, fps = sys.argv[1:5]
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={width},"
    f"height={height},framerate={fps} ! jpegenc ! rtpjpegpay name=pay0 pt=96 )"
)
factory.set_shared(True)
if sys.argv[5:] == ["tcp"]:  # RTP interleaved in the RTSP connection only: UDP setups are refused
    gi.require_version("GstRtsp", "1.0")
    from gi.repository import GstRtsp
    factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
server.get_mount_points().add_factory("/s", factory)
if not server.attach(None):  # binds and listens, or fails (the port is taken)
    sys.exit(f"cannot listen on port {port}")
print("listening", flush=True)  # what StreamServer.start waits for
loop, parent = GLib.MainLoop(), os.getppid()
GLib.timeout_add(200, lambda: os.getppid() == parent or loop.quit())  # ends with its test run
loop.run()
"""
RTSP_PACKAGES = "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good"


@functools.cache
def rtsp_server_python() -> str | None:
    """A Python that can run RTSP_SERVER_SCRIPT (this one, or the system's), or None."""
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3")]):
        if python and os.path.isfile(python):
            check = [python, "-c", RTSP_SERVER_SCRIPT, "check"]
            try:
                ok = subprocess.run(check, capture_output=True, timeout=30).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return python
    return None


class StreamServer:
    """A real stream server on 127.0.0.1 that a pipeline source reads, paced in real time.

    ffmpeg's streams are MPEG-2 video in MPEG-TS (MJPEG in MPEG-TS does not open: FACTS.md).

    protocol (the source's URL is `url`):
      http  ffmpeg serves the clip, looped, as MPEG-TS over HTTP (`-listen 1`); the source connects
      tcp   ffmpeg serves it as MPEG-TS on a bare TCP socket (`?listen=1`); the source connects
      udp   ffmpeg sends it as MPEG-TS datagrams to the port; the source listens there
      rtsp  GStreamer's RTSP server plays a live test pattern of the clip's size and frame rate
            (JPEG over RTP; needs RTSP_PACKAGES, see rtsp_server_python)
    `start` returns once the server is up: for rtsp when the server says it listens (a line on
    its stdout), for udp when ffmpeg reports bytes written (its -progress lines on stdout), for
    http and tcp when the port listens (ffmpeg says nothing then: see _await_listening). Each
    http/tcp server serves one client: restart it to reconnect.
    """

    PROTOCOLS = ("http", "tcp", "udp", "rtsp")

    def __init__(self, clip: str, port: int | None = None, protocol: str = "http") -> None:
        if protocol not in self.PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is not one of {self.PROTOCOLS}")
        if protocol == "rtsp":
            if rtsp_server_python() is None:
                raise RuntimeError(f"GStreamer's RTSP server is not installed ({RTSP_PACKAGES})")
        elif shutil.which("ffmpeg") is None:
            raise RuntimeError("ffmpeg is not installed")
        self.clip = clip
        self.protocol = protocol
        self.port = port or free_port(udp=protocol == "udp")
        self.url = {
            "http": f"http://127.0.0.1:{self.port}/s.ts",
            "tcp": f"tcp://127.0.0.1:{self.port}",
            "udp": f"udp://127.0.0.1:{self.port}",
            "rtsp": f"rtsp://127.0.0.1:{self.port}/s",
        }[protocol]
        self.proc: subprocess.Popen | None = None
        self._up = False  # the server's stdout said it is up (rtsp, udp)
        self._heard = threading.Event()  # set by _watch once it did, or once its stdout ended
        self._watcher: threading.Thread | None = None

    def _command(self) -> list[str]:
        if self.protocol == "rtsp":
            cap = cv2.VideoCapture(self.clip, cv2.CAP_FFMPEG)
            width, height = (
                int(cap.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT)
            )
            fps = Fraction(cap.get(cv2.CAP_PROP_FPS) or 25).limit_denominator(1001)
            cap.release()
            args = (self.port, width, height, f"{fps.numerator}/{fps.denominator}")
            return [rtsp_server_python(), "-c", RTSP_SERVER_SCRIPT, *map(str, args)]
        cmd = ["ffmpeg", "-v", "error", "-nostdin"]
        if self.protocol == "udp":  # key=value lines on stdout, total_size= among them
            cmd += ["-stats_period", "0.05", "-progress", "pipe:1"]
        cmd += ["-re", "-stream_loop", "-1", "-i", self.clip]
        cmd += ["-c:v", "mpeg2video", "-pix_fmt", "yuv420p", "-f", "mpegts"]
        if self.protocol == "http":
            return cmd + ["-listen", "1", self.url]
        if self.protocol == "tcp":
            return cmd + [f"{self.url}?listen=1"]
        return cmd + [f"{self.url}?pkt_size=1316"]  # udp: one datagram = 7 TS packets

    def _says_up(self, line: str) -> bool:
        """Whether a line of the server's stdout says it is up."""
        if self.protocol == "rtsp":
            return line.strip() == "listening"
        size = re.fullmatch(r"total_size=(\d+)\s*", line)  # udp: ffmpeg's -progress
        return size is not None and int(size.group(1)) > 0

    def _watch(self) -> None:
        """Reads the server's stdout to its end (a pipe nobody reads would stall it once full)."""
        for line in self.proc.stdout:
            if not self._up and self._says_up(line):
                self._up = True
                self._heard.set()
        self._heard.set()  # it exited

    def start(self, timeout: float = 10.0) -> StreamServer:
        says = self.protocol in ("udp", "rtsp")  # the others say nothing when they are up
        out = subprocess.PIPE if says else None
        self.proc = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=out, text=True
        )
        if says:
            self._up = False
            self._heard.clear()
            self._watcher = threading.Thread(target=self._watch, daemon=True)
            self._watcher.start()
            self._heard.wait(timeout)
            up = self._up
        else:
            up = self._await_listening(timeout)
        if not up:
            self.stop()
            raise RuntimeError(f"{self.protocol} server did not come up on port {self.port}")
        return self

    def _await_listening(self, timeout: float) -> bool:
        """A bounded poll of the kernel's socket table: ffmpeg prints nothing once it listens, and
        a test connection would use up the one client `-listen 1` serves. There is no event to
        wait on, so the condition itself is polled, with a deadline."""
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.02)  # between polls of a condition, not synchronisation
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        if self._watcher is not None:
            self._watcher.join(10)  # the server is gone: its stdout has ended
            self._watcher = None
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> StreamServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TcpOnlyRtspServer(StreamServer):
    """GStreamer's RTSP server (as StreamServer's rtsp) serving RTP interleaved in the RTSP
    connection (RTSP over TCP) only: a client asking for RTP over UDP is refused at SETUP."""

    def __init__(self, clip: str, port: int | None = None) -> None:
        super().__init__(clip, port, protocol="rtsp")

    def _command(self) -> list[str]:
        return [*super()._command(), "tcp"]
