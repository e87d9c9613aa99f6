"""pipeline.geometry: pinhole intrinsics through resizes, fields of view, back-projection."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from pipeline.errors import MessageError
from pipeline.geometry import (
    Intrinsics,
    backproject,
    backproject_torch,
    check_frame,
    point_colours,
    source_camera,
)

CAM = Intrinsics(500.0, 480.0, 319.5, 239.5, 640, 480)


def test_scaling_maps_pixel_centres_like_the_resize_does():
    half = CAM.scaled(320, 240)
    assert (half.fx, half.fy, half.width, half.height) == (250.0, 240.0, 320, 240)
    assert (half.cx, half.cy) == (159.5, 119.5)  # still the image centre
    assert CAM.scaled(640, 480) is CAM
    # A smooth blob at a known place, moved by OpenCV's resizes (the depth's is bicubic): its
    # centroid lands where the scaled camera projects the same ray, not half a pixel off.
    ys, xs = np.indices((480, 640))
    blob = np.exp(-((xs - 401.5) ** 2 + (ys - 101.5) ** 2) / 72).astype(np.float32)
    ray = ((401.5 - CAM.cx) / CAM.fx, (101.5 - CAM.cy) / CAM.fy)
    for w, h in ((224, 160), (256, 192), (1000, 700)):
        cam = CAM.scaled(w, h)
        for interp in (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC):
            small = cv2.resize(blob, (w, h), interpolation=interp)
            y, x = np.indices(small.shape)
            u, v = (x * small).sum() / small.sum(), (y * small).sum() / small.sum()
            assert u == pytest.approx(cam.cx + ray[0] * cam.fx, abs=0.01)
            assert v == pytest.approx(cam.cy + ray[1] * cam.fy, abs=0.01)
    # Non-uniform scaling and back: the original camera.
    back = CAM.scaled(100, 333).scaled(640, 480)
    for k in ("fx", "fy", "cx", "cy"):
        assert getattr(back, k) == pytest.approx(getattr(CAM, k), rel=1e-12)


def test_hfov_gives_square_pixels_centred():
    cam = Intrinsics.from_hfov(90.0, 640, 480)
    assert cam.fx == pytest.approx(320.0) and cam.fy == cam.fx
    assert (cam.cx, cam.cy) == (319.5, 239.5)
    # The outer edge of the image (u = -0.5) is 45 degrees off axis.
    assert math.degrees(math.atan((-0.5 - cam.cx) / cam.fx)) == pytest.approx(-45.0)
    assert source_camera(None, 60.0, 640, 480) == Intrinsics.from_hfov(60.0, 640, 480)
    assert source_camera((1, 2, 3, 4), None, 10, 20) == Intrinsics(1, 2, 3, 4, 10, 20)
    assert source_camera(None, None, 640, 480) is None


def test_header_round_trip_and_malformed_cameras():
    header = {"camera": CAM.as_header()}
    assert Intrinsics.from_header(header) == CAM
    assert Intrinsics.from_header({}) is None
    for bad in (
        {"fx": 1.0},
        {**CAM.as_header(), "fx": -1.0},
        {**CAM.as_header(), "width": 640.5},
        {**CAM.as_header(), "cx": "1"},
        {**CAM.as_header(), "fy": True},
        [1, 2, 3],
    ):
        with pytest.raises(MessageError):
            Intrinsics.from_header({"camera": bad})


def test_plane_at_known_depth_back_projects_to_the_pinhole_model():
    depth = np.full((480, 640), 2.5, np.float32)
    points, index = backproject(depth, CAM)
    assert points.dtype == np.float32 and points.shape == (480 * 640, 3)
    np.testing.assert_array_equal(index, np.arange(480 * 640))
    v, u = np.divmod(index, 640)
    np.testing.assert_array_equal(points[:, 2], 2.5)
    np.testing.assert_allclose(points[:, 0], (u - CAM.cx) / CAM.fx * 2.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(points[:, 1], (v - CAM.cy) / CAM.fy * 2.5, rtol=1e-6, atol=1e-6)
    # optical frame: top-left pixel is left (x < 0) and up (y < 0)
    assert points[0, 0] < 0 and points[0, 1] < 0 and points[-1, 0] > 0 and points[-1, 1] > 0
    # reprojects onto its own pixel
    proj_u = CAM.fx * points[:, 0] / points[:, 2] + CAM.cx
    np.testing.assert_allclose(proj_u, u, atol=1e-3)


def test_invalid_depth_is_dropped_and_stride_subsamples():
    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 20.0, (47, 61)).astype(np.float32)
    depth[3, 4] = np.nan
    depth[5, 6] = 0.0
    depth[7, 8] = -1.0
    depth[9, 10] = np.inf
    cam = Intrinsics(40.0, 41.0, 30.0, 23.0, 61, 47)
    points, index = backproject(depth, cam)
    flat = depth.ravel()
    bad = {3 * 61 + 4, 5 * 61 + 6, 7 * 61 + 8, 9 * 61 + 10}
    assert set(index.tolist()) == set(range(depth.size)) - bad
    np.testing.assert_array_equal(points[:, 2], flat[index])
    # max range: a depth beyond it is dropped, at it is kept
    far, idx_far = backproject(depth, cam, max_range=10.0)
    assert (far[:, 2] <= 10.0).all()
    assert set(idx_far.tolist()) == {i for i in index.tolist() if flat[i] <= 10.0}
    # stride: every 3rd pixel of every 3rd row, the same points as the full cloud there
    sub, idx_sub = backproject(depth, cam, stride=3)
    v, u = np.divmod(idx_sub, 61)
    assert (v % 3 == 0).all() and (u % 3 == 0).all()
    expected = {i for i in index.tolist() if (i // 61) % 3 == 0 and (i % 61) % 3 == 0}
    assert set(idx_sub.tolist()) == expected
    full = dict(zip(index.tolist(), points))
    np.testing.assert_array_equal(sub, np.stack([full[i] for i in idx_sub.tolist()]))
    # nothing valid: an empty cloud
    empty, idx_empty = backproject(np.full((47, 61), np.nan, np.float32), cam)
    assert empty.shape == (0, 3) and idx_empty.shape == (0,)
    with pytest.raises(ValueError):
        backproject(depth[:40], cam)


def test_point_colours_are_rgb_of_their_pixels():
    image = np.random.default_rng(1).integers(0, 256, (47, 61, 3), dtype=np.uint8)
    index = np.array([0, 5, 61 * 46 + 60])
    rgb = point_colours(image, index, (47, 61))
    np.testing.assert_array_equal(rgb, image.reshape(-1, 3)[index][:, ::-1])
    # an image of another size is resized to the depth's first
    small = point_colours(image, np.array([0]), (20, 30))
    expected = cv2.resize(image, (30, 20), interpolation=cv2.INTER_AREA)[0, 0, ::-1]
    np.testing.assert_array_equal(small[0], expected)


def test_check_frame_refuses_what_sinks_cannot_use():
    depth = np.zeros((480, 640), np.float32)
    pts = np.zeros((5, 3), np.float32)
    check_frame({"camera": CAM.as_header()}, {"depth": depth, "points": pts})
    with pytest.raises(MessageError):
        check_frame({"camera": CAM.scaled(320, 240).as_header()}, {"depth": depth})
    with pytest.raises(MessageError):
        check_frame({}, {"depth": depth, "points": np.zeros((5, 2), np.float32)})
    with pytest.raises(MessageError):
        check_frame({}, {"depth": depth, "points": pts, "points_rgb": np.zeros((4, 3), np.uint8)})
    # the input frame: uint8 (H, W, 3) of the source's size
    header = {"source_shape": [240, 320]}
    check_frame(header, {"depth": depth, "image": np.zeros((240, 320, 3), np.uint8)})
    bad = [((240, 320, 3), np.float32), ((240, 320), np.uint8), ((480, 640, 3), np.uint8),
           ((240, 320, 4), np.uint8)]  # fmt: skip
    for image in (np.zeros(shape, dtype) for shape, dtype in bad):
        with pytest.raises(MessageError, match="input frame"):
            check_frame(header, {"depth": depth, "image": image})


def test_masked_and_strided_clouds_match_the_pinhole_formula_exactly():
    """Every path of backproject (all valid, masked, strided, max range) gives, bit for bit, the
    float32 products z * ((u - cx) / fx) of the docstring, and the pixel index of each point."""
    rng = np.random.default_rng(3)
    h, w = 37, 53
    cam = Intrinsics(41.3, 39.9, 25.2, 17.8, w, h)
    for invalid in (0.0, 0.3):
        depth = rng.uniform(0.1, 9.0, (h, w)).astype(np.float32)
        depth[rng.random((h, w)) < invalid] = np.nan
        for stride in (1, 2, 5):
            for max_range in (None, 4.0):
                points, index = backproject(depth, cam, stride=stride, max_range=max_range)
                v, u = np.divmod(index, w)
                assert (u % stride == 0).all() and (v % stride == 0).all()
                assert (np.diff(index) > 0).all()  # row-major pixel order
                z = depth.ravel()[index]
                ok = np.isfinite(depth[::stride, ::stride]) & (depth[::stride, ::stride] > 0)
                if max_range is not None:
                    ok &= depth[::stride, ::stride] <= max_range
                assert len(index) == ok.sum()
                rx = ((u - cam.cx) / cam.fx).astype(np.float32)
                ry = ((v - cam.cy) / cam.fy).astype(np.float32)
                assert points.flags.c_contiguous and points.dtype == np.float32
                np.testing.assert_array_equal(points, np.stack([z * rx, z * ry, z], axis=1))


def _devices() -> list:
    torch = pytest.importorskip("torch")
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA here")
    return ["cpu", pytest.param("cuda", marks=cuda)]


@pytest.mark.parametrize("device", _devices())
def test_torch_backprojection_equals_numpy_bit_for_bit(device):
    """What postprocess runs when the model is on a GPU; on CPU tensors too, so CI runs it."""
    rng = np.random.default_rng(5)
    h, w = 61, 83
    cam = Intrinsics(70.1, 66.6, 40.7, 29.9, w, h)
    depth = rng.uniform(0.1, 9.0, (h, w)).astype(np.float32)
    edge = np.float32(4.3)  # > 4.3 as a double: max_range is compared in float32 on both sides
    specials = [np.nan, np.inf, -np.inf, 0.0, -1.0, edge, np.nextafter(edge, np.float32(9))]
    for i, value in enumerate(specials):  # invalid values and the max_range boundary
        depth.ravel()[i * 97 : i * 97 + 40] = value
    depth.flags.writeable = False  # as a received message's memory
    for d in (depth, np.full((h, w), 2.0, np.float32), np.full((h, w), np.nan, np.float32),
              depth.astype(np.float64)):  # fmt: skip
        for stride in (1, 2, 3):
            for max_range in (None, 4.3):
                want = backproject(d, cam, stride=stride, max_range=max_range)
                got = backproject_torch(d, cam, stride=stride, max_range=max_range, device=device)
                for a, b in zip(want, got, strict=True):
                    assert a.dtype == b.dtype and a.shape == b.shape
                    assert a.tobytes() == b.tobytes()
    with pytest.raises(ValueError, match="depth of shape"):
        backproject_torch(depth[:40], cam, device=device)
