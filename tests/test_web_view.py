"""--web: the live view, tested in a real headless Chromium (Debian's `chromium`) driven over the
Chrome DevTools Protocol (its --remote-debugging-port, spoken with `websockets`).

The page must show, for a frame the pipeline delivered, pixels that are the colourised depth of that
frame (pipeline.colour.colorize of its .npy, within JPEG error), the depth under the mouse pointer
equal to the .npy there (within the centimetre shown and the 1/256 m of the transfer; the values
come once the pointer is over the picture: tests/test_web_protocol.py), and that the run stopped:
told by the server (Ctrl-C, stop()) or because the connection dropped (kill -9).

Frames come from an external source the test feeds, so the test decides when frames flow; waits
are on the page's own "depthstream" events (resolved inside the page) and on process output.
"""

from __future__ import annotations

import contextlib
import json
import math
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pipeline_helpers import eager_factory, frame_at
from test_cli import (
    RUN_STREAM,
    assert_one_error_line,
    child_env,
    env_without,
    run_cli,
    write_clip,
)

from pipeline import FrameSender, Pipeline
from pipeline.colour import colorize

pytest.importorskip("websockets.asyncio.server")
from chromium import DEADLINE_S, NO_PROXY, Chromium, Page, needs_chromium  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

TOLERANCE_M = 0.005 + 0.5 / 256 + 1e-6  # the page's centimetre + the transfer's 1/256 m


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Chromium]:
    chromium = Chromium(str(tmp_path_factory.mktemp("chromium-profile")))
    try:
        yield chromium
    finally:
        chromium.close()


def web_config(tmp_path, streams: tuple[str, ...] = ("cam",), **web: Any) -> dict[str, Any]:
    return {
        "sources": [{"uri": "external", "id": s, "kind": "external"} for s in streams],
        "model": {"precision": "fp32"},
        "outputs": {
            "web": {"port": 0, **web},
            "files": {
                "directory": str(tmp_path / "depth"),
                "png": False,
                "layout": "per_stream" if len(streams) > 1 else "flat",
            },  # fmt: skip
        },
        "metrics": {"interval_s": 0},
    }


def canvas_pixels(page: Page, stream: str) -> tuple[int, np.ndarray]:
    """(index of the frame shown, its canvas pixels as (H, W, 3) RGB), read in one go."""
    got = page.evaluate(
        f"(() => {{ const s = depthstream.streams[{json.dumps(stream)}]; const c = s.canvas;"
        " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        " return {index: s.meta.index, w: c.width, h: c.height, rgba: Array.from(d)}; })()"
    )
    rgba = np.array(got["rgba"], dtype=np.uint8).reshape(got["h"], got["w"], 4)
    return got["index"], rgba[..., :3]


def value_under_pointer(page: Page, stream: str, x: int, y: int) -> str:
    """Moves the mouse over pixel (x, y) of the stream's image; what the page then shows."""
    box = page.evaluate(
        f"(() => {{ const c = depthstream.streams[{json.dumps(stream)}].canvas;"
        " const r = c.getBoundingClientRect();"
        " return {left: r.left, top: r.top, sx: r.width / c.width, sy: r.height / c.height}; })()"
    )
    assert box["sx"] >= 1 and box["sy"] >= 1, box  # shown at full size or larger
    # Mouse events carry whole CSS pixels: the first whole one over the pixel.
    px, py = math.ceil(box["left"] + x * box["sx"]), math.ceil(box["top"] + y * box["sy"])
    page.call("Input.dispatchMouseEvent", type="mouseMoved", x=px, y=py)
    # The page asks for the depth values of the frame shown once the pointer is over it; "…"
    # until they are there.
    value = json.dumps(f"section[data-stream='{stream}'] .value")
    return page.wait(f"(t => t !== '…' && t)(document.querySelector({value}).textContent)",
                     "the depth under the pointer")  # fmt: skip


def feed(pipe: Pipeline, stream: str, frames: list[np.ndarray]) -> None:
    sender = FrameSender(pipe.endpoints["preprocess.lossless"], stream, context=pipe.context)
    try:
        for frame in frames:
            sender.send(frame)
    finally:
        sender.close()  # ends the stream


@needs_chromium
@pytest.mark.parametrize("encoding", ["auto", "jpeg"])  # auto: levels (the browser is here)
def test_the_page_shows_the_depth_its_value_under_the_pointer_and_that_the_run_stopped(
    tmp_path, browser, tiny_checkpoint, encoding
):
    h, w, n = 96, 128, 4
    headers: dict[int, dict] = {}
    pipe = Pipeline(
        web_config(tmp_path, encoding=encoding),
        engine_factory=eager_factory(tiny_checkpoint),
        on_result=lambda r: headers.__setitem__(r.index, r.header),
    ).start()
    url = pipe.endpoints["web"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and not url.endswith(":0/")
    try:
        with browser.page(url) as page:
            assert page.evaluate("depthstream.status") == "live"
            sender = FrameSender(pipe.endpoints["preprocess.lossless"], "cam", context=pipe.context)
            try:
                for i in range(n):
                    sender.send(frame_at(i, h, w))
                page.wait(f"depthstream.streams.cam.meta?.index === {n - 1}", f"frame {n - 1}")
            finally:
                sender.close()
            index, rgb = canvas_pixels(page, "cam")
            assert index == n - 1 and rgb.shape == (h, w, 3)

            # (1) the pixels are the colourised depth of that frame (exactly, from levels)
            depths = {i: np.load(tmp_path / "depth" / f"{i:06d}.npy") for i in range(n)}
            far = headers[index]["max_depth"]
            expected = colorize(depths[index], (0.0, far))[..., ::-1].astype(int)  # BGR -> RGB
            error = np.abs(rgb.astype(int) - expected)
            if encoding == "auto":
                assert error.max() == 0, error.max()
            assert error.mean() < 3.0 and np.percentile(error, 99) < 40, (error.mean(), error.max())
            others = [
                np.abs(rgb.astype(int) - colorize(d, (0.0, far))[..., ::-1]).mean()
                for i, d in depths.items() if i != index
            ]  # fmt: skip
            assert min(others) > 2 * error.mean() + 0.5, others  # it tells frames apart

            # (2) the depth under the pointer is the .npy's there
            for x, y in ((0, 0), (37, 51), (w - 1, h - 1)):
                shown = value_under_pointer(page, "cam", x, y)
                m = re.fullmatch(r"(\d+\.\d\d) m at \((\d+), (\d+)\)", shown)
                assert m, shown
                assert (int(m[2]), int(m[3])) == (x, y), shown
                assert abs(float(m[1]) - depths[index][y, x]) <= TOLERANCE_M, shown

            # the colour bar in metres (near = the bright end) and the stream's numbers
            ticks = page.evaluate(
                "[...document.querySelectorAll('.ticks span')].map(e => e.textContent)"
            )
            assert ticks == [f"{far * k / 4:.1f} m" for k in range(5)]
            near_colour = page.evaluate(
                "Array.from(document.querySelector('.colours').getContext('2d')"
                ".getImageData(0, 0, 1, 1).data)"
            )
            assert (
                near_colour[:3]
                == colorize(np.zeros((1, 1), np.float32), (0.0, far))[0, 0, ::-1].tolist()
            )
            stats = page.text("section[data-stream='cam'] .stats")
            assert re.fullmatch(rf"frame {n - 1} · [\d.]+ fps · latency \d+ ms · drops 0", stats), (
                stats
            )

            # (3) the run ends: the server says so before it closes
            summary = pipe.join(timeout=DEADLINE_S)
            assert summary.outcome == "finished"
            status = page.wait("depthstream.stopped && depthstream.status", "that the run stopped")
            assert status == "stopped: every stream ended"
            assert "stopped" in page.text("#status")
            # the last frame stays, its depth still readable
            assert value_under_pointer(page, "cam", 37, 51).endswith("m at (37, 51)")
    finally:
        pipe.stop()
        pipe.join(timeout=DEADLINE_S)
    with pytest.raises(urllib.error.URLError):  # the port is closed
        NO_PROXY.open(url, timeout=5)


@needs_chromium
def test_several_streams_and_browsers_and_a_browser_that_does_not_read(
    tmp_path, browser, tiny_checkpoint
):
    """Two streams, the input beside the depth, two pages and a client that acknowledges every
    frame but never reads (its socket fills): every frame still reaches the sinks at once, and
    both pages end on each stream's last frame."""
    n, h, w = 30, 240, 320
    cfg = web_config(tmp_path, ("a", "b"), side_by_side=True)
    cfg["model"]["input_size"] = [64, 64]  # cheap model; the depth comes back at 240x320
    delivered = threading.Semaphore(0)
    far: list[float] = []  # the model's max depth: the colours' far end

    def on_result(r) -> None:
        far[:] = [r.header["max_depth"]]
        delivered.release()

    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint), on_result=on_result)
    pipe.start()
    url = pipe.endpoints["web"]
    stop = threading.Event()
    feeders: list[threading.Thread] = []
    try:
        with (
            browser.page(url) as one, browser.page(url) as two,
            connect(url.replace("http", "ws", 1) + "ws", proxy=None, max_size=None,
                    max_queue=1, ping_interval=None) as hostile,
        ):  # fmt: skip
            assert json.loads(hostile.recv(timeout=DEADLINE_S))["streams"] == ["a", "b"]

            def spam_acks() -> None:  # asks for more all the time, reads nothing
                with contextlib.suppress(Exception):
                    while not stop.wait(0.005):
                        hostile.send('{"ack": "a"}')
                        hostile.send('{"ack": "b"}')

            feeders = [threading.Thread(target=spam_acks, daemon=True)] + [
                threading.Thread(target=feed, args=(pipe, s, [frame_at(i, h, w) for i in range(n)]),
                                 daemon=True)
                for s in ("a", "b")
            ]  # fmt: skip
            for t in feeders:
                t.start()
            for _ in range(2 * n):
                assert delivered.acquire(timeout=DEADLINE_S), "frames stopped reaching the sinks"
            sink = pipe.metrics()["sink"]
            assert sink["latency_ms"]["max"] < 1000, sink["latency_ms"]  # the sinks never waited
            for page in (one, two):
                for s in ("a", "b"):
                    page.wait(
                        f"depthstream.streams.{s}.meta?.index === {n - 1}", f"{s}'s last frame"
                    )
            index, rgb = canvas_pixels(two, "b")
            assert index == n - 1 and rgb.shape == (h, 2 * w, 3)  # the input | the depth
            depth = np.load(tmp_path / "depth" / "b" / f"{index:06d}.npy")
            right = np.abs(rgb[:, w:].astype(int) - colorize(depth, (0.0, far[0]))[..., ::-1])
            left = np.abs(rgb[:, :w].astype(int) - frame_at(index, h, w)[..., ::-1])
            other = np.abs(rgb[:, :w].astype(int) - frame_at(index - 1, h, w)[..., ::-1])
            # the input is a textured scene: JPEG errs more there, far less than another frame
            assert right.mean() < 3.0 and left.mean() < 10.0, (right.mean(), left.mean())
            assert other.mean() > 2 * left.mean(), (other.mean(), left.mean())
            assert pipe.metrics()["sink"]["gauges"]["web_viewers_peak"] == 3
            summary = pipe.join(timeout=DEADLINE_S)
            assert summary.outcome == "finished" and summary.frames == {"a": n, "b": n}
            for page in (one, two):
                assert page.wait("depthstream.stopped && depthstream.status", "the end") == (
                    "stopped: every stream ended"
                )
    finally:
        stop.set()
        pipe.stop()
        pipe.join(timeout=DEADLINE_S)
        for t in feeders:
            t.join(DEADLINE_S)
    assert not [t.name for t in threading.enumerate() if t.name == "depthstream-web"]


def read_lines(stream) -> queue.Queue:
    """A thread putting each line of `stream` into the returned queue (None at its end)."""
    lines: queue.Queue = queue.Queue()

    def run() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=run, name="test-stderr", daemon=True).start()
    return lines


@needs_chromium
@pytest.mark.parametrize(
    "sig, status, code",
    [
        (signal.SIGINT, "stopped: the run was stopped", 130),  # Ctrl-C: the server says so
        (signal.SIGKILL, "stopped: the connection to the pipeline was lost", -9),  # nobody does
    ],
    ids=["ctrl-c", "kill"],
)
def test_the_command_line_web_view_and_its_end(
    tmp_path, browser, tiny_checkpoint, sig, status, code
):
    clip = write_clip(str(tmp_path / "clip.avi"), 600, 64, 96, fps=30.0)  # 20 s, paced
    proc = subprocess.Popen(
        [sys.executable, RUN_STREAM, "--source", clip, "--pace", "--checkpoint", tiny_checkpoint,
         "--backend", "eager", "--precision", "fp32", "--web", "0", "--metrics-interval", "0"],
        env=child_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        lines, seen = read_lines(proc.stderr), []
        while True:
            line = lines.get(timeout=DEADLINE_S)
            assert line is not None, "".join(seen)
            seen.append(line)
            m = re.search(r"outputs\.web: live view on (http://127\.0\.0\.1:\d+/)", line)
            if m:
                break
        with browser.page(m[1]) as page:
            page.wait("Object.values(depthstream.streams).some(s => s.shown > 0)", "a frame")
            proc.send_signal(sig)
            assert page.wait("depthstream.stopped && depthstream.status", "the end") == status
        assert proc.wait(DEADLINE_S) == code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# ---- without a browser: the server's HTTP side, its refusals, the config -------------------------


def test_the_server_serves_the_page_and_refuses_other_sites_and_hosts(tmp_path, tiny_checkpoint):
    pipe = Pipeline(web_config(tmp_path), engine_factory=eager_factory(tiny_checkpoint)).start()
    url = pipe.endpoints["web"]
    ws_url = url.replace("http", "ws", 1) + "ws"
    port = url.rsplit(":", 1)[1].strip("/")
    try:
        with NO_PROXY.open(url, timeout=DEADLINE_S) as page:
            assert page.headers["Content-Type"].startswith("text/html")
            assert b'<script src="/app.js">' in page.read()
        with NO_PROXY.open(url + "app.js", timeout=DEADLINE_S) as script:
            assert b"depthAt" in script.read()
        for path, headers, code in [
            ("nothing", {}, 404),
            ("", {"Host": f"depth.example:{port}"}, 403),  # DNS rebinding onto loopback
        ]:
            with pytest.raises(urllib.error.HTTPError) as e:
                NO_PROXY.open(urllib.request.Request(url + path, headers=headers), timeout=30)
            assert e.value.code == code
        # Another site's page in the browser cannot open the WebSocket; the page's own can.
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as e:
            connect(ws_url, proxy=None, origin="http://evil.example").__enter__()
        assert e.value.response.status_code == 403
        with connect(ws_url, proxy=None, origin=url.rstrip("/")) as ws:
            assert json.loads(ws.recv(timeout=DEADLINE_S))["type"] == "hello"
    finally:
        pipe.stop()
        pipe.join(timeout=DEADLINE_S)


def test_a_port_in_use_is_one_error_line_and_exit_5(tmp_path, tiny_checkpoint):
    clip = write_clip(str(tmp_path / "clip.avi"), 2, 64, 96)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--web", str(port))
    assert_one_error_line(
        proc, 5, f"outputs.web: cannot serve on 127.0.0.1:{port}: Address already in use"
    )


def test_without_websockets_the_cli_says_what_to_install(tmp_path, tiny_checkpoint):
    clip = write_clip(str(tmp_path / "clip.avi"), 2, 64, 96)
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--web", "0",
                   env=env_without(tmp_path, "websockets"))  # fmt: skip
    assert_one_error_line(proc, 2, "outputs.web (--web) needs websockets", "depthstream[web]")
