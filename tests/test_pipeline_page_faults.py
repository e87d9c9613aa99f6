"""The inference stage counts the engine's page faults and warns when it re-faults memory each call.

A secondary glibc malloc arena mmaps every block over 64 MB afresh, so an engine in such a thread
pays page faults on every call (see glpn.hardware.tune_cpu_allocator). The stand-in below does the
same thing on purpose: it maps fresh anonymous memory and touches every page before each call.
"""

from __future__ import annotations

import logging
import mmap
import sys

import pytest
from pipeline_helpers import load_engine, write_video

from glpn.hardware import thread_page_faults
from pipeline import Pipeline

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or thread_page_faults() is None,
    reason="per-thread page-fault counts are read with getrusage(RUSAGE_THREAD), Linux only",
)

FRESH_BYTES = 48 << 20  # above the 32 MiB warning threshold


class RefaultingEngine:
    """A real engine that first faults in FRESH_BYTES of new memory on every call."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.max_depth = engine.max_depth

    def __call__(self, pixels):
        with mmap.mmap(-1, FRESH_BYTES) as fresh:  # unmapped again at exit: the next call re-faults
            for offset in range(0, FRESH_BYTES, mmap.PAGESIZE):
                fresh[offset] = 1
        return self.engine(pixels)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(str(tmp_path_factory.mktemp("clip") / "clip.avi"), 8, 96, 64, "MJPG")


def run(clip, checkpoint, factory):
    cfg = {
        "sources": [{"uri": clip, "id": "clip"}],
        "model": {"checkpoint": checkpoint, "max_batch": 1},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=factory)
    pipe.run()
    return pipe.summary().stages["inference"].get("events", {})


def test_an_engine_that_refaults_its_memory_is_reported_once(clip, tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        events = run(clip, tiny_checkpoint, lambda: RefaultingEngine(load_engine(tiny_checkpoint)))
    warnings = [r for r in caplog.records if "page-faulted" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert "GLIBC_TUNABLES=glibc.malloc.arena_max=1" in warnings[0].getMessage()
    # 8 batches, the first 3 not counted (warm-up); each faults in at least FRESH_BYTES
    assert events["page_faults"] >= 5 * FRESH_BYTES // mmap.PAGESIZE


def test_a_real_engine_does_not_refault_between_calls(clip, tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.inference"):
        events = run(clip, tiny_checkpoint, lambda: load_engine(tiny_checkpoint))
    assert not [r for r in caplog.records if "page-faulted" in r.getMessage()]
    assert events.get("page_faults", 0) < 5 * FRESH_BYTES // mmap.PAGESIZE // 10
