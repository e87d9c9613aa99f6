"""The command line's side of the CURVE keys (issue 12): `depthstream keys`, and a PUB endpoint on a
network address refused without keys unless --insecure. Real processes (run_stream.py)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys

import pytest
import zmq.auth
from pipeline_helpers import free_port, write_video

from pipeline import curve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), *args],
        env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    """Exit `code`, no traceback, and the last line of stderr the one error line; returns it."""
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"(^|\s)(error:|ERROR\b)", line)]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def test_keys_writes_a_pair_that_zmq_auth_reads_and_says_how_to_use_it(tmp_path):
    folder = tmp_path / "keys" / "new"  # made, parents too
    proc = run_cli("keys", str(folder), "--name", "hub")
    assert proc.returncode == 0, proc.stderr
    public, secret = str(folder / "hub.key"), str(folder / "hub.key_secret")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    pub_key, secret_key = zmq.auth.load_certificate(secret)
    assert zmq.auth.load_certificate(public) == (pub_key, None) and secret_key
    assert len(pub_key) == len(secret_key) == 40  # z85 of 32 bytes
    # how to use them: both paths, and the options that take them
    for text in (public, secret, f"--curve-secret {secret}", "--curve-allow", "--curve-server"):
        assert text in proc.stdout, proc.stdout
    # the files work: a CURVE server with this pair
    assert curve.file_keys(curve.CurveConfig(secret=secret, allow=str(folder)), server=True)


def test_keys_never_overwrites_a_key(tmp_path):
    assert run_cli("keys", str(tmp_path), "--name", "hub").returncode == 0
    before = {n: (tmp_path / n).read_bytes() for n in ("hub.key", "hub.key_secret")}
    line = one_error_line(run_cli("keys", str(tmp_path), "--name", "hub"), 2)
    assert str(tmp_path / "hub.key") in line and "not overwriting" in line
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    (tmp_path / "hub.key").unlink()  # half a pair: still not overwritten
    line = one_error_line(run_cli("keys", str(tmp_path), "--name", "hub"), 2)
    assert str(tmp_path / "hub.key_secret") in line
    assert (tmp_path / "hub.key_secret").read_bytes() == before["hub.key_secret"]


def test_keys_in_a_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_error_line(run_cli("keys", str(blocker), "--name", "a"), 5)
    assert f"{blocker} is not a directory" in line
    line = one_error_line(run_cli("keys", str(blocker / "sub"), "--name", "a"), 5)
    assert str(blocker / "sub") in line and "Not a directory" in line
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        line = one_error_line(run_cli("keys", str(locked), "--name", "a"), 5)
        assert "Permission denied" in line
    line = one_error_line(run_cli("keys", str(tmp_path), "--name", "../escape"), 2)
    assert "'../escape'" in line
    assert sorted(os.listdir(tmp_path)) == ["file"] + (["locked"] if os.geteuid() else [])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return write_video(str(tmp_path_factory.mktemp("clip") / "clip.avi"), 2, 64, 48, "MJPG")


def publish(clip: str, checkpoint: str, endpoint: str, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "--source", clip, "--checkpoint", checkpoint, "--input-size", "64x64",
        "--publish", endpoint, "--metrics-interval", "0", *extra,
    )  # fmt: skip


def test_publishing_to_the_network_without_keys_is_refused(clip, tiny_checkpoint):
    proc = publish(clip, tiny_checkpoint, "tcp://0.0.0.0:*")
    line = one_error_line(proc, 2)
    assert "outputs.zmq.endpoint: tcp://0.0.0.0:* is reachable from the network" in line
    assert "--curve-secret" in line and "insecure" in line


def test_publishing_to_the_network_with_insecure_runs_and_warns(clip, tiny_checkpoint):
    proc = publish(clip, tiny_checkpoint, "tcp://0.0.0.0:*", "--insecure")
    assert proc.returncode == 0, proc.stderr
    assert "without CURVE keys (insecure): anyone who can reach it" in proc.stderr


def test_publishing_to_the_network_with_keys_runs(clip, tiny_checkpoint, tmp_path):
    curve.generate(str(tmp_path / "hub"), "hub")
    curve.generate(str(tmp_path / "allowed"), "viewer")
    proc = publish(
        clip, tiny_checkpoint, "tcp://0.0.0.0:*",
        "--curve-secret", str(tmp_path / "hub" / "hub.key_secret"),
        "--curve-allow", str(tmp_path / "allowed"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "insecure" not in proc.stderr
    # a key file that is not there: one line naming it, exit 2
    proc = publish(
        clip, tiny_checkpoint, "tcp://0.0.0.0:*",
        "--curve-secret", str(tmp_path / "nope.key_secret"),
        "--curve-allow", str(tmp_path / "allowed"),
    )  # fmt: skip
    assert str(tmp_path / "nope.key_secret") in one_error_line(proc, 2)


@pytest.mark.parametrize(
    "options",
    [
        ["--workers", "tcp://0.0.0.0:{port}"],
        ["--ingest", "tcp://0.0.0.0:{port}", "--remote", "cam"],
    ],
    ids=["workers", "ingest"],
)
def test_hub_endpoints_on_the_network_without_keys_are_refused(options, clip):
    port = free_port()
    args = [o.format(port=port) for o in options]
    proc = run_cli(*args, "--source", clip, "--backend", "simulate", "--metrics-interval", "0")
    line = one_error_line(proc, 2)
    assert f"tcp://0.0.0.0:{port} is reachable from the network but has no CURVE keys" in line
