"""Camera geometry and point clouds through real pipelines: headers carry the camera scaled to the
depth as delivered and the frame id; points are the depth back-projected; PLY files read back with
plyfile (what Open3D-style readers see) are those points and colours; the CLI's flags."""

from __future__ import annotations

import os

import numpy as np
import pytest
from pipeline_helpers import eager_factory, read_video, write_video
from plyfile import PlyData
from test_cli import EXACT, assert_one_error_line, run_cli, write_clip

from pipeline import Pipeline, geometry
from pipeline.geometry import Intrinsics, backproject, point_colours

H, W = 120, 160  # the model sees 96x160 (auto input size), depth comes back at 120x160
FX, FY, CX, CY = 150.0, 140.0, 81.0, 58.5


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    return write_video(str(tmp_path_factory.mktemp("pts") / "clip.avi"), 4, W, H, "MJPG")


def read_ply(path) -> tuple[np.ndarray, np.ndarray | None, PlyData]:
    ply = PlyData.read(str(path))
    v = ply["vertex"].data
    xyz = np.stack([v["x"], v["y"], v["z"]], axis=1)
    names = v.dtype.names
    rgb = np.stack([v["red"], v["green"], v["blue"]], axis=1) if "red" in names else None
    return xyz, rgb, ply


def test_points_headers_and_ply_files_from_a_pipeline(video, tiny_checkpoint, tmp_path):
    config = {
        "sources": [{"uri": video, "id": "cam", "intrinsics": [FX, FY, CX, CY]}],
        "model": {"checkpoint": tiny_checkpoint},
        "postprocess": {"points": {"stride": 2, "colour": True}},
        "outputs": {"points": {"directory": str(tmp_path / "ply")}},
        "metrics": {"interval_s": 0},
    }
    results = list(Pipeline(config, engine_factory=eager_factory(tiny_checkpoint)))
    frames = read_video(video)
    assert [r.index for r in results] == list(range(len(frames)))
    cam = Intrinsics(FX, FY, CX, CY, W, H)
    for r, frame in zip(results, frames):
        assert r.depth.shape == (H, W)  # back at the source size: the camera as configured
        assert r.header["camera"] == cam.as_header()
        assert Intrinsics.from_header(r.header) == cam
        assert r.header["frame_id"] == "cam_optical"
        assert r.header["points"]["stride"] == 2
        points, index = backproject(r.depth, cam, stride=2)
        np.testing.assert_array_equal(r.points, points)
        assert r.points.dtype == np.float32 and len(points) == r.header["points"]["count"] > 0
        np.testing.assert_array_equal(r.points_rgb, point_colours(frame, index, (H, W)))
        xyz, rgb, ply = read_ply(tmp_path / "ply" / "cam" / f"{r.index:06d}.ply")
        assert ply.text is False and ply.byte_order == "<"
        np.testing.assert_array_equal(xyz, r.points)
        np.testing.assert_array_equal(rgb, r.points_rgb)
        assert "frame_id cam_optical" in " ".join(ply.comments)
    # the top-left pixel's colour is the frame's, as RGB
    np.testing.assert_array_equal(results[0].points_rgb[0], frames[0][0, 0, ::-1])


def test_camera_follows_the_depth_at_model_size(video, tiny_checkpoint):
    """resize_to_source false: depth at the model's input size, the camera scaled to it; a field
    of view instead of intrinsics; points without an output asking for them; a stream without a
    camera gets a frame id but no camera and no points."""
    config = {
        "sources": [
            {"uri": video, "id": "a", "hfov_deg": 70.0, "frame_id": "front/camera_optical"},
            {"uri": video, "id": "b", "max_frames": 2},
        ],
        "model": {"checkpoint": tiny_checkpoint},
        "postprocess": {"resize_to_source": False, "points": {"max_range_m": 5.0}},
        "metrics": {"interval_s": 0},
    }
    with pytest.raises(ValueError, match=r"sources\[1\].intrinsics.*needs the camera"):
        Pipeline(config, engine_factory=eager_factory(tiny_checkpoint))
    del config["postprocess"]["points"]
    results = list(Pipeline(config, engine_factory=eager_factory(tiny_checkpoint)))
    assert len(results) == 6 and all(r.points is None for r in results)
    assert all("camera" not in r.header for r in results if r.stream == "b")
    assert {r.header["frame_id"] for r in results if r.stream == "b"} == {"b_optical"}
    assert all("camera" in r.header for r in results if r.stream == "a")

    config["sources"] = config["sources"][:1]
    config["postprocess"]["points"] = {"max_range_m": 5.0}
    results = list(Pipeline(config, engine_factory=eager_factory(tiny_checkpoint)))
    assert len(results) == 4
    scaled = Intrinsics.from_hfov(70.0, W, H).scaled(160, 96)
    for r in results:
        assert r.depth.shape == (96, 160)
        assert r.header["camera"] == scaled.as_header()
        assert r.header["frame_id"] == "front/camera_optical"
        assert r.points_rgb is None
        points, _ = backproject(r.depth, scaled, max_range=5.0)
        np.testing.assert_array_equal(r.points, points)
        assert (r.points[:, 2] <= 5.0).all()


def test_points_are_computed_on_the_gpu_when_the_model_is(video, tiny_checkpoint):
    """model.device cuda: postprocess back-projects with torch on the GPU; the clouds are the
    numpy ones, bit for bit."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA here")
    before = geometry._device_rays.cache_info().misses
    config = {
        "sources": [{"uri": video, "id": "cam", "intrinsics": [FX, FY, CX, CY]}],
        "model": {"checkpoint": tiny_checkpoint, "device": "cuda"},
        "postprocess": {"points": {"stride": 1, "max_range_m": 50.0}},
        "metrics": {"interval_s": 0},
    }
    results = list(Pipeline(config, engine_factory=eager_factory(tiny_checkpoint)))
    assert len(results) == 4
    assert geometry._device_rays.cache_info().misses > before  # the rays went to the GPU
    cam = Intrinsics(FX, FY, CX, CY, W, H)
    for r in results:
        np.testing.assert_array_equal(r.points, backproject(r.depth, cam, max_range=50.0)[0])


def test_cli_intrinsics_and_save_points(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "clip.avi"), 3)
    out, depth = tmp_path / "points", tmp_path / "depth"
    proc = run_cli(
        "--source", clip, "--checkpoint", tiny_checkpoint, *EXACT,
        "--intrinsics", "120,110,64.5,44.5", "--save-points", str(out), "--points-stride", "3",
        "--save-depth", str(depth), "--max-frames", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["000000.ply", "000001.ply"]  # one source: flat
    assert "point clouds (ply): " in proc.stdout
    for i in range(2):
        d = np.load(depth / f"{i:06d}.npy")
        cam = Intrinsics(120.0, 110.0, 64.5, 44.5, d.shape[1], d.shape[0])
        xyz, rgb, ply = read_ply(out / f"{i:06d}.ply")
        assert rgb is None and [p.name for p in ply["vertex"].properties] == ["x", "y", "z"]
        np.testing.assert_array_equal(xyz, backproject(d, cam, stride=3)[0])


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--intrinsics", "1,2,3"], ["--intrinsics", "fx,fy,cx,cy"]),
        (["--intrinsics", "0,100,50,50"], ["sources[0].intrinsics[0] (fx)", "> 0"]),
        (["--intrinsics", "100,100,nan,50"], ["sources[0].intrinsics[2] (cx)"]),
        (["--save-points", "p"], ["sources[0].intrinsics", "needs the camera"]),
        (["--intrinsics", "1,1,1,1", "--source", "b.avi"], ["--intrinsics", "single source"]),
        (["--points-stride", "0"], ["--points-stride", ">= 1"]),
    ],
)
def test_cli_refuses_bad_geometry_in_one_line(args, needles, tmp_path):
    proc = run_cli("--source", "a.avi", *args, cwd=str(tmp_path))
    assert_one_error_line(proc, 2, *needles)


def test_config_file_refuses_both_intrinsics_and_hfov(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "sources:\n  - uri: a.avi\n    intrinsics: [100, 100, 50, 50]\n    hfov_deg: 60\n"
    )
    proc = run_cli("--config", str(path), cwd=str(tmp_path))
    assert_one_error_line(proc, 2, "sources[0].hfov_deg", "not both")
