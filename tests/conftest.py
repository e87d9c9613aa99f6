"""Shared fixtures: tiny GLPN checkpoints with weights whose depth output varies."""

from __future__ import annotations

import os

import pytest
import torch

from glpn import GLPNConfig, GLPNForDepthEstimation
from glpn.synthetic import spread_init_

# Small enough for fast CPU tests, with every structural feature of the real model: four stages,
# sequence reduction, several heads, a decoder stage whose input width equals the decoder width.
TINY = dict(
    depths=(1, 1, 2, 1),
    hidden_sizes=(16, 32, 48, 64),
    num_attention_heads=(1, 2, 3, 4),
    decoder_hidden_size=16,
    max_depth=10.0,
)


def tiny_config(**overrides) -> GLPNConfig:
    return GLPNConfig(**{**TINY, **overrides})


def make_checkpoint(path: str | os.PathLike, seed: int = 0, **overrides) -> str:
    torch.manual_seed(seed)
    model = spread_init_(GLPNForDepthEstimation(tiny_config(**overrides)), seed=seed)
    model.save_pretrained(path)
    return os.fspath(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Directory with config.json + model.safetensors of a tiny random GLPN (max depth 10 m)."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_glpn"))


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and lose 20-50x when another process holds a core
    (OpenMP barriers wait for the descheduled thread): keeps engine tests fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
