"""The live browser view's server (outputs.web): the page and its WebSocket on one port, served
from a thread of its own; newest frame wins, per browser and stream.

Library: `websockets` (asyncio; one pure-Python package without dependencies, maintained since
2013, RFC 6455 and permessage-deflate tested against the Autobahn suite). The standard library has
an HTTP server but no WebSocket; a hand-written WebSocket framing would be a protocol parser facing
the network. `websockets` also answers plain HTTP requests (`process_request`), so the page's three
files come from the same port, and one asyncio thread serves every browser.

Flow. The sink thread calls `offer(stream, item)`: the item goes into the stream's slot (the older
one is dropped) and the loop is woken; that is all, so nothing a browser does can slow the
pipeline. Per browser, at most one frame per stream is in flight: a frame is sent only once the
page acknowledged the previous one of that stream (`{"ack": STREAM}` after drawing it), and it is
the newest there is then. A slow browser, or a slow link, therefore gets fewer frames, never old
ones, and never holds a queue. A frame is encoded (`encode(item)`, in this thread) once, when the
first browser wants it, and at most `max_fps` times a second per stream; browsers that want the
same form of it get the same bytes: `payload(values, local)` of what encode() returned, `local`
when the browser is on this host, `values` for the streams it asked the depth values of
(`{"depth": [STREAM, ...]}`: its pointer is over them). A browser that asks for the values of
the frame it has gets that frame again, with them.

End. `end(stream)` tells the browsers that stream ended. `close(reason)` sends each browser the
newest frame of every stream with its values (unless it had it so) and `{"type": "stopped",
"reason": ...}`, closes the connections (within CLOSE_S; a browser that does not read is cut
off) and joins the thread.

Security: only GET of the page's files and the WebSocket at /ws, nothing else is read from the
request. A WebSocket whose Origin is not the page's own is refused (another site open in the
browser cannot read the depth), and on a loopback address a Host that is not loopback is refused
(DNS rebinding). There is no authentication: a non-loopback host lets anyone who can reach it
watch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from .errors import ConfigError, EndpointError
from .foxglove_sink import is_loopback

log = logging.getLogger(__name__)

WS_PATH = "/ws"
MAX_CLIENTS = 32  # browsers at once; more get 503 (each costs a send of every frame it views)
MAX_CLIENT_MESSAGE = 4096  # a browser sends acknowledgements and the streams it wants values of
CLOSE_S = 2.0  # close(): what a browser that does not read can delay the end of the run
PING_S = 20.0  # keepalive: a browser gone without closing is noticed within 2x this


def _websockets() -> tuple[Any, Any, Any, Any]:
    try:
        from websockets.asyncio.server import serve
        from websockets.datastructures import Headers
        from websockets.exceptions import ConnectionClosed
        from websockets.http11 import Response
    except ImportError:
        raise ConfigError(
            "outputs.web (--web) needs websockets: pip install depthstream[web]"
        ) from None
    return serve, Headers, ConnectionClosed, Response


def host_of(host_header: str) -> str:
    """The host part of an HTTP Host header (`h`, `h:port`, `[v6]:port`)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0]


def on_this_host(remote: Sequence[Any] | None, local: Sequence[Any] | None) -> bool:
    """Whether a peer at `remote` (a socket address) is on this host: loopback, or the address it
    reached us at (a browser here using the host's own address): it shares our CPU."""
    if not remote:
        return False
    return is_loopback(str(remote[0])) or (bool(local) and remote[0] == local[0])


class _Client:
    """One browser: what it has been sent per stream, what it has not acknowledged yet."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: dict[str, tuple[int, bool]] = {}  # stream -> (sequence number, with values)
        self.want: set[str] = set()  # streams it wants the depth values of
        self.local = on_this_host(ws.remote_address, ws.local_address)
        self.in_flight: set[str] = set()  # streams whose last frame is not acknowledged
        self.told_ended: set[str] = set()
        self.wake = asyncio.Event()
        self.closed = False


class WebServer:
    """Serves `files` (path -> (content type, bytes)) and the frames at ws://HOST:PORT/ws.

    `hello` is the first (text) message of every connection; `url` is http://HOST:PORT/ with the
    port bound (the config's may be 0). `encode(item)` returns what has `payload(values: bool,
    local: bool)`: the message with or without the depth values, for a browser on this host or
    not."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        streams: Sequence[str],
        hello: Mapping[str, Any],
        encode: Callable[[Any], Any],
        files: Mapping[str, tuple[str, bytes]],
        max_fps: float,
        gauges: MutableMapping[str, int] | None = None,
    ) -> None:
        self._serve, self._Headers, self._ConnectionClosed, self._Response = _websockets()
        self.streams = list(streams)
        self._hello = json.dumps(dict(hello))
        self._encode = encode
        self._files = dict(files)
        self._period = 1.0 / max_fps
        self.gauges = gauges if gauges is not None else {}
        self._loopback = is_loopback(host)
        self._lock = threading.Lock()  # guards _latest and _ended (the sink thread writes them)
        self._latest: dict[str, tuple[int, Any]] = {}  # stream -> (sequence number, item)
        self._ended: set[str] = set()
        # The loop thread's own state:
        self._encoded: dict[str, tuple[int, Any]] = {}  # stream -> (sequence number, encoded)
        self._next_encode: dict[str, float] = {}  # stream -> loop time of the next encode allowed
        self._timer: dict[str, bool] = {}  # stream -> a wake-up at _next_encode is scheduled
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task] = set()
        self._stop_reason: str | None = None
        self._failed: set[str] = set()  # streams whose encoding failed (logged once)
        self.viewers = 0  # browsers connected now (read by the sink thread)
        self.sent = 0
        self.cpu_s = 0.0  # CPU time of the server's thread, known once closed
        self._publish_gauges()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="depthstream-web", daemon=True
        )
        self._thread.start()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            starting = asyncio.run_coroutine_threadsafe(self._start(host, port), self._loop)
            self._server, bound = starting.result()
        except OSError as e:  # a bind error (errno + asyncio's long message) or an unknown host
            self._stop_loop()
            why = os.strerror(e.errno) if e.errno and e.errno > 0 else e.strerror or str(e)
            raise EndpointError(f"outputs.web: cannot serve on {where}: {why}") from None
        except BaseException:
            self._stop_loop()
            raise
        self.port: int = bound
        self.url = f"http://{where.rsplit(':', 1)[0]}:{bound}/"

    # ---- called from the sink thread ---------------------------------------------------------

    def offer(self, stream: str, item: Any) -> None:
        """The newest frame of `stream` (replaces the one not yet sent); never waits."""
        with self._lock:
            seq = self._latest.get(stream, (0, None))[0] + 1
            self._latest[stream] = (seq, item)
        if self.viewers:
            self._call(self._wake_all)

    def end(self, stream: str) -> None:
        with self._lock:
            self._ended.add(stream)
        self._call(self._wake_all)

    def close(self, reason: str) -> None:
        """Tell every browser the run ended (`reason`), close the connections and the port, join
        the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        done = asyncio.run_coroutine_threadsafe(self._shutdown(reason), self._loop)
        try:
            done.result(3 * CLOSE_S)
        except concurrent.futures.TimeoutError:
            log.warning("outputs.web: browsers did not close within %g s", 3 * CLOSE_S)
        finally:
            self._stop_loop()
        log.info("outputs.web: %s closed; frames sent: %d, CPU time of its thread %.2f s",
                 self.url, self.sent, self.cpu_s)  # fmt: skip

    def _call(self, fn: Callable[[], None]) -> None:
        if not self._closed:
            try:
                self._loop.call_soon_threadsafe(fn)
            except RuntimeError:  # the loop closed in the meantime
                pass

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # ---- the loop thread ---------------------------------------------------------------------

    async def _start(self, host: str, port: int) -> tuple[Any, int]:
        # One address (the first the name resolves to): port 0 then means one port, not one per
        # address family.
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        quiet = logging.getLogger(f"{__name__}.websockets")
        quiet.setLevel(logging.WARNING)  # no line per connection
        server = await self._serve(
            self._handle, address[0], port, family=family,
            process_request=self._http, compression=None,  # JPEG does not deflate
            max_size=MAX_CLIENT_MESSAGE, ping_interval=PING_S, ping_timeout=PING_S,
            close_timeout=CLOSE_S / 2, server_header=None, logger=quiet,
        )  # fmt: skip
        return server, server.sockets[0].getsockname()[1]

    def _publish_gauges(self) -> None:
        self.gauges["web_viewers"] = self.viewers
        self.gauges["web_viewers_peak"] = max(self.gauges.get("web_viewers_peak", 0), self.viewers)
        self.gauges["web_frames_sent"] = self.sent

    def _response(self, status: http.HTTPStatus, body: bytes, content_type: str) -> Any:
        headers = self._Headers(
            [("Content-Type", content_type), ("Content-Length", str(len(body))),
             ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
             ("Content-Security-Policy",
              "default-src 'self'; img-src 'self' blob:; connect-src 'self'")]
        )  # fmt: skip
        return self._Response(status.value, status.phrase, headers, body)

    def _refuse(self, status: http.HTTPStatus, why: str) -> Any:
        return self._response(status, f"{why}\n".encode(), "text/plain; charset=utf-8")

    def _http(self, connection: Any, request: Any) -> Any:
        """Answers a plain GET with a file; None lets a WebSocket handshake at /ws go ahead."""
        path = request.path.split("?", 1)[0]
        host = request.headers.get("Host", "")
        if self._loopback and not is_loopback(host_of(host)):
            return self._refuse(http.HTTPStatus.FORBIDDEN, "not a loopback host")
        if path == WS_PATH:
            origin = request.headers.get("Origin")
            if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
                return self._refuse(http.HTTPStatus.FORBIDDEN, "another site's page")
            if len(self._clients) >= MAX_CLIENTS or self._stop_reason is not None:
                return self._refuse(http.HTTPStatus.SERVICE_UNAVAILABLE, "no more viewers")
            return None
        file = self._files.get(path)
        if file is None:
            return self._refuse(http.HTTPStatus.NOT_FOUND, "not found")
        return self._response(http.HTTPStatus.OK, file[1], file[0])

    def _wake_all(self) -> None:
        for client in self._clients:
            client.wake.set()

    def _frame_for(
        self, stream: str, client: _Client, final: bool
    ) -> tuple[int, bool, bytes] | None:
        """(sequence number, with values, message) of the newest frame of `stream` the client has
        not had (or had without the values it now wants), encoding it if it is due; None when
        there is none (yet)."""
        with self._lock:
            seq, item = self._latest.get(stream, (0, None))
        cached = self._encoded.get(stream)
        if item is not None and (cached is None or cached[0] != seq) and stream not in self._failed:
            now = self._loop.time()
            due = self._next_encode.get(stream, 0.0)
            if now >= due or final:
                cached = self._encoding(stream, lambda: (seq, self._encode(item)))
                if cached is not None:
                    self._encoded[stream] = cached
                    self._next_encode[stream] = now + self._period
            elif not self._timer.get(stream):  # too soon: wake up when it is due
                self._timer[stream] = True
                self._loop.call_at(due, self._timer_fired, stream)
        if cached is None or stream in self._failed:
            return None
        values = final or stream in client.want
        had, had_values = client.seen.get(stream, (0, False))
        if had == cached[0] and (had_values or not values):  # it has this frame as wanted
            return None
        message = self._encoding(stream, lambda: cached[1].payload(values, client.local))
        return None if message is None else (cached[0], values, message)

    def _encoding(self, stream: str, encode: Callable[[], Any]) -> Any:
        """encode(); None if it fails: a frame the view cannot show is said once, the rest go on."""
        try:
            return encode()
        except Exception as e:
            log.error("outputs.web: stream %s: cannot encode a frame: %s", stream, e)
            self._failed.add(stream)
            return None

    def _timer_fired(self, stream: str) -> None:
        self._timer[stream] = False
        self._wake_all()

    async def _handle(self, ws: Any) -> None:
        client = _Client(ws)
        self._clients.add(client)
        self._tasks.add(asyncio.current_task())
        self.viewers = len(self._clients)
        self._publish_gauges()
        reader = asyncio.create_task(self._read(client))
        try:
            await ws.send(self._hello)
            await self._serve_client(client)
        except self._ConnectionClosed:
            pass
        finally:
            reader.cancel()
            self._clients.discard(client)
            self._tasks.discard(asyncio.current_task())
            self.viewers = len(self._clients)
            self._publish_gauges()

    async def _serve_client(self, client: _Client) -> None:
        while not client.closed:
            client.wake.clear()  # before looking: what happens while sending wakes it again
            final = self._stop_reason is not None
            for stream in self.streams:
                if stream in client.in_flight and not final:
                    continue
                frame = self._frame_for(stream, client, final)
                if frame is not None:
                    client.seen[stream] = frame[:2]
                    client.in_flight.add(stream)
                    await client.ws.send(frame[2])
                    self.sent += 1
            with self._lock:
                ended = self._ended - client.told_ended
            for stream in sorted(ended):
                await client.ws.send(json.dumps({"type": "end", "stream": stream}))
                client.told_ended.add(stream)
            if final:
                await client.ws.send(json.dumps({"type": "stopped", "reason": self._stop_reason}))
                return  # websockets closes the connection (1000)
            await client.wake.wait()

    async def _read(self, client: _Client) -> None:
        """{"ack": STREAM} once the page drew that stream's frame; {"depth": [STREAM, ...]}: the
        streams it wants the depth values of from now on."""
        try:
            async for message in client.ws:
                try:
                    got = json.loads(message)
                    ack, want = got.get("ack"), got.get("depth")
                except (ValueError, TypeError, AttributeError, RecursionError):
                    continue  # not ours (or nested too deep to parse): ignored
                if isinstance(ack, str):
                    client.in_flight.discard(ack)
                if isinstance(want, list):
                    client.want = {s for s in self.streams if s in want}
                client.wake.set()
        except self._ConnectionClosed:
            pass
        finally:
            client.closed = True
            client.wake.set()

    async def _shutdown(self, reason: str) -> None:
        self._stop_reason = reason
        self._wake_all()
        if self._tasks:  # each sends its last frames and "stopped", then returns
            await asyncio.wait(set(self._tasks), timeout=CLOSE_S)
        for client in self._clients:  # not done in time (not reading): cut off
            client.ws.transport.abort()
        self._server.close()  # the port closes; handshakes under way are refused
        try:
            await asyncio.wait_for(self._server.wait_closed(), CLOSE_S)
        except asyncio.TimeoutError:  # TimeoutError from 3.11 on
            log.warning("outputs.web: connections still open after %g s", CLOSE_S)
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:  # nothing may be pending when the loop closes
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        self.cpu_s = time.thread_time()  # all this thread did: serving, encoding
