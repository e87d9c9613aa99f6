"""The command line: every option, its type check, and the config key it sets (in its help)."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from ..config_checks import WEB_ENCODINGS
from .exits import EPILOG, EXIT_USAGE
from .resources import named_configs, version


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _input_size(text: str) -> tuple[int, int] | str:
    if text.lower() == "auto":
        return "auto"
    m = re.fullmatch(r"\s*(\d+)\s*[x,]\s*(\d+)\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH (e.g. 352x1216) or auto")
    h, w = int(m[1]), int(m[2])
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"{h}x{w}: height and width must be multiples of 32")
    return h, w


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _intrinsics(text: str) -> list[float]:
    """`fx,fy,cx,cy` (pixels at the source resolution); ranges are the config's to check."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not fx,fy,cx,cy (e.g. 525,525,319.5,239.5)")
    return values


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _video_path(text: str) -> str:
    if os.path.splitext(text)[1].lower() not in (".avi", ".mp4"):
        raise argparse.ArgumentTypeError(f"{text!r} must end in .mp4 (H.264) or .avi (MJPG)")
    return text


def _mkv_path(text: str) -> str:
    if not text.lower().endswith(".mkv"):
        raise argparse.ArgumentTypeError(f"{text!r} must end in .mkv")
    return text


def _endpoint(text: str) -> str:
    if not re.match(r"^(tcp|ipc)://.+", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a ZeroMQ endpoint another program can reach "
            "(tcp://HOST:PORT or ipc://PATH)"
        )
    return text


def _tcp_endpoint(text: str) -> str:
    if not re.fullmatch(r"tcp://[^\s]+:\d{1,5}", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not tcp://ADDR:PORT (e.g. tcp://0.0.0.0:5560)"
        )
    return text


def _host_port(text: str) -> tuple[str | None, int]:
    """`PORT`, `HOST:PORT` or `[IPv6]:PORT` -> (host or None, port 0..65535; 0: any free port)."""
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]:|([^:\s\[\]]+):)?(\d{1,5})", text.strip())
    if not m or int(m[3]) > 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not [HOST:]PORT (e.g. 8765 or 0.0.0.0:8765; port 0..65535, 0: any)"
        )
    return m[1] or m[2], int(m[3])


def _rrd_path(text: str) -> str:
    if os.path.splitext(text)[1].lower() != ".rrd":
        raise argparse.ArgumentTypeError(f"{text!r} must end in .rrd")
    return text


def _rerun_url(text: str) -> str:
    if not re.match(r"^rerun(\+https?)?://.+", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Rerun viewer URL (e.g. rerun+http://127.0.0.1:9876/proxy)"
        )
    return text


def _mcap_path(text: str) -> str:
    if os.path.splitext(text)[1].lower() != ".mcap":
        raise argparse.ArgumentTypeError(f"{text!r} must end in .mcap")
    return text


def _backend(text: str) -> str:
    """The backend's one name (onnx -> onnxruntime); an unknown one is refused while parsing.
    `simulate` is the pipeline's load-test engine (pipeline.simulate), not a model backend."""
    if text == "simulate":
        return text
    from glpn.backends import canonical_name  # the one place that knows the names and aliases

    try:
        return canonical_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(named_configs())
    p = _Parser(
        description="Metric depth (GLPN) from cameras, video files, network streams and image "
        "folders, saved to files/video and published over ZeroMQ. Without arguments: the demo "
        "(bundled clip, random weights unless --checkpoint) writing to ./outputs/demo/. "
        "Options override the config file; [brackets] name the config key each one sets.",
        epilog=EPILOG,
    )
    # (flags, keyword arguments): one entry per option, help text last.
    options: list[tuple[str, dict[str, Any]]] = [
        ("--source", dict(action="append", metavar="SRC", help=(
            "camera index (0), video file, stream URL (rtsp://, http://, udp://, tcp://), image "
            "directory or glob; repeat for several streams. ID=SRC names the stream (default "
            "source0, source1, ...). Replaces the config's sources. [sources]"))),
        ("--checkpoint", dict(metavar="DIR", help=(
            "Hugging Face format checkpoint directory (config.json + model.safetensors), or a "
            "hub id such as vinvino02/glpn-kitti when huggingface_hub is installed and online. "
            "Without it (and without model.checkpoint in the config) the model has RANDOM "
            "weights. [model.checkpoint]"))),
        ("--config", dict(metavar="FILE", help=(
            f"YAML config file, or the name of a packaged one: {names} (without it: default, "
            "the demo's). Every key is explained in configs/default.yaml; paths of sources and "
            "checkpoints in a file are relative to the file"))),
        ("--backend", dict(type=_backend, help=(
            "inference backend: auto, eager, compile, onnx (onnxruntime), tensorrt, or "
            "simulate: no model, a synthetic depth after --simulate-ms per batch, to size a "
            "deployment (never picked by auto) [model.backend]"))),
        ("--simulate-ms", dict(type=_seconds, metavar="MS", help=(
            "delay of one batch with --backend simulate (default 40) [model.simulate_ms]"))),
        ("--precision", dict(choices=("auto", "fp32", "bf16", "fp16"), help=(
            "numeric precision [model.precision]"))),
        ("--device", dict(help="auto, cpu, cuda or cuda:N [model.device]")),
        ("--batch", dict(type=_positive_int, metavar="N", help=(
            "most frames per model call [model.max_batch]"))),
        ("--input-size", dict(type=_input_size, metavar="HxW", help=(
            "model input size, multiples of 32 (e.g. 480x640), or auto: each source's size "
            "rounded down to multiples of 32 [model.input_size]"))),
        ("--mode", dict(choices=("live", "lossless"), help=(
            "live: newest frame wins, drops counted (default for cameras and URLs); lossless: "
            "every frame in order (default for files and images). For every source. "
            "[sources[*].mode]"))),
        ("--pace", dict(action="store_true", help=(
            "replay files and images at their frame rate, as a camera would deliver them "
            "(with --mode live: drops what inference cannot keep up with) [sources[*].pace]"))),
        ("--intrinsics", dict(type=_intrinsics, metavar="FX,FY,CX,CY", help=(
            "pinhole camera of the (single) source, pixels at its resolution; headers then "
            "carry the camera scaled to the depth's size, and point clouds can be made "
            "[sources[0].intrinsics]"))),
        ("--save-depth", dict(metavar="DIR", help=(
            "write per-frame depth: DIR/000000.npy, ... (float32 metres, source size); with "
            "several sources DIR/<stream id>/ [outputs.files.directory]"))),
        ("--depth-format", dict(choices=("npy", "png16", "both"), help=(
            "files of --save-depth: npy (default), png16 (uint16, depth*256, KITTI) or both "
            "[outputs.files.npy/png]"))),
        ("--save-points", dict(metavar="DIR", help=(
            "write per-frame point clouds: DIR/000000.ply, ... (binary PLY, x y z float32 "
            "metres, optical frame: z forward, x right, y down); needs the camera (--intrinsics "
            "or the config's); several sources: DIR/<stream id>/ [outputs.points.directory]"))),
        ("--points-stride", dict(type=_positive_int, metavar="N", help=(
            "point clouds from every N-th pixel in each direction (N*N fewer points) "
            "[postprocess.points.stride]"))),
        ("--save-video", dict(type=_video_path, metavar="FILE", help=(
            "colourised depth video: .mp4 = H.264 with the source's timestamps, plays in "
            "browsers (needs depthstream[video]; mp4v without it), .avi = MJPG; several "
            "sources: FILE_<id>.ext, or put {stream} in the name [outputs.video.path]"))),
        ("--save-depth-video", dict(type=_mkv_path, metavar="FILE.mkv", help=(
            "lossless depth video: 16-bit grey FFV1 in Matroska, value = metres * 256 (KITTI; "
            "tag DEPTH_SCALE), 0 = no depth; several sources: FILE_<id>.mkv, or {stream} in the "
            "name; needs depthstream[video] [outputs.depth_video.path]"))),
        ("--side-by-side", dict(action="store_true", help=(
            "video/window/web view show the input next to the depth "
            "[postprocess.side_by_side]"))),
        ("--stabilize", dict(action="store_true", help=(
            "flicker control: per stream a moving average of the depth that resets where a pixel "
            "changes by more than 10%% (no ghosts) and follows the model's scale; every output "
            "gets it [postprocess.temporal]"))),
        ("--publish", dict(type=_endpoint, metavar="ENDPOINT", help=(
            "ZeroMQ PUB endpoint for other programs (pipeline.client.DepthSubscriber), e.g. "
            "tcp://127.0.0.1:5556; a loopback address unless the network should reach it "
            "[outputs.zmq.endpoint]"))),
        ("--foxglove", dict(type=_host_port, nargs="?", const=(None, None),
                            metavar="[HOST:]PORT", help=(
            "serve the depth live to the Foxglove app (WebSocket; ROS 2 topics "
            "/depthstream/<stream>/depth, camera_info, points), by default on 127.0.0.1:8765; "
            "0 as the port: any free one (logged). A non-loopback HOST lets the network see it "
            "[outputs.foxglove.host/port]"))),
        ("--web", dict(type=_host_port, nargs="?", const=(None, None), metavar="[HOST:]PORT",
                       help=(
            "live view in a browser: open http://HOST:PORT/ for every stream's colourised depth, "
            "its colour bar, the depth under the pointer, fps, latency and drops; by default on "
            "127.0.0.1:8080; 0 as the port: any free one (logged). With --side-by-side the input "
            "is beside it [outputs.web.side_by_side]. A non-loopback HOST lets the network see "
            "it [outputs.web.host/port]"))),
        ("--web-encoding", dict(choices=WEB_ENCODINGS, help=(
            "how the web view's picture travels: levels (1 byte a pixel, coloured by the page: "
            "least CPU), jpeg (fewest bytes: a browser far away, or through an SSH tunnel), auto "
            "(default): levels to a browser on this host, JPEG to others [outputs.web.encoding]"))),
        ("--record", dict(type=_mcap_path, metavar="FILE.mcap", help=(
            "record ROS 2 messages to one MCAP file (Foxglove, ros2 bag play): per stream "
            "/depthstream/<stream>/depth (32FC1 metres, NaN = no depth) and camera_info "
            "(with intrinsics); needs depthstream[robotics] [outputs.record.path]"))),
        ("--rerun", dict(type=_rrd_path, metavar="FILE.rrd", help=(
            "record for the Rerun viewer (rerun FILE.rrd): per stream a Pinhole camera (with "
            "intrinsics) and its DepthImage in metres, shown in 3D; timelines frame and "
            "capture_time; needs depthstream[robotics] [outputs.rerun.path]"))),
        ("--rerun-connect", dict(type=_rerun_url, metavar="URL", help=(
            "stream live to a running Rerun viewer, e.g. rerun+http://127.0.0.1:9876/proxy "
            "(start it with `rerun`); newest frame wins, never slows the pipeline "
            "[outputs.rerun.connect]"))),
        ("--display", dict(action="store_true", help=(
            "show the depth in a window (q or Esc stops) [outputs.window]"))),
        ("--max-frames", dict(type=_positive_int, metavar="N", help=(
            "stop each source after N frames [sources[*].max_frames]"))),
        ("--workers", dict(type=_tcp_endpoint, metavar="tcp://ADDR:PORT", help=(
            "run inference on worker processes (`depthstream worker --hub tcp://HOST:PORT` on "
            "any host): bind this endpoint and hand batches to whichever worker has credit; "
            "the hub then needs no checkpoint [workers.endpoint]"))),
        ("--local-worker", dict(action="store_true", help=(
            "with --workers: also run the configured model here as one more worker "
            "[workers.local_worker]"))),
        ("--worker-wait", dict(type=_seconds, metavar="SEC", help=(
            "with --workers: fail (exit 3) when no worker was connected for SEC seconds while "
            "frames wait; default: wait [workers.wait_s]"))),
        ("--ingest", dict(type=_tcp_endpoint, metavar="tcp://ADDR:PORT", help=(
            "bind this endpoint for cameras on other hosts (`depthstream capture --hub "
            "tcp://HOST:PORT`); their streams are --remote ID [ingest.endpoint]"))),
        ("--remote", dict(action="append", metavar="ID", help=(
            "a stream fed from another host through --ingest (repeatable); with --mode "
            "[sources[*].kind: external]"))),
        ("--curve-secret", dict(metavar="FILE", help=(
            "this process's CURVE key pair (NAME.key_secret, from `depthstream keys`): every tcp "
            "endpoint it binds (--workers, --ingest, --publish) then takes only peers whose "
            "public key is in --curve-allow [workers/ingest/outputs.zmq .curve.secret]"))),
        ("--curve-allow", dict(metavar="DIR", help=(
            "directory of the public keys (*.key) allowed to connect [... .curve.allow]"))),
        ("--insecure", dict(action="store_true", help=(
            "allow endpoints on non-loopback addresses without CURVE keys: anyone who can "
            "reach them can send and receive frames [... .curve.insecure]"))),
        ("--log-level", dict(default="info", choices=("debug", "info", "warning", "error"), help=(
            "logging detail (default info); debug also prints tracebacks"))),
        ("--metrics-interval", dict(type=_seconds, metavar="SEC", help=(
            "seconds between metrics log lines, 0: off [metrics.interval_s]"))),
        ("--metrics-port", dict(type=_host_port, metavar="[HOST:]PORT", help=(
            "serve Prometheus metrics at http://HOST:PORT/metrics while the run lasts (frames, "
            "drops, queues, latencies per stage, engine), by default on 127.0.0.1; 0 as the "
            "port: any free one (logged); needs depthstream[metrics] [metrics.host/port]"))),
        ("--summary-json", dict(metavar="FILE", help=(
            "also write the final summary (per-stage counts, drops, latencies) as JSON"))),
    ]  # fmt: skip
    for flag, kwargs in options:
        p.add_argument(flag, **kwargs)
    p.add_argument("--version", action="version", version=f"depthstream {version()}")
    return p
