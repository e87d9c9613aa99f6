"""Flicker control (postprocess.temporal): flicker, TAE, lag at motion edges and cost per frame.

The clip: a static camera on a textured scene (2..6 m) and a box (default 0.5x the depth behind
it) crossing it at 8 px per frame; ground truth known per frame. The "model" output is synthetic:
depth_t = gt_t * s_t * (1 + n_t), n_t white noise per pixel (std --noise) and s_t a per-frame
global scale (std --scale-jitter). The random-weight checkpoint is not used for quality: on a
static camera it is deterministic, so it shows no flicker to remove; it is timed for the cost.

Measured, raw versus filtered (alpha, reset per variant):
- static_change: mean over frames t >= 1 of mean over static pixels (no box in t-1 or t) of
  |d_t - d_{t-1}| / gt_t.
- tae_static / tae_all: Video Depth Anything's TAE (benchmark/eval/eval_tae.py) for a static
  camera, where the reprojection is the identity: 100 / (2 (N-1)) * sum_t [AbsRel(d_{t+1}, d_t) +
  AbsRel(d_t, d_{t+1})], AbsRel(ref, x) = mean |ref - x| / ref, over static pixels or all pixels
  (all: as VDA does without masks; the box's own motion then counts for raw and filtered alike).
  Metric depth, so no scale/shift alignment (as VDA reports TAE of its metric models).
- abs_rel: mean |d_t - gt_t| / gt_t over every pixel and frame (accuracy is not lost).
- lag at motion edges, on the same clip without noise and without scale jitter (the filter's own
  lag) for several box depths: per newly covered pixel, frames from when the box covers it until
  the output is within 5% of the true depth (0: at once), while it stays covered.
- cost: TemporalFilter per 480x640 frame (median ms) versus the small default model (random
  weights, eager fp32, one 480x640 frame, median of --model-repeats calls).

The filter follows a global scale change at once (by design: the average takes the new frame's
scale), so per-frame scale jitter passes through it; "noise only" shows the per-pixel part alone.

    python benchmarks/bench_temporal.py [--frames 60] [--size 480x640] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import cv2
import numpy as np

from glpn.processing import input_size_for
from glpn.synthetic import synthetic_image
from glpn.testing import machine_info, parse_size, random_checkpoint
from pipeline.config import TemporalConfig
from pipeline.temporal import TemporalFilter

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VARIANTS = {"raw": None, "alpha 0.4 reset 0.1 (default)": TemporalConfig(),
            "alpha 0.2 reset 0.1": TemporalConfig(alpha=0.2)}  # fmt: skip
SPEED, BOX = 8, 96  # box: px per frame, side


def ground_truth(frames: int, size: tuple[int, int], box_ratio: float):
    """(depth per frame (T, H, W) float32, box mask per frame (T, H, W) bool)."""
    h, w = size
    grey = synthetic_image(h, w, seed=5).mean(axis=2).astype(np.float32)
    grey = cv2.GaussianBlur(grey, (0, 0), 3)
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    scene = 2.0 + 3.0 * ramp + grey / 255.0  # 2..6 m: far at the bottom, textured
    depth = np.repeat(scene[None], frames, axis=0)
    mask = np.zeros(depth.shape, bool)
    y = h // 3
    for t in range(frames):
        x = (SPEED * t) % (w - BOX)
        mask[t, y : y + BOX, x : x + BOX] = True
        depth[t][mask[t]] = scene[mask[t]] * box_ratio
    return depth, mask


def predictions(gt: np.ndarray, noise: float, jitter: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = 1 + jitter * rng.standard_normal((len(gt), 1, 1))
    return (gt * scale * (1 + noise * rng.standard_normal(gt.shape))).astype(np.float32)


def stabilise(depth: np.ndarray, config: TemporalConfig | None) -> np.ndarray:
    if config is None:
        return depth
    f = TemporalFilter(config)
    return np.stack([f(d) for d in depth])


def flicker(d: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict:
    static = ~(mask[1:] | mask[:-1])  # (T-1, H, W): no box in either frame
    change = np.abs(d[1:] - d[:-1]) / gt[1:]
    fwd, bwd = np.abs(d[1:] - d[:-1]) / d[1:], np.abs(d[:-1] - d[1:]) / d[:-1]
    pairs = len(d) - 1
    return {
        "static_change": float(np.mean([c[s].mean() for c, s in zip(change, static)])),
        "tae_static": float(100 * sum(f[s].mean() + b[s].mean()
                                      for f, b, s in zip(fwd, bwd, static)) / (2 * pairs)),
        "tae_all": float(100 * (fwd.mean(axis=(1, 2)) + bwd.mean(axis=(1, 2))).sum() / (2 * pairs)),
        "abs_rel": float(np.mean(np.abs(d - gt) / gt)),
    }  # fmt: skip


def lag(d: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict:
    """Frames from a pixel's first covered frame until within 5% of the truth, while covered."""
    lags, censored = [], 0
    for t in range(1, len(d)):
        new = mask[t] & ~mask[t - 1]
        for y, x in zip(*np.nonzero(new)):
            k = 0
            while t + k < len(d) and mask[t + k, y, x]:
                if abs(d[t + k, y, x] - gt[t + k, y, x]) <= 0.05 * gt[t + k, y, x]:
                    lags.append(k)
                    break
                k += 1
            else:
                censored += t + k < len(d)  # uncovered again first (not the clip's end)
    lags_a = np.array(lags) if lags else np.zeros(1)
    return {"mean_frames": float(lags_a.mean()), "max_frames": int(lags_a.max()),
            "at_once": float(np.mean(lags_a == 0)), "never_while_covered": censored}  # fmt: skip


def model_ms(size: tuple[int, int], repeats: int) -> float:
    import glpn.engine

    with tempfile.TemporaryDirectory(prefix="bench-temporal-") as tmp:
        ckpt = random_checkpoint(os.path.join(tmp, "ckpt"), preset="default", seed=2)
        engine = glpn.engine.load(ckpt, backend="eager", precision="fp32", device="cpu")
    pixels = np.random.default_rng(0).random((1, 3, *input_size_for(*size)), dtype=np.float32)
    engine(pixels)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(pixels)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def filter_ms(size: tuple[int, int], frames: int = 100) -> float:
    d = predictions(ground_truth(frames, size, 0.5)[0], 0.03, 0.02)
    f = TemporalFilter(TemporalConfig())
    times = []
    for x in d:
        t0 = time.perf_counter()
        f(x)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60, help="frames of the clip (default 60)")
    p.add_argument("--size", type=parse_size, default=(480, 640), help="HxW (default 480x640)")
    p.add_argument("--noise", type=float, default=0.03, help="per-pixel noise std (0.03)")
    p.add_argument("--scale-jitter", type=float, default=0.02, help="per-frame scale std (0.02)")
    p.add_argument("--model-repeats", type=int, default=5, help="timed model calls (5)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/temporal_<size>.json)")
    args = p.parse_args()
    h, w = args.size
    gt, mask = ground_truth(args.frames, args.size, 0.5)
    box = {"side": BOX, "px_per_frame": SPEED}
    result: dict = {"machine": machine_info(), "size": [h, w], "frames": args.frames,
                    "box": box, "flicker": {}, "lag": {}}  # fmt: skip
    for name, jitter in (("noise only", 0.0), ("noise + scale jitter", args.scale_jitter)):
        d = predictions(gt, args.noise, jitter)
        rows = {v: flicker(stabilise(d, c), gt, mask) for v, c in VARIANTS.items()}
        result["flicker"][name] = {"noise": args.noise, "scale_jitter": jitter, "rows": rows}
        print(f"\n{name} (noise {args.noise}, scale jitter {jitter})")
        print(f"{'variant':32} {'static_change':>13} {'tae_static':>10} {'tae_all':>8} "
              f"{'abs_rel':>8}")  # fmt: skip
        for v, r in rows.items():
            print(f"{v:32} {r['static_change']:13.4f} {r['tae_static']:10.3f} "
                  f"{r['tae_all']:8.3f} {r['abs_rel']:8.4f}")  # fmt: skip
    print("\nlag at motion edges (no noise), frames until within 5% of the new depth")
    for ratio in (0.5, 0.85, 0.91, 0.95):  # 0.91: a change just below the 10% reset
        g, m = ground_truth(args.frames, args.size, ratio)
        rows = {v: lag(stabilise(g, c), g, m) for v, c in VARIANTS.items()}
        result["lag"][f"box at {ratio} x background"] = rows
        for v, r in rows.items():
            print(f"  box {ratio:4} {v:32} mean {r['mean_frames']:.2f} max {r['max_frames']} "
                  f"at once {100 * r['at_once']:.0f}% "
                  f"never {r['never_while_covered']}")  # fmt: skip
    result["filter_ms"] = filter_ms(args.size)
    result["model_ms"] = model_ms(args.size, args.model_repeats)
    share = 100 * result["filter_ms"] / result["model_ms"]
    print(f"\nfilter {result['filter_ms']:.2f} ms per {h}x{w} frame; model (default, eager "
          f"fp32) {result['model_ms']:.0f} ms: {share:.2f}%")  # fmt: skip
    out = args.out or os.path.join(RESULTS, f"temporal_{h}x{w}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
