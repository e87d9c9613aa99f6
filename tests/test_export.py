"""ONNX export: onnxruntime gives GLPNDepth's depth at fixed and dynamic shapes; CLI errors."""

import os
import stat

import numpy as np
import pytest
import torch

from glpn import GLPNDepth
from glpn.export import ExportError, export_onnx, main, onnx_session

ort = pytest.importorskip("onnxruntime")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint) -> GLPNDepth:
    return GLPNDepth.from_pretrained(tiny_checkpoint)


def _ours_vs_ort(model: GLPNDepth, path, shape) -> float:
    """Max relative difference between onnxruntime on the file and PyTorch, on random input."""
    x = np.random.default_rng(1).random(shape, dtype=np.float32)
    got = onnx_session(str(path), threads=1).run(None, {"pixel_values": x})[0]
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    return float(np.max(np.abs(got - ref) / ref))


@pytest.mark.parametrize("optimize", [True, False])
def test_fixed_shape_export(model, tmp_path, optimize):
    path = tmp_path / "m.onnx"
    result = export_onnx(model, path, input_size=(64, 96), optimize=optimize)
    assert path.is_file() and result.errors and result.errors[0][1].mean_rel < 1e-4
    assert _ours_vs_ort(model, path, (1, 3, 64, 96)) < 1e-3
    with pytest.raises(Exception, match="invalid dimensions"):  # fixed shape: other sizes refused
        _ours_vs_ort(model, path, (1, 3, 64, 64))


def test_dynamic_batch_and_size(model, tmp_path):
    path = tmp_path / "dyn.onnx"
    result = export_onnx(model, path, input_size=(64, 96), dynamic_batch=True, dynamic_size=True)
    assert len(result.errors) == 2  # checked at two sizes
    for shape in [(1, 3, 64, 96), (3, 3, 96, 64), (2, 3, 32, 160)]:
        assert _ours_vs_ort(model, path, shape) < 1e-3, shape


def test_bad_requests(model, tmp_path):
    with pytest.raises(ExportError, match="multiples of 32"):
        export_onnx(model, tmp_path / "x.onnx", input_size=(50, 64))
    assert not (tmp_path / "x.onnx").exists()


def test_cli(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main([tiny_checkpoint, str(out), "--size", "64", "64", "--dynamic-batch"]) == 0
    assert out.is_file() and "onnxruntime vs PyTorch" in capsys.readouterr().out
    assert main([str(tmp_path / "missing"), str(tmp_path / "y.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]
    assert main([tiny_checkpoint, str(tmp_path / "z.onnx"), "--size", "60", "64"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert not (tmp_path / "y.onnx").exists() and not (tmp_path / "z.onnx").exists()


def test_file_gets_the_usual_permissions(model, tmp_path):
    """0666 less the umask, as every other output (not mkstemp's 0600)."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "perm.onnx"
        export_onnx(model, path, input_size=(32, 32), check=False)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        export_onnx(model, path, input_size=(32, 32), check=False)  # replaces: new file's mode
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["perm.onnx"]  # no temporary file left
