"""Pipeline throughput with each robotics output on versus off (target: >= 95% of without them).

A lossless clip (default 480x640) through the small default model at the clip's size, with known
intrinsics, once per output: none, PLY point clouds (`outputs.points`, stride 1), an MCAP recording
(depth + camera_info), an MCAP recording with point clouds (lz4, the default, and zstd), a
Foxglove server with no client and with one client subscribed to depth and points (a WebSocket
client in a thread of this process, reading every message without decoding it: the app would
decode in its own process), a Rerun file, the Prometheus endpoint scraped every second. The runs
alternate round by round, so the machine's drift hits every output alike; the result per output is
the median over rounds of its fps divided by the same round's fps without outputs. fps is the
summary's: frames over the running time, start-up excluded. Also the process's CPU time (user +
system, every thread) per frame from the end of start-up to the end of the run, and what each
output adds to it (median over rounds of the difference with the same round's run without):
less sensitive than fps to other programs on the machine. Prints a table; writes
benchmarks/results/sinks_<size>.json (or --out).

    python benchmarks/bench_sinks.py [--frames 20] [--rounds 3] [--size 480x640]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import tempfile
import threading
import time
import urllib.request

# As the program does (pipeline.cli): OpenMP threads wait passively, read when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from glpn.hardware import tune_cpu_allocator  # noqa: E402
from glpn.testing import parse_size, random_checkpoint, write_clip, write_results  # noqa: E402
from pipeline import Pipeline  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def outputs(name: str, out: str) -> dict:
    """The outputs config of one measured variant, writing under `out`."""
    return {
        "none": {},
        "points (PLY)": {"points": {"directory": os.path.join(out, "ply")}},
        "record (MCAP)": {"record": {"path": os.path.join(out, "run.mcap")}},
        "record + points": {"record": {"path": os.path.join(out, "run.mcap"), "points": True}},
        "record + points, zstd": {"record": {"path": os.path.join(out, "run.mcap"), "points": True,
                                             "compression": "zstd"}},
        "foxglove (no client)": {"foxglove": {"port": 0}},
        FOXGLOVE_CLIENT: {"foxglove": {"port": 0}},  # and a client: see run_once
        "rerun (file)": {"rerun": {"path": os.path.join(out, "run.rrd")}},
        SCRAPED: {},  # metrics.port instead: see run_once
    }[name]


SCRAPED = "prometheus (scraped 1 s)"  # the Prometheus endpoint, scraped every second as it runs
FOXGLOVE_CLIENT = "foxglove + 1 client"  # subscribed to depth and points, reading everything


def scrape_every(url: str, period_s: float, stop: threading.Event) -> threading.Thread:
    """A thread GETting `url` every `period_s` (first at once) until `stop`, as Prometheus does."""

    def run() -> None:
        while True:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            if stop.wait(period_s):
                return

    thread = threading.Thread(target=run, name="bench-scraper", daemon=True)
    thread.start()
    return thread


def foxglove_client(
    url: str, topics: tuple[str, ...], received: dict[str, int]
) -> threading.Thread:
    """A thread doing what the Foxglove app does on the wire: connect, subscribe to `topics` as
    they are advertised, read every message (counted in `received` per topic) until the server
    closes the connection at the end of the run."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    # foxglove-sdk answers "foxglove.sdk.v1"; the app asks for "foxglove.websocket.v1" too
    ws = connect(url, subprotocols=["foxglove.websocket.v1", "foxglove.sdk.v1"], proxy=None,
                 compression=None, max_size=None, ping_interval=None)  # fmt: skip

    def run() -> None:
        by_id: dict[int, str] = {}  # subscription id -> topic
        try:
            for frame in ws:
                if isinstance(frame, bytes):  # message data: opcode 1, subscription id u32, ...
                    topic = by_id[struct.unpack_from("<I", frame, 1)[0]]
                    received[topic] = received.get(topic, 0) + 1
                    continue
                msg = json.loads(frame)
                for channel in msg["channels"] if msg["op"] == "advertise" else ():
                    if channel["topic"] in topics:  # points: advertised with the first frame
                        sub_id = len(by_id) + 1
                        by_id[sub_id] = channel["topic"]
                        sub = {"id": sub_id, "channelId": channel["id"]}
                        ws.send(json.dumps({"op": "subscribe", "subscriptions": [sub]}))
        except ConnectionClosed:
            pass
        finally:
            ws.close()

    thread = threading.Thread(target=run, name="bench-foxglove-client", daemon=True)
    thread.start()
    return thread


VARIANTS = (
    "none", "points (PLY)", "record (MCAP)", "record + points", "record + points, zstd",
    "foxglove (no client)", FOXGLOVE_CLIENT, "rerun (file)", SCRAPED,
)  # fmt: skip


def cpu_s() -> float:
    """CPU seconds this process has used so far, every thread, user + system."""
    return time.process_time()


def run_once(
    name: str, clip: str, checkpoint: str, size: tuple[int, int], frames: int
) -> tuple[float, float, dict[str, int]]:
    """(fps, CPU ms per frame, messages the Foxglove client got per topic) of one run."""
    h, w = size
    with tempfile.TemporaryDirectory(prefix="bench-sinks-") as out:
        config = {
            "sources": [{"uri": clip, "id": "cam", "max_frames": frames,
                         "intrinsics": [0.8 * w, 0.8 * w, (w - 1) / 2, (h - 1) / 2]}],
            "model": {"checkpoint": checkpoint, "backend": "eager", "precision": "fp32",
                      "input_size": list(size)},
            "outputs": outputs(name, out),
            "metrics": {"interval_s": 0, **({"port": 0} if name == SCRAPED else {})},
        }  # fmt: skip
        pipe = Pipeline(config, log_summary=False).start()
        cpu0 = cpu_s()
        stop = threading.Event()
        scraper = scrape_every(pipe.endpoints["metrics"], 1.0, stop) if name == SCRAPED else None
        received: dict[str, int] = {}
        client = None
        if name == FOXGLOVE_CLIENT:
            topics = ("/depthstream/cam/depth", "/depthstream/cam/points")
            client = foxglove_client(pipe.endpoints["foxglove"], topics, received)
        try:
            summary = pipe.join()
            cpu = cpu_s() - cpu0
        finally:
            stop.set()
        for thread in (scraper, client):  # the client's ends when the server closes
            if thread is not None:
                thread.join()
    if summary.outcome != "finished" or summary.frames["cam"] != frames:
        raise RuntimeError(f"{name}: {summary.outcome}, {summary.frames} ({summary.error})")
    if client is not None and not received:
        raise RuntimeError(f"{name}: the client got no message")
    return summary.fps, 1000 * cpu / frames, received


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=20, help="frames per run (default 20)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every output (default 3)")
    p.add_argument("--size", type=parse_size, default=(480, 640), help="HxW (default 480x640)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/sinks_<size>.json)")
    args = p.parse_args()
    tune_cpu_allocator()  # before any thread exists, as the program does
    h, w = args.size
    with tempfile.TemporaryDirectory(prefix="bench-sinks-data-") as tmp:
        checkpoint = random_checkpoint(os.path.join(tmp, "ckpt"), preset="default", seed=2)
        clip = write_clip(os.path.join(tmp, "clip.avi"), args.frames, h, w, fps=30.0)
        fps: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}  # ms per frame
        got: dict[str, list[dict[str, int]]] = {v: [] for v in VARIANTS}  # the client's, per run
        for r in range(args.rounds):
            for name in VARIANTS:
                f, c, g = run_once(name, clip, checkpoint, args.size, args.frames)
                fps[name].append(f)
                cpu[name].append(c)
                got[name].append(g)
                print(f"round {r + 1}: {name:<24} {f:6.2f} fps {c:7.1f} CPU ms/frame"
                      + (f"  client got {g}" if g else ""), flush=True)  # fmt: skip
    rows = []
    for name in VARIANTS:
        ratios = [a / b for a, b in zip(fps[name], fps["none"])]
        extra = [a - b for a, b in zip(cpu[name], cpu["none"])]
        rows.append({"output": name, "fps": fps[name], "ratio_median": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "cpu_ms_per_frame": cpu[name],
                     "cpu_extra_ms_median": statistics.median(extra),
                     **({"client_messages": got[name]} if any(got[name]) else {})})  # fmt: skip
    print(f"\n{h}x{w}, small default model, eager fp32, "
          f"{args.frames} frames x {args.rounds} rounds")  # fmt: skip
    print(f"{'output':<24}{'fps (median)':>13}{'vs none':>9}{'range':>13}"
          f"{'CPU ms/frame':>14}{'extra':>9}")  # fmt: skip
    for row in rows:
        print(f"{row['output']:<24}{statistics.median(row['fps']):>13.2f}"
              f"{100 * row['ratio_median']:>8.0f}%"
              f"{100 * row['ratio_min']:>7.0f}-{100 * row['ratio_max']:.0f}%"
              f"{statistics.median(row['cpu_ms_per_frame']):>14.1f}"
              f"{row['cpu_extra_ms_median']:>+9.1f}")  # fmt: skip
    out = args.out or os.path.join(RESULTS, f"sinks_{h}x{w}.json")
    data = {"size": [h, w], "frames": args.frames, "rounds": args.rounds, "rows": rows}
    print(f"wrote {write_results(out, data)}")


if __name__ == "__main__":
    main()
