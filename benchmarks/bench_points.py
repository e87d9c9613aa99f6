"""Point-cloud cost per frame: what postprocess and the point-cloud sinks add when clouds are on.

At 480x640 (VGA depth), for stride 1, 2 and 4, with and without colour, times
pipeline.geometry.backproject (+ point_colours), the same calls PostprocessStage makes, on a
depth map with ~2% invalid pixels (the masked path) and, at stride 1, on one valid everywhere (what
the model delivers: no pixel to leave out); then, per cloud, the PLY sink's encoding (ply_bytes),
its whole write (PlySink.write: encode + a new file, in --dir) and the recording's PointCloud2
(ros_msgs.point_cloud); and a whole frame of the MCAP recording (RecordSink.write: depth +
camera_info, with and without the stride-1 cloud) per chunk compression. The ray grid is cached
per camera and stride, as in a run (the first call, which builds it, is not timed). The allocator
is tuned as the program does (glpn.hardware.tune_cpu_allocator): untuned, each fresh multi-MB
array page-faults in again and the stride-1 cloud takes ~4x as long. Prints tables; writes
benchmarks/results/points_<date>_<host>.json (or --out).

    python benchmarks/bench_points.py [--repeats 200] [--dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time

import numpy as np

from glpn.hardware import cpu_features, tune_cpu_allocator
from glpn.testing import machine_info
from pipeline import ros_msgs
from pipeline.config import PointsSinkConfig, RecordConfig
from pipeline.geometry import Intrinsics, backproject, point_colours
from pipeline.ply import PlySink, ply_bytes
from pipeline.record_mcap import RecordSink
from pipeline.results import DepthResult

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


def record_costs(folder: str, result: DepthResult, repeats: int) -> dict[str, dict]:
    """compression -> {"depth": ..., "depth + points": ...}: RecordSink.write of one frame, ms."""
    costs: dict[str, dict] = {}
    for compression in ("zstd", "lz4", "none"):
        for label, points in (("depth", False), ("depth + points", True)):
            path = os.path.join(folder, f"{compression}-{points}.mcap")
            sink = RecordSink(RecordConfig(path, points=points, compression=compression), ["s"])
            costs.setdefault(compression, {})[label] = timed(
                lambda s=sink: s.write(result), repeats
            )
            sink.close()
            os.remove(path)
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--dir", default=None, help="where the PLY files go (default: a temp folder)")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args()
    tune_cpu_allocator()  # as the program does, before anything allocates

    rng = np.random.default_rng(0)
    valid = rng.uniform(0.5, 10.0, (H, W)).astype(np.float32)
    masked = valid.copy()
    masked[rng.random((H, W)) < 0.02] = np.nan  # some invalid pixels: the masked path
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    cam = Intrinsics.from_hfov(60.0, W, H)
    cases = [(depth, name, stride) for stride in (1, 2, 4)
             for depth, name in ((masked, "2% invalid"), (valid, "valid"))
             if stride == 1 or name != "valid"]  # fmt: skip
    few = max(20, args.repeats // 4)  # file writes: fewer (each leaves a file behind)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-points-", dir=args.dir) as folder:
        sink = PlySink(PointsSinkConfig(folder, layout="flat"))
        for depth, name, stride in cases:
            for colour in (False, True):

                def cloud(depth=depth, stride=stride, colour=colour):
                    pts, idx = backproject(depth, cam, stride=stride)
                    rgb = point_colours(image, idx, (H, W)) if colour else None
                    return pts, rgb

                pts, rgb = cloud()
                header = {"stream": "s", "index": 0, "t_wall": time.time()}
                result = DepthResult(header, depth, None, pts, rgb)
                rows.append({
                    "stride": stride, "depth": name, "colour": colour, "points": len(pts),
                    "cloud_ms": timed(cloud, args.repeats),
                    "ply_encode_ms": timed(lambda r=result: ply_bytes(r.points, r.points_rgb), few),
                    "ply_write_ms": timed(lambda r=result: sink.write(r), few),
                    "pointcloud2_ms": timed(lambda r=result: ros_msgs.point_cloud(r), few),
                })  # fmt: skip
        camera = {"camera": cam.as_header()}
        pts, _ = backproject(valid, cam)
        frame = DepthResult({"stream": "s", "index": 0, "t_wall": time.time(), **camera}, valid,
                            None, pts)  # fmt: skip
        record = record_costs(folder, frame, few)

    print(f"point cloud per {H}x{W} frame ({cpu_features().summary()}, "
          f"median / p95 ms over {args.repeats}, files {few})")  # fmt: skip
    print(f"{'stride':>6} {'depth':>10} {'colour':>6} {'points':>7} {'cloud ms':>15} "
          f"{'PLY encode ms':>15} {'PLY write ms':>15} {'PointCloud2 ms':>15}")  # fmt: skip
    for r in rows:
        cells = [r[k] for k in ("cloud_ms", "ply_encode_ms", "ply_write_ms", "pointcloud2_ms")]
        print(
            f"{r['stride']:>6} {r['depth']:>10} {str(r['colour']):>6} {r['points']:>7} "
            + " ".join(f"{c['median_ms']:>7.2f} / {c['p95_ms']:<5.2f}" for c in cells)
        )
    print(f"\nMCAP recording, one frame (valid depth, stride-1 cloud of {len(pts)} points), ms:")
    for compression, cost in record.items():
        print(
            f"{compression:>6}: "
            + ", ".join(
                f"{label} {c['median_ms']:.2f} / {c['p95_ms']:.2f}" for label, c in cost.items()
            )
        )

    out = args.out or os.path.join(
        RESULTS, f"points_{time.strftime('%Y%m%d-%H%M%S')}_{socket.gethostname()}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    machine = machine_info()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"machine": machine, "size": [H, W], "repeats": args.repeats, "rows": rows,
                   "record_ms": record}, f, indent=2)  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
