"""Inference stage: micro-batches frames across streams and runs the one model instance.

The engine is built inside this thread (engines are not thread-safe; detectron2's AsyncPredictor
does the same) and every device call happens here. A batch closes at `max_batch` frames or
`max_wait_ms` after its first frame, whichever comes first, or at once when a stream ends. Frames
are pulled from preprocess with credits: after a batch, exactly as many new frames are asked for as
were consumed, so at most `max_batch` (+ `prefetch` for lossless-only pipelines) frames are ever
in flight, and a live frame is picked as late (as fresh) as possible.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zmq

from glpn.hardware import thread_page_faults

from . import messages
from .errors import MessageError
from .limits import MAX_INPUT_SIDE
from .stage import Stage

log = logging.getLogger(__name__)

# Page faults per batch above which the engine is re-faulting memory it freed: on
# glibc, the inference thread is in a secondary malloc arena (see glpn.hardware.tune_cpu_allocator).
FAULT_WARN_PAGES = 8192  # 32 MiB of 4 KiB pages
FAULT_WARMUP_BATCHES = 3  # the first batches fault in weights, workspaces and the heap itself
# Model inputs preprocess makes (glpn.processing.input_size_for, config input sizes): sides are
# multiples of this, at least this. Anything else only a foreign peer sends; GLPN refuses it.
INPUT_DIVISOR = 32

EngineFactory = Callable[[], Any]  # returns a callable (B, 3, h, w) float32 -> (B, h, w) metres


class InferenceStage(Stage):
    def __init__(
        self,
        engine_factory: EngineFactory,
        *,
        streams: Sequence[str],
        input: str,
        credit: str,
        output: str,
        max_batch: int = 1,
        max_wait_ms: float = 5.0,
        prefetch: int = 0,
        hwm: int = 2,
        **kwargs,
    ) -> None:
        super().__init__("inference", **kwargs)
        self.engine_factory = engine_factory
        self.streams = set(streams)
        self.input = input  # bound here
        self.credit_endpoint = credit  # bound here; preprocess connects
        self.output = output  # postprocess input (connect)
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        # Extra frames to have queued while a batch runs; only for lossless-only pipelines, as a
        # queued live frame would grow stale while it waits.
        self.prefetch = prefetch
        self.hwm = hwm
        self.engine: Any = None
        self.description = ""  # engine.describe(), once built
        self.batches = 0
        self.fault_warned = False  # the page-fault warning is given once

    def setup(self) -> None:
        self.engine = self.engine_factory()
        describe = getattr(self.engine, "describe", None)
        self.description = describe() if callable(describe) else type(self.engine).__name__
        self.max_depth = float(getattr(self.engine, "max_depth", 0.0)) or None
        # Credits bound what preprocess sends (EOS markers need none); the HWM also bounds what a
        # foreign peer could push here.
        window = self.max_batch + self.prefetch + len(self.streams) + self.hwm
        self.inp = self.socket(zmq.PULL, bind=self.input, hwm=window, role="input")
        self.credit = self.socket(zmq.PUSH, bind=self.credit_endpoint, role="credit")
        self.out = self.socket(zmq.PUSH, connect=self.output, hwm=self.hwm)

    def teardown(self) -> None:
        self.engine = None  # free device memory in this thread

    def loop(self) -> None:
        ended: set[str] = set()
        pending: list[messages.Message] = []
        self.owed = self.max_batch + self.prefetch  # credits not yet sent to preprocess
        deadline = 0.0
        while ended != self.streams:
            timeout = None
            if pending:
                timeout = max(0.0, (deadline - time.monotonic()) * 1000)
            events = self.poll(
                [(self.inp, zmq.POLLIN), (self.credit, zmq.POLLOUT if self.owed else 0)], timeout
            )
            if self.credit in events:
                self._grant()
            eos: list[str] = []
            if self.inp in events:
                for msg in self.incoming(self.inp, self.streams):
                    if msg.kind == "eos":
                        eos.append(msg.stream)
                        break  # stop draining at an EOS: its stream's frames go first
                    try:
                        self._check(msg)
                    except MessageError as e:
                        self.malformed(e)  # dropped here, not in a batch with good frames
                        continue
                    if not pending:
                        deadline = time.monotonic() + self.max_wait_ms / 1000
                    pending.append(msg)
            # Full batches run at once; a partial one at its deadline or when its stream ends.
            while pending and (
                len(pending) >= self.max_batch or eos or time.monotonic() >= deadline
            ):
                n = self._run_next(pending)
                del pending[:n]
                self.owed += n
                self._grant()  # ask for more frames while the next batch runs
                deadline = time.monotonic() + self.max_wait_ms / 1000
            self.metrics.backlog = len(pending)
            for stream in eos:
                self.forward_eos(self.out, stream)
                ended.add(stream)

    def _check(self, msg: messages.Message) -> None:
        check_pixels(msg, getattr(self.engine, "input_size", None))

    def _grant(self) -> None:
        if self.owed:
            try:
                self.credit.send(str(self.owed).encode(), zmq.NOBLOCK)
                self.owed = 0
            except zmq.Again:  # preprocess not connected yet: the poll retries
                pass

    def _check_faults(self, faults: int) -> None:
        """Count the engine's page faults in this thread; warn once if it keeps re-faulting."""
        if self.batches < FAULT_WARMUP_BATCHES:
            return
        self.metrics.events["page_faults"] += faults
        if faults > FAULT_WARN_PAGES and not self.fault_warned:
            self.fault_warned = True
            log.warning(
                "inference: the engine page-faulted %d MiB back in during one batch; the C "
                "allocator returns its freed activations to the OS, costing CPU time on every "
                "call. Call glpn.hardware.tune_cpu_allocator() before any thread allocates (before "
                "the first torch op), or start Python with GLIBC_TUNABLES=glibc.malloc.arena_max=1",
                faults * os.sysconf("SC_PAGE_SIZE") >> 20,
            )

    def _run_next(self, frames: list[messages.Message]) -> int:
        """Run the first batch (consecutive same-size frames, <= max_batch); returns its size."""
        shape = frames[0].arrays["pixels"].shape
        end = 1
        while (
            end < len(frames)
            and end < self.max_batch
            and frames[end].arrays["pixels"].shape == shape
        ):
            end += 1
        self._run_batch(frames[:end])
        return end

    def _run_batch(self, frames: list[messages.Message]) -> None:
        pixels = [m.arrays["pixels"] for m in frames]  # checked when received
        n = len(pixels)
        # (B, 3, h, w); a single frame goes as a view of its message (engines only read it).
        # Engines built for fixed batch sizes pad partial batches themselves (glpn.engine does).
        batch = np.stack(pixels) if n > 1 else messages.writable(pixels[0][None])
        faults0 = thread_page_faults()
        t0 = time.monotonic()
        depth = self.engine(batch)
        if not isinstance(depth, np.ndarray):  # a torch tensor from a custom engine
            depth = depth.detach().float().cpu().numpy()
        t1 = time.monotonic()
        if faults0 is not None:
            self._check_faults(thread_page_faults() - faults0)
        ms = (t1 - t0) * 1000
        expected = (n, *batch.shape[2:])
        if depth.ndim == 4 and depth.shape[1] == 1:
            depth = depth[:, 0]
        if depth.shape != expected:
            raise RuntimeError(f"engine returned depth of shape {depth.shape}, expected {expected}")
        depth = np.ascontiguousarray(depth, dtype=np.float32)
        self.batches += 1
        self.metrics.record(ms, n=n)
        self.metrics.events["batches"] += 1
        for msg, d in zip(frames, depth):
            out = depth_message(msg, d, t0, t1, batch=n, max_depth=self.max_depth)
            self.metrics.record_wait(out.header["wait_ms"]["inference"])
            live = msg.header["mode"] == "live"
            self.emit(self.out, messages.encode(out.header, out.arrays), live=live)


def check_pixels(msg: messages.Message, fixed: tuple[int, int] | None = None) -> None:
    """MessageError unless the frame's pixels are an input an engine runs: (3, h, w) float32,
    sides multiples of INPUT_DIVISOR, `fixed` (the engine's input size) if given. An engine error
    on a frame from a peer would end the run; a dropped frame ends nothing."""
    pixels = msg.array("pixels", dtype="float32", ndim=3)
    c, h, w = pixels.shape
    ok = c == 3 and h % INPUT_DIVISOR == 0 and w % INPUT_DIVISOR == 0
    if not ok or max(h, w) > MAX_INPUT_SIDE or (fixed and (h, w) != tuple(fixed)):
        raise MessageError(
            f"pixels of shape {pixels.shape} are not a model input (3, h, w) with h and w "
            f"multiples of {INPUT_DIVISOR} up to {MAX_INPUT_SIDE}"
            + (f", {fixed[0]}x{fixed[1]} for this engine" if fixed else "")
        )


def depth_message(
    msg: messages.Message,
    depth: np.ndarray,
    t0: float,
    t1: float,
    *,
    batch: int,
    max_depth: float | None,
) -> messages.Message:
    """What inference sends postprocess for one frame: its header stamped with the work from t0
    to t1 (the batch's), the batch size and the engine's max_depth if known; the depth (h, w),
    and the source image if the frame carried one. The in-process stage and the worker pool
    both build it here."""
    header = messages.stamp(msg.header, "inference", t0, t1)
    header["batch"] = batch
    if max_depth:
        header["max_depth"] = max_depth
    arrays = {"depth": depth}
    if "image" in msg.arrays:
        arrays["image"] = msg.arrays["image"]
    return messages.Message(header, arrays)
