"""The on-screen window output (--display) under a real X server: Xvfb, driven with xdotool.

Each test runs the pipeline in a subprocess with DISPLAY set to its own Xvfb, finds the window by
its title, reads what the X server really shows (Xvfb keeps its screen in an XWD file, -fbdir),
compares it with the colourised depth the model gives for the clip's frame, and presses q in the
window. Skipped when Xvfb, xdotool or x11-utils is not installed (.ci/run installs the apt
packages xvfb, xdotool, x11-utils).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import pytest
from pipeline_helpers import frame_at, load_engine, read_video, reference_depth
from system_tools import needs_x

from pipeline.colour import colorize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_SIZE = (224, 320)  # the model input of every run here
HEIGHT, WIDTH = 120, 160  # the clip's frames
FRAMES = 300  # paced at 25 fps: 12 s if q did not stop the run


@dataclass
class XServer:
    display: str  # ":N"
    screen_file: str  # the screen as an XWD file, kept current by Xvfb
    proc: subprocess.Popen
    last_error: str = ""  # stderr of the last tool run
    history: list = field(default_factory=list)  # failed window lookups, for failure messages

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "XAUTHORITY")}
        env["DISPLAY"] = self.display
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def tool(self, *cmd: str) -> str:
        out = subprocess.run(
            cmd, env=self.env(), capture_output=True, text=True, timeout=10, check=False
        )
        self.last_error = out.stderr
        return out.stdout


@pytest.fixture
def xserver(tmp_path):
    """An Xvfb on a display number it picks itself (-displayfd: it writes the number once it
    accepts connections, so no other test's or user's X server is touched)."""
    fbdir = tmp_path / "fb"
    fbdir.mkdir()
    read_fd, write_fd = os.pipe()
    log = open(tmp_path / "xvfb.log", "wb")
    cmd = ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", "640x480x24", "-nolisten", "tcp"]
    # -noreset: by default the server resets when its last client leaves and drops connections
    # meanwhile; the polling tools here come and go (a desktop has a window manager that stays)
    cmd += ["-fbdir", str(fbdir), "-noreset"]
    proc = subprocess.Popen(cmd, pass_fds=(write_fd,), stdout=log, stderr=log)
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 20
    try:
        while not number.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                break
            chunk = os.read(read_fd, 16)
            if not chunk:  # Xvfb exited
                break
            number += chunk
    finally:
        os.close(read_fd)
    if not number.strip().isdigit():
        proc.kill()
        proc.wait(10)
        log.close()
        pytest.fail(f"Xvfb did not start: {(tmp_path / 'xvfb.log').read_text(errors='replace')}")
    server = XServer(f":{int(number)}", str(fbdir / "Xvfb_screen0"), proc)
    assert "screen #0" in server.tool("xdpyinfo")  # the server answers clients
    yield server
    proc.terminate()
    proc.wait(10)
    log.close()


def read_screen(path: str) -> np.ndarray:
    """Xvfb's screen file (XWD: big-endian header, colormap, then pixels) -> BGR uint8."""
    with open(path, "rb") as f:
        raw = f.read()
    h = np.frombuffer(raw[:100], ">u4").astype(np.int64)
    header_size, width, height = h[0], h[4], h[5]
    byte_order, bits_per_pixel, bytes_per_line = h[7], h[11], h[12]
    masks, ncolors = h[14:17], h[19]
    assert bits_per_pixel == 32, f"unexpected XWD screen with {bits_per_pixel} bits per pixel"
    offset = header_size + 12 * ncolors  # XWDColor entries are 12 bytes
    pixels = np.frombuffer(raw, "<u4" if byte_order == 0 else ">u4", height * bytes_per_line // 4,
                           offset).reshape(height, -1)[:, :width]  # fmt: skip
    channels = []
    for mask in masks[::-1]:  # blue, green, red
        shift = (int(mask) & -int(mask)).bit_length() - 1
        channels.append(((pixels & int(mask)) >> shift).astype(np.uint8))
    return np.dstack(channels)


def window_id(x: XServer, title: str) -> str | None:
    ids = x.tool("xdotool", "search", "--name", f"^{re.escape(title)}$").split()
    assert len(ids) <= 1, f"several windows titled {title!r}: {ids}"
    return ids[0] if ids else None


def wait_for_window(x: XServer, title: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Wait until a window titled exactly `title` exists (fail if the pipeline exits first)."""
    deadline = time.monotonic() + timeout
    while window_id(x, title) is None:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the pipeline exited ({proc.returncode}) without a window {title!r}:"
                        f"\n{out}\n{err}")  # fmt: skip
        assert time.monotonic() < deadline, f"no window {title!r} after {timeout} s"
        time.sleep(0.05)  # polling the X server for a condition, with a deadline


def window_pixels(x: XServer, title: str) -> np.ndarray | None:
    """What the screen shows inside the window (no window manager: nothing covers it); None if
    there is no such window."""
    wid = window_id(x, title)
    if wid is None:
        x.history.append(("no id", x.last_error))
        return None
    info = x.tool("xwininfo", "-id", wid)
    keys = ("Absolute upper-left X", "Absolute upper-left Y", "Width", "Height")
    found = [re.search(rf"{k}:\s+(-?\d+)", info) for k in keys]
    if not all(found):
        x.history.append((wid, x.last_error))
        return None  # gone between the two calls
    left, top, width, height = (int(m[1]) for m in found)
    return read_screen(x.screen_file)[top : top + height, left : left + width]


def wait_for_view(x: XServer, title: str, expected: np.ndarray, proc, timeout: float = 30):
    """Wait until the window shows `expected` somewhere inside it (Qt adds a toolbar and a status
    bar around the image); returns (window pixels, the region that matched)."""
    deadline = time.monotonic() + timeout
    h, w = expected.shape[:2]
    shot = last = None
    remap_at = time.monotonic() + 2
    while True:
        shot = window_pixels(x, title)
        last = shot if shot is not None else last
        if shot is not None and not shot.any() and time.monotonic() > remap_at:
            # Mapped but never painted, not even the toolbar: without a window manager Qt (xcb)
            # now and then misses the window's first Expose event and then draws nothing. A
            # window manager maps windows itself, which exposes them again: do that here.
            wid = window_id(x, title)
            if wid is not None:
                x.tool("xdotool", "windowunmap", "--sync", wid)
                x.tool("xdotool", "windowmap", "--sync", wid)
            remap_at = time.monotonic() + 2
        if shot is not None and shot.shape[0] >= h and shot.shape[1] >= w:
            scores = cv2.matchTemplate(shot, expected, cv2.TM_SQDIFF)
            _, _, (mx, my), _ = cv2.minMaxLoc(scores)
            region = shot[my : my + h, mx : mx + w]
            if np.abs(region.astype(np.int16) - expected).mean() < 4:
                return shot, region
        if time.monotonic() > deadline or proc.poll() is not None:
            tree = x.tool("xwininfo", "-root", "-tree")
            if last is not None:
                cv2.imwrite(os.path.join(os.path.dirname(x.screen_file), "window.png"), last)
            if proc.poll() is None:
                proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the window {title!r} never showed the colourised depth "
                        f"(exit {proc.poll()}; last shot {None if shot is None else shot.shape}; "
                        f"{x.history[-5:]}); windows:\n{tree}\n{out}\n{err}")  # fmt: skip
        time.sleep(0.05)  # polling the screen for a condition, with a deadline


def press(x: XServer, title: str, key: str) -> None:
    """Focus the window (there is no window manager) and type `key` through XTEST."""
    wid = window_id(x, title)
    assert wid is not None, f"no window {title!r} to press {key} in"
    x.tool("xdotool", "windowfocus", "--sync", wid, "key", key)


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory):
    """FRAMES copies of one frame (MJPG): whichever frame the window shows, it is the same."""
    path = str(tmp_path_factory.mktemp("window_clip") / "still.avi")
    frame = frame_at(3, HEIGHT, WIDTH)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for _ in range(FRAMES):
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def expected_view(still_clip, tiny_checkpoint):
    """The colourised depth of the clip's frame, as the pipeline must show it (range 0..10 m)."""
    decoded = read_video(still_clip)
    assert len(decoded) == FRAMES
    assert all(np.array_equal(f, decoded[0]) for f in decoded[1:])
    depth = reference_depth(load_engine(tiny_checkpoint), decoded[:1], INPUT_SIZE)[0]
    view = colorize(depth, (0.0, 10.0), "inferno")
    # the check can fail: the view is neither blank nor the input frame
    assert view.std() > 10 and np.abs(view.astype(np.int16) - decoded[0]).mean() > 20
    return view


def paced_config(tmp_path, clip: str, checkpoint: str, title: str = "depthstream") -> str:
    """A config whose file source is replayed at its frame rate, as a camera would deliver it."""
    cfg = (
        f"sources:\n  - {{uri: {json.dumps(clip)}, id: clip, pace: true}}\n"
        f"model: {{checkpoint: {json.dumps(checkpoint)}, backend: eager, precision: fp32,"
        f" input_size: {list(INPUT_SIZE)}}}\n"
        f"outputs: {{window: {{title: {json.dumps(title)}}}}}\n"
        "metrics: {interval_s: 0}\n"
    )
    path = tmp_path / "window.yaml"
    path.write_text(cfg)
    return str(path)


@contextlib.contextmanager
def running(cmd: list[str], xserver: XServer, cwd, *, stdin: bool = False):
    """A program on the test's X server (text pipes); killed and reaped if it is still running
    when the block ends (a failed assertion), so no window or process outlives its test."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=xserver.env(), stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@needs_x
def test_window_shows_the_colourised_depth_and_q_stops_the_run(
    xserver, still_clip, expected_view, tiny_checkpoint, tmp_path
):
    summary_json = tmp_path / "summary.json"
    cmd = [sys.executable, os.path.join(ROOT, "run_stream.py")]
    cmd += ["--config", paced_config(tmp_path, still_clip, tiny_checkpoint), "--display"]
    cmd += ["--summary-json", str(summary_json)]
    with running(cmd, xserver, tmp_path) as proc:
        wait_for_window(xserver, "depthstream clip", proc)
        shot, region = wait_for_view(xserver, "depthstream clip", expected_view, proc)
        assert shot.std() > 10  # not a blank window
        assert np.abs(region.mean(axis=(0, 1)) - expected_view.mean(axis=(0, 1))).max() < 3
        press(xserver, "depthstream clip", "q")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(summary_json.read_text())
    assert summary["outcome"] == "stopped" and summary["stopped_by"] == "window"
    assert 0 < summary["frames"]["clip"] < FRAMES  # q ended the run, not the end of the clip
    assert "depthstream stopped (window)" in out
    assert "'q' pressed" in err
    assert "did not stop" not in err and "did not close" not in err and "Traceback" not in err


SCRIPT = """
import json, sys, threading
from pipeline import Pipeline
checkpoint, clip = sys.argv[1:3]
for title in ("first", "second"):
    cfg = {"sources": [{"uri": clip, "id": "clip", "pace": True}],
           "model": {"checkpoint": checkpoint, "backend": "eager", "precision": "fp32",
                     "input_size": [224, 320]},
           "outputs": {"window": {"title": title}}, "metrics": {"interval_s": 0}}
    summary = Pipeline(cfg, log_summary=False).run()
    print(json.dumps({"title": title, "stopped_by": summary.stopped_by,
                      "frames": summary.frames["clip"]}), flush=True)
print(json.dumps({"threads": sorted(t.name for t in threading.enumerate())}), flush=True)
"""


@needs_x
def test_two_pipelines_in_one_process_both_show_their_window(
    xserver, still_clip, expected_view, tiny_checkpoint
):
    """Each pipeline's sink is a new thread; OpenCV's Qt windows belong to the thread that first
    used them, so the second pipeline's window must still appear (and answer q)."""
    cmd = [sys.executable, "-c", SCRIPT, tiny_checkpoint, still_clip]
    with running(cmd, xserver, ROOT) as proc:
        for title in ("first", "second"):
            wait_for_window(xserver, f"{title} clip", proc)
            wait_for_view(xserver, f"{title} clip", expected_view, proc)
            press(xserver, f"{title} clip", "q")
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    runs, threads = lines[:2], lines[2]["threads"]
    for run, title in zip(runs, ("first", "second")):
        assert run["title"] == title and run["stopped_by"] == "window"
        assert 0 < run["frames"] < FRAMES
    # the stages are gone; the HighGUI thread stays for the process's later windows
    assert [t for t in threads if t.startswith("depthstream-")] == []
    assert "opencv-highgui" in threads


def unused_display() -> str:
    """A display number no X server uses (no lock file, no socket)."""
    for n in range(4000, 5000):
        if not os.path.exists(f"/tmp/.X{n}-lock") and not os.path.exists(f"/tmp/.X11-unix/X{n}"):
            return f":{n}"
    raise AssertionError("no free display number")


def test_display_without_a_reachable_x_server_is_skipped_not_fatal(
    still_clip, tiny_checkpoint, tmp_path
):
    """DISPLAY names no server (a stale ssh DISPLAY): Qt would abort the whole process (SIGABRT,
    outputs unfinished); the window output is skipped with a warning and the run completes."""
    env = {k: v for k, v in os.environ.items() if k != "WAYLAND_DISPLAY"}
    env["DISPLAY"] = unused_display()
    cmd = [sys.executable, os.path.join(ROOT, "run_stream.py"), "--source", f"clip={still_clip}"]
    cmd += ["--checkpoint", tiny_checkpoint, "--display", "--max-frames", "3"]
    cmd += ["--save-video", str(tmp_path / "depth.avi"), "--metrics-interval", "0"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"DISPLAY={env['DISPLAY']}, but that X server cannot be reached" in done.stderr
    assert "the window output is off" in done.stderr
    assert len(read_video(str(tmp_path / "depth.avi"))) == 3


EXIT_SCRIPT = """
import sys
import numpy as np
from pipeline.config import WindowSinkConfig
from pipeline.results import DepthResult
from pipeline.display import WindowSink
sink = WindowSink(WindowSinkConfig(title="left"), lambda reason: None)
view = np.full((60, 80, 3), (0, 0, 255), np.uint8)
sink.write(DepthResult({"stream": "open"}, np.zeros((60, 80), np.float32), view))
sys.stdin.readline()  # the test saw the window
# exits without closing the sink: the HighGUI thread is pumping events in OpenCV right now
"""


@needs_x
def test_exit_with_a_window_still_open_is_clean(xserver):
    """A program that ends while its window is open: the HighGUI thread is inside OpenCV then, and
    Python ending it there aborts the process ("terminate called without an active exception")
    unless it was shut down first, at exit."""
    with running([sys.executable, "-c", EXIT_SCRIPT], xserver, ROOT, stdin=True) as proc:
        wait_for_window(xserver, "left open", proc)
        out, err = proc.communicate("\n", timeout=30)
    assert proc.returncode == 0, err
    assert "terminate called" not in err
