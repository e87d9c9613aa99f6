"""Sources fail fast and stop fast: a source that never opened is one clear error within seconds,
the error says why a URL did not open, and a stop does not wait for an open blocked in FFmpeg.

Every server is real, on 127.0.0.1: a port with nothing listening, plain TCP servers that hold or
close what they accept or answer with something that is not a video, an http.server serving a web
page. The command-line tests run run_stream.py as a user does, in a subprocess.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from pipeline_helpers import depthstream_threads, free_port, load_engine

from pipeline import Pipeline, SourceError
from pipeline.config import SourceConfig
from pipeline.sources import open_reader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_STREAM = os.path.join(ROOT, "run_stream.py")


class TcpServer:
    """A TCP server on 127.0.0.1 that does one thing with every connection it accepts:

    hold    keeps it open and never sends a byte (a server that hangs)
    close   closes it at once
    reply   sends `reply`, then closes it gracefully (after reading what the client sent)

    `accepted` is set on the first connection; `hung_up` once a held connection's client closed it.
    """

    def __init__(self, behaviour: str, reply: bytes = b"") -> None:
        self.behaviour = behaviour
        self.reply = reply
        self.accepted = threading.Event()
        self.hung_up = threading.Event()
        self._held: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed: the test is over
                return
            self.accepted.set()
            if self.behaviour == "close":
                conn.close()
                continue
            handler = self._hold if self.behaviour == "hold" else self._reply
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        self._held.append(conn)
        with conn:
            conn.settimeout(30)  # bounded: a test that fails does not leave it behind for long
            try:
                while conn.recv(4096):  # whatever the client sends (a request) is ignored
                    pass
                self.hung_up.set()
            except OSError:  # reset by the client (a hang-up too), or the 30 s passed
                self.hung_up.set()

    def _reply(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                conn.sendall(self.reply)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):  # until the client hangs up: no reset of unread data
                    pass
            except OSError:
                pass

    def hang_up(self) -> None:
        """Close the held connections (the client sees the server close them)."""
        for conn in self._held:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed
                pass

    def close(self) -> None:
        self._listener.close()


class WebPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><html><body><h1>Camera admin</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def servers():
    """Starts servers for one test (a function: kind -> url) and closes them after it."""
    opened = []

    def start(kind: str, scheme: str) -> str:
        path = {"http": "/s.ts", "rtsp": "/s", "tcp": "", "udp": ""}[scheme]
        if kind == "refused":
            port = free_port()  # nothing listens there
        elif kind == "silent" and scheme == "udp":
            port = free_port(udp=True)  # nothing sends there
        elif kind == "web page":
            web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), WebPage)
            threading.Thread(target=web.serve_forever, daemon=True).start()
            opened.append(web)
            port = web.server_port
        else:
            behaviour, reply = {
                "silent": ("hold", b""),
                "closes": ("close", b""),
                "rtsp 404": ("reply", b"RTSP/1.0 404 Not Found\r\nCSeq: 1\r\n\r\n"),
                "text": ("reply", b"<html>not a stream</html>\n" * 20),
            }[kind]
            server = TcpServer(behaviour, reply)
            opened.append(server)
            port = server.port
        return f"{scheme}://127.0.0.1:{port}{path}"

    yield start
    for server in opened:
        if isinstance(server, TcpServer):
            server.close()
        else:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize(
    ("scheme", "server", "failure"),
    [
        ("http", "refused", "connection refused"),
        ("rtsp", "refused", "connection refused"),
        ("tcp", "refused", "connection refused"),
        ("http", "silent", "timed out"),
        ("rtsp", "silent", "timed out"),
        ("tcp", "silent", "timed out"),
        ("udp", "silent", "timed out"),
        ("http", "closes", "closed"),
        ("rtsp", "closes", "closed"),
        ("tcp", "closes", "closed"),
        ("http", "web page", "not a video (the server answered 'HTTP/1.0 200 OK')"),
        ("rtsp", "rtsp 404", "not a video (the server answered 'RTSP/1.0 404 Not Found')"),
        ("tcp", "text", "not a video"),
    ],
)
def test_a_url_that_does_not_open_says_why(scheme, server, failure, servers):
    url = servers(server, scheme)
    source = SourceConfig(uri=url, id="cam", open_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as info:
        open_reader(source, "url")
    elapsed = time.monotonic() - t0
    assert str(info.value) == f"cannot open stream {url}: {failure}"
    # within the open timeout, plus at most one more for telling why (it is immediate here)
    assert elapsed < (1.0 if failure == "timed out" else 0) + 1.5, elapsed


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_cli(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, RUN_STREAM, *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.monotonic() - t0


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, RUN_STREAM, *args],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stdout_line(proc: subprocess.Popen, prefix: str) -> threading.Event:
    """Set once `proc` printed a line starting with `prefix` (its stdout is read meanwhile)."""
    seen = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            if line.startswith(prefix):
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    return seen


def assert_quiet_failure(stderr: str, *needles: str) -> str:
    """No OpenCV/FFmpeg log lines; one `error:` line, the last, naming the source and the cause."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert not [line for line in lines if re.match(r"\[ ?(ERROR|WARN|INFO)", line)], stderr
    assert "Traceback" not in stderr and "reconnecting" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.skipif(os.path.exists("/dev/video7"), reason="this machine has a camera 7")
def test_missing_camera_is_one_error_line_within_seconds():
    proc, elapsed = run_cli("--source", "7", timeout=60)
    assert proc.returncode == 3, proc.stderr  # a source error
    line = assert_quiet_failure(proc.stderr, "source0", "camera 7")
    if sys.platform.startswith("linux"):
        assert "/dev/video7 does not exist" in line
    # the program's start-up (torch, a random checkpoint) plus one instant open: no backoff
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_stop_while_a_network_open_is_blocked_takes_under_2_s(tiny_checkpoint):
    """The server accepts and never answers: FFmpeg's open would block for its whole 5 s."""
    server = TcpServer("hold")
    url = f"tcp://127.0.0.1:{server.port}"
    cfg = {
        "sources": [{"uri": url, "id": "hang", "open_timeout_s": 5.0}],
        "model": {"checkpoint": tiny_checkpoint},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=lambda: load_engine(tiny_checkpoint))
    try:
        pipe.start()
        assert server.accepted.wait(10), "the source did not connect"  # it is in its open now
        t0 = time.monotonic()
        pipe.stop()
        summary = pipe.join(timeout=10)
        stop_s = time.monotonic() - t0
    finally:
        pipe.stop()
        server.close()
    assert summary.stopped_by == "stop()"
    assert stop_s < 2.0, f"the stop took {stop_s:.2f} s"
    # The abandoned open ends by itself within its timeout and lets go of the connection.
    helpers = [t for t in threading.enumerate() if t.name == "depthstream-open:hang"]
    for t in helpers:
        t.join(5.0 + 2.0 + 1.0)  # the open timeout, telling why, slack
        assert not t.is_alive(), "the abandoned open did not end"
    assert server.hung_up.wait(2), "the connection of the abandoned open was never closed"
    assert depthstream_threads() == []


def test_ctrl_c_while_a_network_open_is_blocked_exits_within_2_s():
    """As a user sees the stop: Ctrl-C during a blocked open ends the program within 2 s."""
    server = TcpServer("hold")
    proc = start_cli("--source", f"tcp://127.0.0.1:{server.port}")  # open timeout: 5 s
    try:
        assert server.accepted.wait(60), "the source did not connect"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
        exit_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.close()
    assert proc.returncode == 130, stderr
    assert exit_s < 2.0, f"the exit took {exit_s:.2f} s"


def test_an_abandoned_open_that_ends_while_the_program_exits_does_not_crash_it():
    """Ctrl-C during a blocked open; the open ends (the server hangs up) just as the program exits.
    A thread that comes back from OpenCV while Python finalizes aborts the process."""
    server = TcpServer("hold")
    proc = start_cli("--source", f"tcp://127.0.0.1:{server.port}")
    finished = stdout_line(proc, "frames per stream")  # the last lines printed before exiting
    try:
        assert server.accepted.wait(60), "the source did not connect"
        proc.send_signal(signal.SIGINT)
        assert finished.wait(20), "no summary after Ctrl-C"
        try:  # 0.1 s more: into the ~0.3 s Python takes to finalize (the moment to provoke)
            proc.wait(0.1)
        except subprocess.TimeoutExpired:
            pass
        server.hang_up()  # the open fails now (closed), while the program exits
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        server.close()
    assert proc.returncode == 130, stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr, stderr
