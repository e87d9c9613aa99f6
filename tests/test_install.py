"""`pip install .` in a fresh venv gives a working `depthstream` command (issue 10).

The venv reuses this environment's packages (torch, numpy, ...) through a .pth file, so nothing
is downloaded: pip builds the package offline with the setuptools installed here. The package is
built from a copy of the sources, so the build leaves nothing in the working tree. What this
checks: the console script, --version, the packaged demo clip and named configs (one copy each,
shipped as package data), and that the installed copy is the one that runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("glpn", "pipeline", "pyproject.toml", "README.md")


def _venv(tmp_path, editable: bool) -> tuple[str, dict[str, str]]:
    """A venv with depthstream installed from a copy of the sources; (its bin dir, an env)."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), src / name, ignore=ignore)
        else:
            shutil.copy(os.path.join(ROOT, name), src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # This environment's packages (pip, setuptools, torch, ...) after the venv's own.
    with open(os.path.join(purelib, "parent.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    editable_flag = ["-e"] if editable else []
    proc = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", *editable_flag, str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode != 0 and "No module named pip" in proc.stderr:
        pytest.skip("pip is not installed in this environment")
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    return str(venv / "bin"), env


def _run(bin_dir: str, env: dict[str, str], cwd, *args: str, timeout: float = 300):
    return subprocess.run(
        [os.path.join(bin_dir, "depthstream"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_pip_install_gives_the_depthstream_command(tmp_path, tiny_checkpoint):
    bin_dir, env = _venv(tmp_path, editable=False)
    work = tmp_path / "work"  # anywhere but the repository
    work.mkdir()
    where = subprocess.run(
        [os.path.join(bin_dir, "python"), "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(tmp_path / "venv")), where  # the installed copy, not the checkout

    help_ = _run(bin_dir, env, work, "--help")
    assert help_.returncode == 0 and "--checkpoint" in help_.stdout and "exit codes" in help_.stdout
    version = _run(bin_dir, env, work, "--version")
    assert version.returncode == 0 and version.stdout.startswith("depthstream 0."), version

    demo = _run(bin_dir, env, work, "--max-frames", "3", "--metrics-interval", "0")
    assert demo.returncode == 0, demo.stderr
    assert "RANDOM weights" in demo.stderr  # says so loudly
    files = sorted(os.listdir(work / "outputs" / "demo" / "depth"))
    assert files == ["000000.npy", "000001.npy", "000002.npy"]
    assert np.load(work / "outputs" / "demo" / "depth" / files[0]).shape == (240, 320)
    assert (work / "outputs" / "demo" / "depth.mp4").is_file()

    clip = os.path.join(ROOT, "assets", "demo.mp4")
    nyu = _run(
        bin_dir, env, work, "--config", "nyu", "--backend", "eager", "--device", "cpu",
        "--source", clip, "--max-frames", "1", "--checkpoint", tiny_checkpoint,
        "--input-size", "64x96", "--precision", "fp32", "--metrics-interval", "0",
        "--publish", "tcp://127.0.0.1:*",
    )  # fmt: skip
    assert nyu.returncode == 0, nyu.stderr  # found by name (else exit 2), and it runs
    assert "frames per stream: source0 1 in / 1 out" in nyu.stdout


def test_editable_install_finds_the_named_configs(tmp_path):
    """run.sh installs with -e: the named configs and the demo clip come from the source tree."""
    bin_dir, env = _venv(tmp_path, editable=True)
    probe = "from pipeline.cli import resources as r; print(r.named_configs(), r.DEMO_CLIP)"
    out = subprocess.run([os.path.join(bin_dir, "python"), "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "'kitti', 'multi_stream', 'nyu'" in out
    assert out.split()[-1] == str(tmp_path / "src" / "pipeline" / "assets" / "demo.mp4")
    # The named config is found (else exit 2), then the missing checkpoint stops the run.
    proc = _run(bin_dir, env, tmp_path, "--config", "kitti", "--checkpoint", "./none", timeout=120)
    assert proc.returncode == 4 and "checkpoint directory none does not exist" in proc.stderr
