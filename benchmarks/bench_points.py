"""Point-cloud cost per frame: what postprocess adds when point clouds are on.

At 480x640 (VGA depth), for stride 1, 2 and 4, with and without colour, times
pipeline.geometry.backproject (+ point_colours), the same calls PostprocessStage makes, on a
depth map with ~2% invalid pixels; and the PLY sink's encoding (ply_bytes) of that cloud. The
ray grid is cached per camera and stride, as in a run (the first call, which builds it, is not
timed). Prints a table; writes benchmarks/results/points_<date>_<host>.json (or --out).

    python benchmarks/bench_points.py [--repeats 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import numpy as np

from glpn.hardware import cpu_features
from glpn.testing import machine_info
from pipeline.geometry import Intrinsics, backproject, point_colours
from pipeline.ply import ply_bytes

H, W = 480, 640
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def timed(fn, repeats: int) -> dict[str, float]:
    fn()  # warm: caches, allocator
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    depth = rng.uniform(0.5, 10.0, (H, W)).astype(np.float32)
    depth[rng.random((H, W)) < 0.02] = np.nan  # some invalid pixels: the masked path
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cam = Intrinsics.from_hfov(60.0, W, H)

    rows = []
    for stride in (1, 2, 4):
        for colour in (False, True):
            def cloud(stride=stride, colour=colour):
                pts, idx = backproject(depth, cam, stride=stride)
                rgb = point_colours(image, idx, (H, W)) if colour else None
                return pts, rgb

            pts, rgb = cloud()
            t = timed(cloud, args.repeats)
            ply = timed(lambda pts=pts, rgb=rgb: ply_bytes(pts, rgb), max(20, args.repeats // 4))
            rows.append({"stride": stride, "colour": colour, "points": len(pts),
                         "cloud_ms": t, "ply_encode_ms": ply})  # fmt: skip

    print(f"point cloud per {H}x{W} frame ({cpu_features().summary()}, "
          f"median / p95 ms over {args.repeats})")  # fmt: skip
    print(f"{'stride':>6} {'colour':>6} {'points':>8} {'cloud ms':>15} {'PLY encode ms':>15}")
    for r in rows:
        c, e = r["cloud_ms"], r["ply_encode_ms"]
        print(f"{r['stride']:>6} {str(r['colour']):>6} {r['points']:>8} "
              f"{c['median_ms']:>7.2f} / {c['p95_ms']:<5.2f} "
              f"{e['median_ms']:>7.2f} / {e['p95_ms']:<5.2f}")  # fmt: skip

    out = args.out or os.path.join(
        RESULTS, f"points_{time.strftime('%Y%m%d-%H%M%S')}_{socket.gethostname()}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    machine = machine_info()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"machine": machine, "size": [H, W], "repeats": args.repeats, "rows": rows},
                  f, indent=2)  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
