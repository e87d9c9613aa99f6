"""Model throughput: the transformers baseline vs depthstream's engines, same weights and frames.

    python benchmarks/bench_model.py                # default + kitti (MiT-b4), 480x640 and 352x1216
    python benchmarks/bench_model.py --quick        # small config, 480x640, a few iterations
    python benchmarks/bench_model.py --configs kitti --sizes 480x640 --backends eager:fp32

Rows:
  (a) transformers: GLPNImageProcessorPil + GLPNForDepthEstimation fp32, one frame at a time, plus
      post_process_depth_estimation back to the frame size: what a user writes from the model card.
      Measured first, before any engine exists (engines tune the process's allocator, see
      glpn.hardware.tune_cpu_allocator); "(a) + allocator" repeats it afterwards, for transparency.
  (b) every requested backend x precision through glpn.engine, "model" (engine(pixel_values)) and
      "e2e" (prepare_frames + engine + resize_depth back to the frame size), batch 1 and --batch.
      "eager-unfused": eager fp32 on GLPNDepth's own graph (fold=False), what the fused model buys.
Weights: glpn.synthetic.spread_init_ (random, but the depth varies over most of 0..max_depth).
Frames: glpn.synthetic.synthetic_image (structured: gradients, edges, texture); 352x1216 input comes
from KITTI-sized 375x1242 frames, so pre/post-processing resizes.
Gate: each row's depth against GLPNDepth fp32 eager on the same frames (glpn.gate.GATE).
Speedup: frames/s over (a)'s frames/s; "model" rows over (a)'s model-only time.
Bound (CPU): the fused model's FLOPs per frame (torch.utils.flop_counter) over this machine's
best fp32 matrix-multiply rate (a large torch.mm, the best any fp32 backend can do): the time no
fp32 path can beat, and so the largest speedup over (a) that fp32 can reach here.
Writes benchmarks/results/bench_<date>_<host>.json (or --out).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from glpn import GLPNConfig, GLPNDepth
from glpn.engine import EngineError, from_model
from glpn.fused import InferenceGLPN
from glpn.gate import GATE
from glpn.hardware import cpu_features, gpu_description, package_version
from glpn.metrics import depth_error
from glpn.processing import prepare_frames, resize_depth
from glpn.synthetic import synthetic_image
from glpn.testing import parse_size as parse_hw
from glpn.testing import random_checkpoint

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass
class Row:
    config: str
    input_size: str
    name: str  # "(a) transformers" or "backend precision"
    mode: str  # "e2e" or "model"
    batch: int
    fps: float
    p50_ms: float
    p95_ms: float
    speedup: float | None = None
    gate: dict | None = None  # depth_error fields + "passed"
    setup_s: float | None = None  # engine build + warm-up (compilation happens here)
    notes: dict = field(default_factory=dict)


def parse_size(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """'480x640' or '352x1216@375x1242' (input size @ frame size) -> ((h, w), (fh, fw))."""
    inp, _, frame = text.partition("@")
    size = parse_hw(inp)
    return size, parse_hw(frame) if frame else size


def timed(fn, iters: int, warmup: int, batch: int) -> tuple[float, float, float]:
    """(frames per second, p50 ms, p95 ms) over `iters` calls of fn, each on `batch` frames."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    ms = sorted(t * 1e3 for t in times)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return batch * len(times) / sum(times), statistics.median(ms), p95


def transformers_baseline(ckpt: str, frames: list[np.ndarray], device: torch.device):
    """The model-card pipeline on one frame: (model_only_fn, e2e_fn, pixel_values, model)."""
    from transformers import GLPNForDepthEstimation as HFModel
    from transformers.models.glpn.image_processing_pil_glpn import GLPNImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    processor = GLPNImageProcessorPil()
    model = HFModel.from_pretrained(ckpt).to(device).eval()
    frame = frames[0]
    pixel_values = processor(images=frame, return_tensors="pt")["pixel_values"].to(device)

    def model_only():
        with torch.inference_mode():
            return model(pixel_values=pixel_values).predicted_depth

    def e2e():
        inputs = processor(images=frame, return_tensors="pt").to(device)
        with torch.inference_mode():
            outputs = model(**inputs)
        result = processor.post_process_depth_estimation(outputs, target_sizes=[frame.shape[:2]])
        return result[0]["predicted_depth"].cpu().numpy()

    return model_only, e2e, pixel_values.cpu(), model


def default_backends(device: torch.device) -> list[str]:
    if device.type == "cuda":
        out = ["eager:fp16", "eager:fp32", "compile:fp16"]
        if package_version("torch_tensorrt"):
            out += ["tensorrt:fp16", "tensorrt:fp32"]
        return out
    out = ["eager:fp32", "eager-unfused:fp32"]
    if cpu_features().native_bf16:
        out.insert(0, "eager:bf16")
    if package_version("onnxruntime"):
        out.append("onnxruntime:fp32")
    return out


def fp32_peak_gflops(n: int = 3072, repeats: int = 5) -> float:
    """Best fp32 GEMM rate here (GFLOP/s): a large square torch.mm, the best of a few runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def model_gflop(model: GLPNDepth, size: tuple[int, int]) -> float:
    """FLOPs of one frame through the fused model (what every backend runs), in GFLOP."""
    fused = InferenceGLPN(model).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fused(torch.rand(1, 3, *size))
    return counter.get_total_flops() / 1e9


def machine_info(device: torch.device) -> dict:
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_features().summary(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": package_version("transformers"),
        "onnxruntime": package_version("onnxruntime"),
        "torch_tensorrt": package_version("torch_tensorrt"),
        "device": str(device),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.type == "cuda":
        info["gpu"] = gpu_description(device)
    try:
        info["load_average"] = os.getloadavg()
    except OSError:
        pass
    return info


def fmt_row(r: Row) -> str:
    speed = f"{r.speedup:5.2f}x" if r.speedup is not None else "     -"
    gate = "-"
    if r.gate:
        mark = "ok" if r.gate["passed"] else "FAIL"
        gate = (
            f"{mark} mean {100 * r.gate['mean_rel']:.2g}% p99 {100 * r.gate['p99_rel']:.2g}% "
            f"max {r.gate['max_abs']:.2g} m"
        )
    setup = f"{r.setup_s:6.1f}" if r.setup_s is not None else "     -"
    return (
        f"{r.config:8} {r.input_size:9} {r.name:28} {r.mode:5} {r.batch:>3} {r.fps:8.2f} "
        f"{r.p50_ms:9.1f} {r.p95_ms:9.1f} {speed} {setup}  {gate}"
    )


HEADER = (
    f"{'config':8} {'input':9} {'what':28} {'mode':5} {'B':>3} {'frames/s':>8} "
    f"{'p50 ms':>9} {'p95 ms':>9} {'speed':>6} {'setup':>6}  gate vs fp32 eager"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", default="default,kitti", help="presets: default, kitti, nyu")
    p.add_argument("--sizes", default="480x640,352x1216@375x1242", help="HxW[@frameHxframeW],...")
    p.add_argument("--backends", default=None, help="backend[:precision],... (default: per device)")
    p.add_argument("--batch", type=int, default=4, help="the larger batch size (besides 1)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before each row")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--quick", action="store_true", help="default config, 480x640, 3 iterations")
    p.add_argument("--no-baseline-tuned", action="store_true", help="skip the (a) + allocator rows")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.sizes, args.iters, args.warmup = "default", "480x640", 3, 1
        args.batch = min(args.batch, 2)
        args.no_baseline_tuned = True
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(args.device)
        configs = [c.strip() for c in args.configs.split(",") if c.strip()]
        for c in configs:
            GLPNConfig.preset(c)
        sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    except Exception as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    backends = (args.backends or ",".join(default_backends(device))).split(",")
    info = machine_info(device)
    print(f"# {info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, {device}"
          + (f" ({info['gpu']})" if "gpu" in info else ""))
    print(f"# gate: {GATE.describe()}")
    rows: list[Row] = []
    tmp = tempfile.mkdtemp(prefix="bench-glpn-")
    ckpts = {c: random_checkpoint(os.path.join(tmp, c), c) for c in configs}
    cases = [(c, s) for c in configs for s in sizes]
    frames_of = {}
    for _, ((h, w), (fh, fw)) in cases:
        frames_of[(fh, fw)] = [synthetic_image(fh, fw, seed=i) for i in range(max(args.batch, 1))]

    # Phase 1: the baseline, before any engine tunes the allocator.
    base: dict[tuple[str, tuple[int, int]], dict] = {}
    for config, ((h, w), (fh, fw)) in cases:
        label = f"{h}x{w}"
        frames = frames_of[(fh, fw)]
        model_only, e2e, hf_px, hf_model = transformers_baseline(ckpts[config], frames, device)
        fps, p50, p95 = timed(e2e, args.iters, args.warmup, 1)
        rows.append(Row(config, label, "(a) transformers", "e2e", 1, fps, p50, p95, 1.0))
        with torch.inference_mode():
            hf_depth = hf_model(pixel_values=hf_px.to(device)).predicted_depth.float().cpu()
        base[(config, (h, w))] = {"e2e_fps": fps, "hf_px": hf_px, "hf_depth": hf_depth.numpy()}
        print(fmt_row(rows[-1]), flush=True)
        fps, p50, p95 = timed(model_only, args.iters, args.warmup, 1)
        rows.append(Row(config, label, "(a) transformers", "model", 1, fps, p50, p95, 1.0))
        base[(config, (h, w))]["model_fps"] = fps
        print(fmt_row(rows[-1]), flush=True)
        del hf_model, model_only, e2e
        gc.collect()

    # The fp32 bound (CPU): FLOPs per frame at the best GEMM rate this machine reaches.
    bounds: dict[tuple[str, tuple[int, int]], dict] = {}
    peak = None
    if device.type == "cpu":
        peak = fp32_peak_gflops()
        info["fp32_gemm_peak_gflops"] = peak
        print(f"# fp32 GEMM peak: {peak:.0f} GFLOP/s (torch.mm 3072x3072, best of 5)")

    # Phase 2: our engines.
    for config, ((h, w), (fh, fw)) in cases:
        label = f"{h}x{w}"
        frames = frames_of[(fh, fw)]
        model = GLPNDepth.from_pretrained(ckpts[config])
        px = prepare_frames(frames[: args.batch], (h, w), method="opencv")
        b0 = base[(config, (h, w))]
        if peak is not None:
            gflop = model_gflop(model, (h, w))
            bound_ms = gflop / peak * 1000
            bound = bounds[(config, (h, w))] = {
                "gflop_per_frame": gflop,
                "fp32_bound_ms": bound_ms,
                "max_fp32_speedup_e2e": 1000 / bound_ms / b0["e2e_fps"],
                "max_fp32_speedup_model": 1000 / bound_ms / b0["model_fps"],
            }
            print(f"# {config} {label}: {gflop:.1f} GFLOP/frame -> fp32 bound {bound_ms:.0f} ms, "
                  f"at most {bound['max_fp32_speedup_e2e']:.2f}x the baseline (e2e) in fp32",
                  flush=True)  # fmt: skip
        with torch.inference_mode():  # the gate's reference: fp32 eager GLPNDepth, same frames
            model.to(device)
            ref = model(torch.from_numpy(px).to(device)).float().cpu().numpy()
            ours_on_hf = model(b0["hf_px"].to(device)).float().cpu().numpy()
            model.to("cpu")
        # Same weights, same pixels: transformers' model and ours must agree (a sanity check).
        sanity = depth_error(b0["hf_depth"], ours_on_hf)
        for spec in backends:
            name, _, precision = spec.partition(":")
            precision = precision or "auto"
            fold = name != "eager-unfused"
            backend = "eager" if name == "eager-unfused" else name
            start = time.perf_counter()
            try:
                engine = from_model(model, backend=backend, precision=precision, device=device,
                                    input_size=(h, w), batch_sizes=(1, args.batch),
                                    cache_dir=os.path.join(tmp, "cache"), fold=fold)
            except EngineError as e:
                print(f"{config:8} {label:9} {spec:28} skipped: {e}", flush=True)
                continue
            setup = time.perf_counter() - start
            what = f"{name} {engine.precision}"
            err = depth_error(engine(px), ref)
            gate = {**err.as_dict(), "passed": GATE.check(err)[0]}

            def e2e_fn(batch: int):
                def run():
                    pv = prepare_frames(frames[:batch], (h, w), method="opencv")
                    depth = engine(pv)
                    return [resize_depth(d, (fh, fw)) for d in depth]

                return run

            for mode in ("model", "e2e"):
                for batch in sorted({1, args.batch}):
                    fn = (lambda b=batch: engine(px[:b])) if mode == "model" else e2e_fn(batch)
                    fps, p50, p95 = timed(fn, args.iters, args.warmup, batch)
                    ref_fps = b0["model_fps"] if mode == "model" else b0["e2e_fps"]
                    rows.append(Row(config, label, what, mode, batch, fps, p50, p95,
                                    fps / ref_fps, gate, setup, {"describe": engine.describe()}))
                    print(fmt_row(rows[-1]), flush=True)
            engine = None  # free it before the next one is built
            gc.collect()
        print(f"# {config} {label}: transformers vs GLPNDepth fp32 on the same pixels: {sanity}")
        b0["sanity"] = sanity.as_dict()

    # Phase 3: the baseline again, now that the allocator is tuned (not a speedup of ours).
    if not args.no_baseline_tuned:
        for config, ((h, w), (fh, fw)) in cases:
            _, e2e, _, hf_model = transformers_baseline(ckpts[config], frames_of[(fh, fw)], device)
            fps, p50, p95 = timed(e2e, args.iters, args.warmup, 1)
            b0 = base[(config, (h, w))]
            rows.append(Row(config, f"{h}x{w}", "(a) + allocator", "e2e", 1, fps, p50, p95,
                            fps / b0["e2e_fps"]))
            print(fmt_row(rows[-1]), flush=True)
            del hf_model
            gc.collect()

    print("\n" + HEADER)
    for r in rows:
        print(fmt_row(r))
    print()
    for config, ((h, w), _) in cases:
        label = f"{h}x{w}"
        ok = [r for r in rows if r.config == config and r.input_size == label and r.mode == "e2e"
              and r.gate and r.gate["passed"]]
        if ok:
            best = max(ok, key=lambda r: r.fps)
            verdict = "meets" if best.speedup >= 3 else "misses"
            bound = bounds.get((config, (h, w)))
            limit = (f"; fp32 can reach at most {bound['max_fp32_speedup_e2e']:.2f}x here"
                     if bound else "")
            print(f"{config} {label}: best within the gate: {best.name} batch {best.batch}, "
                  f"{best.speedup:.2f}x the baseline ({verdict} the 3x target{limit})")
    out = args.out or os.path.join(
        RESULTS,
        f"bench_{time.strftime('%Y%m%d-%H%M%S')}_{socket.gethostname()}.json",
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({
            "machine": info,
            "args": vars(args),
            "gate": GATE.describe(),
            "baseline_sanity": {f"{c} {h}x{w}": v.get("sanity") for (c, (h, w)), v in base.items()},
            "fp32_bound": {f"{c} {h}x{w}": v for (c, (h, w)), v in bounds.items()},
            "rows": [r.__dict__ for r in rows],
        }, f, indent=2, default=str)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
