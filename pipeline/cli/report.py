"""What a run shows: log lines that do not tear the progress bar, the bar (frames, fps, ETA,
drops), and the results at the end (summary table, frames per stream, where the outputs are)."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from pipeline.config import Config, SourceConfig
from pipeline.summary import Summary


def expected_frames(source: SourceConfig) -> int | None:
    """Frames a file or image source will deliver (the progress bar's total); None if unknown."""
    import cv2

    from pipeline.sources import image_files, resolve_kind

    kind = resolve_kind(source)
    count = None
    if kind == "images":
        count = len(image_files(source.uri))
    elif kind == "file":
        path = source.uri[7:] if source.uri.lower().startswith("file://") else source.uri
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT) if cap.isOpened() else 0
        cap.release()
        count = int(n) if n and n > 0 else None
    if count is not None and source.max_frames:
        count = min(count, source.max_frames)
    return count


class Progress:
    """A tqdm bar over the frames that came in: each one is delivered or dropped (live mode), so
    it counts both and ends at 100%. With a total and ETA when every source's length is known,
    else a live status line (frames, fps, end-to-end latency, drops). Updated in the sink thread;
    drawn only on a terminal (log lines carry the status elsewhere)."""

    STATUS_EVERY_S = 0.5  # how often drops and latency are read from the pipeline's metrics

    def __init__(self, config: Config) -> None:
        from tqdm import tqdm

        self.enabled = sys.stderr.isatty()
        # Frames per source, probed only for the bar (None: unknown, or no bar to draw).
        self.counts = [expected_frames(s) if self.enabled else None for s in config.sources]
        known = all(c is not None for c in self.counts)
        total = sum(self.counts) if known else None
        several = len(config.sources) > 1
        # No monitor thread: it would start before Pipeline.start() tunes the allocator, and
        # a thread that allocates before that keeps its own malloc arena (glpn.hardware).
        tqdm.monitor_interval = 0
        self.bar = tqdm(
            total=total,
            desc=f"{len(config.sources)} streams" if several else config.sources[0].id,
            unit="frame",
            dynamic_ncols=True,
            disable=not self.enabled,
            file=sys.stderr,
        )
        self.live = total is None
        self.pipe: Any = None  # the Pipeline, once made: its metrics give drops and latency
        self._dropped = 0
        self._next_status = 0.0

    def update(self, result: Any) -> None:
        self.bar.update(1)
        now = time.monotonic()
        if self.enabled and self.pipe is not None and now >= self._next_status:
            self._next_status = now + self.STATUS_EVERY_S
            self._show(self.pipe.metrics())

    def _show(self, metrics: dict[str, dict[str, Any]]) -> None:
        dropped = sum(s["dropped"] for s in metrics.values())
        self.bar.update(dropped - self._dropped)  # dropped frames are done too
        self._dropped = dropped
        if self.live:
            e2e = metrics.get("sink", {}).get("e2e_ms", {})
            p50, p95 = e2e.get("p50", 0), e2e.get("p95", 0)
            status = f"e2e p50 {p50:.0f} p95 {p95:.0f} ms, dropped {dropped}"
        else:
            status = f"dropped {dropped}" if dropped else ""
        self.bar.set_postfix_str(status, refresh=False)

    def close(self, summary: Summary | None = None) -> None:
        """Count the last drops (the bar ends at what came in), then close the bar."""
        if summary is not None and self.enabled:
            self._show(summary.stages)
        self.bar.close()


class InputSizes:
    """The model input each stream ran at, read from its results (preprocess stamps it in the
    header): with auto sizing it is each frame's size rounded down to multiples of 32, so streams
    may differ, and a source may change size while it runs."""

    def __init__(self, config: Config) -> None:
        # A stream whose size comes from no config key: auto (GLPNImageProcessor's rule).
        model = config.model.input_size
        self.auto = {s.id: (s.input_size or model) is None for s in config.sources}
        self.seen: dict[str, dict[tuple[int, int], tuple[int, int]]] = {}  # input -> source size

    def update(self, result: Any) -> None:
        size = result.header.get("input_size")
        if size is not None:  # called in the sink thread; read once the run is over
            sizes = self.seen.setdefault(result.stream, {})
            sizes.setdefault(tuple(size), tuple(result.header["source_shape"]))

    def as_dict(self) -> dict[str, list[str]]:
        """stream -> the input sizes it ran at, "HxW"."""
        return {sid: [f"{h}x{w}" for h, w in sizes] for sid, sizes in self.seen.items()}

    def line(self) -> str:
        """`model input: demo 224x320 (auto: 240x320 frames rounded down to multiples of 32)`."""
        parts = []
        for sid, sizes in self.seen.items():
            for (h, w), (sh, sw) in sizes.items():
                how = (
                    f"auto: {sh}x{sw} frames rounded down to multiples of 32"
                    if self.auto.get(sid)
                    else f"set; frames {sh}x{sw}"
                )
                parts.append(f"{sid} {h}x{w} ({how})")
        return "model input: " + ("; ".join(parts) if parts else "no frame reached the model")


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(level: str) -> None:
    if level != "debug":
        # FFmpeg's own lines ("[tcp @ 0x...] Connection refused") repeat what the pipeline reports
        # in its words (read when OpenCV first opens an FFmpeg capture).
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    import cv2

    handler = _TqdmHandler()
    fmt = "%(asctime)s %(levelname)s %(message)s"
    if level == "debug":
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    else:
        # OpenCV's own "[ WARN:0@..." lines repeat what the pipeline reports in its words.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    handler.setFormatter(logging.Formatter(fmt, "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))


def output_lines(summary: Summary, config: Config, endpoints: dict[str, str]) -> list[str]:
    """Where the results are, for the end of the run: only what this run wrote completely (a run
    stopped before its first frame, or whose video failed, lists none)."""
    lines = [f"{label}: {path}" for label, path in summary.outputs.items()]
    if config.outputs.zmq is not None:
        lines.append(f"published on: {endpoints.get('publish', config.outputs.zmq.endpoint)}")
    return lines


def print_results(
    summary: Summary, config: Config, endpoints: dict[str, str], sizes: InputSizes
) -> None:
    lines = summary.format().splitlines()
    # After the headline, whose engine description says "any size" when sizes are per stream.
    print("\n".join([*lines[:1], sizes.line(), *lines[1:]]))
    # Frames read by this run's captures; an external stream's (another process or host) are
    # counted where they are read.
    captured = {sid: summary.stages[f"capture:{sid}"].get("processed", 0)
                for sid in summary.frames if f"capture:{sid}" in summary.stages}  # fmt: skip
    print("frames per stream: " + ", ".join(
        f"{sid} {captured[sid]} in / {n} out" if sid in captured else f"{sid} {n} out"
        for sid, n in summary.frames.items()
    ))  # fmt: skip
    for line in output_lines(summary, config, endpoints):
        print(line)
    sys.stdout.flush()
