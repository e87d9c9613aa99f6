"""glpn.testing, the helpers tests and benchmarks share: checkpoints, clips, sizes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from glpn import GLPNConfig, GLPNForDepthEstimation
from glpn.testing import parse_size, random_checkpoint, write_clip


def test_parse_size():
    assert parse_size("480x640") == (480, 640)
    assert parse_size(" 352 X 1216 ") == (352, 1216)
    for bad in ("480", "480x", "x640", "480x640x3", "0x640", "axb", "-32x64"):
        with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
            parse_size(bad)


def test_random_checkpoint_is_the_preset_with_varied_depth(tmp_path):
    path = random_checkpoint(tmp_path / "ckpt", seed=1)
    model = GLPNForDepthEstimation.from_pretrained(path)
    assert model.config == GLPNConfig.preset("tiny")
    again = GLPNForDepthEstimation.from_pretrained(random_checkpoint(tmp_path / "again", seed=1))
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy()), name  # the seed decides the weights


def test_clip_frames_all_differ(tmp_path):
    path = write_clip(tmp_path / "clip.avi", 6, 64, 96, fps=10.0)
    cap = cv2.VideoCapture(path)
    frames = []
    while (frame := cap.read()[1]) is not None:
        frames.append(frame.astype(np.int16))
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (64, 96, 3)
    for i in range(5):
        assert np.abs(frames[i + 1] - frames[i]).mean() > 5  # no repeated frame
    with pytest.raises(OSError, match="cannot write"):
        write_clip(tmp_path / "missing" / "x.avi", 1, 64, 96)
