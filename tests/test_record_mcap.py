"""outputs.record / --record: ROS 2 MCAP files, read back by mcap + mcap-ros2-support's decoder.

Depth messages are compared with the .npy files the same run wrote (--save-depth): exactly. Replay
with `ros2 bag play` needs a ROS 2 install and is not tested here; the files use the "ros2" profile,
"ros2msg" schemas and CDR messages that rosbag2's MCAP storage reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from fractions import Fraction

import numpy as np
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
from pipeline import Pipeline, load_config
from pipeline.config import RecordConfig
from pipeline.record_mcap import RecordSink
from pipeline.results import DepthResult
from pipeline.topology import Addresses, Topology

pytest.importorskip("mcap_ros2")  # the robotics extra (part of the test extra)
from mcap.exceptions import McapError  # noqa: E402
from mcap.reader import NonSeekingReader, make_reader  # noqa: E402
from mcap_ros2.decoder import DecoderFactory  # noqa: E402

H, W = 90, 130
FX, FY, CX, CY = 120.0, 125.0, 64.5, 44.5


def decode(path, *, seeking: bool = True) -> list[tuple]:
    """(topic, schema name, log_time, publish_time, sequence, decoded ROS message) per message,
    in file order. seeking=False streams the file (no index needed): what reads a killed run's."""
    out = []
    with open(path, "rb") as f:
        if seeking:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            assert reader.get_summary() is not None  # finished: summary and index written
        else:
            reader = NonSeekingReader(f, decoder_factories=[DecoderFactory()])
        try:
            for schema, channel, m, msg in reader.iter_decoded_messages(log_time_order=False):
                out.append((channel.topic, schema.name, m.log_time, m.publish_time, m.sequence,
                            msg))  # fmt: skip
        except McapError:  # the truncated last record of a killed run's file
            if seeking:
                raise
    return out


def on(messages: list[tuple], topic: str) -> list:
    return [m for m in messages if m[0] == topic]


def depth_of(msg) -> np.ndarray:
    assert (msg.encoding, msg.is_bigendian, msg.step) == ("32FC1", 0, msg.width * 4)
    return np.frombuffer(msg.data, "<f4").reshape(msg.height, msg.width)


def stamp_ns(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def ns(t_wall: float) -> int:
    """The float's exact value in nanoseconds, rounded."""
    return round(Fraction(t_wall) * 10**9)


def assert_depth_equals_npy(messages: list[tuple], folder, topic: str) -> int:
    """Every depth message on `topic` equals its frame's .npy exactly (frames numbered from 0,
    in order: the sequence numbers); returns how many there were."""
    depth = on(messages, topic)
    for _, schema, log_time, publish_time, seq, msg in depth:
        assert schema == "sensor_msgs/msg/Image"
        assert log_time == publish_time == stamp_ns(msg)
        npy = np.load(os.path.join(folder, f"{seq:06d}.npy"))
        assert np.isfinite(npy).all() and (npy > 0).all()  # so NaN-mapping changes nothing
        np.testing.assert_array_equal(depth_of(msg), npy)
    return len(depth)


def test_pipeline_records_depth_camera_info_and_view(tiny_checkpoint, tmp_path):
    clip_a = write_clip(str(tmp_path / "a.avi"), 5)
    clip_b = write_clip(str(tmp_path / "b.avi"), 3, height=64, width=96)
    record = tmp_path / "rec" / "run.mcap"
    config = {
        "sources": [
            {"uri": clip_a, "id": "a", "intrinsics": [FX, FY, CX, CY], "frame_id": "cam_a"},
            {"uri": clip_b, "id": "b"},
        ],
        "model": {"checkpoint": tiny_checkpoint},
        "postprocess": {"view": True},
        "outputs": {
            "files": {"directory": str(tmp_path / "files"), "png": False},
            "record": {"path": str(record), "image": "view", "points": True},
        },
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(config, engine_factory=eager_factory(tiny_checkpoint))
    results = {(r.stream, r.index): r for r in pipe}
    summary = pipe.summary()
    assert summary.outcome == "finished"
    assert os.listdir(record.parent) == ["run.mcap"]  # renamed when complete; no partial left
    assert str(record) in summary.outputs.values()

    messages = decode(record)
    assert {m[0] for m in messages} == {
        "/depthstream/a/depth", "/depthstream/a/camera_info", "/depthstream/a/image",
        "/depthstream/a/points",
        "/depthstream/b/depth", "/depthstream/b/image",  # b: no intrinsics, no camera, no points
    }  # fmt: skip
    clouds = on(messages, "/depthstream/a/points")
    assert [m[4] for m in clouds] == list(range(5))
    for *_, seq, cloud in clouds:  # the points postprocess made for the frame
        xyz = np.frombuffer(cloud.data, "<f4").reshape(-1, 3)
        assert cloud.width == H * W and cloud.header.frame_id == "cam_a"
        np.testing.assert_array_equal(xyz, results[("a", seq)].points)
    for stream, frames in (("a", 5), ("b", 3)):
        folder = tmp_path / "files" / stream
        assert assert_depth_equals_npy(messages, folder, f"/depthstream/{stream}/depth") == frames
        for topic in (f"/depthstream/{stream}/depth", f"/depthstream/{stream}/image"):
            msgs = on(messages, topic)
            assert [m[4] for m in msgs] == list(range(frames))
            for *_, seq, msg in msgs:
                r = results[(stream, seq)]
                t = ns(r.header["t_wall"])  # the capture wall-clock time
                assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(t, 10**9)
                assert msg.header.frame_id == ("cam_a" if stream == "a" else "b_optical")
                if topic.endswith("image"):
                    assert (msg.encoding, msg.step) == ("bgr8", msg.width * 3)
                    view = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3)
                    np.testing.assert_array_equal(view, r.view)
    infos = on(messages, "/depthstream/a/camera_info")
    assert len(infos) == 5
    for *_, seq, info in infos:
        assert stamp_ns(info) == ns(results[("a", seq)].header["t_wall"])
        assert (info.width, info.height, info.distortion_model) == (W, H, "plumb_bob")
        assert info.k == [FX, 0, CX, 0, FY, CY, 0, 0, 1]  # depth is at the source size
        assert info.p == [FX, 0, CX, 0, 0, FY, CY, 0, 0, 0, 1, 0]
        assert info.r == [1, 0, 0, 0, 1, 0, 0, 0, 1] and info.d == [0] * 5


def test_pipeline_records_the_input_frame_as_captured(tiny_checkpoint, tmp_path):
    """outputs.record.image: input: .../image is each frame as the source delivered it (bgr8,
    source size), with no colourised view made for it; the frame reaches the sinks only then."""
    video = write_video(str(tmp_path / "clip.avi"), 3, W, H, "MJPG")
    record = tmp_path / "run.mcap"
    config = {
        "sources": [{"uri": video, "id": "a", "intrinsics": [FX, FY, CX, CY]}],
        "model": {"checkpoint": tiny_checkpoint},
        "outputs": {"record": {"path": str(record), "image": "input"}},
        "metrics": {"interval_s": 0},
    }
    for image, travels in (("none", False), ("view", False), ("input", True)):
        cfg = load_config({**config, "outputs": {"record": {"path": "x.mcap", "image": image}}})
        topo = Topology.from_config(cfg, Addresses(cfg.transport, "u"), engine_factory=object)
        assert topo["preprocess"].options["keep_image"] is travels
        assert topo["postprocess"].options["forward_image"] is travels
    results = list(Pipeline(config, engine_factory=eager_factory(tiny_checkpoint)))
    assert [r.index for r in results] == [0, 1, 2]
    assert all(r.view is None for r in results)  # the input needs no view
    frames = read_video(video)
    images = on(decode(record), "/depthstream/a/image")
    assert [m[4] for m in images] == [0, 1, 2]
    for _, schema, log_time, _, seq, msg in images:
        assert schema == "sensor_msgs/msg/Image" and log_time == stamp_ns(msg)
        assert stamp_ns(msg) == ns(results[seq].header["t_wall"])
        assert (msg.encoding, msg.is_bigendian, msg.step) == ("bgr8", 0, W * 3)
        assert (msg.height, msg.width, msg.header.frame_id) == (H, W, "a_optical")
        got = np.frombuffer(msg.data, np.uint8).reshape(H, W, 3)
        np.testing.assert_array_equal(got, frames[seq])


def test_point_cloud_and_invalid_depth_read_back(tmp_path):
    """The sink on its own: PointCloud2 with packed rgb, and REP-118 NaN for invalid depth."""
    depth = np.array([[1.5, -1.0, np.inf], [0.0, np.nan, 3.0]], np.float32)
    points = np.array([[0.1, -0.2, 1.5], [0.3, 0.4, 3.0]], np.float32)
    rgb = np.array([[255, 128, 1], [0, 2, 250]], np.uint8)
    header = {"stream": "s", "index": 0, "t_wall": 1_700_000_000.25,
              "camera": {"fx": 2.0, "fy": 2.0, "cx": 1.0, "cy": 0.5, "width": 3, "height": 2}}
    result = DepthResult(header, depth, None, points=points, points_rgb=rgb)
    sink = RecordSink(RecordConfig(str(tmp_path / "p.mcap"), points=True), ["s"])
    sink.write(result)
    sink.close()
    messages = decode(tmp_path / "p.mcap")
    assert [m[0] for m in messages] == [
        "/depthstream/s/depth", "/depthstream/s/camera_info", "/depthstream/s/points"]
    got = depth_of(messages[0][5])
    np.testing.assert_array_equal(got, [[1.5, np.nan, np.nan], [np.nan, np.nan, 3.0]])
    cloud = messages[2][5]
    assert (cloud.height, cloud.width, cloud.is_dense, cloud.is_bigendian) == (1, 2, True, False)
    assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
        ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1)]
    assert (cloud.point_step, cloud.row_step) == (16, 32)
    data = np.frombuffer(cloud.data, [("xyz", "<f4", 3), ("rgb", "<u4")])
    np.testing.assert_array_equal(data["xyz"], points)
    packed = data["rgb"]  # PCL's packing: 0x00RRGGBB in the float's bits
    np.testing.assert_array_equal(
        np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], 1), rgb)
    assert cloud.header.stamp.sec == 1_700_000_000 and cloud.header.stamp.nanosec == 250_000_000
    assert cloud.header.frame_id == "s_optical"


def test_auto_compression_is_lz4_with_point_clouds_zstd_without(tmp_path):
    """Clouds barely compress (zstd saves 8% of one for ~10 ms a VGA frame): auto picks lz4."""
    header = {"stream": "s", "index": 0, "t_wall": 1_700_000_000.0,
              "camera": {"fx": 2.0, "fy": 2.0, "cx": 1.0, "cy": 0.5, "width": 3, "height": 2}}
    result = DepthResult(header, np.ones((2, 3), np.float32), None,
                         points=np.ones((6, 3), np.float32))  # fmt: skip
    for points, compression, chunks in ((False, "auto", "zstd"), (True, "auto", "lz4"),
                                         (True, "zstd", "zstd"), (True, "none", "")):  # fmt: skip
        path = tmp_path / f"{points}-{compression}.mcap"
        sink = RecordSink(RecordConfig(str(path), points=points, compression=compression), ["s"])
        sink.write(result)
        sink.close()
        with open(path, "rb") as f:
            summary = make_reader(f).get_summary()
        assert {c.compression for c in summary.chunk_indexes} == {chunks}
        assert len(decode(path)) == (3 if points else 2)  # depth, camera_info (, points)


def test_cli_record_matches_saved_depth(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "clip.avi"), 4)
    out, record = tmp_path / "depth", tmp_path / "out.mcap"
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--save-depth", str(out),
                   "--record", str(record), "--intrinsics", f"{FX},{FY},{CX},{CY}",
                   *EXACT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(record) in proc.stdout  # listed with the run's files
    messages = decode(record)
    assert assert_depth_equals_npy(messages, out, "/depthstream/source0/depth") == 4
    infos = on(messages, "/depthstream/source0/camera_info")
    assert len(infos) == 4 and infos[0][5].k == [FX, 0, CX, 0, FY, CY, 0, 0, 1]


def _start_paced(tmp_path, tiny_checkpoint, clip: str, endpoint: str, record) -> subprocess.Popen:
    config = tmp_path / "paced.yaml"  # replayed at its frame rate, like a camera
    config.write_text(f"sources:\n  - uri: {json.dumps(clip)}\n    pace: true\n")
    return subprocess.Popen(
        [sys.executable, RUN_STREAM, "--config", str(config), "--checkpoint", tiny_checkpoint,
         "--publish", endpoint, "--save-depth", str(tmp_path / "depth"), "--record", str(record)],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_ctrl_c_leaves_a_complete_recording(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "long.avi"), 100, fps=10.0)  # 10 s when paced
    endpoint, record = free_tcp_endpoint(), tmp_path / "out.mcap"
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        proc = _start_paced(tmp_path, tiny_checkpoint, clip, endpoint, record)
        try:
            assert sub.poll(120_000), "no frame published"  # frames are flowing: interrupt now
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert not os.path.exists(partial_path(str(record)))
    saved = len(os.listdir(tmp_path / "depth"))
    assert 1 <= saved < 100
    messages = decode(record)  # indexed, complete file under its final name
    assert assert_depth_equals_npy(messages, tmp_path / "depth", "/depthstream/source0/depth") == (
        saved
    )


def test_killed_run_leaves_a_partial_file_readable_without_index(tiny_checkpoint, tmp_path):
    """SIGKILL: nothing can finish the file. NAME.partial.mcap stays; streamed (no index), it
    gives every frame in the chunks written (~1 MiB each) before the kill, equal to the .npy."""
    clip = write_clip(str(tmp_path / "long.avi"), 200, height=240, width=320, fps=20.0)
    endpoint, record = free_tcp_endpoint(), tmp_path / "out.mcap"
    with zmq.Context() as ctx, ctx.socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(endpoint)
        proc = _start_paced(tmp_path, tiny_checkpoint, clip, endpoint, record)
        try:
            index = -1
            while index < 12:  # 300 KiB per frame: the first chunks are on disk by now
                assert sub.poll(120_000), "no frame published"
                index = json.loads(sub.recv_multipart()[1])["index"]
        finally:
            proc.kill()  # SIGKILL
            proc.communicate(timeout=60)
    assert not record.exists()
    partial = partial_path(str(record))
    with pytest.raises(McapError):
        decode(partial)  # no summary, no footer: a seeking reader refuses it
    messages = decode(partial, seeking=False)
    n = assert_depth_equals_npy(messages, tmp_path / "depth", "/depthstream/source0/depth")
    assert n >= 3


def test_missing_library_is_one_clear_line(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "clip.avi"), 2)
    record = tmp_path / "out.mcap"
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--record", str(record),
                   env=env_without(tmp_path / "env", "mcap_ros2"))  # fmt: skip
    assert_one_error_line(proc, 2, "--record", "pip install depthstream[robotics]")
    assert sorted(os.listdir(tmp_path)) == ["clip.avi", "env"]
    bad = run_cli("--source", clip, "--record", str(tmp_path / "out.bag"))
    assert_one_error_line(bad, 2, "--record", "must end in .mcap")
