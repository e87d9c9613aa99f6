"""Videos through PyAV, read back by the readers people use: H.264 .mp4 (PyAV, ffprobe) with the
source's timestamps and the index first (browsers), and the lossless 16-bit FFV1 depth .mkv, equal
to the .npy depth within the quantization step. Real pipeline runs and CLI processes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from pipeline_helpers import eager_factory, write_video
from system_tools import needs_ffmpeg, require_ffmpeg
from test_cli import RUN_STREAM, assert_one_error_line, env_without, run_cli

from pipeline import Pipeline
from pipeline.depth_video import read_depth_video
from pipeline.sinks import depth_to_png16

av = pytest.importorskip("av")

FPS = 25.0


@pytest.fixture(scope="module")
def odd_clip(tmp_path_factory) -> str:
    """8 frames of 97x65 (odd: yuv420p needs padding) at 25 fps, lossless (ffmpeg CLI)."""
    require_ffmpeg()
    from pipeline_helpers import write_video_ffv1

    return write_video_ffv1(str(tmp_path_factory.mktemp("odd") / "odd.mkv"), 8, 97, 65, FPS)


def top_level_boxes(path: str) -> list[str]:
    """The MP4 file's top-level box types, in file order (ISO BMFF: size, type, ...)."""
    kinds = []
    with open(path, "rb") as f:
        while header := f.read(8):
            size, kind = struct.unpack(">I4s", header)
            if size == 1:  # 64-bit size follows
                size = struct.unpack(">Q", f.read(8))[0] - 8
            kinds.append(kind.decode())
            f.seek(size - 8, os.SEEK_CUR)
    return kinds


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@needs_ffmpeg
def test_mp4_is_h264_with_the_source_timing_faststart_and_close_to_the_view(
    odd_clip, tiny_checkpoint, tmp_path
):
    video = tmp_path / "depth.mp4"
    config = {
        "sources": [{"uri": odd_clip, "id": "odd"}],
        "model": {"checkpoint": tiny_checkpoint, "input_size": [64, 96]},
        "postprocess": {"view": True},
        "outputs": {"video": {"path": str(video)}},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(config, engine_factory=eager_factory(tiny_checkpoint))
    views = [r.view.copy() for r in pipe]
    assert pipe.summary().outcome == "finished" and len(views) == 8
    assert views[0].shape == (65, 97, 3)
    assert not (tmp_path / "depth.partial.mp4").exists()

    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (98, 66)  # padded
        frames = list(container.decode(stream))
    assert len(frames) == len(views)
    times = [Fraction(f.pts) * f.time_base for f in frames]
    assert times == [Fraction(i, 25) for i in range(len(frames))]  # the file's 1/25 s spacing
    for frame, view in zip(frames, views):
        decoded = frame.to_ndarray(format="bgr24")
        assert psnr(decoded[:65, :97], view) > 30

    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=codec_name,pix_fmt,nb_read_frames", "-of", "json", str(video)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    info = json.loads(probe.stdout)["streams"][0]
    assert info == {"codec_name": "h264", "pix_fmt": "yuv420p", "nb_read_frames": "8"}
    boxes = top_level_boxes(str(video))
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # +faststart: index first


def test_depth_video_decodes_to_the_npy_depth(tiny_checkpoint, tmp_path):
    clip = write_video(str(tmp_path / "clip.avi"), 6, 96, 64, "MJPG", fps=FPS)
    out, mkv = tmp_path / "npy", tmp_path / "depth.mkv"
    proc = run_cli(
        "--source", clip, "--checkpoint", tiny_checkpoint, "--input-size", "64x96",
        "--save-depth", str(out), "--save-depth-video", str(mkv),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(mkv) in proc.stdout  # listed with the outputs
    assert sorted(os.listdir(tmp_path)) == ["clip.avi", "depth.mkv", "npy"]  # no .partial left

    with av.open(str(mkv)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "ffv1"
        assert stream.codec_context.pix_fmt == "gray16le"
        tags = {k.upper(): v for k, v in stream.metadata.items()}
        assert (tags["DEPTH_SCALE"], tags["DEPTH_UNITS"]) == ("256", "m")
        frames = list(container.decode(stream))
    raw = [f.to_ndarray() for f in frames]
    assert [round(f.time, 6) for f in frames] == [i / FPS for i in range(len(frames))]
    npys = sorted(n for n in os.listdir(out) if n.endswith(".npy"))
    assert len(raw) == len(npys) == 6
    for values, name in zip(raw, npys):
        depth = np.load(out / name)
        assert values.dtype == np.uint16 and values.shape == depth.shape
        np.testing.assert_array_equal(values, depth_to_png16(depth, 256.0))  # exact
    metres, scale = read_depth_video(str(mkv))
    assert scale == 256.0
    for got, name in zip(metres, npys):
        depth = np.load(out / name)
        assert np.abs(got - depth).max() <= 0.5 / scale + 1e-6  # within the quantization step


@pytest.fixture
def env_without_av(tmp_path) -> dict[str, str]:
    """The CLI's environment with `import av` failing, as on a core install without PyAV."""
    return env_without(tmp_path, "av")


def test_without_pyav_mp4_is_mp4v_with_one_warning_and_depth_video_an_error(
    tiny_checkpoint, tmp_path, env_without_av
):
    clip = write_video(str(tmp_path / "clip.avi"), 3, 96, 64, "MJPG")
    base = [sys.executable, RUN_STREAM, "--source", clip, "--checkpoint", tiny_checkpoint,
            "--input-size", "64x96"]  # fmt: skip
    video = tmp_path / "depth.mp4"
    proc = subprocess.run([*base, "--save-video", str(video)], env=env_without_av,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("pip install depthstream[video]") == 1, proc.stderr
    with av.open(str(video)) as container:  # this process has PyAV: what was written?
        assert container.streams.video[0].codec_context.name == "mpeg4"
        assert len(list(container.decode(video=0))) == 3

    proc = subprocess.run([*base, "--save-depth-video", str(tmp_path / "d.mkv")],
                          env=env_without_av, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert_one_error_line(proc, 2, "--save-depth-video", "pip install depthstream[video]")
    assert not list(tmp_path.glob("d*.mkv"))
