"""The ingest stage (pipeline.ingest) against a raw peer on its port: lossless frames lost on the
way are counted, a camera restart is not a loss, and a peer's position text that is not UTF-8
reaches the sinks as text they can write."""

from __future__ import annotations

import time

import zmq
from pipeline_helpers import LogWatch, free_port

from glpn.testing import moving_scene
from pipeline import Pipeline, framecodec, messages


def test_lost_lossless_frames_are_counted_and_position_text_is_utf8():
    port = free_port()
    cfg = {
        "sources": [{"uri": "remote:cam0", "id": "cam0", "kind": "external", "mode": "lossless"}],
        "ingest": {"endpoint": f"tcp://127.0.0.1:{port}"},
        "model": {"backend": "simulate", "simulate_ms": 2},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, log_summary=False)
    results = pipe.results(timeout=15)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(pipe.endpoints["ingest"])
    image = moving_scene(0, 32, 48)

    def frame(index: int) -> list:
        header = {"kind": "frame", "stream": "cam0", "index": index, "t_mono": 0.0,
                  "t_wall": time.time(), "mode": "lossless", "source_shape": [32, 48],
                  "position": {"file": "caf\udce9\n.mp4", "frame": index}}  # fmt: skip
        return framecodec.encode(header, image, "raw")

    try:
        with LogWatch("pipeline.ingest", "lossless frames lost on the way") as warned:
            # 0, 1, then 5: 2..4 lost on the way; 6; then 0 again: the camera restarted.
            for index in (0, 1, 5, 6, 0, 1, 9):
                push.send_multipart(frame(index))
            push.send_multipart(messages.encode(messages.eos_header("cam0")))
            got = list(results)
            assert warned.seen.wait(5)
    finally:
        push.close(0)
        ctx.term()
    assert [r.index for r in got] == list(range(7))
    assert [r.header["position"]["remote_index"] for r in got] == [0, 1, 5, 6, 0, 1, 9]
    text = got[0].header["position"]["file"]
    assert text == "caf??.mp4"  # the lone surrogate and the newline replaced
    text.encode("utf-8")  # what FileSink's index.csv does with it: no UnicodeEncodeError
    summary = pipe.join()
    assert summary.outcome == "finished"
    assert summary.stages["ingest"]["drops"] == {"lost_in_transit": 3 + 7}
