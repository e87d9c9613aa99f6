"""Cameras on other hosts (issue 12, deployment 2): `depthstream capture --hub` feeding a hub's
`--ingest`, over real tcp sockets between real processes.

The hub is a `depthstream` subprocess, or a Pipeline in the test (its metrics, a restart on the
same port), with the simulate engine (2 ms per batch); every camera is a `depthstream capture`
subprocess reading a clip written by glpn.testing.write_clip.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
from pipeline_helpers import LogWatch, depthstream_threads, free_port

from glpn.testing import moving_scene, write_clip
from pipeline import FrameSender, MessageError, Pipeline, curve, framecodec, messages

FRAMES = 12
HEIGHT, WIDTH = 96, 128
SUMMARY = re.compile(
    r"capture (\S+) -> \S+: (\d+) frames sent, (\d+) dropped, ([\d.]+) KiB/frame \((\w+)"
)
SIMULATE = ["--backend", "simulate", "--simulate-ms", "2", "--metrics-interval", "0"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return write_clip(tmp_path_factory.mktemp("remote") / "clip.avi", FRAMES, HEIGHT, WIDTH)


@pytest.fixture
def procs():
    """Subprocesses of a test: killed if the test left them running."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def depthstream(procs: list, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    procs.append(p)
    return p


def capture(procs: list, port: int, source: str, *args: str) -> subprocess.Popen:
    return depthstream(procs, "capture", "--source", source,
                       "--hub", f"tcp://127.0.0.1:{port}", *args)  # fmt: skip


def finish(p: subprocess.Popen, timeout: float = 15) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, getattr(p, "err_seen", "") + err


def wait_for_line(p: subprocess.Popen, text: str, timeout: float = 15) -> None:
    """Until the process wrote a line containing `text` to stderr (kept for finish())."""
    p.err_seen = getattr(p, "err_seen", "")
    deadline = time.monotonic() + timeout
    fd = p.stderr.fileno()
    while text not in p.err_seen:
        left = deadline - time.monotonic()
        assert left > 0 and p.poll() is None, f"no {text!r} from the process: {p.err_seen!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536).decode()
            assert chunk, f"the process closed stderr: {p.err_seen!r}"
            p.err_seen += chunk


def summary_of(out: str) -> tuple[str, int, int, float, str]:
    m = SUMMARY.search(out)
    assert m, f"no summary line in {out!r}"
    return m[1], int(m[2]), int(m[3]), float(m[4]), m[5]


def hub(port: int, modes: dict[str, str], host: str = "127.0.0.1", **extra) -> Pipeline:
    """A hub Pipeline whose streams all come through --ingest tcp://HOST:PORT."""
    sources = [{"uri": f"remote:{s}", "id": s, "kind": "external", "mode": m}
               for s, m in modes.items()]  # fmt: skip
    cfg = {
        "sources": sources,
        "ingest": {"endpoint": f"tcp://{host}:{port}", **extra},
        "model": {"backend": "simulate", "simulate_ms": 2},
        "metrics": {"interval_s": 0},
    }
    return Pipeline(cfg, log_summary=False)


def npy_files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".npy"))


# ---- frames, bytes, exactness --------------------------------------------------------------


def test_frame_codec_round_trips_and_refuses_what_is_not_the_declared_image():
    image = moving_scene(3, 720, 1280)
    header = {"kind": "frame", "stream": "c", "index": 0, "t_mono": 1.0, "t_wall": 2.0,
              "mode": "live", "source_shape": [720, 1280]}  # fmt: skip
    raw = framecodec.encode(header, image, "raw")
    jpeg = framecodec.encode(header, image, "jpeg", 90)
    raw_bytes, jpeg_bytes = framecodec.message_bytes(raw), framecodec.message_bytes(jpeg)
    assert raw_bytes > 720 * 1280 * 3 and jpeg_bytes < raw_bytes / 5  # 720p: 2.7 MB vs ~0.26 MB
    assert np.array_equal(framecodec.decode_image(messages.decode(raw)), image)
    decoded = framecodec.decode_image(messages.decode(jpeg))
    assert decoded.shape == image.shape and np.abs(decoded.astype(int) - image).mean() < 10
    data = messages.decode(jpeg).arrays["jpeg"]

    def jpeg_message(buf: np.ndarray, shape=(720, 1280)) -> messages.Message:
        head = {**header, "encoding": "jpeg", "source_shape": list(shape)}
        return messages.decode(messages.encode(head, {"jpeg": buf}))

    bad = {
        "does not end with an end-of-image": jpeg_message(data[: len(data) // 2]),
        "does not start with a JPEG": jpeg_message(np.frombuffer(b"PNG" + bytes(99), np.uint8)),
        r"image is \[720, 1280\], source_shape \[720, 1279\]": jpeg_message(data, (720, 1279)),
        "does not match source_shape": messages.decode(messages.encode(
            {**header, "encoding": "raw", "source_shape": [720, 1279]}, {"image": image})),
    }  # fmt: skip
    for error, msg in bad.items():
        with pytest.raises(MessageError, match=error):
            framecodec.decode_image(msg)
    unknown = messages.decode(messages.encode({**header, "encoding": "png"}, {"image": image}))
    with pytest.raises(MessageError, match="encoding 'png'"):
        framecodec.decode_image(unknown)
    # a JPEG that claims a huge size is refused from its header, before anything is decoded
    huge = data.copy()
    sof = next(i for i in range(len(huge) - 1) if huge[i] == 0xFF and huge[i + 1] == 0xC0)
    huge[sof + 5 : sof + 9] = [0x7F, 0xFF, 0x7F, 0xFF]
    with pytest.raises(MessageError, match=r"\[32767, 32767\]"):
        framecodec.decode_image(jpeg_message(huge))


def test_a_remote_camera_delivers_every_frame_in_order_raw_equal_to_a_local_run(
    clip, tmp_path, procs
):
    """Hub and camera as `depthstream` processes over tcp, raw frames: the hub's depth files are
    the local run's, file for file and bit for bit."""
    port = free_port()
    remote, local = tmp_path / "remote", tmp_path / "local"
    hub_p = depthstream(procs, "--ingest", f"tcp://127.0.0.1:{port}", "--remote", "cam0",
                        "--mode", "lossless", "--save-depth", str(remote), *SIMULATE)  # fmt: skip
    cam = capture(procs, port, clip, "--id", "cam0", "--encoding", "raw")
    local_p = depthstream(procs, "--source", clip, "--save-depth", str(local), *SIMULATE)
    code, out, err = finish(cam)
    assert code == 0, err
    assert summary_of(out)[:3] == ("cam0", FRAMES, 0)
    for p in (hub_p, local_p):
        code, _, err = finish(p)
        assert code == 0, err
    names = [f"{i:06d}.npy" for i in range(FRAMES)]
    assert npy_files(remote) == npy_files(local) == names  # each frame once, numbered in order
    for name in names:
        assert np.array_equal(np.load(remote / name), np.load(local / name)), name


def test_jpeg_frames_are_smaller_and_give_nearly_the_same_depth(clip, procs):
    """Two cameras on one hub at once, one JPEG (the default) and one raw: both streams complete
    and in order, JPEG's bytes per frame a fraction of raw's, its depth close to raw's."""
    port = free_port()
    pipe = hub(port, {"jpg": "lossless", "raw": "lossless"})
    results = pipe.results(timeout=15)
    cams = [capture(procs, port, clip, "--id", "jpg"),
            capture(procs, port, clip, "--id", "raw", "--encoding", "raw")]  # fmt: skip
    got: dict[str, list] = {"jpg": [], "raw": []}
    for r in results:
        got[r.stream].append(r)
    lines = {}
    for cam in cams:
        code, out, err = finish(cam)
        assert code == 0, err
        stream, sent, dropped, kib, encoding = summary_of(out)
        assert (sent, dropped) == (FRAMES, 0)
        lines[stream] = (kib, encoding)
    assert lines["jpg"][1] == "jpeg" and lines["raw"][1] == "raw"
    assert lines["raw"][0] > HEIGHT * WIDTH * 3 / 1024  # the pixels and a header
    assert lines["jpg"][0] < lines["raw"][0] / 3
    for stream, results_ in got.items():
        assert [r.index for r in results_] == list(range(FRAMES)), stream
        assert [r.header["position"]["remote_index"] for r in results_] == list(range(FRAMES))
    for a, b in zip(got["jpg"], got["raw"]):
        error = np.abs(a.depth - b.depth).mean()  # JPEG's: measured ~0.1 m of 0.5..80 m
        assert 0 < error < 0.01 * b.depth.max()
    summary = pipe.join()
    assert summary.outcome == "finished" and summary.stages["ingest"]["malformed"] == 0
    wait_ms = summary.stages["ingest"]["wait_ms"]  # capture -> hub, same clock here
    assert 0 <= wait_ms["p50"] < 5000
    assert depthstream_threads() == []


def test_frame_sender_feeds_the_ingest_endpoint_with_jpeg():
    assert framecodec.default_encoding("tcp://10.1.2.3:5000") == "jpeg"
    assert framecodec.default_encoding("tcp://127.0.0.1:5000") == "raw"
    assert framecodec.default_encoding("inproc://x") == "raw"
    port = free_port()
    pipe = hub(port, {"api": "lossless"})
    results = pipe.results(timeout=15)
    frames = [moving_scene(i, 64, 96) for i in range(3)]
    with FrameSender(pipe.endpoints["ingest"], "api", encoding="jpeg", jpeg_quality=80) as sender:
        for frame in frames:
            assert sender.send(frame)
        assert sender.bytes_sent < 3 * 64 * 96 * 3
    got = list(results)
    assert [r.index for r in got] == [0, 1, 2]
    with pytest.raises(curve.CurveError, match="reachable from the network"):
        FrameSender("tcp://10.1.2.3:5000", "api")  # no keys, not --insecure


def test_ingest_takes_only_external_streams_with_the_hubs_mode_and_rebases_capture_time(clip):
    """A raw peer on the ingest port: frames of a stream the hub reads itself, of an unknown
    stream, with a broken JPEG or after the end are dropped and counted; the hub's mode wins;
    a frame's age on arrival (its t_wall) carries into the hub's clock, clamped at 0."""
    port = free_port()
    cfg = {
        "sources": [{"uri": clip, "id": "local"},
                    {"uri": "remote:cam0", "id": "cam0", "kind": "external", "mode": "lossless"},
                    {"uri": "remote:cam1", "id": "cam1", "kind": "external"}],
        "ingest": {"endpoint": f"tcp://127.0.0.1:{port}"},
        "model": {"backend": "simulate", "simulate_ms": 2},
        "metrics": {"interval_s": 0},
    }  # fmt: skip
    pipe = Pipeline(cfg, log_summary=False)
    results = pipe.results(timeout=15)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(pipe.endpoints["ingest"])
    image = moving_scene(0, 32, 48)

    def frame(stream: str, age_s: float, encoding: str = "jpeg", **extra) -> list:
        header = {"kind": "frame", "stream": stream, "index": 7, "t_mono": -5.0,
                  "t_wall": time.time() - age_s, "mode": "live", "source_shape": [32, 48],
                  "position": {"frame": 3, "note": "x" * 1000}, **extra}  # fmt: skip
        return framecodec.encode(header, image, encoding)

    good = messages.decode(frame("cam0", 0))
    truncated = messages.encode(good.header, {"jpeg": good.arrays["jpeg"][:-10].copy()})
    sent = [
        frame("local", 0),  # the hub's own file source: not a remote stream
        frame("nobody", 0),
        truncated,  # a JPEG cut short
        frame("cam0", 2.0),  # 2 s old: waited 2 s before the hub got it
        frame("cam0", -100.0, "raw"),  # from a clock 100 s ahead: age 0
        messages.encode(messages.eos_header("cam0")),
        messages.encode(messages.eos_header("cam0")),  # a repeated end: ignored
        frame("cam0", 0),  # after its end (while cam1 goes on)
        messages.encode(messages.eos_header("cam1")),
    ]
    try:
        for parts in sent:
            push.send_multipart(parts)
        got = [r for r in results if r.stream == "cam0"]
    finally:
        push.close(0)
        ctx.term()
    assert [r.index for r in got] == [0, 1]  # the hub's numbering
    assert [r.header["mode"] for r in got] == ["lossless", "lossless"]  # the hub's, not "live"
    assert got[0].header["position"] == {"frame": 3, "remote_index": 7}  # the long text dropped
    assert 2000 <= got[0].wait_ms["ingest"] < 2000 + 1000
    assert 0 <= got[1].wait_ms["ingest"] < 1000
    now = time.monotonic()
    assert now - 3.0 < got[0].t_capture < now - 2.0  # the capture, in the hub's clock
    assert got[0].latency_ms >= 2000
    summary = pipe.join()
    assert summary.outcome == "finished"
    assert summary.frames == {"local": FRAMES, "cam0": 2, "cam1": 0}
    assert summary.stages["ingest"]["malformed"] == 4


# ---- CURVE ----------------------------------------------------------------------------------


def test_curve_an_allowed_camera_delivers_and_one_with_another_key_gets_nothing(
    clip, tmp_path, procs
):
    keys, allow = tmp_path / "keys", tmp_path / "allow"
    allow.mkdir()
    hub_public, hub_secret = curve.generate(str(keys), "hub")
    cam_public, cam_secret = curve.generate(str(keys), "cam")
    _, intruder_secret = curve.generate(str(keys), "intruder")
    os.link(cam_public, allow / "cam.key")  # only the camera's public key is allowed
    port = free_port()
    pipe = hub(port, {"cam0": "lossless"}, curve={"secret": hub_secret, "allow": str(allow)})
    results = pipe.results(timeout=15)
    try:
        with LogWatch("pipeline.curve", "ingest: refused a peer") as refused:
            wrong_key = ["--curve-secret", intruder_secret, "--curve-server", hub_public]
            intruder = capture(procs, port, clip, "--id", "cam0", "--max-frames", "2", *wrong_key)
            # and one without keys: a plain peer completes no handshake with a CURVE server
            plain = capture(procs, port, clip, "--id", "cam0", "--max-frames", "2")
            assert refused.seen.wait(15), "the hub did not log the refused camera"
        cam = capture(procs, port, clip, "--id", "cam0", "--curve-secret", cam_secret,
                      "--curve-server", hub_public)  # fmt: skip
        for p in (intruder, plain):  # SIGTERM: they still try to end the stream, for 5 s
            wait_for_line(p, "capture cam0: ")  # running (its signal handlers are in place)
            assert p.poll() is None  # waiting for a hub that never took a frame
            p.send_signal(signal.SIGTERM)
        got = [r.index for r in results]
        code, out, err = finish(cam)
        assert code == 0, err
        assert summary_of(out)[1:3] == (FRAMES, 0)
        assert got == list(range(FRAMES))
        for p in (intruder, plain):
            code, out, err = finish(p)
            assert code == 143 and "the hub did not take the end of the stream" in err
            assert summary_of(out)[1] == 0  # no frame was handed to a hub
    finally:
        if pipe.summary().outcome == "running":
            pipe.stop()
            pipe.join(15)
    summary = pipe.summary()
    assert summary.outcome == "finished" and summary.stages["ingest"]["malformed"] == 0
    assert summary.stages["ingest"]["received"] == FRAMES + 1  # the camera's frames and end only


def test_a_network_facing_ingest_needs_keys_or_insecure(clip, procs):
    port = free_port()
    p = depthstream(procs, "--ingest", f"tcp://0.0.0.0:{port}", "--remote", "cam0", *SIMULATE)
    # the same for a camera connecting to a hub on the network
    cam = capture(procs, port, clip, "--hub", f"tcp://10.1.2.3:{port}")
    code, _, err = finish(p)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err
    assert f"ingest: tcp://0.0.0.0:{port} is reachable from the network" in lines[0]
    code, _, err = finish(cam)
    assert code == 2 and err.count("\n") == 1 and "reachable from the network" in err
    pipe = hub(port, {"cam0": "lossless"}, host="0.0.0.0", curve={"insecure": True}).start()
    try:
        assert pipe.endpoints["ingest"] == f"tcp://0.0.0.0:{port}"
    finally:
        pipe.stop()
        pipe.join(15)


def test_bad_source_gives_the_main_commands_error_and_exit_code(tmp_path, procs):
    missing = str(tmp_path / "missing.mp4")
    main = depthstream(procs, "--source", missing, *SIMULATE)
    code, out, err = finish(capture(procs, free_port(), missing))
    main_code, _, main_err = finish(main)
    assert code == main_code == 3
    line = f"error: source source0: video file not found: {missing}"
    assert line in main_err.splitlines() and err.strip() == line and out == ""


# ---- faults ---------------------------------------------------------------------------------


def test_a_restarted_hub_gets_the_same_camera_process_frames_again(tmp_path, procs):
    """Live: the hub stops mid-stream and a new one binds the same port; the camera process,
    never restarted, drops frames meanwhile (never waits) and reconnects by itself. Ctrl-C on the
    camera then ends the stream at the hub."""
    long_clip = write_clip(tmp_path / "long.avi", 300, HEIGHT, WIDTH, fps=30)
    port = free_port()
    first = hub(port, {"cam0": "live"})
    cam = capture(procs, port, long_clip, "--id", "cam0", "--mode", "live", "--pace")
    before = []
    results = first.results(timeout=15)
    for r in results:
        before.append(r.header["position"]["remote_index"])
        if len(before) == 3:
            break
    results.close()  # leaving the loop stops this hub
    assert first.summary().outcome == "stopped"
    second = hub(port, {"cam0": "live"})
    after = []
    for r in second.results(timeout=15):
        after.append(r.header["position"]["remote_index"])
        if len(after) == 3:
            assert cam.poll() is None  # the same process
            cam.send_signal(signal.SIGINT)  # ends the stream: this loop ends with it
    code, out, err = finish(cam)
    assert code == 130 and "SIGINT received" in err
    stream, sent, dropped, _, _ = summary_of(out)
    assert sent >= len(before) + len(after)
    assert dropped > 0  # while no hub listened (>= 100 ms, ZeroMQ's reconnect interval): 30 fps
    assert len(after) >= 3 and min(after) > max(before)  # later frames, at the new hub
    assert after == sorted(after)
    summary = second.summary()
    assert summary.outcome == "finished" and summary.frames == {"cam0": len(after)}
    assert depthstream_threads() == []
