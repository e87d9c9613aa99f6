"""--foxglove: the live Foxglove WebSocket server, tested with a plain WebSocket client that
speaks the Foxglove protocol (serverInfo, advertise, subscribe, binary message data) and decodes
the CDR with mcap-ros2-support, from the schemas the server advertised.

Frames come from an external source the test feeds, so the test decides when frames flow: they
flow until the client has what it waits for, and nothing depends on how fast anything is.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest
from pipeline_helpers import eager_factory, frame_at
from test_cli import assert_one_error_line, run_cli, write_clip

from pipeline import ConfigError, FrameSender, Pipeline
from pipeline.config_file import config_from_dict
from pipeline.ros_msgs import stamp_ns  # the stamp of every message: capture wall-clock, ns

pytest.importorskip("foxglove")
websockets_sync = pytest.importorskip("websockets.sync.client")
websockets_exceptions = pytest.importorskip("websockets.exceptions")
mcap_records = pytest.importorskip("mcap.records")
ros2_decoder = pytest.importorskip("mcap_ros2.decoder")

# foxglove-sdk 0.30 answers "foxglove.sdk.v1"; the app (and older servers) "foxglove.websocket.v1".
SUBPROTOCOLS = ["foxglove.websocket.v1", "foxglove.sdk.v1"]
MESSAGE_DATA = 0x01  # binary opcode: subscription id u32, log time u64 ns, payload (little-endian)
H, W = 60, 80
FX, FY, CX, CY = 70.0, 72.0, 40.0, 30.0
DEADLINE_S = 120.0  # generous: 2 shared cores; every wait ends as soon as its event happens


class FoxgloveClient:
    """What the Foxglove app does, minimally: learn the channels, subscribe, decode messages."""

    def __init__(self, url: str, *, max_queue: int | None = 16) -> None:
        self.ws = websockets_sync.connect(
            url, subprotocols=SUBPROTOCOLS, proxy=None, compression=None, max_size=None,
            max_queue=max_queue, ping_interval=None,
        )  # fmt: skip
        self.server_info: dict[str, Any] = {}
        self.channels: dict[str, dict[str, Any]] = {}  # topic -> advertised channel
        self.subscribed: dict[int, dict[str, Any]] = {}  # subscription id -> channel
        self._decoders: dict[int, Any] = {}

    def close(self) -> None:
        self.ws.close()

    def receive(self, timeout: float) -> tuple[dict[str, Any], int, Any] | None:
        """Handles control messages until a message-data frame: (channel, log time, decoded)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.ws.recv(timeout=left)
            except TimeoutError:
                return None
            if isinstance(frame, str):
                msg = json.loads(frame)
                if msg["op"] == "serverInfo":
                    self.server_info = msg
                elif msg["op"] == "advertise":
                    self.channels.update({c["topic"]: c for c in msg["channels"]})
                continue
            assert frame[0] == MESSAGE_DATA, f"unexpected binary opcode {frame[0]}"
            sub_id, log_time = struct.unpack_from("<IQ", frame, 1)
            return self.subscribed[sub_id], log_time, self._decoders[sub_id](frame[13:])
        return None

    def wait_for_channel(self, topic: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while topic not in self.channels:
            assert time.monotonic() < deadline, f"{topic} was not advertised: {list(self.channels)}"
            frame = self.ws.recv(timeout=deadline - time.monotonic())
            assert isinstance(frame, str), "message data before any subscription"
            msg = json.loads(frame)
            if msg["op"] == "serverInfo":
                self.server_info = msg
            elif msg["op"] == "advertise":
                self.channels.update({c["topic"]: c for c in msg["channels"]})
        return self.channels[topic]

    def subscribe(self, topic: str) -> None:
        channel = self.channels[topic]
        sub_id = len(self.subscribed) + 1
        assert channel["encoding"] == "cdr" and channel["schemaEncoding"] == "ros2msg"
        schema = mcap_records.Schema(
            id=channel["id"], name=channel["schemaName"], encoding="ros2msg",
            data=channel["schema"].encode(),
        )  # fmt: skip
        self._decoders[sub_id] = ros2_decoder.DecoderFactory().decoder_for("cdr", schema)
        self.subscribed[sub_id] = channel
        msg = {"op": "subscribe", "subscriptions": [{"id": sub_id, "channelId": channel["id"]}]}
        self.ws.send(json.dumps(msg))


def ros_stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def feed_until(pipe: Pipeline, done: threading.Event, make_frame, limit: int) -> threading.Thread:
    """A thread pushing frames into stream "cam" (lossless: it waits when the pipeline is behind)
    until `done` or `limit` frames, then ending the stream."""

    def run() -> None:
        sender = FrameSender(pipe.endpoints["preprocess.lossless"], "cam", context=pipe.context)
        try:
            for i in range(limit):
                if done.is_set():
                    break
                sender.send(make_frame(i))
        finally:
            sender.close()

    thread = threading.Thread(target=run, name="test-feeder", daemon=True)
    thread.start()
    return thread


def external_config(tmp_path, **foxglove: Any) -> dict[str, Any]:
    return {
        "sources": [
            {"uri": "external", "id": "cam", "kind": "external", "intrinsics": [FX, FY, CX, CY]}
        ],
        "model": {"precision": "fp32"},
        "outputs": {
            "foxglove": {"host": "127.0.0.1", "port": 0, **foxglove},
            "files": {"directory": str(tmp_path / "depth"), "png": False, "layout": "flat"},
        },
        "metrics": {"interval_s": 0},
    }


def test_a_foxglove_client_gets_the_depth_camera_and_points_of_the_recording(
    tmp_path, tiny_checkpoint
):
    results: dict[int, Any] = {}  # capture stamp (ns) -> DepthResult
    pipe = Pipeline(
        external_config(tmp_path),
        engine_factory=eager_factory(tiny_checkpoint),
        on_result=lambda r: results.__setitem__(stamp_ns(r), r),
    ).start()
    url = pipe.endpoints["foxglove"]
    assert url.startswith("ws://127.0.0.1:") and not url.endswith(":0")
    client = FoxgloveClient(url)
    done = threading.Event()
    feeder = None
    got: dict[str, tuple[int, Any]] = {}  # topic kind -> (log time, decoded message)
    try:
        depth_channel = client.wait_for_channel("/depthstream/cam/depth", DEADLINE_S)
        assert client.server_info["name"] == "depthstream"
        assert depth_channel["schemaName"] == "sensor_msgs/msg/Image"
        client.subscribe("/depthstream/cam/depth")  # advertised before the first frame
        feeder = feed_until(pipe, done, lambda i: frame_at(i, H, W), limit=10_000)
        deadline = time.monotonic() + DEADLINE_S
        while len(got) < 3:  # camera_info and points are advertised with the first frame
            for kind in ("camera_info", "points"):
                topic = f"/depthstream/cam/{kind}"
                if topic in client.channels and all(
                    c["topic"] != topic for c in client.subscribed.values()
                ):
                    client.subscribe(topic)
            item = client.receive(deadline - time.monotonic())
            assert item is not None, f"no message data within {DEADLINE_S} s; got {list(got)}"
            channel, log_time, msg = item
            got[channel["topic"].rsplit("/", 1)[1]] = (log_time, msg)
    finally:
        done.set()
        if feeder is not None:
            feeder.join(DEADLINE_S)
        client.close()
    summary = pipe.join(timeout=DEADLINE_S)
    assert summary.outcome == "finished"
    assert pipe.summary().stages["sink"]["gauges"]["foxglove_subscriptions_peak"] == 3

    log_time, image = got["depth"]
    assert ros_stamp_ns(image) == log_time  # the log time is the stamp: capture wall-clock time
    result = results[log_time]
    assert image.header.frame_id == "cam_optical"
    assert (image.encoding, image.height, image.width, image.is_bigendian) == ("32FC1", H, W, 0)
    assert image.step == 4 * W
    depth = np.frombuffer(bytes(image.data), dtype="<f4").reshape(H, W)
    saved = np.load(tmp_path / "depth" / f"{result.index:06d}.npy")
    assert np.isfinite(saved).all() and (saved > 0).all()  # no pixel becomes NaN here
    np.testing.assert_array_equal(depth, saved)  # bit for bit the .npy of that frame

    log_time, info = got["camera_info"]
    assert ros_stamp_ns(info) == log_time and log_time in results
    assert (info.height, info.width, info.header.frame_id) == (H, W, "cam_optical")
    assert list(info.k) == [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]

    log_time, cloud = got["points"]
    result = results[log_time]
    names = [f.name for f in cloud.fields]
    assert names[:3] == ["x", "y", "z"] and cloud.height == 1 and cloud.is_dense
    assert [f.datatype for f in cloud.fields[:3]] == [7, 7, 7]  # FLOAT32
    offsets = [f.offset for f in cloud.fields]
    dtype = np.dtype({"names": names, "formats": ["<f4"] * len(names), "offsets": offsets,
                      "itemsize": cloud.point_step})  # fmt: skip
    record = np.frombuffer(bytes(cloud.data), dtype=dtype)
    xyz = np.stack([record["x"], record["y"], record["z"]], axis=1)
    assert xyz.shape == (cloud.width, 3) and cloud.width > 0
    np.testing.assert_array_equal(xyz, result.points)  # the pipeline's own point cloud
    # of that frame's depth: every pixel (all valid), row-major, z = the depth in metres
    saved = np.load(tmp_path / "depth" / f"{result.index:06d}.npy")
    np.testing.assert_array_equal(xyz[:, 2], saved.ravel())


@pytest.mark.parametrize("which", ["input", "view"])
def test_image_topic_carries_the_input_frame_or_the_view(tmp_path, tiny_checkpoint, which):
    results: dict[int, Any] = {}  # capture stamp (ns) -> DepthResult
    cfg = external_config(tmp_path, image=which)
    del cfg["outputs"]["files"]
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint),
                    on_result=lambda r: results.__setitem__(stamp_ns(r), r)).start()  # fmt: skip
    client = FoxgloveClient(pipe.endpoints["foxglove"])
    done = threading.Event()
    feeder = feed_until(pipe, done, lambda i: frame_at(i, H, W), limit=10_000)
    try:  # …/image is advertised from the start, as the depth topics are
        channel = client.wait_for_channel("/depthstream/cam/image", DEADLINE_S)
        assert channel["schemaName"] == "sensor_msgs/msg/Image"
        client.subscribe("/depthstream/cam/image")
        item = client.receive(DEADLINE_S)
        assert item is not None, f"no image within {DEADLINE_S} s"
    finally:
        done.set()
        feeder.join(DEADLINE_S)
        client.close()
        outcome = pipe.join(timeout=DEADLINE_S).outcome  # the stream ended: the pipeline ends
    assert outcome == "finished"
    _, log_time, image = item
    assert (image.encoding, image.height, image.width, image.step) == ("bgr8", H, W, 3 * W)
    pixels = np.frombuffer(bytes(image.data), dtype=np.uint8).reshape(H, W, 3)
    result = results[log_time]
    if which == "input":  # the frame fed in, as captured
        np.testing.assert_array_equal(pixels, frame_at(result.index, H, W))
    else:  # the colourised depth postprocess made for that frame, not the input frame
        np.testing.assert_array_equal(pixels, result.view)
        assert not np.array_equal(pixels, frame_at(result.index, H, W))


def test_a_client_that_never_reads_does_not_slow_the_pipeline(tmp_path, tiny_checkpoint):
    """A subscribed client stops reading; 60 frames of 480x640 depth (1.2 MB each, far beyond the
    socket buffers) still go through at full speed, the client's queue keeps the newest and,
    when it reads again, it gets the last frame, with the older ones dropped for it."""
    n, h, w = 60, 480, 640
    cfg = external_config(tmp_path, backlog=8, points=False)
    cfg["model"]["input_size"] = [64, 64]  # cheap model; the depth comes back at 480x640
    cfg["sources"][0].pop("intrinsics")
    del cfg["outputs"]["files"]
    stamps: list[int] = []
    all_in = threading.Event()

    def on_result(r) -> None:
        stamps.append(stamp_ns(r))
        if len(stamps) == n:
            all_in.set()

    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint), on_result=on_result)
    pipe.start()
    # max_queue=1: the client's library stops reading the socket once one frame waits unread.
    stalled = FoxgloveClient(pipe.endpoints["foxglove"], max_queue=1)
    done = threading.Event()
    feeder = None
    try:
        stalled.wait_for_channel("/depthstream/cam/depth", DEADLINE_S)
        stalled.subscribe("/depthstream/cam/depth")
        frames = [frame_at(i, h, w) for i in range(4)]
        t0 = time.monotonic()
        feeder = feed_until(pipe, done, lambda i: frames[i % 4], limit=n + 1_000)
        # Every frame reaches the sinks (Foxglove's first) while the client reads nothing.
        assert all_in.wait(DEADLINE_S), f"{len(stamps)} of {n} frames in {DEADLINE_S} s"
        elapsed = time.monotonic() - t0
        done.set()  # the feeder stops; the server stays up until the stream ends
        sink = pipe.summary().stages["sink"]
        # The sink's work per frame stayed short: logging never waited for the client.
        assert sink["latency_ms"]["max"] < 1000, sink["latency_ms"]
        # Now it reads: what it gets ends with the newest frame it was sent, with frames dropped.
        received: list[int] = []
        last = stamps[n - 1]
        deadline = time.monotonic() + DEADLINE_S
        while last not in received:
            item = stalled.receive(deadline - time.monotonic())
            assert item is not None, f"the newest frame never came; got {len(received)}"
            received.append(item[1])
        assert received == sorted(received)  # in order, each at most once
        assert set(received) <= set(stamps)
        assert len(received) < n, "nothing was dropped: the test did not fill the client's queue"
        print(f"60 frames in {elapsed:.2f} s with a stalled client; it got {len(received)} of "
              f"the first {n}, {n - len(received)} dropped")  # fmt: skip
    finally:
        done.set()
        if feeder is not None:
            feeder.join(DEADLINE_S)
        stalled.close()
    assert pipe.join(timeout=DEADLINE_S).outcome == "finished"


def test_the_server_stops_with_a_stopped_pipeline(tmp_path, tiny_checkpoint):
    cfg = external_config(tmp_path)
    del cfg["outputs"]["files"]
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint)).start()
    port = int(pipe.endpoints["foxglove"].rsplit(":", 1)[1])
    client = FoxgloveClient(pipe.endpoints["foxglove"])
    client.wait_for_channel("/depthstream/cam/depth", DEADLINE_S)
    pipe.stop()
    assert pipe.join(timeout=DEADLINE_S).outcome == "stopped"
    with pytest.raises(websockets_exceptions.ConnectionClosed):  # the server closed it
        while True:  # after unadvertising its channels
            assert json.loads(client.ws.recv(timeout=DEADLINE_S))["op"] == "unadvertise"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S).close()


def test_server_port_is_reported_and_a_busy_port_is_exit_5(tmp_path, tiny_checkpoint):
    clip = write_clip(str(tmp_path / "clip.avi"), 2)
    proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint, "--foxglove", "0",
                   "--metrics-interval", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Foxglove WebSocket server on ws://127.0.0.1:" in proc.stderr
    assert "ws://127.0.0.1:0 " not in proc.stderr  # the port bound, not the 0 asked for
    assert "can be reached from the network" not in proc.stderr  # loopback: no warning

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("--source", clip, "--checkpoint", tiny_checkpoint,
                       "--foxglove", f"127.0.0.1:{port}")  # fmt: skip
    assert_one_error_line(proc, 5, f"outputs.foxglove: cannot serve on ws://127.0.0.1:{port}")


@pytest.mark.parametrize("value", ["70000", "host:", "a:b:c:1", "", "127.0.0.1:-1"])
def test_bad_foxglove_address_is_exit_2(value):
    proc = run_cli("--source", "0", "--foxglove", value)
    assert_one_error_line(proc, 2, "--foxglove")


def test_foxglove_option_sets_host_and_port():
    from pipeline.cli.configure import build_config
    from pipeline.cli.options import build_parser

    def fox(*args: str):
        args = build_parser().parse_args(["--source", "x.mp4", *args])
        return build_config(args).outputs.foxglove

    assert fox() is None
    assert (fox("--foxglove").host, fox("--foxglove").port) == ("127.0.0.1", 8765)
    assert (fox("--foxglove", "9000").host, fox("--foxglove", "9000").port) == ("127.0.0.1", 9000)
    assert fox("--foxglove", "0.0.0.0:0").host == "0.0.0.0"
    assert (fox("--foxglove", "[::1]:7").host, fox("--foxglove", "[::1]:7").port) == ("::1", 7)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"port": 65536}, "outputs.foxglove.port: must be in 0..65535"),
        ({"port": True}, "outputs.foxglove.port"),
        ({"backlog": 2}, "outputs.foxglove.backlog: must be in 4.."),
        ({"host": ""}, "outputs.foxglove.host"),
        ({"image": "depth"}, "outputs.foxglove.image: 'depth' is not one of"),
    ],
)
def test_foxglove_config_is_checked(section, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict({"sources": ["0"], "outputs": {"foxglove": section}})


def test_a_non_loopback_address_warns_once(caplog):
    from pipeline.config import FoxgloveConfig
    from pipeline.foxglove_sink import FoxgloveSink

    with caplog.at_level("WARNING", logger="pipeline.foxglove_sink"):
        sink = FoxgloveSink(FoxgloveConfig(host="0.0.0.0", port=0), ["cam"])
        sink.close()
        sink.close()  # a second close does nothing
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "reached from the network" in warnings[0].getMessage()


def test_without_foxglove_sdk_the_error_says_what_to_install(monkeypatch):
    from pipeline.config import FoxgloveConfig
    from pipeline.foxglove_sink import FoxgloveSink

    monkeypatch.setitem(sys.modules, "foxglove", None)  # as if foxglove-sdk were not installed
    with pytest.raises(ConfigError, match=r"foxglove.*pip install depthstream\[robotics\]"):
        FoxgloveSink(FoxgloveConfig(port=0), ["cam"])
