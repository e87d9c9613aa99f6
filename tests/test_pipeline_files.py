"""Lossless files and images: every frame exactly once, in order, equal to the model's output."""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np
import pytest
from pipeline_helpers import (
    depthstream_threads,
    eager_factory,
    load_engine,
    read_video,
    reference_depth,
    write_images,
    write_video,
    write_video_ffv1,
)
from system_tools import require_ffmpeg

from pipeline import Pipeline
from pipeline.sinks import depth_to_png16
from pipeline.video_sink import video_path


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    imgs = str(d / "imgs")
    write_images(imgs, 4, 317, 241)
    write_images(imgs + "_small", 2, 123, 77)
    for name in os.listdir(imgs + "_small"):  # a second size in the same directory
        os.replace(os.path.join(imgs + "_small", name), os.path.join(imgs, "z" + name))
    return {
        "mjpg": write_video(str(d / "a.avi"), 10, 317, 241, "MJPG"),
        "mp4v": write_video(str(d / "b.mp4"), 7, 203, 149, "mp4v"),
        "images": imgs,
    }


@pytest.fixture(scope="module")
def ffv1(tmp_path_factory) -> str:
    """A lossless FFV1 video that stays 317x241 (written by the ffmpeg CLI: skips without it)."""
    require_ffmpeg()
    return write_video_ffv1(str(tmp_path_factory.mktemp("ffv1") / "c.mkv"), 6, 317, 241)


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return load_engine(tiny_checkpoint)


def read_index(folder) -> list[list[str]]:
    with open(os.path.join(folder, "index.csv"), newline="") as f:
        return list(csv.reader(f))


def reference_frames(media):
    frames = {k: read_video(media[k]) for k in ("mjpg", "mp4v", "ffv1")}
    names = sorted(os.listdir(media["images"]))
    frames["images"] = [cv2.imread(os.path.join(media["images"], n)) for n in names]
    return frames


def test_lossless_sources_exactly_once_in_order_and_equal_to_the_model(
    media, ffv1, engine, tiny_checkpoint, tmp_path
):
    media = {**media, "ffv1": ffv1}
    out = tmp_path / "out"
    config = {
        "sources": [{"uri": media[k], "id": k} for k in ("mjpg", "mp4v", "ffv1", "images")],
        "model": {"checkpoint": tiny_checkpoint, "max_batch": 3, "max_wait_ms": 50},
        "outputs": {
            "files": {"directory": str(out / "files")},
            "video": {"path": str(out / "depth_{stream}.avi")},
        },
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(config, engine_factory=eager_factory(tiny_checkpoint))
    results = {k: [] for k in ("mjpg", "mp4v", "ffv1", "images")}
    batches = set()
    for r in pipe:
        results[r.stream].append(r)
        batches.add(r.header["batch"])
        assert r.depth.dtype == np.float32 and r.header["units"] == "m"
    summary = pipe.summary()
    assert summary.outcome == "finished"
    assert depthstream_threads() == []

    ref_frames = reference_frames(media)
    assert ref_frames["ffv1"][0].shape == (241, 317, 3)  # a truly odd-sized video
    for stream, frames in ref_frames.items():
        got = results[stream]
        assert [r.index for r in got] == list(range(len(frames))), stream  # once, in order
        assert summary.frames[stream] == len(frames)
        expected = reference_depth(engine, frames)
        for r, frame, ref in zip(got, frames, expected):
            assert r.header["source_shape"] == list(frame.shape[:2])
            assert r.depth.shape == frame.shape[:2]
            np.testing.assert_allclose(r.depth, ref, rtol=1e-4, atol=1e-4)
            assert set(r.stage_ms) == {"capture", "preprocess", "inference", "postprocess"}
            assert set(r.wait_ms) == {"preprocess", "inference", "postprocess", "sink"}
            assert sum(r.stage_ms.values()) - r.stage_ms["capture"] <= r.latency_ms
            assert r.latency_ms > 0
        # per-frame files: float32 metres and KITTI 16-bit PNG
        last = got[-1]
        npy = np.load(out / "files" / stream / f"{last.index:06d}.npy")
        np.testing.assert_array_equal(npy, last.depth)
        png = cv2.imread(
            str(out / "files" / stream / f"{last.index:06d}.png"), cv2.IMREAD_UNCHANGED
        )
        assert png.dtype == np.uint16
        np.testing.assert_array_equal(png, depth_to_png16(last.depth))
        names = {f"{i:06d}.{ext}" for i in range(len(frames)) for ext in ("npy", "png")}
        if stream == "images":  # frames from image files: an index names their sources
            names.add("index.csv")
            sources = sorted(os.listdir(media["images"]))
            assert read_index(out / "files" / stream) == [["npy", "png", "source"]] + [
                [f"{i:06d}.npy", f"{i:06d}.png", name] for i, name in enumerate(sources)
            ]
        assert set(os.listdir(out / "files" / stream)) == names
        # colourised video: complete and playable
        video = read_video(str(out / f"depth_{stream}.avi"))
        assert len(video) == len(frames)
    assert max(batches) > 1  # micro-batching happened
    stages = summary.stages
    assert stages["inference"]["processed"] == sum(len(v) for v in ref_frames.values())
    assert all(s["dropped"] == 0 and s["malformed"] == 0 for s in stages.values())
    assert not [p for p in os.listdir(out) if "partial" in p]


def test_png_encoding_follows_kitti_convention():
    depth = np.array([[0.0, 1.0, 1.5 / 256], [300.0, np.nan, -2.0]], np.float32)
    np.testing.assert_array_equal(depth_to_png16(depth), [[0, 256, 2], [65535, 0, 0]])


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_same_stage_code_over_ipc_and_tcp(media, engine, tiny_checkpoint, transport):
    config = {
        "sources": [{"uri": media["mp4v"], "id": "clip"}],
        "model": {"checkpoint": tiny_checkpoint, "max_batch": 2},
        "transport": {"kind": transport},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(config, engine_factory=eager_factory(tiny_checkpoint))
    got = list(pipe)
    prefix = "ipc://" if transport == "ipc" else "tcp://127.0.0.1:"
    assert pipe.endpoints["inference"].startswith(prefix)
    frames = read_video(media["mp4v"])
    assert [r.index for r in got] == list(range(len(frames)))
    for r, ref in zip(got, reference_depth(engine, frames)):
        np.testing.assert_allclose(r.depth, ref, rtol=1e-4, atol=1e-4)
    assert depthstream_threads() == []


def test_fixed_input_size_and_side_by_side_view(ffv1, engine, tiny_checkpoint):
    config = {
        "sources": [{"uri": ffv1, "id": "c", "max_frames": 3}],
        "model": {"checkpoint": tiny_checkpoint, "input_size": [64, 96]},
        "postprocess": {"view": True, "side_by_side": True, "depth_range": [0, 10]},
        "metrics": {"interval_s": 0},
    }
    got = list(Pipeline(config, engine_factory=eager_factory(tiny_checkpoint)))
    frames = read_video(ffv1)[:3]
    assert [r.index for r in got] == [0, 1, 2]  # max_frames ends the source
    for r, frame, ref in zip(got, frames, reference_depth(engine, frames, (64, 96))):
        assert r.header["input_size"] == [64, 96]
        np.testing.assert_allclose(r.depth, ref, rtol=1e-4, atol=1e-4)
        assert r.view.shape == (241, 2 * 317, 3)
        np.testing.assert_array_equal(r.view[:, :317], frame)  # the input, left
        # fixed range: the colour of a pixel depends on its depth only, not on the frame's range
        near = np.unravel_index(np.argmin(r.depth), r.depth.shape)
        expected = cv2.applyColorMap(
            np.uint8([[np.clip((10 - r.depth[near]) * 25.5, 0, 255)]]), cv2.COLORMAP_INFERNO
        )
        np.testing.assert_array_equal(r.view[near[0], 317 + near[1]], expected[0, 0])


def test_video_file_names_per_stream():
    assert video_path("out/depth.avi", "cam0", several=False) == "out/depth.avi"
    assert video_path("out/depth.avi", "cam0", several=True) == "out/depth_cam0.avi"
    assert video_path("out/{stream}/depth.mp4", "cam1", several=True) == "out/cam1/depth.mp4"
