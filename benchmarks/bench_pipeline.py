"""Pipeline benchmarks: what the streaming machinery costs on top of the model.

1. throughput: the pipeline on a lossless video vs the bare engine, same engine and input size,
   measured alternately for --rounds rounds (this VM's speed drifts by 20-40% between runs, so
   each pipeline run is compared with the bare run just before it; the median ratio is reported)
   (target: pipeline >= 90% of the model, i.e. capture, pre/post and transport are hidden);
2. hop: 1280x720 RGB frames between two stage threads through the message codec (zero-copy
   inproc; target >= 5000 frames/s), with ipc and tcp for comparison;
3. live latency: a live source faster than the model, end-to-end p95 vs the model's latency
   (target: p95 <= 2x; the source is a 30 fps camera, or 2.5x a faster model).

    python benchmarks/bench_pipeline.py                      # tiny random model, small settings
    python benchmarks/bench_pipeline.py --preset default --input-size 480x640 --frames 40
    python benchmarks/bench_pipeline.py --checkpoint DIR --backend auto --max-batch 2

Prints a table and writes JSON (default benchmarks/results/pipeline.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import threading
import time

# As run_stream.py does (see there): the pipeline is measured as the program runs it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import zmq  # noqa: E402

import glpn.engine  # noqa: E402
from glpn import PRESETS  # noqa: E402
from glpn.hardware import thread_page_faults, tune_cpu_allocator  # noqa: E402
from glpn.testing import parse_size, random_checkpoint, write_clip  # noqa: E402
from pipeline import Pipeline, messages  # noqa: E402
from pipeline.inference import FAULT_WARMUP_BATCHES  # noqa: E402


def engine_factory(args, checkpoint):
    def build():
        return glpn.engine.load(
            checkpoint,
            backend=args.backend,
            precision=args.precision,
            device=args.device,
            input_size=args.input_size,
            batch_sizes=tuple(sorted({1, args.max_batch})),
        )

    return build


def bench_model(factory, input_size, batch: int, calls: int) -> dict:
    engine = factory()
    x = np.random.default_rng(0).random((batch, 3, *input_size), dtype=np.float32)
    for _ in range(2):  # warm-up
        engine(x)
    times = []
    faults = thread_page_faults() or 0
    for _ in range(calls):
        t0 = time.perf_counter()
        engine(x)
        times.append(time.perf_counter() - t0)
    faults = (thread_page_faults() or 0) - faults
    x1 = x[:1]
    engine(x1)
    single = []
    for _ in range(max(3, calls // 2)):
        t0 = time.perf_counter()
        engine(x1)
        single.append(time.perf_counter() - t0)
    return {
        "engine": engine.describe() if hasattr(engine, "describe") else type(engine).__name__,
        "batch": batch,
        "fps": batch / statistics.median(times),
        "latency_ms_batch1": statistics.median(single) * 1000,
        "page_faults_per_call": faults / calls,  # calling thread only
    }


def bench_pipeline_throughput(args, factory, checkpoint, clip: str) -> dict:
    cfg = {
        "sources": [{"uri": clip, "id": "clip", "mode": "lossless"}],
        "model": {
            "checkpoint": checkpoint,
            "input_size": list(args.input_size),
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
        },
        "metrics": {"interval_s": 0},
    }
    t_start = time.perf_counter()
    stamps = []
    pipe = Pipeline(cfg, engine_factory=factory)
    for _ in pipe:
        stamps.append(time.perf_counter())
    summary = pipe.summary()
    inference = summary.stages["inference"]["latency_ms"]
    events = summary.stages["inference"].get("events", {})
    n = len(stamps)
    # steady state: skip the first results (warm-up of the engine and the first batches)
    skip = min(max(2 * args.max_batch, 2), n // 3)
    steady = (n - 1 - skip) / (stamps[-1] - stamps[skip])
    return {
        "frames": n,
        "fps": steady,
        # share of the time the model was computing: 1.0 = capture, pre/post and transport are
        # fully hidden (what is left is the model itself running slower next to them)
        "model_busy": steady * inference["p50"] / 1000 / args.max_batch,
        "inference_in_pipeline_ms": inference,
        "fps_including_startup": n / (stamps[-1] - t_start),
        # inference thread, after its first batches; ~0 when the allocator keeps freed memory
        "page_faults_per_batch": events.get("page_faults", 0)
        / max(1, events.get("batches", 0) - FAULT_WARMUP_BATCHES),
        "e2e_ms": summary.e2e_ms,
        "stages": {
            k: {"p50": v["latency_ms"]["p50"], "p95": v["latency_ms"]["p95"]}
            for k, v in summary.stages.items()
        },  # fmt: skip
    }


def bench_hop(kind: str, frames: int, shape=(720, 1280, 3)) -> dict:
    """PUSH -> PULL between two threads with the pipeline's codec (header + zero-copy buffer)."""
    ctx = zmq.Context()
    if kind == "inproc":
        endpoint = "inproc://hop"
    elif kind == "ipc":
        endpoint = f"ipc://{tempfile.mkdtemp()}/hop"
    else:
        endpoint = "tcp://127.0.0.1:*"
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 4)
    pull.bind(endpoint)
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    images = [np.full(shape, i, np.uint8) for i in range(4)]
    header = {"kind": "frame", "stream": "hop", "index": 0, "t_mono": 0.0, "t_wall": 0.0,
              "mode": "lossless", "source_shape": list(shape[:2])}  # fmt: skip

    def sender():
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 4)
        push.connect(endpoint)
        for i in range(frames):
            header["index"] = i
            messages.send(push, header, {"image": images[i % 4]})
        push.close(linger=-1)

    t = threading.Thread(target=sender)
    t0 = time.perf_counter()
    t.start()
    checksum = 0
    for _ in range(frames):
        msg = messages.recv(pull)
        checksum += int(msg.arrays["image"][0, 0, 0])  # touch the data, as a stage would
    elapsed = time.perf_counter() - t0
    t.join()
    pull.close(0)
    ctx.term()
    assert checksum == sum(i % 4 for i in range(frames))
    return {"transport": kind, "frames": frames, "fps": frames / elapsed}


def live_source_fps(model_latency_ms: float) -> float:
    """A 30 fps camera, or 2.5x the model's rate (at most 60) if the model is faster than that."""
    return min(60.0, max(30.0, 2.5 * 1000.0 / model_latency_ms))


def bench_live(args, factory, checkpoint, clip: str, model_latency_ms: float) -> dict:
    fps = live_source_fps(model_latency_ms)
    cfg = {
        "sources": [{"uri": clip, "id": "live", "mode": "live", "pace": True, "fps": fps}],
        "model": {"checkpoint": checkpoint, "input_size": list(args.input_size), "max_batch": 1},
        "metrics": {"interval_s": 0},
    }
    latencies = []
    pipe = Pipeline(cfg, engine_factory=factory)
    for r in pipe:
        latencies.append(r.latency_ms)
    summary = pipe.summary()
    lat = np.array(latencies[2:] or latencies)  # skip engine warm-up in the first results
    p95 = float(np.percentile(lat, 95))
    return {
        "source_fps": fps,
        "delivered": len(latencies),
        "captured": summary.stages["capture:live"]["processed"],
        "dropped": sum(s["dropped"] for s in summary.stages.values()),
        "e2e_p50_ms": float(np.percentile(lat, 50)),
        "e2e_p95_ms": p95,
        "model_latency_ms": model_latency_ms,
        "p95_over_model": p95 / model_latency_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint directory (default: random --preset weights)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--input-size", type=parse_size, default=(224, 320), help="HxW, /32")
    ap.add_argument("--source-size", type=parse_size, default=(240, 320), help="HxW of the clip")
    ap.add_argument("--frames", type=int, default=120, help="frames through the pipeline")
    ap.add_argument("--max-batch", type=int, default=1)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--model-calls", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="alternating bare/pipeline rounds")
    ap.add_argument("--hop-frames", type=int, default=5000)
    ap.add_argument("--live-seconds", type=float, default=8.0)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "pipeline.json"))
    args = ap.parse_args()

    # As run_stream.py does, before any thread allocates (see glpn.hardware.tune_cpu_allocator).
    tune_cpu_allocator()
    tmp = tempfile.TemporaryDirectory(prefix="bench-pipeline-")
    checkpoint = args.checkpoint or random_checkpoint(os.path.join(tmp.name, "ckpt"), args.preset)
    factory = engine_factory(args, checkpoint)
    h, w = args.source_size
    clip = write_clip(os.path.join(tmp.name, "clip.avi"), args.frames, h, w)

    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, {platform.processor()}")
    hops = [bench_hop(kind, n) for kind, n in
            (("inproc", args.hop_frames), ("ipc", args.hop_frames // 4),
             ("tcp", args.hop_frames // 4))]  # fmt: skip
    # The machine's speed drifts: measure the bare model right before each pipeline run.
    rounds = []
    for r in range(args.rounds):
        model = bench_model(factory, args.input_size, args.max_batch, args.model_calls)
        pipe = bench_pipeline_throughput(args, factory, checkpoint, clip)
        rounds.append({"model": model, "pipeline": pipe, "ratio": pipe["fps"] / model["fps"]})
        print(f"round {r + 1}: model {model['fps']:.2f} fps, pipeline {pipe['fps']:.2f} fps "
              f"({rounds[-1]['ratio']:.0%})", flush=True)  # fmt: skip
    ratios = [r["ratio"] for r in rounds]
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]  # the upper median
    model, pipe, ratio = median["model"], median["pipeline"], median["ratio"]
    model_live = bench_model(factory, args.input_size, 1, args.model_calls)
    latency = model_live["latency_ms_batch1"]
    live_frames = max(20, int(args.live_seconds * live_source_fps(latency)))
    live_clip = write_clip(os.path.join(tmp.name, "live.avi"), live_frames, h, w)
    live = bench_live(args, factory, checkpoint, live_clip, latency)

    rows = [
        ("model (bare engine)", f"{model['fps']:.1f} fps", f"batch {model['batch']}, "
         f"{model['latency_ms_batch1']:.1f} ms/frame at batch 1", ""),
        ("pipeline, lossless", f"{pipe['fps']:.1f} fps", f"{ratio:.0%} of the model (median of "
         f"{len(rounds)}: {min(ratios):.0%}-{max(ratios):.0%}); "
         f"{pipe['inference_in_pipeline_ms']['p50']:.0f} ms/call",
         "PASS" if ratio >= 0.9 else "below 90%"),
    ]  # fmt: skip
    for hop in hops:
        target = "PASS" if hop["fps"] >= 5000 else "below 5000"
        rows.append((f"1280x720 hop, {hop['transport']}", f"{hop['fps']:.0f} fps", "",
                     target if hop["transport"] == "inproc" else ""))  # fmt: skip
    rows.append((
        "live e2e latency", f"p95 {live['e2e_p95_ms']:.0f} ms",
        f"{live['p95_over_model']:.2f}x model ({live['source_fps']:.0f} fps source, "
        f"{live['dropped']}/{live['captured']} dropped)",
        "PASS" if live["p95_over_model"] <= 2.0 else "above 2x",
    ))  # fmt: skip
    print(f"\nengine: {model['engine']}, input {args.input_size[0]}x{args.input_size[1]}, "
          f"source {h}x{w}, max_batch {args.max_batch}")  # fmt: skip
    print(f"{'benchmark':<24}{'result':>14}  {'detail':<62}{'target'}")
    for name, value, detail, target in rows:
        print(f"{name:<24}{value:>14}  {detail:<62}{target}")

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "zmq": zmq.zmq_version(),
            "opencv": cv2.__version__,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        },
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()},
        "model": model,
        "pipeline": pipe,
        "pipeline_over_model": ratio,  # median round
        "rounds": rounds,
        "model_before_live": model_live,
        "hop": hops,
        "live": live,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
