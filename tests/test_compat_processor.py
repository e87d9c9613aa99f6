"""GLPNImageProcessor as a drop-in for transformers' (v5.24, issue #11): settings, files, loading
keywords, every input kind and post-processing, each compared with transformers on the same inputs.

The reference is GLPNImageProcessorPil: what `transformers.GLPNImageProcessor` gives without
torchvision (this environment), named directly so the reference does not change with it.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from glpn import DepthEstimatorOutput, GLPNImageProcessor
from glpn.synthetic import synthetic_image

pytest.importorskip("transformers")
pytest.importorskip("PIL")
from PIL import Image  # noqa: E402
from transformers.models.glpn.image_processing_pil_glpn import GLPNImageProcessorPil  # noqa: E402

CUSTOM = {"size_divisor": 16, "do_rescale": False, "rescale_factor": 0.5, "resample": 2}
# The keywords transformers' from_pretrained takes besides the processor settings.
LOAD_KWARGS = [
    {"cache_dir": "unused-cache"},
    {"force_download": True},
    {"local_files_only": True},
    {"token": None},
    {"revision": "main"},
    {"subfolder": ""},
    {"proxies": None},
    {"trust_remote_code": True},
    {"use_fast": False},
    {"size_divisor": 64, "do_resize": False},  # settings override the file
    {"unknown_option": 1},  # neither a setting nor an attribute: ignored, as in transformers
]


def _image(h: int = 70, w: int = 100) -> np.ndarray:
    return synthetic_image(h, w, seed=11)


def test_to_dict_has_transformers_keys_and_values():
    for settings in ({}, CUSTOM, {"do_resize": False, "extra_setting": [1, 2]}):
        ours, ref = GLPNImageProcessor(**settings).to_dict(), GLPNImageProcessorPil(**settings)
        assert ours == ref.to_dict()


def test_to_json_string_is_transformers_text():
    for settings in ({}, CUSTOM):
        ours = GLPNImageProcessor(**settings).to_json_string()
        assert ours == GLPNImageProcessorPil(**settings).to_json_string()
    assert repr(GLPNImageProcessor()).startswith("GLPNImageProcessor {")


def test_json_files_cross_load(tmp_path):
    ours_file, ref_file = tmp_path / "ours.json", tmp_path / "ref.json"
    GLPNImageProcessor(**CUSTOM).to_json_file(ours_file)
    GLPNImageProcessorPil(**CUSTOM).to_json_file(ref_file)
    assert ours_file.read_text() == ref_file.read_text()
    assert GLPNImageProcessorPil.from_json_file(ours_file).to_dict() == CUSTOM | {
        "do_resize": True,
        "image_processor_type": "GLPNImageProcessor",
    }
    assert (
        GLPNImageProcessor.from_json_file(ref_file).to_dict()
        == GLPNImageProcessorPil.from_json_file(ref_file).to_dict()
    )


def test_from_dict_overrides_and_unused_kwargs():
    base = GLPNImageProcessorPil(**CUSTOM).to_dict()
    kwargs = {"do_rescale": True, "foo": 1, "size_divisor": 8}
    ours, our_unused = GLPNImageProcessor.from_dict(base, return_unused_kwargs=True, **kwargs)
    ref, ref_unused = GLPNImageProcessorPil.from_dict(base, return_unused_kwargs=True, **kwargs)
    assert isinstance(ours, GLPNImageProcessor)
    assert ours.to_dict() == ref.to_dict()
    assert our_unused == ref_unused
    assert GLPNImageProcessor.from_dict(base).to_dict() == base


def test_save_pretrained_returns_written_files(tmp_path):
    ours = GLPNImageProcessor(**CUSTOM).save_pretrained(tmp_path / "ours")
    ref = GLPNImageProcessorPil(**CUSTOM).save_pretrained(tmp_path / "ref")
    assert [os.path.basename(p) for p in ours] == [os.path.basename(p) for p in ref]
    assert sorted(os.listdir(tmp_path / "ours")) == sorted(os.listdir(tmp_path / "ref"))
    assert open(ours[0]).read() == open(ref[0]).read()
    # each library loads the other's directory
    assert GLPNImageProcessorPil.from_pretrained(tmp_path / "ours").to_dict() == json.loads(
        open(ref[0]).read()
    )
    assert (
        GLPNImageProcessor.from_pretrained(tmp_path / "ref").to_dict()
        == GLPNImageProcessorPil.from_pretrained(tmp_path / "ref").to_dict()
    )


@pytest.mark.parametrize("kwargs", LOAD_KWARGS, ids=lambda k: ",".join(k))
def test_from_pretrained_takes_transformers_keywords(tmp_path, kwargs):
    GLPNImageProcessorPil(**CUSTOM).save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "preprocessor_config.json"):  # a directory or its file
        ours = GLPNImageProcessor.from_pretrained(pretrained_model_name_or_path=source, **kwargs)
        ref = GLPNImageProcessorPil.from_pretrained(pretrained_model_name_or_path=source, **kwargs)
        assert ours.to_dict() == ref.to_dict()
    ours, our_unused = GLPNImageProcessor.from_pretrained(
        tmp_path, return_unused_kwargs=True, **kwargs
    )
    ref, ref_unused = GLPNImageProcessorPil.from_pretrained(
        tmp_path, return_unused_kwargs=True, **kwargs
    )
    assert ours.to_dict() == ref.to_dict() and our_unused == ref_unused


def _compare(image, unit_range: bool = False, **kwargs):
    """Our pixel_values against transformers' for every do_resize/do_rescale combination.

    Resizing: the same uint8 image goes into PIL's and torch's antialiased bilinear filter, which
    round differently in rare cases: one grey level, in the output's units, on under 1% of
    values. Without resizing: one float32 ulp (we rescale in float32, transformers in float64).
    `unit_range`: the image holds floats in [0, 1], so a grey level is 1/255 of its unit.
    """
    for do_resize in (True, False):
        for do_rescale in (True, False):
            opts = dict(do_resize=do_resize, do_rescale=do_rescale, **kwargs)
            ref = GLPNImageProcessorPil()(image, return_tensors="pt", **opts)["pixel_values"]
            ours = GLPNImageProcessor()(image, return_tensors="pt", **opts)["pixel_values"]
            assert ours.dtype == ref.dtype and ours.shape == ref.shape, opts
            ours, ref = ours.double(), ref.double()
            if not do_resize:
                torch.testing.assert_close(ours, ref, rtol=2.4e-7, atol=0, msg=str(opts))
                continue
            grey = (1 / 255 if unit_range else 1.0) * (1 / 255 if do_rescale else 1.0)
            ulps = 4 * 1.2e-7 * ref.abs().max()  # float32 rounding on top
            diff = (ours - ref).abs()
            assert diff.max() <= grey + ulps, opts
            assert (diff > grey * 1e-3).double().mean() < 0.01, opts


def test_float_images_in_unit_range_are_rescaled_as_transformers_does():
    """transformers 5.24 truncates x*255 to uint8 to resize, divides by 255 again, then applies
    do_rescale regardless: a [0, 1] image comes out in [0, 1/255] unless do_rescale=False."""
    for dtype in (np.float32, np.float64):
        _compare(_image().astype(dtype) / 255, unit_range=True)
    out = GLPNImageProcessor()(_image().astype(np.float32) / 255).pixel_values
    assert out.max() <= 1 / 255 + 1e-9


def test_float_images_with_integer_values_are_taken_as_uint8():
    _compare(_image().astype(np.float32))
    with pytest.raises(ValueError, match="outside"):  # transformers raises too
        GLPNImageProcessor()(_image().astype(np.float32) + 0.5)


def test_uint8_arrays():
    _compare(_image())
    _compare(np.stack([_image(), _image()]))  # a batch as one (B, H, W, 3) array


def test_pil_images():
    _compare(Image.fromarray(_image()))
    _compare([Image.fromarray(_image()), Image.fromarray(_image())])


def test_torch_tensors():
    chw = torch.from_numpy(_image()).permute(2, 0, 1).contiguous()
    _compare(chw)  # uint8, channels first
    _compare(chw.float() / 255, unit_range=True)
    _compare(torch.stack([chw, chw]))  # a (B, 3, H, W) batch
    _compare(torch.from_numpy(_image()), input_data_format="channels_last")


def test_ambiguous_channel_axis_is_channels_first():
    """A 3x3x3 image: transformers takes the first axis as channels."""
    image = _image(3, 3)
    ours = GLPNImageProcessor()(image, do_resize=False)["pixel_values"]
    ref = GLPNImageProcessorPil()(image, do_resize=False, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, ref, rtol=2.4e-7, atol=0)


def test_without_return_tensors_type():
    """Our default is a tensor (documented difference); None gives transformers' list."""
    ref = GLPNImageProcessorPil()(_image())["pixel_values"]
    ours = GLPNImageProcessor()(_image(), return_tensors=None)["pixel_values"]
    assert isinstance(ours, list) and isinstance(ref, list)
    assert [type(o) for o in ours] == [type(r) for r in ref]
    assert isinstance(GLPNImageProcessor()(_image())["pixel_values"], torch.Tensor)


def test_unknown_preprocess_keyword_raises_like_transformers():
    with pytest.raises(TypeError):
        GLPNImageProcessorPil()(_image(), return_tensors="pt", no_such_option=1)
    with pytest.raises(TypeError, match="no_such_option"):
        GLPNImageProcessor()(_image(), no_such_option=1)
    with pytest.raises(NotImplementedError, match="do_normalize"):  # would change the numbers
        GLPNImageProcessor()(_image(), do_normalize=True, image_mean=0.5, image_std=0.5)


@pytest.mark.parametrize("target_sizes", [None, [(241, 317), (90, 100)]])
def test_post_process_structure_and_values(target_sizes):
    depth = torch.rand(2, 96, 128) * 10
    out = DepthEstimatorOutput(predicted_depth=depth)
    ref = GLPNImageProcessorPil().post_process_depth_estimation(out, target_sizes=target_sizes)
    ours = GLPNImageProcessor().post_process_depth_estimation(out, target_sizes=target_sizes)
    assert type(ours) is type(ref) and len(ours) == len(ref)
    for o, r in zip(ours, ref):
        assert o.keys() == r.keys()
        assert o["predicted_depth"].shape == r["predicted_depth"].shape
        torch.testing.assert_close(o["predicted_depth"], r["predicted_depth"], rtol=0, atol=0)
