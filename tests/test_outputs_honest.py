"""Outputs never claim a success they did not achieve: a full disk, a killed run, a run stopped
before its first frame. Real files on a real 2 MiB tmpfs, real CLI processes."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from pipeline_helpers import read_video
from test_cli import RUN_STREAM, assert_one_error_line, child_env, run_cli

from glpn.fileio import atomic_write, pid_temp_dir, remove_stale_tmp


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root, as the build machines and CI have)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory) -> str:
    """40 frames of noise at 240x320: ~9 MB of raw video, several MB as any compressed video."""
    path = str(tmp_path_factory.mktemp("noise") / "noise.avi")
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for _ in range(40):
        writer.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path


def fill(directory, leave: int = 0) -> None:
    """Fill the filesystem of `directory` to the last byte, or all but about `leave` bytes."""
    if leave:
        st = os.statvfs(directory)
        with open(os.path.join(directory, "filler"), "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - leave))
        return
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        for chunk in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_video_on_a_full_disk_is_an_error_and_no_broken_file(
    small_disk, noisy_clip, tiny_checkpoint, ext
):
    video = small_disk / f"depth{ext}"
    fill(small_disk, leave=200_000)  # room for a few frames, not for 40
    proc = run_cli(
        "--source", noisy_clip, "--checkpoint", tiny_checkpoint, "--side-by-side",
        "--save-video", str(video), "--input-size", "64x96",
    )  # fmt: skip
    assert_one_error_line(proc, 5, str(video), "no space left")
    # Nothing under the final name unless it plays to its last frame; no partial file left.
    assert os.listdir(small_disk) == ["filler"] or len(read_video(str(video))) > 0
    assert not glob.glob(str(small_disk / "*partial*"))
    assert "finished" not in proc.stdout and str(video) not in proc.stdout


def test_depth_files_on_a_full_disk_name_the_file_and_stay_whole(
    small_disk, noisy_clip, tiny_checkpoint
):
    out = small_disk / "depth"
    proc = run_cli(
        "--source", noisy_clip, "--checkpoint", tiny_checkpoint, "--save-depth", str(out),
        "--depth-format", "both", "--input-size", "64x96",
    )  # fmt: skip
    line = assert_one_error_line(proc, 5, str(out), "No space left on device")
    assert "cannot write" in line
    names = os.listdir(out)
    assert not [n for n in names if ".tmp" in n]  # no temporary file left behind
    npy = [n for n in names if n.endswith(".npy")]
    assert 0 < len(npy) < 40
    for name in npy:  # every file under a final name is complete
        assert np.load(out / name).shape == (240, 320)


def test_summary_json_on_a_full_disk_is_an_output_error(small_disk, tiny_checkpoint, tmp_path):
    clip = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for i in range(3):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.release()
    fill(small_disk)
    target = small_disk / "summary.json"
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--summary-json", str(target))
    assert_one_error_line(proc, 5, str(target), "No space left on device")
    assert sorted(os.listdir(small_disk)) == ["filler"]


def test_atomic_write_keeps_the_old_file_and_leaves_no_temporary(small_disk):
    path = small_disk / "kept.npy"
    atomic_write(str(path), b"old")
    fill(small_disk)
    with pytest.raises(OSError, match="cannot write .*kept.npy: No space left on device"):
        atomic_write(str(path), b"x" * 100_000)
    assert path.read_bytes() == b"old"
    assert sorted(os.listdir(small_disk)) == ["filler", "kept.npy"]
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~_umask()  # not 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, monkeypatch):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    (tmp_path / f"000001.npy.tmp{pid}").write_bytes(b"partial")
    (tmp_path / f"000002.npy.tmp{os.getpid()}").write_bytes(b"ours, being written")
    assert remove_stale_tmp(str(tmp_path)) == 1
    assert os.listdir(tmp_path) == [f"000002.npy.tmp{os.getpid()}"]

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    stale = tmp_path / f"depthstream-ipc-{pid}-abc"
    stale.mkdir()
    (stale / "inference").write_bytes(b"")
    with pid_temp_dir("depthstream-ipc-") as fresh:
        assert not stale.exists()
        assert os.path.basename(fresh).startswith(f"depthstream-ipc-{os.getpid()}-")


def test_killed_demo_leaves_nothing_temporary(tmp_path):
    """The demo's random weights are built in memory: SIGKILL leaves no checkpoint in TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    env = {**child_env(), "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, RUN_STREAM, "--save-depth", str(out)],  # the demo clip, no checkpoint
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for line in proc.stderr:  # said once the weights exist, before the run starts
            if "RANDOM weights" in line:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert os.listdir(tmp) == []


class SilentServer:
    """A TCP server that accepts connections and never sends a byte: a stream that never opens."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self._conns.append(conn)
                self.accepted.set()

    def close(self) -> None:
        for c in self._conns:
            c.close()
        self.sock.close()


def test_stopped_before_the_first_frame_lists_no_outputs(tiny_checkpoint, tmp_path):
    server = SilentServer()
    video = tmp_path / "depth.mp4"
    summary = tmp_path / "summary.json"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"sources:\n  - uri: http://127.0.0.1:{server.port}/s.ts\n    open_timeout_s: 30\n"
    )
    proc = subprocess.Popen(
        [sys.executable, RUN_STREAM, "--config", str(config), "--checkpoint", tiny_checkpoint,
         "--save-video", str(video), "--save-depth", str(tmp_path / "d"),
         "--summary-json", str(summary)],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.accepted.wait(60), "the source never connected"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.close()
    assert proc.returncode == 143, stderr
    assert json.loads(summary.read_text())["frames"]["source0"] == 0
    assert not video.exists()
    assert "depth.mp4" not in stdout and "depth files" not in stdout, stdout
