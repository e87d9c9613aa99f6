"""The pool stage's batching (pipeline.pool): which frames go to which worker, and when a worker
that still heartbeats but returns nothing counts as lost.

A batch is same-size frames from the front of the queue, up to the worker's batch size and to
what one message may carry (workers.max_message_bytes: n * 3 * h * w float32 bytes). A batch
that failed on a worker goes elsewhere when another worker is connected, waiting for its credit
if need be; it goes back to the same worker only when that is the only one.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from . import pool_protocol
from .pool_protocol import BATCH
from .pool_workers import Batch, Frame, WorkerEntry

if TYPE_CHECKING:
    from .pool import PoolStage

HUNG_TIMEOUTS = 4  # a batch is late after this many workers.timeout_s ...
HUNG_P95 = 10  # ... or this many times the worker's p95 round trip, whichever is longer


def target(stage: PoolStage) -> tuple[WorkerEntry, list[Frame]] | None:
    """The worker the queue's front batch may go to now, and that batch's frames; None when
    no worker may take it (no credit, or only a worker it failed on while others exist)."""
    pending = stage.pending
    if not pending:
        return None
    head = pending[0]
    w = stage.registry.pick(head.failed_on)
    if w is None:
        return None
    cap = max(1, stage.max_message_bytes // (4 * math.prod(head.shape)))
    n = 1
    while n < min(w.batch, cap, len(pending)) and pending[n].shape == head.shape:
        n += 1
    frames = [pending[i] for i in range(n)]
    avoid = set().union(*(f.failed_on for f in frames))
    if w.name in avoid and any(o is not w and o.name not in avoid for o in stage.registry.active()):
        return None  # wait for a worker it did not fail on
    return w, frames


def dispatch(stage: PoolStage, now: float) -> None:
    """Send batches while a worker may take one; a partial batch once its first frame waited
    max_wait (or its stream ended)."""
    while (found := target(stage)) is not None:
        w, frames = found
        head = frames[0]
        cap = max(1, stage.max_message_bytes // (4 * math.prod(head.shape)))
        full = len(frames) >= min(w.batch, cap) or len(frames) < len(stage.pending)
        if not full and head.stream not in stage.eos and now < head.t_in + stage.max_wait:
            return
        for _ in frames:
            stage.pending.popleft()
        batch = Batch(next(stage._batch_ids), frames, time.monotonic())
        pixels = np.stack([f.msg.arrays["pixels"] for f in frames])
        dtype, values = pool_protocol.pack_pixels(pixels)
        body = {
            "id": batch.id,
            "frames": [{"stream": f.stream, "index": f.msg.header["index"]} for f in frames],
            "pixels": {"dtype": dtype, "shape": list(values.shape)},
        }
        if stage._send(w, BATCH, body, values):
            stage.registry.sent(w, batch)
        else:
            stage._requeue(frames)


def hung_deadline(stage: PoolStage, w: WorkerEntry) -> float | None:
    """Monotonic time after which `w`, still holding its oldest batch, is lost; None: holds none."""
    oldest = w.oldest()
    if oldest is None:
        return None
    return oldest + max(HUNG_TIMEOUTS * stage.workers.timeout_s, HUNG_P95 * w.p95_ms / 1000)


def check_hung(stage: PoolStage, now: float) -> None:
    """A worker whose engine hangs while its I/O thread heartbeats: lost, its frames redone."""
    for w in stage.registry.active():
        deadline = hung_deadline(stage, w)
        if w.active and deadline is not None and now > deadline:
            stage._lose(w, "lost", f"no result for {now - w.oldest():.0f} s")
