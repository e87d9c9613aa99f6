"""Engine cache keying and invalidation: a stand-in build step here, the real ONNX one end to end.

TensorRT's own cache test (real plans, hit on the second build) is in test_engine_backends.py and
runs only where CUDA and torch-tensorrt are present; the keying and corruption handling it relies
on are the same code as tested here.
"""

import logging
import os

import numpy as np
import pytest
import torch

from glpn import GLPNDepth
from glpn.engine import from_model
from glpn.engine_cache import EngineCache, weights_digest

FIELDS = {
    "kind": "stand-in",
    "weights": "abc",
    "input_size": [480, 640],
    "batch_size": 1,
    "precision": "fp16",
    "gpu": "GPU A (sm_80)",
    "torch": "2.13.0",
    "tensorrt": "10.0",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class StandIn:
    """A build step that records its calls; its 'engine' is the bytes of the key fields."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self, fields):
        def run() -> bytes:
            self.builds += 1
            return repr(sorted(fields.items())).encode()

        return run

    @staticmethod
    def load(blob: bytes) -> str:
        if not blob.startswith(b"[("):
            raise ValueError("not an engine")
        return blob.decode()


def test_same_key_hits_and_every_field_change_rebuilds(tmp_path):
    cache, step = EngineCache(tmp_path), StandIn()
    first, status = cache.load_or_build(FIELDS, step.build(FIELDS), step.load)
    assert (status, step.builds) == ("built", 1)
    again, status = cache.load_or_build(dict(FIELDS), step.build(FIELDS), step.load)
    assert (status, step.builds, again) == ("hit", 1, first)
    changes = {
        "weights": "abd",
        "input_size": [352, 1216],
        "batch_size": 4,
        "precision": "fp32",
        "gpu": "GPU B (sm_90)",
        "torch": "2.14.0",
        "tensorrt": "10.1",
    }
    for name, value in changes.items():
        fields = {**FIELDS, name: value}
        obj, status = cache.load_or_build(fields, step.build(fields), step.load)
        assert status == "built", name
        assert obj == repr(sorted(fields.items()))
    assert step.builds == 1 + len(changes)
    assert len(list(tmp_path.glob("*.engine"))) == 1 + len(changes)


@pytest.mark.parametrize("damage", ["truncate", "flip", "metadata", "remove_blob", "alien_blob"])
def test_corrupt_entries_are_rebuilt_with_a_warning(tmp_path, caplog, damage):
    cache, step = EngineCache(tmp_path), StandIn()
    good, _ = cache.load_or_build(FIELDS, step.build(FIELDS), step.load)
    blob_path, meta_path = cache.paths(FIELDS, ".engine")
    data = open(blob_path, "rb").read()
    if damage == "truncate":
        open(blob_path, "wb").write(data[:-3])
    elif damage == "flip":
        open(blob_path, "wb").write(bytes([data[0] ^ 1]) + data[1:])
    elif damage == "metadata":
        open(meta_path, "w").write("{not json")
    elif damage == "remove_blob":
        os.remove(blob_path)
    elif damage == "alien_blob":  # right checksum, but the loader refuses it
        alien = b"garbage"
        open(blob_path, "wb").write(alien)
        cache._write(FIELDS, alien, blob_path, meta_path)
    with caplog.at_level(logging.WARNING, logger="glpn.engine_cache"):
        obj, status = cache.load_or_build(FIELDS, step.build(FIELDS), step.load)
    assert (status, obj, step.builds) == ("rebuilt", good, 2)
    assert any("unusable" in r.getMessage() for r in caplog.records)
    assert cache.load_or_build(FIELDS, step.build(FIELDS), step.load)[1] == "hit"  # repaired


def test_unwritable_cache_runs_uncached(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache, step = EngineCache(blocker / "engines"), StandIn()
    with caplog.at_level(logging.WARNING, logger="glpn.engine_cache"):
        obj, status = cache.load_or_build(FIELDS, step.build(FIELDS), step.load)
    assert status == "built" and obj.startswith("[(")
    assert any("running uncached" in r.getMessage() for r in caplog.records)


def test_weights_digest_follows_the_weights(tiny_checkpoint):
    a = GLPNDepth.from_pretrained(tiny_checkpoint)
    b = GLPNDepth.from_pretrained(tiny_checkpoint)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.head.head[0].weight[0, 0, 0, 0] += 1e-3
    assert weights_digest(a) != weights_digest(b)


def test_onnxruntime_engine_uses_the_cache(tiny_checkpoint, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    model = GLPNDepth.from_pretrained(tiny_checkpoint)
    options = dict(
        backend="onnxruntime", input_size=(64, 96), batch_sizes=(1, 2), cache_dir=tmp_path
    )
    x = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    first = from_model(model, **options)
    assert first._runner.notes["cache"] == "built"
    second = from_model(model, **options)
    assert second._runner.notes["cache"] == "hit"
    np.testing.assert_array_equal(second(x), first(x))
    path = second._runner.notes["path"]
    with open(path, "r+b") as f:  # damage the cached model: it must be rebuilt, not trusted
        f.seek(100)
        f.write(b"\0" * 64)
    with caplog.at_level(logging.WARNING, logger="glpn.engine_cache"):
        third = from_model(model, **options)
    assert third._runner.notes["cache"] == "rebuilt"
    np.testing.assert_array_equal(third(x), first(x))
    other = from_model(model, **{**options, "input_size": (64, 64)})  # new key, new entry
    assert other._runner.notes["cache"] == "built"
