"""Live output to the Foxglove app: a Foxglove WebSocket server (foxglove-sdk) with the ROS 2 topics
of the MCAP recording.

Per stream, /depthstream/<stream>/depth (sensor_msgs/msg/Image, 32FC1 metres, invalid = NaN),
…/camera_info (sensor_msgs/msg/CameraInfo, once the intrinsics are known), …/points
(sensor_msgs/msg/PointCloud2, when the frame has a point cloud) and …/image (sensor_msgs/msg/Image,
bgr8, outputs.foxglove.image: the colourised view or the input frame), CDR-encoded with the ros2msg
schemas of pipeline.ros_msgs, so the bytes a client gets are those of the recording and the app's
Image and 3D panels show them as they show a ROS 2 bag. Each message's log time is its stamp, the
frame's capture wall-clock time.

Why ROS 2 messages and not the SDK's own schemas (foxglove.RawImage, PointCloud, ...): the app
shows both natively, but only the ROS 2 ones are the recording's topics, which ROS 2 tools and
the user's own subscribers already read; one encoder (pipeline.ros_msgs) serves both outputs.

Never stalls the pipeline. A message is encoded only while some client subscribes to its topic
(Channel.has_sinks()), and `Channel.log` never blocks: the SDK copies the bytes into a bounded
queue per client (`backlog` messages, all topics together) and its own threads send them. When a
client falls behind and its queue is full, the SDK drops that client's oldest queued message to
make room (newest wins, per client; other clients are not affected). foxglove-sdk 0.30 does not
tell Python how many it dropped (it logs "outbox for client ... full" at most every 30 s through
its own logging); the sink counts what it can: messages logged per topic kind and subscriptions.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections import Counter
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

from . import ros_msgs
from .config import FoxgloveConfig
from .errors import ROBOTICS_INSTALL, ConfigError, EndpointError
from .results import DepthResult
from .sinks import Sink

log = logging.getLogger(__name__)



def _libraries() -> tuple[Any, Callable[[str, str], dict[str, Callable[[Any], bytes]]]]:
    """(the foxglove module, mcap_ros2's CDR encoder factory); ConfigError when not installed."""
    try:
        import foxglove
        from mcap_ros2._dynamic import serialize_dynamic  # the encoder of mcap_ros2.writer
    except ImportError as e:
        raise ConfigError(
            f"outputs.foxglove (--foxglove) needs foxglove-sdk and mcap-ros2-support "
            f"({e.name} is missing): {ROBOTICS_INSTALL}"
        ) from None
    return foxglove, serialize_dynamic


def is_loopback(host: str) -> bool:
    """Whether `host` can only be reached from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume the network sees it


def ws_url(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"


class _Subscriptions:
    """foxglove ServerListener: counts subscriptions (from the SDK's threads) into `gauges`."""

    def __init__(self, gauges: MutableMapping[str, int]) -> None:
        self.gauges = gauges
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self._publish()

    def _publish(self) -> None:
        self.gauges["foxglove_subscriptions"] = self.now
        self.gauges["foxglove_subscriptions_peak"] = self.peak

    def on_subscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self._publish()
        log.debug("outputs.foxglove: client %s subscribed to %s", client.id, channel.topic)

    def on_unsubscribe(self, client: Any, channel: Any) -> None:
        with self._lock:
            self.now = max(0, self.now - 1)
            self._publish()
        log.debug("outputs.foxglove: client %s unsubscribed from %s", client.id, channel.topic)


class FoxgloveSink(Sink):
    """Serves every frame on a Foxglove WebSocket server, started here and stopped by close().

    `url` is where it listens (ws://HOST:PORT, the port bound when the config's is 0); `logged`
    counts messages handed to the server per topic kind (depth, camera_info, points, image).
    """

    # What each topic kind carries, in the order a frame's messages are logged; "image" is the
    # one of IMAGES that config.image names.
    KINDS: tuple[tuple[str, Callable[[DepthResult], dict[str, Any] | None]], ...] = (
        ("camera_info", ros_msgs.camera_info),
        ("depth", ros_msgs.depth_image),
        ("points", ros_msgs.point_cloud),
    )
    IMAGES: dict[str, Callable[[DepthResult], dict[str, Any] | None]] = {
        "view": lambda r: ros_msgs.bgr_image(r, r.view),  # the colourised view
        "input": lambda r: ros_msgs.bgr_image(r, r.image),  # the input frame as captured
    }

    def __init__(
        self,
        config: FoxgloveConfig,
        streams: Sequence[str],
        *,
        gauges: MutableMapping[str, int] | None = None,
    ) -> None:
        foxglove, serialize = _libraries()
        self.config = config
        self._foxglove = foxglove
        schemas = ros_msgs.SCHEMAS.items()
        self._encoders = {name: serialize(name, text)[name] for name, text in schemas}
        self._kinds = [(k, make) for k, make in self.KINDS if k != "points" or config.points]
        if config.image != "none":
            self._kinds.append(("image", self.IMAGES[config.image]))
        self._channels: dict[tuple[str, str], Any] = {}  # (stream, kind) -> foxglove.Channel
        self.logged: Counter[str] = Counter()
        self._warned_image = False  # warned once that frames lack the image config.image names
        self.subscriptions = _Subscriptions(gauges if gauges is not None else {})
        self._context = foxglove.Context()  # this sink's channels only, not the SDK's global ones
        try:
            self._server = foxglove.start_server(
                name="depthstream",
                host=config.host,
                port=config.port,
                context=self._context,
                server_listener=self.subscriptions,
                message_backlog_size=config.backlog,
            )
        except RuntimeError as e:  # FoxgloveError: Failed to bind port: Address already in use
            where = ws_url(config.host, config.port)
            raise EndpointError(f"outputs.foxglove: cannot serve on {where}: {e}") from None
        self.port: int = self._server.port
        self.url = ws_url(config.host, self.port)
        try:
            # Depth (and image) topics are advertised before the first frame: a client that
            # subscribes to a channel the moment it is advertised can race the server's own
            # registration of it (foxglove-sdk: "subscribe to unknown channel"), seen in CI.
            for stream in streams:
                self._channel(stream, "depth")
                if config.image != "none":
                    self._channel(stream, "image")
        except BaseException:
            self.close()
            raise
        log.info("outputs.foxglove: Foxglove WebSocket server on %s (in the app: Open connection,"
                 " Foxglove WebSocket)", self.url)  # fmt: skip
        if not is_loopback(config.host):
            log.warning("outputs.foxglove: %s can be reached from the network, by anyone: the "
                        "Foxglove WebSocket protocol has no authentication", self.url)  # fmt: skip

    def _channel(self, stream: str, kind: str) -> Any:
        schema = ros_msgs.TOPICS[kind]
        channel = self._foxglove.Channel(
            ros_msgs.topic(stream, kind),
            schema=self._foxglove.Schema(
                name=schema, encoding="ros2msg", data=ros_msgs.SCHEMAS[schema].encode()
            ),
            message_encoding="cdr",
            context=self._context,
        )
        self._channels[(stream, kind)] = channel
        return channel

    def write(self, result: DepthResult) -> None:
        log_time = ros_msgs.stamp_ns(result)
        for kind, make in self._kinds:
            channel = self._channels.get((result.stream, kind))
            if channel is not None and not channel.has_sinks():
                continue  # nobody subscribes to it: no work
            msg = make(result)
            if msg is None:  # no intrinsics / point cloud / view / input frame in this frame
                if kind == "image" and not self._warned_image:
                    self._warned_image = True
                    what = {"view": "colourised view (postprocess.view)", "input": "input frame"}
                    log.warning("outputs.foxglove: no %s: the frames carry no %s",
                                ros_msgs.topic(result.stream, kind), what[self.config.image])
                continue
            if channel is None:  # first seen now: advertised to the clients from here on
                channel = self._channel(result.stream, kind)
                if not channel.has_sinks():
                    continue
            # Non-blocking: the SDK queues the bytes per subscribed client (bounded, see above).
            channel.log(self._encoders[ros_msgs.TOPICS[kind]](msg), log_time=log_time)
            self.logged[kind] += 1

    def close(self) -> None:
        server, self._server = getattr(self, "_server", None), None
        if server is None:
            return
        for channel in self._channels.values():
            channel.close()  # unadvertised to the clients still connected
        server.stop()  # its threads end; clients are disconnected
        sent = ", ".join(f"{k} {n}" for k, n in sorted(self.logged.items())) or "none"
        log.info("outputs.foxglove: server on %s stopped; messages logged: %s", self.url, sent)
