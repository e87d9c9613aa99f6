"""Drop-in compatibility with transformers (v5.24) for GLPNConfig and from_pretrained's keywords
(issue 11): each test does the same thing with transformers' classes and ours and compares."""

from __future__ import annotations

import json

import pytest
import torch

from glpn import CheckpointError, ConfigError, GLPNConfig, GLPNForDepthEstimation
from glpn.synthetic import spread_init_, synthetic_image

transformers = pytest.importorskip("transformers")

TINY = dict(
    depths=[1, 1, 2, 1],
    hidden_sizes=[16, 32, 48, 64],
    num_attention_heads=[1, 2, 3, 4],
    decoder_hidden_size=16,
)
# Keyword arguments every transformers config takes, with non-default values.
COMMON = dict(
    image_size=224,
    num_labels=3,
    output_hidden_states=True,
    output_attentions=False,
    return_dict=False,
    architectures=["GLPNForDepthEstimation"],
    name_or_path="somewhere/glpn",
    problem_type="regression",
    chunk_size_feed_forward=0,
    is_encoder_decoder=False,
)
VERSION = "transformers_version"  # written by transformers only


def _x() -> torch.Tensor:
    return torch.from_numpy(synthetic_image(64, 96, seed=3)).permute(2, 0, 1)[None].float() / 255


def _hf_checkpoint(path, dtype: torch.dtype = torch.float32, **config) -> str:
    cfg = transformers.GLPNConfig(**TINY, **config)
    spread_init_(transformers.GLPNForDepthEstimation(cfg), seed=1).to(dtype).save_pretrained(path)
    return str(path)


def _without_version(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != VERSION}


def _depth(model, dtype=torch.float32) -> torch.Tensor:
    with torch.no_grad():
        out = model(_x().to(dtype), return_dict=True)
    return out.predicted_depth.float()


# ---- GLPNConfig -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        dict(dtype="float16"),
        dict(torch_dtype=torch.bfloat16),
        dict(id2label={"0": "near", "1": "far"}, label2id={"near": 0, "far": 1}),
        dict(model_type="glpn", max_depth=80),
    ],
)
def test_config_takes_every_pretrained_config_keyword(extra):
    kwargs = {**TINY, **COMMON, **extra}
    if "id2label" in extra:
        kwargs.pop("num_labels")
    ours, ref = GLPNConfig(**kwargs), transformers.GLPNConfig(**kwargs)
    assert _without_version(ours.to_dict()) == _without_version(ref.to_dict())
    for name in ("image_size", "num_labels", "id2label", "label2id", "dtype", "name_or_path"):
        assert getattr(ours, name) == getattr(ref, name), name


def test_config_json_round_trips_both_ways(tmp_path):
    kwargs = {**TINY, **COMMON, "dtype": "bfloat16", "max_depth": 80, "custom_note": "kept"}
    del kwargs["name_or_path"]  # where a config was read from: not written, in both
    ours, ref = GLPNConfig(**kwargs), transformers.GLPNConfig(**kwargs)
    for use_diff in (True, False):
        assert _without_version(json.loads(ours.to_json_string(use_diff))) == _without_version(
            json.loads(ref.to_json_string(use_diff))
        )
    ours.save_pretrained(tmp_path / "ours")
    ref.save_pretrained(tmp_path / "ref")
    theirs_of_ours = transformers.GLPNConfig.from_pretrained(tmp_path / "ours")
    ours_of_theirs = GLPNConfig.from_pretrained(tmp_path / "ref")
    assert _without_version(theirs_of_ours.to_dict()) == _without_version(ref.to_dict())
    assert ours_of_theirs.to_dict() == {**ours.to_dict(), VERSION: ref.to_dict()[VERSION]}
    assert ours_of_theirs == ours and ours_of_theirs.custom_note == "kept"
    ours.to_json_file(tmp_path / "c.json", use_diff=False)
    assert GLPNConfig.from_json_file(tmp_path / "c.json") == ours
    assert transformers.GLPNConfig.from_json_file(tmp_path / "c.json").max_depth == 80
    assert GLPNConfig.from_dict(ref.to_dict()) == ours


def test_config_is_mutable_and_never_invalid(tmp_path):
    ours, ref = GLPNConfig(**TINY), transformers.GLPNConfig(**TINY)
    for config in (ours, ref):
        config.max_depth = 20
        config.output_hidden_states = True
    assert ours.max_depth == ref.max_depth == 20 and ours.output_hidden_states
    with pytest.raises(ConfigError, match="max_depth must be > 0"):
        ours.max_depth = -1
    with pytest.raises(ConfigError, match="depths has 3 entries but num_encoder_blocks is 4"):
        ours.depths = [1, 1, 1]
    assert ours.max_depth == 20 and ours.depths == (1, 1, 2, 1)  # a refused value is not kept
    ours.update(
        dict(
            num_encoder_blocks=3,
            **{k: [1, 1, 1] for k in ("depths", "mlp_ratios")},
            sr_ratios=[4, 2, 1],
            hidden_sizes=[16, 32, 48],
            patch_sizes=[7, 3, 3],
            strides=[4, 2, 2],
            num_attention_heads=[1, 2, 3],
        )
    )
    assert ours.num_encoder_blocks == 3
    # the models built from mutated configs agree
    ref.max_depth = ours.max_depth = 25
    ref.update(
        {
            k: getattr(ours, k)
            for k in (
                "num_encoder_blocks",
                "depths",
                "mlp_ratios",
                "sr_ratios",
                "hidden_sizes",
                "patch_sizes",
                "strides",
                "num_attention_heads",
            )
        }
    )
    theirs = spread_init_(transformers.GLPNForDepthEstimation(ref).eval(), seed=2)
    mine = GLPNForDepthEstimation(ours).eval()
    mine.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(_depth(mine), _depth(theirs), rtol=1e-4, atol=1e-4)


def test_model_type():
    assert GLPNConfig.model_type == transformers.GLPNConfig.model_type == "glpn"
    assert GLPNConfig().model_type == transformers.GLPNConfig().model_type
    with pytest.raises(ConfigError, match="model_type"):
        GLPNConfig(model_type="bert")


def test_output_flags_have_transformers_defaults():
    ours, ref = GLPNConfig(), transformers.GLPNConfig()
    for name in ("output_hidden_states", "output_attentions", "return_dict"):
        assert getattr(ours, name) is getattr(ref, name), name
        flipped = not getattr(ref, name)
        assert getattr(GLPNConfig(**{name: flipped}), name) is flipped
    assert ours.use_return_dict is ref.return_dict


def test_config_from_pretrained_keywords(tmp_path):
    path = _hf_checkpoint(tmp_path)
    kwargs = dict(
        max_depth=3,
        foo=1,
        output_hidden_states=True,
        num_labels=4,
        revision="main",
        local_files_only=True,
        cache_dir=str(tmp_path / "cache"),
        force_download=False,
        token=None,
        trust_remote_code=False,
        return_unused_kwargs=True,
    )
    ours, ours_unused = GLPNConfig.from_pretrained(path, **kwargs)
    ref, ref_unused = transformers.GLPNConfig.from_pretrained(path, **kwargs)
    assert ours_unused == ref_unused == {"foo": 1}
    assert _without_version(ours.to_dict()) == _without_version(ref.to_dict())
    assert GLPNConfig.from_pretrained(f"{path}/config.json") == GLPNConfig.from_pretrained(path)


# ---- from_pretrained ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "saved,kwargs,expected",
    [
        (torch.float32, dict(dtype=torch.float16), torch.float16),
        (torch.float32, dict(torch_dtype="bfloat16"), torch.bfloat16),
        (torch.float16, dict(dtype="auto"), torch.float16),  # the checkpoint's dtype
        (torch.float16, dict(dtype=torch.float32), torch.float32),
    ],
)
def test_from_pretrained_dtype(tmp_path, saved, kwargs, expected):
    path = _hf_checkpoint(tmp_path, dtype=saved)
    ours = GLPNForDepthEstimation.from_pretrained(path, **kwargs)
    ref = transformers.GLPNForDepthEstimation.from_pretrained(path, **kwargs)
    assert ours.config.dtype == ref.config.dtype == expected
    theirs = ref.state_dict()
    for name, tensor in ours.state_dict().items():
        assert tensor.dtype == theirs[name].dtype and torch.equal(tensor, theirs[name]), name


def test_from_pretrained_default_dtype_is_float32(tmp_path):
    """Deliberate difference: transformers 5 defaults to dtype="auto"; ours loads float32 (the
    engine's accuracy gate needs a float32 reference) unless asked."""
    path = _hf_checkpoint(tmp_path, dtype=torch.float16)
    ours = GLPNForDepthEstimation.from_pretrained(path)
    assert ours.config.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in ours.parameters())
    ref = transformers.GLPNForDepthEstimation.from_pretrained(path, dtype=torch.float32)
    torch.testing.assert_close(_depth(ours), _depth(ref), rtol=1e-4, atol=1e-4)


def test_from_pretrained_output_loading_info(tmp_path):
    path = _hf_checkpoint(tmp_path)
    ours, ours_info = GLPNForDepthEstimation.from_pretrained(path, output_loading_info=True)
    ref, ref_info = transformers.GLPNForDepthEstimation.from_pretrained(
        path, output_loading_info=True
    )
    assert ours_info == ref_info
    torch.testing.assert_close(_depth(ours), _depth(ref), rtol=1e-4, atol=1e-4)


def test_from_pretrained_hub_options_on_a_local_directory(tmp_path):
    path = _hf_checkpoint(tmp_path / "ckpt")
    options = dict(
        local_files_only=True,
        revision="main",
        cache_dir=str(tmp_path / "cache"),
        force_download=False,
        token=None,
        trust_remote_code=True,
    )
    ours = GLPNForDepthEstimation.from_pretrained(path, **options)
    ref = transformers.GLPNForDepthEstimation.from_pretrained(path, **options)
    torch.testing.assert_close(_depth(ours), _depth(ref), rtol=1e-4, atol=1e-4)


def test_from_pretrained_hub_options_reach_the_hub_cache(tmp_path, monkeypatch):
    """A hub id in a hub cache at `cache_dir`, offline (`local_files_only`): found at revision
    "main" and refused at a revision the cache lacks, by both, so the options reach the lookup."""
    monkeypatch.chdir(tmp_path)  # no local folder named like the repo owner
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--glpn-test--tiny"
    _hf_checkpoint(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    options = dict(local_files_only=True, cache_dir=str(tmp_path / "cache"), revision="main")
    ours = GLPNForDepthEstimation.from_pretrained("glpn-test/tiny", **options)
    ref = transformers.GLPNForDepthEstimation.from_pretrained("glpn-test/tiny", **options)
    assert ours.config.name_or_path == ref.config.name_or_path == "glpn-test/tiny"
    torch.testing.assert_close(_depth(ours), _depth(ref), rtol=1e-4, atol=1e-4)
    options["revision"] = "v1"
    with pytest.raises(OSError):
        transformers.GLPNForDepthEstimation.from_pretrained("glpn-test/tiny", **options)
    with pytest.raises(CheckpointError, match="glpn-test/tiny"):
        GLPNForDepthEstimation.from_pretrained("glpn-test/tiny", **options)


def test_from_pretrained_state_dict(tmp_path):
    path = _hf_checkpoint(tmp_path)
    ref = transformers.GLPNForDepthEstimation.from_pretrained(path)
    weights = {k: v.clone() for k, v in ref.state_dict().items()}
    theirs = transformers.GLPNForDepthEstimation.from_pretrained(
        None, config=ref.config, state_dict=weights
    )
    ours = GLPNForDepthEstimation.from_pretrained(
        None, config=GLPNConfig(**TINY), state_dict=weights
    )
    torch.testing.assert_close(_depth(ours), _depth(theirs), rtol=1e-4, atol=1e-4)
    # ours also takes the weights beside a path (the config read from there)
    weights["head.head.2.bias"] += 1.0
    shifted = GLPNForDepthEstimation.from_pretrained(path, state_dict=weights)
    assert not torch.allclose(_depth(shifted), _depth(ours))


def test_from_pretrained_config_keywords(tmp_path):
    path = _hf_checkpoint(tmp_path)
    kwargs = dict(max_depth=5, output_hidden_states=True, num_labels=3)
    ours = GLPNForDepthEstimation.from_pretrained(path, **kwargs)
    ref = transformers.GLPNForDepthEstimation.from_pretrained(path, **kwargs)
    assert _without_version(ours.config.to_dict()) == _without_version(ref.config.to_dict())
    torch.testing.assert_close(_depth(ours), _depth(ref), rtol=1e-4, atol=1e-4)
    # A keyword that is neither a config attribute nor a model argument is a TypeError in both.
    with pytest.raises(TypeError, match="max_detph"):
        transformers.GLPNForDepthEstimation.from_pretrained(path, max_detph=5)
    with pytest.raises(TypeError, match="max_detph"):
        GLPNForDepthEstimation.from_pretrained(path, max_detph=5)


def test_from_pretrained_path_as_keyword(tmp_path):
    path = _hf_checkpoint(tmp_path)
    ours = GLPNForDepthEstimation.from_pretrained(pretrained_model_name_or_path=path)
    ref = transformers.GLPNForDepthEstimation.from_pretrained(pretrained_model_name_or_path=path)
    assert ours.config.name_or_path == ref.config.name_or_path == path
    torch.testing.assert_close(_depth(ours), _depth(ref), rtol=1e-4, atol=1e-4)


def test_saved_config_json_matches_transformers(tmp_path):
    ref = spread_init_(transformers.GLPNForDepthEstimation(transformers.GLPNConfig(**TINY)))
    ours = GLPNForDepthEstimation(GLPNConfig(**TINY))
    ours.load_state_dict(ref.state_dict())
    ref.save_pretrained(tmp_path / "ref")
    ours.save_pretrained(save_directory=tmp_path / "ours")
    written = [json.loads((tmp_path / d / "config.json").read_text()) for d in ("ours", "ref")]
    assert written[0] == _without_version(written[1])
