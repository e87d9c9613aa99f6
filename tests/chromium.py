"""A real headless Chromium for tests, driven over the Chrome DevTools Protocol (its
--remote-debugging-port) with `websockets`: open tabs, evaluate JavaScript, move the mouse, and
wait for what a page announces, inside the page (no polling from here)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from pipeline_helpers import wait_until
from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)"
)
DEADLINE_S = 120.0  # generous: 2 shared cores; every wait ends as soon as its event happens
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


class Page:
    """One browser tab over CDP: evaluate JavaScript, wait for what the page announces."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._id = 0

    def call(self, method: str, timeout: float = DEADLINE_S, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:  # events (no id) are not needed here
            left = deadline - time.monotonic()
            assert left > 0, f"{method}: no answer within {timeout} s"
            msg = json.loads(self.ws.recv(timeout=left))
            if msg.get("id") == self._id:
                assert "error" not in msg, f"{method}: {msg['error']}"
                return msg["result"]

    def evaluate(self, expression: str, timeout: float = DEADLINE_S) -> Any:
        result = self.call(
            "Runtime.evaluate", timeout, expression=expression, returnByValue=True,
            awaitPromise=True,
        )  # fmt: skip
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait(self, condition: str, what: str, timeout: float = DEADLINE_S) -> Any:
        """The value of the JavaScript `condition` once truthy: checked now and whenever the page
        announces a change (its "depthstream" events), inside the page."""
        script = (
            "new Promise((resolve) => { const check = () => { let v = null; try { v = ("
            + condition
            + "); } catch (e) {} if (v) { removeEventListener('depthstream', check); "
            "resolve(v); } }; addEventListener('depthstream', check); check(); })"
        )
        try:
            return self.evaluate(script, timeout)
        except TimeoutError:
            raise AssertionError(f"the page never showed {what} within {timeout} s") from None

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait("window.depthstream && depthstream.status !== 'connecting'", "a connection")

    def text(self, selector: str) -> str:
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")


class Chromium:
    """Headless Chromium with its DevTools endpoint on a free loopback port."""

    def __init__(self, profile: str) -> None:
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        port_file = os.path.join(profile, "DevToolsActivePort")  # written once it listens

        def listening() -> bool:
            assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}"
            return os.path.exists(port_file) and len(open(port_file).read().split()) == 2

        wait_until(listening, DEADLINE_S, "chromium's DevTools port")
        self.port = int(open(port_file).read().split()[0])

    @contextlib.contextmanager
    def page(self, url: str | None = None) -> Iterator[Page]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT"
        )
        with NO_PROXY.open(request, timeout=DEADLINE_S) as response:
            target = json.load(response)
        try:
            with connect(target["webSocketDebuggerUrl"], proxy=None, max_size=None,
                         ping_interval=None, compression=None) as ws:  # fmt: skip
                page = Page(ws)
                if url is not None:
                    page.open(url)
                yield page
        finally:
            NO_PROXY.open(f"http://127.0.0.1:{self.port}/json/close/{target['id']}").close()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: every helper process
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
