"""A worker's handling of one batch (pipeline.worker): running it through the engine in calls of
at most the worker's batch size, and reading the id of a BATCH that failed to decode."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from . import pool_protocol as proto


def infer(engine: Any, pixels: np.ndarray, batch: int) -> np.ndarray:
    """(B, 3, h, w) -> (B, h, w) float32 metres, in engine calls of at most `batch` frames."""
    chunks = [call(engine, pixels[i : i + batch]) for i in range(0, len(pixels), batch)]
    depth = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return np.ascontiguousarray(depth, dtype=np.float32)


def call(engine: Any, pixels: np.ndarray) -> np.ndarray:
    depth = engine(pixels)
    if not isinstance(depth, np.ndarray):  # a torch tensor from a custom engine
        depth = depth.detach().float().cpu().numpy()
    if depth.ndim == 4 and depth.shape[1] == 1:
        depth = depth[:, 0]
    expected = (pixels.shape[0], *pixels.shape[2:])
    if depth.shape != expected:
        raise RuntimeError(f"engine returned depth of shape {depth.shape}, expected {expected}")
    return depth


def batch_id_of(parts: list[Any]) -> int | None:
    """The id of a BATCH that did not decode (too big, bad pixels...), read from its JSON body
    so the worker can answer FAILED; None when there is no usable id."""
    try:
        raw = [p if isinstance(p, bytes) else p.bytes for p in parts[:2]]
        if len(raw) < 2 or raw[0] != proto.BATCH or len(raw[1]) > proto.MAX_JSON_BYTES:
            return None
        body = json.loads(raw[1])
    except (ValueError, AttributeError, TypeError):
        return None
    batch_id = body.get("id") if isinstance(body, dict) else None
    ok = isinstance(batch_id, int) and not isinstance(batch_id, bool) and 0 <= batch_id < 2**63
    return batch_id if ok else None
