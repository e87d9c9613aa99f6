"""Checkpoint round trips with transformers (both directions, safetensors and .bin) and clear
errors."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

import glpn
import glpn.hub
from glpn import CheckpointError, GLPNConfig, GLPNDepth, GLPNForDepthEstimation, GLPNModel
from glpn.synthetic import spread_init_, synthetic_image
from glpn.testing import random_checkpoint

transformers = pytest.importorskip("transformers")


def _x() -> torch.Tensor:
    return torch.from_numpy(synthetic_image(64, 96, seed=2)).permute(2, 0, 1)[None].float() / 255


def _hf_model(seed: int = 0):
    cfg = transformers.GLPNConfig(
        **{
            k: list(v) if isinstance(v, tuple) else v
            for k, v in GLPNConfig.preset("tiny").to_dict().items()
            if k not in ("architectures", "model_type")
        }
    )
    return spread_init_(transformers.GLPNForDepthEstimation(cfg).eval(), seed=seed)


@pytest.mark.parametrize("safe", [True, False])
def test_transformers_checkpoint_loads_into_ours(tmp_path, safe):
    ref = _hf_model()
    ref.save_pretrained(tmp_path)
    if (
        not safe
    ):  # the published GLPN repos ship pytorch_model.bin; transformers 5 only writes safetensors
        torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
        os.remove(tmp_path / "model.safetensors")
    ours = GLPNForDepthEstimation.from_pretrained(tmp_path)
    assert not ours.training
    assert ours.config.hidden_sizes == (16, 32, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(_x()).predicted_depth, ref(_x()).predicted_depth)


@pytest.mark.parametrize("safe", [True, False])
def test_our_checkpoint_loads_into_transformers(tmp_path, safe):
    config = GLPNConfig.preset("tiny", max_depth=80.0)
    ours = spread_init_(GLPNForDepthEstimation(config), seed=4).eval()
    ours.save_pretrained(tmp_path, safe_serialization=safe)
    ref = transformers.GLPNForDepthEstimation.from_pretrained(tmp_path).eval()
    assert ref.config.max_depth == 80
    with torch.no_grad():
        torch.testing.assert_close(ref(_x()).predicted_depth, ours(_x()).predicted_depth)
    # and back again, through our loader
    again = GLPNDepth.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(_x()), ours(_x()).predicted_depth)


def test_encoder_loads_from_depth_checkpoint(tmp_path):
    path = random_checkpoint(tmp_path)
    full = GLPNForDepthEstimation.from_pretrained(path)
    enc = GLPNModel.from_pretrained(path)
    with torch.no_grad():
        a = enc(_x(), output_hidden_states=True).hidden_states
        b = full(_x(), output_hidden_states=True).hidden_states
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


def test_config_round_trip_and_overrides(tmp_path):
    path = random_checkpoint(tmp_path)
    cfg = GLPNConfig.from_pretrained(path)
    assert cfg == GLPNConfig.preset("tiny")
    m = GLPNForDepthEstimation.from_pretrained(path, max_depth=20.0)
    assert m.config.max_depth == 20.0
    with torch.no_grad():
        d20 = m(_x()).predicted_depth
        d10 = GLPNForDepthEstimation.from_pretrained(path)(_x()).predicted_depth
    torch.testing.assert_close(d20, 2 * d10)


def test_mismatched_config_names_the_keys(tmp_path):
    path = random_checkpoint(tmp_path)
    with pytest.raises(CheckpointError) as e:
        GLPNForDepthEstimation.from_pretrained(
            path, config=GLPNConfig.preset("tiny", hidden_sizes=(16, 32, 48, 80))
        )
    msg = str(e.value)
    assert "mis-shaped keys" in msg and "glpn.encoder.block.3.0" in msg and str(tmp_path) in msg


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    path = random_checkpoint(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["head.head.2.weight"]
    state["decoder.extra.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        GLPNForDepthEstimation.from_pretrained(path)
    msg = str(e.value)
    assert "missing keys: head.head.2.weight" in msg
    assert "unexpected keys: decoder.extra.weight" in msg


def test_corrupted_weights_file(tmp_path):
    path = random_checkpoint(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read weights"):
        GLPNForDepthEstimation.from_pretrained(path)


def test_bad_config_json_names_the_field(tmp_path):
    path = random_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["depths"] = [1, 1, 1]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="depths has 3 entries but num_encoder_blocks is 4"):
        GLPNForDepthEstimation.from_pretrained(path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        GLPNForDepthEstimation.from_pretrained(path)


def test_no_weights_and_no_directory(tmp_path):
    GLPNConfig.preset("tiny").save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        GLPNForDepthEstimation.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        GLPNForDepthEstimation.from_pretrained(tmp_path / "nope")


class _Payload:
    """Unpickling this would create a file: the loader must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_bin_checkpoint_is_not_executed(tmp_path):
    GLPNConfig.preset("tiny").save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot read weights"):
        GLPNForDepthEstimation.from_pretrained(tmp_path)
    assert not marker.exists()


def test_hub_id_without_network_says_how_to_pass_a_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        GLPNForDepthEstimation.from_pretrained("vinvino02/glpn-kitti")
    assert "vinvino02/glpn-kitti" in str(e.value) and "local directory" in str(e.value)


def test_save_does_not_leave_partial_files(tmp_path):
    random_checkpoint(tmp_path)
    before = sorted(os.listdir(tmp_path))
    GLPNForDepthEstimation.from_pretrained(tmp_path).save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == before
    assert glpn.GLPNForDepthEstimation.from_pretrained(tmp_path) is not None


@pytest.mark.parametrize(
    "path",
    ["./ckpt/glpn-nyu", "../glpn-nyu", "/nonexistent/glpn-nyu", "~/glpn-nyu", "a/b/c", "nodir"],
)
def test_missing_local_directory_is_never_a_hub_id(monkeypatch, tmp_path, path):
    """A path that can only be local says the directory does not exist (no hub lookup, no
    `hf download` hint); so does a two-part path whose first part is a directory here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(glpn.hub, "is_hub_id", _no_hub_lookup(glpn.hub.is_hub_id))
    with pytest.raises(CheckpointError) as e:
        GLPNConfig.from_pretrained(path)
    assert str(e.value) == f"no such checkpoint directory: {path} does not exist"


def test_two_part_path_beside_a_local_folder_is_local(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    assert glpn.hub.looks_local("checkpoints/glpn-nyu")
    assert not glpn.hub.is_hub_id("checkpoints/glpn-nyu")
    with pytest.raises(CheckpointError, match="checkpoints/glpn-nyu does not exist"):
        GLPNForDepthEstimation.from_pretrained("checkpoints/glpn-nyu")
    assert glpn.hub.is_hub_id("vinvino02/glpn-nyu")  # no vinvino02/ folder here


def _no_hub_lookup(is_hub_id):
    def check(path: str) -> bool:
        assert not is_hub_id(path), f"{path} was taken for a hub id"
        return False

    return check


def test_saved_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        random_checkpoint(tmp_path / "ckpt")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "ckpt").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
