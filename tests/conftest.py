"""Shared fixtures: tiny GLPN checkpoints with weights whose depth output varies.

The tiny model is GLPNConfig.preset("tiny"); checkpoints, clips and sizes come from glpn.testing,
which the benchmarks use too.
"""

from __future__ import annotations

import pytest
import torch

from glpn.testing import random_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Directory with config.json + model.safetensors of a tiny random GLPN (max depth 10 m)."""
    return random_checkpoint(tmp_path_factory.mktemp("tiny_glpn"))


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from 2 threads, and lose 20-50x when another process holds a core
    (OpenMP barriers wait for the descheduled thread): keeps engine tests fast on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
