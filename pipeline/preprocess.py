"""Preprocess stage: BGR frame -> RGB float32 (3, h, w) at the model input size, until asked for.

Inference pulls work with credits (ZeroMQ guide, credit-based flow control): it tells this stage
how many frames it can take, and this stage sends no more than that. Meanwhile frames wait here:
- lossless frames in a bounded FIFO; when it is full the lossless input is not read, so the ZeroMQ
  high-water marks push back to the capture stages;
- live frames in one slot per stream, where a newer frame replaces an older one (a counted
  drop). So the frame inference gets next is always the newest, however slow inference is.
  Live frames are converted only when they are sent: most of them are dropped when the source is
  faster than the model, and on a small CPU the conversions would slow the model down.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

import numpy as np
import zmq

from glpn.processing import input_size_for, prepare_frames

from . import messages
from .errors import MessageError
from .limits import MAX_INPUT_SIDE
from .stage import Stage


class PreprocessStage(Stage):
    def __init__(
        self,
        *,
        input_sizes: Mapping[str, tuple[int, int] | None],
        live_input: str,
        lossless_input: str,
        output: str,
        credit: str,
        keep_image: bool = False,
        max_pending: int = 4,
        hwm: int = 2,
        **kwargs,
    ) -> None:
        super().__init__("preprocess", **kwargs)
        self.input_sizes = dict(
            input_sizes
        )  # stream id -> (h, w), None: source size rounded to /32
        self.live_input = live_input  # endpoints this stage binds
        self.lossless_input = lossless_input
        self.output = output  # inference input (connect)
        self.credit_endpoint = credit  # inference's credit socket (connect)
        self.keep_image = keep_image  # pass the source frame on (side-by-side view)
        self.max_pending = max_pending  # lossless frames held here at most
        self.hwm = hwm

    def setup(self) -> None:
        self.live_in = self.socket(zmq.PULL, bind=self.live_input, hwm=self.hwm, role="live")
        self.lossless_in = self.socket(
            zmq.PULL, bind=self.lossless_input, hwm=self.hwm, role="lossless"
        )
        self.credit_in = self.socket(zmq.PULL, connect=self.credit_endpoint)
        # Credits bound what is in flight; the HWM is only a backstop above it.
        window = self.max_pending + len(self.input_sizes) + self.hwm
        self.out = self.socket(zmq.PUSH, connect=self.output, hwm=window)

    def loop(self) -> None:
        streams = set(self.input_sizes)
        ended: set[str] = set()
        self.fifo: deque[messages.Message] = deque()  # lossless frames and EOS, in arrival order
        self.slots: dict[str, messages.Message] = {}  # newest live frame per stream
        self.served: dict[str, int] = {}  # stream -> sequence number of its last sent frame
        self.live_eos: set[str] = set()  # live streams whose EOS waits for their slot to empty
        self.credit = 0
        while ended != streams:
            room = len(self.fifo) < self.max_pending
            events = self.poll(
                [
                    (self.credit_in, zmq.POLLIN),
                    (self.live_in, zmq.POLLIN),
                    (self.lossless_in, zmq.POLLIN if room else 0),
                ]
            )
            if self.credit_in in events:
                self._take_credit()
            if self.live_in in events:
                self._drain(self.live_in, None)
            if self.lossless_in in events:
                self._drain(self.lossless_in, self.max_pending)
            ended |= self._flush()
            self.metrics.backlog = len(self.fifo) + len(self.slots)

    def _take_credit(self) -> None:
        while True:
            try:
                raw = self.credit_in.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                n = int(raw)
                if not 0 < n <= 4096:
                    raise ValueError
            except ValueError:
                self.malformed(MessageError(f"credit message is not a small count: {raw[:32]!r}"))
                continue
            self.credit += n

    def _drain(self, sock: zmq.Socket, limit: int | None) -> None:
        def full() -> bool:
            return limit is not None and len(self.fifo) >= limit

        if full():
            return
        for msg in self.incoming(sock, self.input_sizes):
            self._take(msg)
            if full():  # before incoming() reads another message
                return

    def _take(self, msg: messages.Message) -> None:
        """File one received message: EOS and lossless frames in the FIFO, live ones in slots."""
        if msg.kind == "eos":
            if msg.stream in self.slots:
                self.live_eos.add(msg.stream)
            else:
                self.fifo.append(msg)  # after every earlier frame of the stream
            return
        try:
            self._check(msg)
        except MessageError as e:
            self.malformed(e)
            return
        if msg.header["mode"] == "live":
            if msg.stream in self.slots:
                self.metrics.drop("superseded")  # a newer frame of this stream arrived
            self.slots[msg.stream] = msg  # converted when sent
        else:
            self.fifo.append(self._prepare(msg))

    def _input_size(self, msg: messages.Message) -> tuple[int, int]:
        """The model input (h, w) of a frame: its stream's, or its own size rounded to /32."""
        return self.input_sizes[msg.stream] or input_size_for(*msg.header["source_shape"])

    def _check(self, msg: messages.Message) -> None:
        """MessageError unless the frame is an image of its declared size whose model input the
        inference stage takes (it drops larger ones): nothing is converted only to be dropped."""
        image = msg.array("image", dtype="uint8", ndim=3)
        h, w = msg.header["source_shape"]
        if image.shape != (h, w, 3):
            raise MessageError(f"image shape {image.shape} does not match source_shape {[h, w]}")
        ih, iw = self._input_size(msg)
        if max(ih, iw) > MAX_INPUT_SIDE or 3 * ih * iw * 4 > self.max_message_bytes:
            raise MessageError(
                f"a {h}x{w} frame makes a {ih}x{iw} model input: over {MAX_INPUT_SIDE} a side, "
                "or larger than transport.max_message_bytes (set model.input_size)"
            )

    def _prepare(self, msg: messages.Message) -> messages.Message:
        t0 = time.monotonic()
        image = msg.arrays["image"]
        size = self._input_size(msg)
        # (3, h, w) float32 RGB in [0, 1], the same numbers as GLPNImageProcessor
        pixels = np.asarray(prepare_frames([messages.writable(image)], size, bgr=True)[0])
        t1 = time.monotonic()
        self.metrics.record((t1 - t0) * 1000)
        header = messages.stamp(msg.header, "preprocess", t0, t1)
        self.metrics.record_wait(header["wait_ms"]["preprocess"])
        header["input_size"] = list(size)
        arrays = {"pixels": pixels}
        if self.keep_image:
            arrays["image"] = image
        return messages.Message(header, arrays)

    def _next(self) -> messages.Message | None:
        """The frame to send next: round robin over streams, then the oldest capture.

        Oldest-first alone would starve a live stream behind a lossless backlog (a file's queued
        frames are always older than the newest live frame); taking the stream served longest ago
        shares the model between them.
        """
        candidates = list(self.slots.values())
        if self.fifo and self.fifo[0].kind == "frame":
            candidates.append(self.fifo[0])
        if not candidates:
            return None
        return min(candidates, key=lambda m: (self.served.get(m.stream, -1), m.header["t_mono"]))

    def _flush(self) -> set[str]:
        """Send due EOS markers and as many frames as there is credit; returns ended streams."""
        ended: set[str] = set()
        while True:
            while self.fifo and self.fifo[0].kind == "eos":  # needs no credit
                ended.add(self._send_eos(self.fifo.popleft().stream))
            for stream in [s for s in self.live_eos if s not in self.slots]:
                self.live_eos.discard(stream)
                ended.add(self._send_eos(stream))
            msg = self._next() if self.credit > 0 else None
            if msg is None:
                return ended
            if self.fifo and msg is self.fifo[0]:
                self.fifo.popleft()
            else:
                del self.slots[msg.stream]
                msg = self._prepare(msg)
            self.served[msg.stream] = self.metrics.sent
            # Never dropped, live or not: inference asked for it (a credit).
            self.emit(self.out, messages.encode(msg.header, msg.arrays), live=False)
            self.credit -= 1

    def _send_eos(self, stream: str) -> str:
        self.forward_eos(self.out, stream)
        return stream
