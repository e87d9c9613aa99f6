"""outputs.rerun / --rerun, --rerun-connect: Rerun recordings, read back by rerun's own reader
(rerun.chunk.RrdReader), and a live connection received by the `rerun` executable itself.

Depth is compared with the .npy files the same run wrote (--save-depth): exactly.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
import zmq
from pipeline_helpers import eager_factory, read_video, write_video
from test_cli import (
    EXACT,
    RUN_STREAM,
    assert_one_error_line,
    child_env,
    env_without,
    free_tcp_endpoint,
    run_cli,
    write_clip,
)

from glpn.fileio import partial_path
from pipeline import Pipeline
from pipeline.config import RerunConfig
from pipeline.rerun_sink import CLOSE_TIMEOUT_S, RerunSink
from pipeline.results import DepthResult

rr = pytest.importorskip("rerun")  # the robotics extra (part of the test extra)
from rerun.chunk import RrdReader  # noqa: E402

H, W = 90, 130
FX, FY, CX, CY = 120.0, 125.0, 64.5, 44.5
RDF = [3, 2, 5]  # rerun.components.ViewCoordinates: Right, Down, Forward


def read_rrd(path) -> tuple[set[str], dict[str, list[dict]]]:
    """(recording ids, entity path -> its rows as dicts of column -> value), in file order."""
    reader = RrdReader(path)
    ids = {r.recording_id for r in reader.recordings()}
    rows: dict[str, list[dict]] = {}
    for chunk in reader.stream():
        batch = chunk.to_record_batch()
        columns = {  # timestamps as int64 nanoseconds since the epoch
            f.name: c.cast(pa.int64()) if pa.types.is_timestamp(f.type) else c
            for f, c in zip(batch.schema, batch.columns, strict=True)
        }
        rows.setdefault(chunk.entity_path, []).extend(pa.table(columns).to_pylist())
    return ids, rows


def depth_frames(rows: list[dict]) -> dict[int, tuple[np.ndarray, object]]:
    """frame index -> (DepthImage as float32 (H, W), capture_time) of each DepthImage row."""
    out = {}
    for row in rows:
        (fmt,), (buf,), (meter,) = (row["DepthImage:format"], row["DepthImage:buffer"],
                                    row["DepthImage:meter"])  # fmt: skip
        assert meter == 1.0
        depth = np.frombuffer(bytes(buf), "<f4").reshape(fmt["height"], fmt["width"])
        assert row["frame"] not in out, "one DepthImage per frame"
        out[row["frame"]] = (depth, row.get("capture_time"))
    return out


def assert_equals_npy(frames: dict[int, tuple[np.ndarray, object]], folder) -> None:
    saved = sorted(os.listdir(folder))
    assert sorted(frames) == list(range(len(saved)))  # the "frame" timeline: each frame's index
    for i, (depth, _) in frames.items():
        np.testing.assert_array_equal(depth, np.load(os.path.join(folder, f"{i:06d}.npy")))


def assert_pinhole(rows: list[dict], fx: float, fy: float, cx: float, cy: float) -> None:
    (row,) = rows  # logged once: the camera did not change
    (k,), (res,), (xyz,) = (row["Pinhole:image_from_camera"], row["Pinhole:resolution"],
                            row["Pinhole:camera_xyz"])  # fmt: skip
    # column-major 3x3; rerun's pixel centres are at +0.5, OpenCV's at integers
    assert k == [fx, 0, 0, 0, fy, 0, cx + 0.5, cy + 0.5, 1]
    assert res == [W, H] and xyz == RDF


def test_cli_rerun_matches_saved_depth_under_its_pinhole(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "clip.avi"), 4)
    out, rrd = tmp_path / "depth", tmp_path / "out.rrd"
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth", str(out),
                   "--rerun", str(rrd), "--intrinsics", f"{FX},{FY},{CX},{CY}",
                   *EXACT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(rrd) in proc.stdout  # listed with the run's files
    assert not os.path.exists(partial_path(str(rrd)))
    RrdReader(rrd).store()  # the footer (manifest) is there: the file was finished
    ids, rows = read_rrd(rrd)
    assert len(ids) == 1
    assert {e for e in rows if not e.startswith("/__")} == {
        "/source0", "/source0/camera", "/source0/camera/depth"}
    assert rows["/source0"][0]["ViewCoordinates:xyz"] == [RDF]
    assert_equals_npy(depth_frames(rows["/source0/camera/depth"]), out)
    assert_pinhole(rows["/source0/camera"], FX, FY, CX, CY)


def test_pipelines_record_streams_views_and_capture_times_apart(tiny_checkpoint, tmp_path):
    """Two streams (one without a camera: no Pinhole), the view as an Image, capture_time = the
    frame's t_wall; a second pipeline in the same process writes its own recording only."""
    clip_a = write_clip(str(tmp_path / "a.avi"), 4)
    clip_b = write_clip(str(tmp_path / "b.avi"), 3, height=64, width=96)

    def run(name: str, sources: list[dict]) -> dict:
        config = {
            "sources": sources,
            "model": {"checkpoint": tiny_checkpoint},
            "postprocess": {"view": True},
            "outputs": {"files": {"directory": str(tmp_path / name), "png": False},
                        "rerun": {"path": str(tmp_path / f"{name}.rrd"), "image": "view"}},
            "metrics": {"interval_s": 0},
        }  # fmt: skip
        pipe = Pipeline(config, engine_factory=eager_factory(tiny_checkpoint))
        results = {(r.stream, r.index): r for r in pipe}
        assert pipe.summary().outcome == "finished"
        return results

    results = run("one", [{"uri": clip_a, "id": "a", "intrinsics": [FX, FY, CX, CY]},
                          {"uri": clip_b, "id": "b"}])  # fmt: skip
    run("two", [{"uri": clip_b, "id": "c"}])
    ids_one, rows = read_rrd(tmp_path / "one.rrd")
    ids_two, rows_two = read_rrd(tmp_path / "two.rrd")
    assert len(ids_one) == len(ids_two) == 1 and ids_one != ids_two
    assert {e for e in rows_two if not e.startswith("/__")} == {
        "/c", "/c/camera/depth", "/c/camera/image"}
    assert {e for e in rows if not e.startswith("/__")} == {
        "/a", "/a/camera", "/a/camera/depth", "/a/camera/image",
        "/b", "/b/camera/depth", "/b/camera/image"}  # fmt: skip
    assert_pinhole(rows["/a/camera"], FX, FY, CX, CY)
    for stream in ("a", "b"):
        frames = depth_frames(rows[f"/{stream}/camera/depth"])
        assert_equals_npy(frames, tmp_path / "one" / stream)
        for i, (_, t) in frames.items():
            t_wall = results[(stream, i)].header["t_wall"]
            assert t == round(Fraction(t_wall) * 10**9)  # ns since the epoch
        for row in rows[f"/{stream}/camera/image"]:
            (fmt,), (buf,) = row["Image:format"], row["Image:buffer"]
            view = results[(stream, row["frame"])].view
            assert (fmt["width"], fmt["height"]) == (view.shape[1], view.shape[0])
            assert fmt["color_model"] == 4  # rerun.datatypes.ColorModel.BGR
            np.testing.assert_array_equal(np.frombuffer(bytes(buf), np.uint8), view.ravel())
        assert len(rows[f"/{stream}/camera/image"]) == len(frames)


def test_input_frame_is_logged_as_captured(tiny_checkpoint, tmp_path):
    """outputs.rerun.image: input: <stream>/camera/image is each frame as the source delivered it
    (BGR, source size), on the frame's timelines, next to its depth."""
    video = write_video(str(tmp_path / "clip.avi"), 3, W, H, "MJPG")
    config = {
        "sources": [{"uri": video, "id": "a", "intrinsics": [FX, FY, CX, CY]}],
        "model": {"checkpoint": tiny_checkpoint},
        "outputs": {"rerun": {"path": str(tmp_path / "run.rrd"), "image": "input"}},
        "metrics": {"interval_s": 0},
    }
    results = list(Pipeline(config, engine_factory=eager_factory(tiny_checkpoint)))
    assert len(results) == 3 and all(r.view is None for r in results)
    _, rows = read_rrd(tmp_path / "run.rrd")
    frames = read_video(video)
    images = rows["/a/camera/image"]
    assert sorted(row["frame"] for row in images) == [0, 1, 2]
    assert sorted(depth_frames(rows["/a/camera/depth"])) == [0, 1, 2]
    for row in images:
        (fmt,), (buf,) = row["Image:format"], row["Image:buffer"]
        assert (fmt["width"], fmt["height"], fmt["color_model"]) == (W, H, 4)  # 4: BGR
        t_wall = results[row["frame"]].header["t_wall"]
        assert row["capture_time"] == round(Fraction(t_wall) * 10**9)
        got = np.frombuffer(bytes(buf), np.uint8).reshape(H, W, 3)
        np.testing.assert_array_equal(got, frames[row["frame"]])


def _free_port() -> int:
    return int(free_tcp_endpoint().rsplit(":", 1)[1])


def _wait_listening(port: int, proc: subprocess.Popen, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # polling a port with a deadline, not synchronisation by guesswork
    raise AssertionError(f"rerun did not listen on {port}")


def test_live_viewer_receives_every_frame(tiny_checkpoint, tmp_path):
    """The `rerun` executable as the viewer (headless: it saves what it receives)."""
    port, received = _free_port(), tmp_path / "received.rrd"
    viewer = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "rerun"), "--bind", "127.0.0.1",
         "--port", str(port), "--save", str(received)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_listening(port, viewer)
        clip = write_clip(str(tmp_path / "clip.avi"), 3)
        out = tmp_path / "depth"
        proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth",
                       str(out), "--mode", "lossless",
                       "--rerun-connect", f"rerun+http://127.0.0.1:{port}/proxy")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        viewer.send_signal(signal.SIGINT)  # the file has all it received once it exits
        viewer.communicate(timeout=60)
    _, rows = read_rrd(received)
    frames = depth_frames(rows["/source0/camera/depth"])
    # newest wins: frames may be dropped, never altered (here the viewer keeps up: all arrive)
    assert 2 in frames and set(frames) <= set(range(3))  # the last frame is never dropped
    for i, (depth, _) in frames.items():
        np.testing.assert_array_equal(depth, np.load(out / f"{i:06d}.npy"))


def test_live_without_viewer_never_blocks_the_sink(tmp_path):
    """No viewer listening: rerun's own queues fill (~300 MB) and its log() blocks; the sink's
    write never does: the live thread drops to the newest frame, counted, and close() returns."""
    port = _free_port()  # nobody listens
    gauges: dict[str, int] = {}
    sink = RerunSink(RerunConfig(connect=f"rerun+http://127.0.0.1:{port}/proxy"), gauges=gauges)
    depth = np.random.default_rng(0).random((480, 640), dtype=np.float32)
    worst = 0.0
    n = 600  # 1.2 MB each: well past rerun's queues
    for i in range(n):
        t0 = time.monotonic()
        sink.write(DepthResult({"stream": "s", "index": i, "t_wall": 1.7e9 + i}, depth))
        worst = max(worst, time.monotonic() - t0)
    t0 = time.monotonic()
    sink.close()
    assert time.monotonic() - t0 < CLOSE_TIMEOUT_S + 1
    assert worst < 0.05, f"a write took {worst * 1000:.0f} ms"
    dropped = gauges.get("rerun_live_dropped", 0)
    assert dropped > 0 and gauges.get("rerun_live_sent", 0) + dropped <= n


def test_ctrl_c_leaves_a_finished_rrd(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "long.avi"), 100, fps=10.0)  # 10 s when paced
    endpoint, rrd = free_tcp_endpoint(), tmp_path / "out.rrd"
    config = tmp_path / "paced.yaml"
    config.write_text(f"sources:\n  - uri: {clip!r}\n    pace: true\n")
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        proc = subprocess.Popen(
            [sys.executable, RUN_STREAM, "--config", str(config), "--checkpoint", tiny_checkpoint,
             "--publish", endpoint, "--save-depth", str(tmp_path / "depth"), "--rerun", str(rrd)],
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert sub.poll(120_000), "no frame published"  # frames are flowing: interrupt now
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert not os.path.exists(partial_path(str(rrd)))
    RrdReader(rrd).store()  # finished: footer written
    _, rows = read_rrd(rrd)
    frames = depth_frames(rows["/source0/camera/depth"])
    assert 1 <= len(frames) < 100
    assert_equals_npy(frames, tmp_path / "depth")


def test_missing_library_and_bad_options_are_one_clear_line(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "clip.avi"), 2)
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint,
                   "--rerun", str(tmp_path / "out.rrd"),
                   env=env_without(tmp_path / "env", "rerun"))  # fmt: skip
    assert_one_error_line(proc, 2, "--rerun", "pip install depthstream[robotics]")
    assert sorted(os.listdir(tmp_path)) == ["clip.avi", "env"]
    bad = run_cli("--source", clip, "--rerun", str(tmp_path / "out.mcap"))
    assert_one_error_line(bad, 2, "--rerun", "must end in .rrd")
    bad = run_cli("--source", clip, "--rerun-connect", "http://127.0.0.1:9876")
    assert_one_error_line(bad, 2, "--rerun-connect", "not a Rerun viewer URL")
