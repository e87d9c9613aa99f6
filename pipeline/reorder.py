"""The worker pool's order per stream: results of several workers leave as frames arrived.

Workers answer in any order (a fast worker overtakes a slow one, a dead worker's frames are redone
later). Per stream, as detectron2's AsyncPredictor re-orders results by index:
- lossless frames are numbered as they arrive; a result waits here until every earlier frame's
  result has left, so they leave exactly once, in arrival order;
- live frames are never held back: a result leaves at once unless a newer frame's result already
  left, in which case it is dropped (a live view never goes backwards).
A stream's end (EOS) may leave once every frame that arrived before it was settled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Stream:
    lossless_in: int = 0  # lossless frames numbered so far (the next one's number)
    lossless_out: int = 0  # the number of the next lossless result to leave
    held: dict[int, Any] = field(default_factory=dict)  # number -> result, waiting for earlier
    live_in: int = 0  # live frames numbered so far
    live_out: int = -1  # number of the newest live result that left
    open: int = 0  # frames taken and not yet settled (left or dropped)


class Reorder:
    """Per-stream ordering of results; single-threaded (the pool stage's thread)."""

    def __init__(self) -> None:
        self._streams: dict[str, _Stream] = {}

    def _get(self, stream: str) -> _Stream:
        return self._streams.setdefault(stream, _Stream())

    def arrive(self, stream: str, live: bool) -> int:
        """Number a frame as it arrives (lossless and live frames are numbered apart)."""
        s = self._get(stream)
        s.open += 1
        if live:
            s.live_in += 1
            return s.live_in - 1
        s.lossless_in += 1
        return s.lossless_in - 1

    def done(self, stream: str, seq: int, live: bool, result: Any) -> tuple[list[Any], bool]:
        """A frame's result: (results that may leave now, in order; False if this one is a live
        result older than one that already left, and was dropped)."""
        s = self._get(stream)
        if live:
            s.open -= 1
            if seq < s.live_out:
                return [], False
            s.live_out = seq
            return [result], True
        s.held[seq] = result
        out = []
        while s.lossless_out in s.held:
            out.append(s.held.pop(s.lossless_out))
            s.lossless_out += 1
        s.open -= len(out)
        return out, True

    def drop(self, stream: str) -> None:
        """A live frame given up on (superseded, its worker lost): settled without a result.
        Lossless frames are never dropped: the run fails instead."""
        self._get(stream).open -= 1

    def settled(self, stream: str) -> bool:
        """Every frame of `stream` taken so far has left or was dropped (its EOS may go)."""
        return self._get(stream).open == 0

    @property
    def held(self) -> int:
        """Results waiting for an earlier one, over all streams."""
        return sum(len(s.held) for s in self._streams.values())
