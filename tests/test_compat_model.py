"""Issue 11, Outputs and Model: our GLPN classes used the way transformers' (v5.24) are, compared
with transformers' GLPNModel / GLPNForDepthEstimation on the same weights and inputs."""

from __future__ import annotations

import pytest
import torch

import glpn
import glpn.mit
from glpn.config import MODEL_FIELDS
from glpn.synthetic import spread_init_, synthetic_image

transformers = pytest.importorskip("transformers")



def _configs(**flags):
    ours = glpn.GLPNConfig.preset("tiny", **flags)
    arch = {k: getattr(ours, k) for k in MODEL_FIELDS}  # the network's fields
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}
    arch["max_depth"] = int(arch["max_depth"])  # transformers' config insists on an int
    return transformers.GLPNConfig(**arch, **flags), ours


def _pair(**flags):
    """transformers' and our GLPNForDepthEstimation with the same spread random weights."""
    ref_config, our_config = _configs(**flags)
    ref = spread_init_(transformers.GLPNForDepthEstimation(ref_config).eval(), seed=2)
    ours = glpn.GLPNForDepthEstimation(our_config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _encoders(ref, ours):
    ref_enc = transformers.GLPNModel(ref.config).eval()
    ref_enc.load_state_dict(ref.glpn.state_dict())
    our_enc = glpn.GLPNModel(ours.config).eval()
    our_enc.load_state_dict(ours.glpn.state_dict())
    return ref_enc, our_enc


def _input(h: int = 64, w: int = 96) -> torch.Tensor:
    return torch.from_numpy(synthetic_image(h, w, seed=4)).permute(2, 0, 1)[None].float() / 255


def _labels(h: int = 64, w: int = 96) -> torch.Tensor:
    labels = torch.rand(1, h, w, generator=torch.Generator().manual_seed(0)) * 9 + 0.5
    labels[0, :4] = 0  # invalid pixels
    return labels


def _assert_same(got, expected, tol: float = 1e-4) -> None:
    """Same structure (tuples nested as the reference's) and values within tol."""
    if isinstance(expected, tuple):
        assert isinstance(got, tuple) and len(got) == len(expected)
        for g, e in zip(got, expected):
            _assert_same(g, e, tol)
    else:
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@torch.no_grad()
def test_outputs_index_iterate_and_to_tuple_like_transformers():
    ref, ours = _pair()
    x, labels = _input(), _labels()
    r = ref(x, labels=labels, output_hidden_states=True)
    o = ours(x, labels=labels, output_hidden_states=True)
    assert list(o) == list(r) == ["loss", "predicted_depth", "hidden_states"]  # iterating: keys
    assert list(o.keys()) == list(r.keys())
    assert [k for k, _ in o.items()] == [k for k, _ in r.items()]
    _assert_same(o[0], r[0])  # with labels, the loss comes first
    _assert_same(o["predicted_depth"], r["predicted_depth"])
    _assert_same(o[1:], r[1:])
    _assert_same(o.to_tuple(), r.to_tuple())
    assert ("attentions" in o) == ("attentions" in r) is False
    assert dict(o).keys() == dict(r).keys()
    with pytest.raises(KeyError):
        o["attentions"]  # a None field is not a key, as in transformers
    # Without labels the depth is first.
    _assert_same(ours(x)[0], ref(x)[0])
    ref_enc, our_enc = _encoders(ref, ours)
    r, o = ref_enc(x), our_enc(x)
    assert list(o) == list(r) == ["last_hidden_state"]
    _assert_same(o[0], r[0])


@torch.no_grad()
def test_return_dict_false_returns_transformers_tuples():
    ref, ours = _pair()
    x, labels = _input(), _labels()
    ref_enc, our_enc = _encoders(ref, ours)
    for kwargs in ({}, {"output_hidden_states": True}):
        _assert_same(
            our_enc(x, return_dict=False, **kwargs), ref_enc(x, return_dict=False, **kwargs)
        )
        _assert_same(ours(x, return_dict=False, **kwargs), ref(x, return_dict=False, **kwargs))
        _assert_same(
            ours(x, labels=labels, return_dict=False, **kwargs),
            ref(x, labels=labels, return_dict=False, **kwargs),
        )


@torch.no_grad()
def test_output_flags_on_the_config_are_the_forward_defaults():
    flags = dict(output_hidden_states=True, output_attentions=True, return_dict=False)
    ref, ours = _pair(**flags)
    x = _input()
    _assert_same(ours(x), ref(x))  # (depth, hidden_states, attentions): all from the config
    ref_enc, our_enc = _encoders(ref, ours)
    _assert_same(our_enc(x), ref_enc(x))
    # An argument overrides the config.
    o = ours(x, output_hidden_states=False, output_attentions=False, return_dict=True)
    assert list(o) == list(
        ref(x, output_hidden_states=False, output_attentions=False, return_dict=True)
    )
    assert list(o) == ["predicted_depth"]


@torch.no_grad()
def test_output_attentions_returns_transformers_attention_maps():
    ref, ours = _pair()
    x = _input()
    r = ref(x, output_attentions=True)
    o = ours(x, output_attentions=True)
    assert list(o) == list(r) == ["predicted_depth", "attentions"]
    assert len(o.attentions) == sum(ours.config.depths)
    _assert_same(o.attentions, r.attentions, tol=1e-5)
    # Each map is a softmax over the reduced keys, and asking for them leaves the depth as it was.
    torch.testing.assert_close(o.attentions[0].sum(-1), torch.ones(o.attentions[0].shape[:-1]))
    torch.testing.assert_close(o.predicted_depth, ours(x).predicted_depth, rtol=1e-5, atol=1e-5)
    ref_enc, our_enc = _encoders(ref, ours)
    _assert_same(our_enc(x, output_attentions=True), ref_enc(x, output_attentions=True), tol=1e-5)
    # With flip TTA no single pass made the depth: an error saying so, never a silent None.
    ours.flip_tta = True
    with pytest.raises(ValueError, match="flip_tta"):
        ours(x, output_attentions=True)


def test_torch_export_of_depth_model():
    ref, ours = _pair()
    x = _input()
    exported = torch.export.export(ours, (x,))
    with torch.no_grad():
        expected = ref(x)
        got = exported.module()(x)
    assert isinstance(got, glpn.DepthEstimatorOutput)
    assert list(got) == list(expected)
    _assert_same(got.predicted_depth, expected.predicted_depth)
    # The output flags are baked into the graph, as for transformers' models.
    exported = torch.export.export(ours, (x,), kwargs={"output_hidden_states": True})
    with torch.no_grad():
        got = exported.module()(x, output_hidden_states=True)
        expected = ref(x, output_hidden_states=True)
    _assert_same(got.to_tuple(), expected.to_tuple())


@torch.no_grad()
def test_model_attributes_match_transformers():
    ref, ours = _pair()
    for name in ("main_input_name", "base_model_prefix"):
        assert getattr(ours, name) == getattr(ref, name)
    assert ours.can_generate() is ref.can_generate() is False
    assert ours.config_class is glpn.GLPNConfig
    assert ours.device == ref.device and ours.dtype == ref.dtype == torch.float32
    assert ours.num_parameters() == ref.num_parameters()
    assert ours.num_parameters(exclude_embeddings=True) == ref.num_parameters(
        exclude_embeddings=True
    )
    for model in (ref, ours):
        model.glpn.requires_grad_(False)  # a frozen encoder
    assert ours.num_parameters(only_trainable=True) == ref.num_parameters(only_trainable=True)
    assert ours.num_parameters(only_trainable=True) < ours.num_parameters()
    assert ours.to(torch.bfloat16).dtype == ref.to(torch.bfloat16).dtype == torch.bfloat16


@torch.no_grad()
def test_user_loop_with_inputs_on_model_device_matches_transformers():
    """processor -> inputs.to(model.device) -> model(**inputs) -> post-process, as in the docs."""
    from transformers.models.glpn.image_processing_pil_glpn import GLPNImageProcessorPil

    ref, ours = _pair()
    image = synthetic_image(101, 133, seed=6)
    results = []
    for model, processor in ((ref, GLPNImageProcessorPil()), (ours, glpn.GLPNImageProcessor())):
        inputs = processor(images=image, return_tensors="pt").to(model.device)
        outputs = model(**inputs)
        post = processor.post_process_depth_estimation(outputs, target_sizes=[(101, 133)])
        results.append(post[0]["predicted_depth"])
    r, o = results
    assert o.shape == r.shape == (101, 133)
    # The resize differs by at most one grey level on a few pixels (see the processing tests).
    assert (o - r).abs().mean().item() < 1e-3 * (r.max() - r.min()).item()


def test_constructible_on_the_meta_device():
    ref, ours = _pair()
    with torch.device("meta"):
        empty = glpn.GLPNForDepthEstimation(ours.config)
        encoder = glpn.GLPNModel(ours.config)
    assert empty.device.type == encoder.device.type == "meta"
    assert empty.num_parameters() == ref.num_parameters()
    # The usual next step: materialise, load, run.
    empty = empty.to_empty(device="cpu").eval()
    empty.load_state_dict(ref.state_dict())
    with torch.no_grad():
        _assert_same(empty(_input()).predicted_depth, ref(_input()).predicted_depth)
    # The drop-path rates (computed without torch) are transformers' per layer.
    ours_rates = [m.p for m in ours.modules() if isinstance(m, glpn.mit.DropPath)]
    ref_layers = [m for m in ref.modules() if type(m).__name__ == "GLPNLayer"]
    ref_rates = [getattr(m.drop_path, "drop_prob", 0.0) for m in ref_layers]  # 0: nn.Identity
    assert len(ours_rates) == len(ref_rates) == sum(ours.config.depths)
    assert ours_rates == pytest.approx(ref_rates, abs=1e-7)
    assert ours_rates[-1] == pytest.approx(ours.config.drop_path_rate)


@torch.no_grad()
def test_transformers_depth_pipeline_runs_our_model():
    from PIL import Image
    from transformers.models.glpn.image_processing_pil_glpn import GLPNImageProcessorPil

    ref, ours = _pair()
    image = Image.fromarray(synthetic_image(97, 131, seed=1))
    expected = transformers.pipeline(
        "depth-estimation", model=ref, image_processor=GLPNImageProcessorPil(), device="cpu"
    )(image)
    for processor in (glpn.GLPNImageProcessor(), GLPNImageProcessorPil()):
        pipe = transformers.pipeline(
            "depth-estimation", model=ours, image_processor=processor, device="cpu"
        )
        got = pipe(image)
        assert got.keys() == expected.keys() == {"predicted_depth", "depth"}
        r, o = expected["predicted_depth"], got["predicted_depth"]
        assert o.shape == r.shape == (97, 131)
        assert got["depth"].size == expected["depth"].size == (131, 97)
        assert (o - r).abs().mean().item() < 1e-3 * (r.max() - r.min()).item()


@torch.no_grad()
def test_max_depth_changed_on_the_config_after_building_rescales_like_transformers():
    ref, ours = _pair()
    ref.config.max_depth = 20
    ours.config.max_depth = 20.0
    x = _input()
    _assert_same(ours(pixel_values=x).predicted_depth, ref(pixel_values=x).predicted_depth)
    assert float(ours(pixel_values=x).predicted_depth.max()) > 10  # beyond the old 10 m
