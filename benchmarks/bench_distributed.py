"""Scale-out (issue 12) on loopback tcp: a hub (`depthstream --workers`) and worker processes.

1. throughput of a hub with 1, 2, 4, 8 workers (`--backend simulate`, 40 ms/batch, batch 1) on a
   lossless clip (summary fps: start-up excluded), its ratio to N x one worker, and the saturation
   rate (8 workers at 0 ms); 2. CPU ms per frame of the hub process (wait4 rusage less its CPU time
   at its start line, less a 1-frame run's after its start line: what every run costs), of its
   stages' threads (summary cpu_s) and of all workers; 3. bytes per frame message on each link
   (camera raw vs JPEG, BATCH uint8 vs float32, RESULT); 4. a 720p frame hop PUSH -> PULL with and
   without CURVE; 5. a worker killed (SIGKILL) or hung (SIGSTOP) mid-stream: detection, output
   stall, completeness, time; 6. the real engine (small default GLPN, random weights, eager fp32)
   on 1 and 2 workers. Prints tables, writes benchmarks/results/distributed.json (or --out).

    python benchmarks/bench_distributed.py [--frames 100] [--sizes 240x320,480x640] [--skip-real]"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import yaml
import zmq

import pipeline
from glpn.processing import input_size_for, prepare_frames
from glpn.testing import machine_info, moving_scene, parse_size, random_checkpoint, write_clip
from pipeline import curve, framecodec, pool_protocol
from pipeline.client import DepthSubscriber
from pipeline.testing import Program

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SIM_MS = 40.0  # the simulated engine's batch time
SCENES: dict[tuple[int, int, int], np.ndarray] = {}  # scene(): (i % 8, h, w) -> moving_scene


def hub_run(n: int, tmp: str, hub_args: Sequence[str], worker_args: Sequence[str],
            *, expect: int, worker_env: dict | None = None,
            during: Callable | None = None) -> dict:  # fmt: skip
    """A hub (`hub_args`, {hub} its workers endpoint) with `n` fresh workers w1..wn on loopback tcp,
    `expect` frames: fps, CPU s since the hub's start line (hub; workers), stages' cpu_s/frame."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    endpoint, workers, hub = f"tcp://127.0.0.1:{listener.getsockname()[1]}", [], None
    try:
        for i in range(n):
            args = ["worker", "--hub", endpoint, "--name", f"w{i + 1}", "--timeout", "60"]
            workers.append(Program([*args, *worker_args], cwd=tmp, env=worker_env))
        # A worker connects to the free port once its engine is built; closed, ZeroMQ retries every
        # 100 ms, READY queued until the hub answers (--timeout 60): all join as the hub starts.
        listener.settimeout(180)  # the real engine's build on a busy machine
        for conn in [*[listener.accept()[0] for _ in range(n)], listener]:
            conn.close()
        path = os.path.join(tmp, "summary.json")
        args = [a.replace("{hub}", endpoint) for a in hub_args]
        hub = Program([*args, "--metrics-interval", "0", "--summary-json", path], cwd=tmp)
        t_start = hub.wait_for(r"depthstream: \d+ stream", 120)[0]
        startup = [p.cpu_now() for p in (hub, *workers)]  # frames flow from here on
        joined = max(hub.wait_for(rf"worker w{i + 1} joined", 60)[0] for i in range(n))
        extra = during(hub, workers) if during else {}
        if hub.wait(600) != 0:
            raise RuntimeError(f"hub failed:\n{hub.output}")
        for w in workers:
            os.kill(w.proc.pid, signal.SIGTERM)  # the killed one is a zombie until reaped
            w.wait(30)
        with open(path, encoding="utf-8") as f:
            s = json.load(f)
        if s["outcome"] != "finished" or sum(s["frames"].values()) != expect:
            raise RuntimeError(f"{s['outcome']}, {s['frames']} frames, {expect} expected")
    finally:
        listener.close()
        for p in [*workers, *([hub] if hub else [])]:
            p.close()  # after an error on the way: nothing is left running
    cpu = [p.cpu_s - c for p, c in zip((hub, *workers), startup)]
    stages = 1000 * sum(v["cpu_s"] for v in s["stages"].values()) / expect
    return {"workers": n, "frames": expect, "fps": s["fps"], "running_s": s["running_s"],
            "join_lag_ms": round(1000 * (joined - t_start), 1), "hub_cpu_s": round(cpu[0], 3),
            "stages_cpu_ms": round(stages, 3), "workers_cpu_s": round(sum(cpu[1:]), 3),
            "per_worker": {w["name"]: w["frames"] for w in s["workers"]}, **extra}  # fmt: skip


def clip_hub(clip: str, frames: int) -> list[str]:
    return ["--source", clip, "--max-frames", str(frames), "--workers", "{hub}"]


def sim(ms: float) -> list[str]:
    return ["--backend", "simulate", "--simulate-ms", str(ms)]


def throughput(clip: str, size: tuple[int, int], counts: list[int], frames: int, tmp: str) -> dict:
    runs = []
    base = hub_run(1, tmp, clip_hub(clip, 1), sim(0), expect=1)  # what any run costs
    for n, ms in [(n, SIM_MS) for n in counts] + [(max(counts), 0.0)]:
        r = hub_run(n, tmp, clip_hub(clip, n * frames), sim(ms), expect=n * frames)
        ratio = round(r["fps"] / (n * runs[0]["fps"]), 3) if runs else 1.0
        more = 1000 / (n * frames - 1)  # CPU ms per frame beyond the 1-frame run
        w = r["workers_cpu_s"] - n * base["workers_cpu_s"]
        r.update(clip=list(size), simulate_ms=ms, ratio=ratio if ms else None,
                 hub_cpu_ms=round(more * (r["hub_cpu_s"] - base["hub_cpu_s"]), 3),
                 worker_cpu_ms=round(more * w, 3))  # fmt: skip
        runs.append(r)
        print(f"{size[0]}x{size[1]}: {n} workers at {ms:g} ms: {r['fps']:.1f} fps", flush=True)
    return {"size": list(size), "model_input": list(input_size_for(*size)), "base": base,
            "runs": runs[:-1], "saturation": runs[-1]}  # fmt: skip


def camera_message(image: np.ndarray, encoding: str) -> list:
    """A frame message as the capture stage + uplink make it."""
    now = time.monotonic()
    header = {"kind": "frame", "stream": "cam", "index": 123, "t_mono": now, "t_wall": time.time(),
              "mode": "live", "source_shape": list(image.shape[:2]), "position": 4.1, "fps": 30.0,
              "stage_ms": {"capture": 1.234}, "t_last": now}  # fmt: skip
    return framecodec.encode(header, image, encoding)


def link_bytes(name: str, images: list[np.ndarray]) -> dict:
    """Median bytes per frame message on each link for these BGR frames."""
    size = input_size_for(*images[0].shape[:2])
    rows: dict[str, list[int]] = {k: [] for k in ("raw", "jpeg", "batch_uint8", "batch_float32")}
    for image in images:
        for enc in ("raw", "jpeg"):
            rows[enc].append(framecodec.message_bytes(camera_message(image, enc)))
        pixels = np.asarray(prepare_frames([image], size, bgr=True))
        for dtype, values in (pool_protocol.pack_pixels(pixels), ("float32", pixels)):
            body = {"id": 7, "frames": [{"stream": "cam", "index": 123}],
                    "pixels": {"dtype": dtype, "shape": list(values.shape)}}  # fmt: skip
            parts = pool_protocol.encode(pool_protocol.BATCH, body, values)
            rows[f"batch_{dtype}"].append(framecodec.message_bytes(parts))
    if not rows["batch_uint8"]:
        raise RuntimeError(f"{name}: pack_pixels did not send uint8 pixels")
    depth = np.zeros((1, *size), np.float32)
    result = pool_protocol.encode(pool_protocol.RESULT, {"id": 7, "ms": 40.0, "shape": [1, *size]},
                                  depth)  # fmt: skip
    out = {k: int(np.median(v)) for k, v in rows.items()}
    return {"frames": name, "size": list(images[0].shape[:2]), "model_input": list(size), **out,
            "jpeg_x": round(out["raw"] / out["jpeg"], 2),
            "result_float32": framecodec.message_bytes(result)}  # fmt: skip


def bytes_table(clip: str, count: int = 30) -> list[dict]:
    cap, images = cv2.VideoCapture(clip), []
    while len(images) < count and (frame := cap.read()[1]) is not None:
        images.append(frame)
    demo = cv2.VideoCapture(os.path.join(os.path.dirname(pipeline.__file__), "assets", "demo.mp4"))
    road = cv2.resize(demo.read()[1], (1280, 720), interpolation=cv2.INTER_LINEAR)
    cap.release(), demo.release()
    return [link_bytes(f"clip (median of {len(images)} frames)", images),
            link_bytes("720p synthetic scene", [moving_scene(0, 720, 1280)]),
            link_bytes("720p demo road scene", [road])]  # fmt: skip


def hop_ms(parts: list, keys: bool, n: int) -> list[float]:
    """ms of each of n sends PUSH -> PULL (two contexts, loopback tcp), one at a time."""
    a, b = zmq.Context(), zmq.Context()
    push, pull = a.socket(zmq.PUSH), b.socket(zmq.PULL)
    pull.rcvtimeo, times = 10_000, []
    try:
        if keys:
            server_keys, client_keys = curve.ephemeral_pair()
            curve.server(pull, server_keys, "bench-hop")
            curve.client(push, client_keys)
        push.connect(f"tcp://127.0.0.1:{pull.bind_to_random_port('tcp://127.0.0.1')}")
        for _ in range(n + 5):  # the first 5: the connection and its handshake
            t0 = time.perf_counter()
            push.send_multipart(parts, copy=False)
            pull.recv_multipart(copy=False)
            times.append(1000 * (time.perf_counter() - t0))
    finally:
        push.close(0), pull.close(0)
        curve.stop_authenticator(b)
        a.term(), b.term()
    return times[5:]


def hops(n: int) -> list[dict]:
    rows = []
    for enc in ("raw", "jpeg"):
        parts = camera_message(moving_scene(0, 720, 1280), enc)
        ms = {tag: hop_ms(parts, keys, n) for tag, keys in (("plain", False), ("curve", True))}
        rows.append({"frame": f"720p {enc}", "bytes": framecodec.message_bytes(parts),
                     **{f"{tag}_p{q}_ms": round(float(np.percentile(t, q)), 3)
                        for tag, t in ms.items() for q in (50, 95)}})  # fmt: skip
    return rows


def fault_run(clip: str, frames: int, after: int, sig: int | None, tmp: str) -> dict:
    """Hub + 2 workers at 40 ms; `sig` to w2 once `after` results were published."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        publish = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    arrivals: list[tuple[float, int]] = []
    enough, sub = threading.Event(), DepthSubscriber(publish, until_end=True, timeout=15)

    def observe() -> None:
        for header, _ in sub:
            arrivals.append((time.monotonic(), header["index"]))
            if len(arrivals) >= after:
                enough.set()

    with open(os.path.join(tmp, "hub.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump({"sources": [{"id": "clip", "uri": clip, "mode": "lossless",
                                     "max_frames": frames}], "model": {"backend": "simulate"},
                        "outputs": {"zmq": {"endpoint": publish, "wait_subscribers": 1,
                                            "hwm": 10_000}}}, f)  # fmt: skip

    def inject(hub: Program, workers: list[Program]) -> dict:
        if sig is None:
            return {}
        if not enough.wait(60):
            raise RuntimeError(f"no {after} results:\n{hub.output}")
        os.kill(workers[1].proc.pid, sig)
        t_sig = time.monotonic()
        t_lost, line = hub.wait_for(r"worker w2 lost", 30, after=t_sig)
        if sig == signal.SIGSTOP:
            os.kill(workers[1].proc.pid, signal.SIGKILL)  # the hung worker, cleaned up
        requeued = re.search(r"(\d+) frames re-queued", line)
        return {"t_signal": t_sig, "detect_s": round(t_lost - t_sig, 3),
                "requeued": int(requeued[1]) if requeued else None, "lost_line": line}  # fmt: skip

    (thread := threading.Thread(target=observe, daemon=True)).start()
    try:
        r = hub_run(2, tmp, ["--config", f.name, "--workers", "{hub}"], sim(SIM_MS), expect=frames,
                    during=inject)  # fmt: skip
    finally:
        thread.join(30)
        sub.close()
    times = [t for t, _ in arrivals]
    t_sig = r.pop("t_signal", times[0])
    gaps = [b - a for a, b in zip(times, times[1:]) if b > t_sig]
    r.update(case={None: "undisturbed", signal.SIGKILL: "SIGKILL", signal.SIGSTOP: "SIGSTOP"}[sig],
             in_order_once=[i for _, i in arrivals] == list(range(frames)),
             stall_s=round(max(gaps), 3) if gaps else None)  # fmt: skip
    return r


def real_engine(clip: str, size: tuple[int, int], frames: int, tmp: str) -> list[dict]:
    ckpt = random_checkpoint(os.path.join(tmp, "ckpt"), preset="default", seed=2)
    args = ["--checkpoint", ckpt, "--backend", "eager", "--precision", "fp32",
            "--input-size", "x".join(map(str, input_size_for(*size)))]  # fmt: skip
    rows = []
    for n, threads in ((1, None), (2, None), (1, 1), (2, 1)):
        env = {"OMP_NUM_THREADS": str(threads)} if threads else None
        r = hub_run(n, tmp, clip_hub(clip, frames), args, expect=frames, worker_env=env)
        r.update(torch_threads=threads or "default", ratio=round(r["fps"] / rows[0]["fps"], 3)
                 if rows else 1.0, worker_cpu_ms=1e3 * r["workers_cpu_s"] / frames)  # fmt: skip
        rows.append(r)
        print(f"real engine: {n} workers, threads {r['torch_threads']}: {r['fps']:.2f} fps")
    return rows


def scene(i: int, h: int, w: int) -> np.ndarray:
    """moving_scene(i), from 8 cached scenes (a long clip is written quickly)."""
    if (i % 8, h, w) not in SCENES:
        SCENES[i % 8, h, w] = moving_scene(i % 8, h, w)
    return np.roll(SCENES[i % 8, h, w], 3 * (i - i % 8), axis=1)


def table(title: str, rows: list[dict], keys: str) -> None:
    """Print the values of `keys` (space-separated) of each row under them, right-aligned: sizes
    as HxW, floats with 2 decimals, None as -."""

    def text(v: object) -> str:
        if isinstance(v, list):
            return "x".join(map(str, v))
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [keys.split(), *[[text(r.get(k)) for k in keys.split()] for r in rows]]
    widths = [max(len(r[i]) for r in cells) + 2 for i in range(len(cells[0]))]
    print(f"\n{title}")
    for r in cells:
        print("".join(c.rjust(w) for c, w in zip(r, widths)))


def report(res: dict) -> None:
    table("throughput, simulate engine, batch 1, lossless clip; fps over the running time; CPU ms "
          "per frame: hub process (less start-up), its stages' threads, all workers",
          [r for t in res["throughput"] for r in [*t["runs"], t["saturation"]]],
          "clip workers simulate_ms frames fps ratio hub_cpu_ms stages_cpu_ms worker_cpu_ms "
          "join_lag_ms")  # fmt: skip
    table("bytes per frame message on each link (BATCH/RESULT at the model input; JPEG q90)",
          res["bytes"], "frames size raw jpeg jpeg_x model_input batch_uint8 batch_float32 "
          "result_float32")  # fmt: skip
    table(f"720p frame hop PUSH->PULL, loopback tcp, two contexts, {res['settings']['hops']} "
          "frames", res["hops"], "frame bytes plain_p50_ms plain_p95_ms curve_p50_ms "
          "curve_p95_ms")  # fmt: skip
    table("faults: hub + 2 workers at 40 ms, w2 signalled mid-stream; stall: the longest gap in "
          "the output after it", res["faults"], "case detect_s requeued stall_s running_s "
          "vs_undisturbed in_order_once")  # fmt: skip
    table("real engine: small default GLPN, random weights, eager fp32; the workers share this "
          "machine's cores", res["real"], "workers torch_threads frames fps ratio "
          "worker_cpu_ms per_worker")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, kind, default, what in (
        ("--frames", int, 100, "frames per worker in a throughput run (~4 s a run)"),
        ("--sizes", str, "240x320,480x640", "clip sizes HxW (the hub saturates sooner at 480x640)"),
        ("--workers", str, "1,2,4,8", "worker counts"),
        ("--hops", int, 100, "720p frames per hop measurement"),
        ("--fault-frames", int, 200, "frames of a fault run"),
        ("--kill-after", int, 40, "results before the signal"),
        ("--real-frames", int, 96, "frames of a real-engine run"),
        ("--out", str, os.path.join(RESULTS, "distributed.json"), "JSON path"),
    ):  # fmt: skip
        p.add_argument(flag, type=kind, default=default, help=f"{what} (default {default})")
    p.add_argument("--skip-real", action="store_true", help="no real-engine runs")
    args = p.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    counts = sorted(int(n) for n in args.workers.split(","))
    res: dict = {"machine": machine_info(), "settings": {**vars(args), "simulate_ms": SIM_MS,
                 "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}  # fmt: skip
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        n = max(max(counts) * args.frames, args.fault_frames, args.real_frames)
        clips = {(h, w): write_clip(os.path.join(tmp, f"clip_{h}x{w}.avi"), n, h, w, frame=scene)
                 for h, w in sizes}  # fmt: skip
        res["throughput"] = [throughput(clips[s], s, counts, args.frames, tmp) for s in sizes]
        res["bytes"] = bytes_table(clips[sizes[0]])
        res["hops"] = hops(args.hops)
        res["faults"] = [fault_run(clips[sizes[0]], args.fault_frames, args.kill_after, sig, tmp)
                         for sig in (None, signal.SIGKILL, signal.SIGSTOP)]  # fmt: skip
        res["real"] = [] if args.skip_real else real_engine(
            clips[sizes[0]], sizes[0], args.real_frames, tmp)  # fmt: skip
    for f in res["faults"]:
        f["vs_undisturbed"] = round(f["running_s"] / res["faults"][0]["running_s"], 3)
    res.update(elapsed_s=round(time.monotonic() - t0, 1), load_average_end=os.getloadavg())
    report(res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(res, f, indent=2, default=str)
    print(f"\n{res['elapsed_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
