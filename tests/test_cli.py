"""run_stream.py as a user runs it: subprocesses on real video files, checkpoints and sockets.

Depth is compared with calling the model directly on the same decoded frames, the way the pipeline
prepares them: glpn.processing.prepare_frames (BGR -> RGB, antialiased resize to the input size,
/255), the model in fp32, then resize_depth back to the frame's size.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import zmq
from pipeline_helpers import read_video

from glpn import GLPNForDepthEstimation
from glpn.processing import input_size_for, prepare_frames, resize_depth
from glpn.synthetic import synthetic_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_STREAM = os.path.join(ROOT, "run_stream.py")
H, W, FRAMES = 90, 130, 6  # not multiples of 32: the model sees 64x128, depth comes back at 90x130
EXACT = ["--backend", "eager", "--precision", "fp32", "--input-size", "auto"]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def env_without(tmp_path, module: str) -> dict[str, str]:
    """The CLI's environment with `import MODULE` failing, as on an install without the extra
    that brings it: a module of that name that raises ImportError comes first on the path."""
    block = tmp_path / f"without_{module}"
    block.mkdir(parents=True)
    (block / f"{module}.py").write_text(f"raise ImportError('No module named {module} (test)')\n")
    env = child_env()
    env["PYTHONPATH"] = str(block) + os.pathsep + env["PYTHONPATH"]
    return env


def run_cli(
    *args: str, cwd: str | None = None, timeout: float = 300, env: dict[str, str] | None = None
):
    return subprocess.run(
        [sys.executable, RUN_STREAM, *args],
        cwd=cwd,
        env=env or child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_clip(path: str, frames: int, height: int = H, width: int = W, fps: float = 10.0) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened()
    for i in range(frames):  # a different scene per frame: a swapped or repeated frame shows
        writer.write(cv2.cvtColor(synthetic_image(height, width, seed=i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit code `code`, no traceback, exactly one error line (the last), naming the problem."""
    err = proc.stderr
    assert proc.returncode == code, f"exit {proc.returncode}\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"(^|\s)(error:|ERROR\b)", line)]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> str:
    return write_clip(str(tmp_path_factory.mktemp("clip") / "clip.avi"), FRAMES)


@pytest.fixture(scope="session")
def reference(clip, tiny_checkpoint) -> list[np.ndarray]:
    """Depth per decoded frame of `clip`, from the model called directly."""
    frames = read_video(clip)
    assert len(frames) == FRAMES and frames[0].shape == (H, W, 3)
    model = GLPNForDepthEstimation.from_pretrained(tiny_checkpoint).eval()
    pixels = torch.from_numpy(prepare_frames(frames, input_size_for(H, W), bgr=True))
    with torch.inference_mode():
        depth = model(pixels).predicted_depth.numpy()
    out = [resize_depth(d, (H, W)) for d in depth]
    # The frames' depth maps differ clearly, so a wrong order or a repeated frame cannot pass.
    assert min(np.abs(a - b).max() for a, b in zip(out, out[1:])) > 0.05
    return out


def assert_matches(depth_dir: str, reference: list[np.ndarray], count: int = FRAMES) -> None:
    names = sorted(os.listdir(depth_dir))
    assert names == [f"{i:06d}.npy" for i in range(count)]
    for i, name in enumerate(names):
        depth = np.load(os.path.join(depth_dir, name))
        assert depth.dtype == np.float32 and depth.shape == (H, W)
        np.testing.assert_allclose(depth, reference[i], rtol=0, atol=1e-3, err_msg=name)


# ---- the contract and the outputs ------------------------------------------------------------


def test_save_depth_contract_and_video(clip, tiny_checkpoint, reference, tmp_path):
    out, video = tmp_path / "depth", tmp_path / "video" / "depth.avi"
    summary = tmp_path / "summary.json"
    proc = run_cli(
        "--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth", str(out),
        "--save-video", str(video), "--summary-json", str(summary), *EXACT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_matches(str(out), reference)
    frames = read_video(str(video))
    assert len(frames) == FRAMES and frames[0].shape == (H, W, 3)
    assert not glob.glob(str(tmp_path / "video" / "*partial*"))
    s = json.loads(summary.read_text())
    assert s["outcome"] == "finished" and s["frames"] == {"source0": FRAMES}
    assert "RANDOM" not in proc.stderr  # a checkpoint was given
    assert str(out) in proc.stdout and str(video) in proc.stdout  # says where the results are
    assert "inference" in proc.stdout and "p95" in proc.stdout  # the summary table


def test_max_frames_and_png16(clip, tiny_checkpoint, reference, tmp_path):
    out = tmp_path / "depth"
    proc = run_cli(
        "--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth", str(out),
        "--depth-format", "png16", "--max-frames", "3", *EXACT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == [f"{i:06d}.png" for i in range(3)]
    for i in range(3):
        png = cv2.imread(str(out / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == (H, W)
        metres = png.astype(np.float32) / 256.0  # KITTI convention
        np.testing.assert_allclose(metres, reference[i], rtol=0, atol=0.5 / 256 + 1e-3)


def test_several_sources_one_directory_per_stream(clip, tiny_checkpoint, reference, tmp_path):
    out = tmp_path / "depth"
    proc = run_cli(
        "--source", f"left={clip}", "--source", clip, "--checkpoint", tiny_checkpoint,
        "--save-depth", str(out), "--batch", "2", *EXACT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["left", "source1"]
    assert_matches(str(out / "left"), reference)
    assert_matches(str(out / "source1"), reference)


def test_demo_without_arguments(tmp_path):
    proc = run_cli(cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr
    # Loud about random weights, and says how to get real ones.
    for needle in ("RANDOM weights", "vinvino02/glpn-kitti", "vinvino02/glpn-nyu", "--checkpoint"):
        assert needle in proc.stderr
    demo = read_video(os.path.join(ROOT, "assets", "demo.mp4"))
    h, w = demo[0].shape[:2]
    files = sorted(glob.glob(str(tmp_path / "outputs" / "demo" / "depth" / "*.npy")))
    assert [os.path.basename(f) for f in files] == [f"{i:06d}.npy" for i in range(len(demo))]
    first, last = np.load(files[0]), np.load(files[-1])
    assert first.shape == (h, w) and first.dtype == np.float32 and np.isfinite(first).all()
    assert np.abs(first - last).mean() > 0.01  # the scene moves, so does the (random) depth
    video = read_video(str(tmp_path / "outputs" / "demo" / "depth.mp4"))
    assert len(video) == len(demo) and video[0].shape[:2] == (h, 2 * w)  # input | depth
    assert os.path.join("outputs", "demo", "depth") in proc.stdout  # where the results are
    assert "depthstream finished" in proc.stdout
    # The reference's size rule, not a fixed size: the 240x320 clip runs at 224x320.
    assert (h, w) == (240, 320)
    assert "model input: demo 224x320 (auto: 240x320 frames rounded down" in proc.stdout


# ---- other processes: PUB subscriber, signals --------------------------------------------------

SUBSCRIBER = r"""
import json, sys
import numpy as np
from pipeline.client import DepthSubscriber

endpoint, last, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
depth, headers = {}, []
with DepthSubscriber(endpoint) as sub:
    print("subscribed", flush=True)
    while True:
        item = sub.recv(timeout=60)
        if item is None:
            sys.exit("no depth message for 60 s")
        header, d = item
        depth[f"{header['index']:06d}"] = np.array(d)
        headers.append(header)
        if header["index"] == last:
            break
np.savez(out, **depth)
with open(out + ".json", "w") as f:
    json.dump(headers, f)
"""


def free_tcp_endpoint() -> str:
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as s:
        s.bind("tcp://127.0.0.1:*")
        return s.getsockopt_string(zmq.LAST_ENDPOINT)


def paced_config(path, clip: str) -> str:
    """A config file replaying `clip` at its frame rate, like a camera (no CLI flag for pace)."""
    path.write_text(f"sources:\n  - uri: {json.dumps(clip)}\n    pace: true\n")
    return str(path)


def test_publish_received_by_subscriber_in_another_process(tiny_checkpoint, tmp_path):
    frames = 12
    clip = write_clip(str(tmp_path / "paced.avi"), frames, fps=10.0)
    endpoint = free_tcp_endpoint()
    received = str(tmp_path / "received.npz")
    env = child_env()
    sub = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, endpoint, str(frames - 1), received],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sub.stdout.readline().strip() == "subscribed", sub.stderr.read()
        out = tmp_path / "depth"
        proc = run_cli(
            "--config", paced_config(tmp_path / "paced.yaml", clip), "--checkpoint",
            tiny_checkpoint, "--publish", endpoint, "--save-depth", str(out), *EXACT,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert endpoint in proc.stdout
        assert sub.wait(timeout=60) == 0, sub.stderr.read()
    finally:
        sub.kill()
        sub.wait()
    got = np.load(received)
    headers = json.loads(open(received + ".json").read())
    indices = [h["index"] for h in headers]
    # PUB/SUB may lose the first frames while the connection forms; then every frame, in order.
    assert indices == list(range(indices[0], frames)) and len(indices) >= frames // 2
    for h in headers:
        assert h["stream"] == "source0" and h["units"] == "m" and h["source_shape"] == [H, W]
        saved = np.load(out / f"{h['index']:06d}.npy")
        np.testing.assert_array_equal(got[f"{h['index']:06d}"], saved)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_with_summary(sig, code, tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "long.avi"), 100, fps=10.0)  # 10 s when paced
    endpoint = free_tcp_endpoint()
    video_dir = tmp_path / "video"
    summary = tmp_path / "summary.json"
    env = child_env()
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        proc = subprocess.Popen(
            [sys.executable, RUN_STREAM, "--config", paced_config(tmp_path / "p.yaml", clip),
             "--checkpoint", tiny_checkpoint, "--publish", endpoint, "--save-video",
             str(video_dir / "depth.avi"), "--summary-json", str(summary)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert sub.poll(120_000), "no frame published"  # frames are flowing: interrupt now
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"stopped ({sig.name})" in stdout  # the summary is printed
    delivered = json.loads(summary.read_text())["frames"]["source0"]
    assert 1 <= delivered < 100
    assert os.listdir(video_dir) == ["depth.avi"]  # complete file under its name, no leftovers
    assert len(read_video(str(video_dir / "depth.avi"))) == delivered


# ---- errors: exit code and one clear line ----------------------------------------------------


def test_missing_source(tiny_checkpoint, tmp_path):
    missing = str(tmp_path / "nope.avi")
    proc = run_cli("--source", missing, "--checkpoint", tiny_checkpoint)
    assert_one_error_line(proc, 3, missing, "not found")


def test_unreadable_source(tiny_checkpoint, tmp_path):
    bad = tmp_path / "notavideo.avi"
    bad.write_text("this is not a video\n")
    proc = run_cli("--source", str(bad), "--checkpoint", tiny_checkpoint)
    assert_one_error_line(proc, 3, str(bad), "cannot open")


def test_missing_checkpoint_never_falls_back_to_random_weights(clip, tmp_path):
    missing = str(tmp_path / "no-checkpoint")
    out = tmp_path / "depth"
    proc = run_cli("--source", clip, "--checkpoint", missing, "--save-depth", str(out))
    assert_one_error_line(proc, 4, "checkpoint", missing)
    assert "RANDOM" not in proc.stderr and not out.exists()


def test_checkpoint_that_does_not_fit_the_model(clip, tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad-checkpoint"
    shutil.copytree(tiny_checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    config["hidden_sizes"] = [16, 32, 48, 80]  # the weights are for 64 channels in stage 4
    (bad / "config.json").write_text(json.dumps(config))
    out = tmp_path / "depth"
    proc = run_cli("--source", clip, "--checkpoint", str(bad), "--save-depth", str(out))
    assert_one_error_line(proc, 4, "checkpoint", "mis-shaped")
    assert not glob.glob(str(out / "*.npy"))


def test_unknown_config_key_is_named_with_the_valid_ones(clip, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  max_bach: 2\n")
    proc = run_cli("--config", str(config), "--source", clip)
    line = assert_one_error_line(proc, 2, str(config), "model.max_bach")
    assert "max_batch" in line and "max_wait_ms" in line  # lists the valid keys


def test_invalid_config_value(clip, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("postprocess:\n  colormap: rainbowish\n")
    proc = run_cli("--config", str(config), "--source", clip)
    assert_one_error_line(proc, 2, "postprocess.colormap", "rainbowish")


def test_bad_command_line_value():
    proc = run_cli("--input-size", "100x100")
    assert_one_error_line(proc, 2, "--input-size", "multiples of 32")


def test_output_directory_that_cannot_be_created(clip, tiny_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should go\n")
    target = str(blocker / "depth")
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth", target)
    assert_one_error_line(proc, 5, target)


def test_endpoint_already_in_use(clip, tiny_checkpoint):
    with zmq.Context() as ctx, ctx.socket(zmq.PUB) as taken:
        taken.bind("tcp://127.0.0.1:*")
        endpoint = taken.getsockopt_string(zmq.LAST_ENDPOINT)
        proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--publish", endpoint)
    assert_one_error_line(proc, 5, endpoint, "cannot bind")


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the error without CUDA")
def test_tensorrt_without_cuda(clip, tiny_checkpoint):
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--backend", "tensorrt")
    line = assert_one_error_line(proc, 4)
    assert "tensorrt" in line.lower() and "cuda" in line.lower()


# ---- options and messages added by issue 10 ----------------------------------------------------


def test_live_mode_on_a_file_says_once_that_frames_are_dropped(clip, tiny_checkpoint):
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--mode", "live",
                   "--metrics-interval", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "dropped" in warnings[0], proc.stderr
    assert "--pace" in warnings[0] and "lossless" in warnings[0]


def test_local_checkpoint_that_does_not_exist(clip, tmp_path):
    (tmp_path / "checkpoints").mkdir()  # so checkpoints/glpn-nyu is a local path, not a hub id
    proc = run_cli("--source", clip, "--checkpoint", "checkpoints/glpn-nyu", cwd=str(tmp_path))
    missing = "checkpoint directory checkpoints/glpn-nyu does not exist"
    line = assert_one_error_line(proc, 4, missing)
    assert "hf download vinvino02/glpn-nyu --local-dir checkpoints/glpn-nyu" in line
    assert "hf download checkpoints/" not in proc.stderr and "RANDOM" not in proc.stderr
    proc = run_cli("--source", clip, "--checkpoint", "./models//mine", cwd=str(tmp_path))
    assert_one_error_line(proc, 4, "checkpoint directory models/mine does not exist")


def test_printed_paths_have_no_double_slash(clip, tiny_checkpoint, tmp_path):
    proc = run_cli(
        "--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth", "depth//",
        "--save-video", "video//d.avi", "--max-frames", "2", "--metrics-interval", "0",
        cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "depth files (npy): depth/\n" in proc.stdout
    assert "video, source0: video/d.avi" in proc.stdout
    assert "//" not in proc.stdout + proc.stderr


def test_a_config_file_runs_from_any_directory(tiny_checkpoint, tmp_path):
    """multi_stream's sources are the bundled clip, written relative to the file; its outputs land
    in the working directory."""
    proc = run_cli(
        "--config", os.path.join(ROOT, "configs", "multi_stream.yaml"), "--checkpoint",
        tiny_checkpoint, "--input-size", "64x96", "--max-frames", "2", "--metrics-interval", "0",
        "--publish", "tcp://127.0.0.1:*", cwd=str(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "outputs" / "multi")) == ["left.mp4", "right.mp4"]
    assert "frames per stream: left 2 in" in proc.stdout
