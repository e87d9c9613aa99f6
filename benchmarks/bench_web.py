"""Pipeline throughput with the live browser view (--web) on versus off (target: >= 95%).

A lossless clip (default 480x640) through the small default model at the clip's size, as
bench_sinks.py runs it, in four variants: no outputs; outputs.web with no browser; outputs.web
with one headless Chromium (Debian's `chromium`) showing the page on the same machine, so its
decoding and drawing share the cores with the pipeline; the same with the Prometheus endpoint on
and scraped every second (the case issue 14 sets the >= 95% target for). The browser keeps
running between runs; each run opens a new tab on the run's URL right after start() (through
Chromium's DevTools HTTP endpoint) and closes it after the run.

fps is measured in the steady state: from the result after the first --warm frames to the last
(by the time each reaches the sinks), so the one-off loading of the page (~0.2 s of CPU, which
a viewer pays once, not per frame) is outside it; `whole` is the summary's fps over the whole
run, page load included. The runs alternate round by round; the result per variant is the median
over rounds of its fps divided by the same round's fps without outputs. Prints a table; writes
benchmarks/results/web_<size>.json (or --out).

    python benchmarks/bench_web.py [--frames 60] [--warm 10] [--rounds 3] [--size 480x640]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from typing import Any

# As the program does (pipeline.cli): OpenMP threads wait passively, read when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from bench_sinks import scrape_every  # noqa: E402  (a script beside this one)

from glpn.hardware import tune_cpu_allocator  # noqa: E402
from glpn.testing import parse_size, random_checkpoint, write_clip, write_results  # noqa: E402
from pipeline import Pipeline  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BROWSER = "web + 1 browser"
SCRAPED = "web + browser + Prometheus"  # the case: both on, /metrics scraped every second
VARIANTS = ("none", "web (no browser)", BROWSER, SCRAPED)
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


class Browser:
    """Headless Chromium; tabs are opened and closed over its DevTools HTTP endpoint."""

    def __init__(self, profile: str) -> None:
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise SystemExit("bench_web.py needs Debian's chromium (apt-get install chromium)")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        port_file = os.path.join(profile, "DevToolsActivePort")
        deadline = time.monotonic() + 60
        while not (os.path.exists(port_file) and len(open(port_file).read().split()) == 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("chromium did not start")
            time.sleep(0.05)  # polling a file chromium writes once it listens
        self.devtools = f"http://127.0.0.1:{open(port_file).read().split()[0]}"

    def open(self, url: str) -> str:
        request = urllib.request.Request(f"{self.devtools}/json/new?{url}", method="PUT")
        with HTTP.open(request, timeout=30) as response:
            return json.load(response)["id"]

    def close_tab(self, tab: str) -> None:
        HTTP.open(f"{self.devtools}/json/close/{tab}", timeout=30).close()

    def cpu_s(self) -> float:
        """CPU time of every process of the browser (its session) so far, seconds."""
        total = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[3]) == self.proc.pid:  # session id (field 6 of stat)
                total += int(fields[11]) + int(fields[12])  # utime + stime, clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


def run_once(  # fmt: skip
    name: str, clip: str, checkpoint: str, size: tuple[int, int], frames: int, warm: int,
    browser: Browser,
) -> dict[str, float]:
    """fps after the first `warm` frames (`fps`) and over the whole run (`fps_run`); with the web
    view: frames sent to the browser, CPU ms per frame of the pipeline process, of the web
    server's thread and of the browser (its tab opened to its last frame)."""
    config = {
        "sources": [{"uri": clip, "id": "cam", "max_frames": frames}],
        "model": {"checkpoint": checkpoint, "backend": "eager", "precision": "fp32",
                  "input_size": list(size)},
        "outputs": {} if name == "none" else {"web": {"port": 0}},
        "metrics": {"interval_s": 0, **({"port": 0} if name == SCRAPED else {})},
    }  # fmt: skip
    delivered: list[float] = []  # when each result reached the sinks
    sent_at_warm: list[int] = []  # frames sent to browsers when the steady window began
    web: list[Any] = []

    def on_result(result: object) -> None:
        delivered.append(time.monotonic())
        if len(delivered) == warm + 1:
            sent_at_warm.append(web[0].server.sent if web else 0)

    cpu0, browser0 = time.process_time(), browser.cpu_s()
    pipe = Pipeline(config, log_summary=False, on_result=on_result).start()
    if name != "none":
        sink = next(s for s in pipe.stages if s.name == "sink")
        web.append(next(s for s in sink.sinks if type(s).__name__ == "WebSink"))
    tab = browser.open(pipe.endpoints["web"]) if name in (BROWSER, SCRAPED) else None
    stop = threading.Event()
    if name == SCRAPED:
        scraper = scrape_every(pipe.endpoints["metrics"], 1.0, stop)
    try:
        summary = pipe.join()
        browser_ms = (browser.cpu_s() - browser0) * 1000 / frames  # before its tab goes
    finally:
        stop.set()
        if name == SCRAPED:
            scraper.join()
        if tab is not None:
            browser.close_tab(tab)
    if summary.outcome != "finished" or summary.frames["cam"] != frames:
        raise RuntimeError(f"{name}: {summary.outcome}, {summary.frames} ({summary.error})")
    steady = (len(delivered) - 1 - warm) / (delivered[-1] - delivered[warm])
    row = {"fps": steady, "fps_run": summary.fps,
           "process_ms": (time.process_time() - cpu0) * 1000 / frames}  # fmt: skip
    if web:
        row.update(sent=web[0].server.sent, server_ms=web[0].server.cpu_s * 1000 / frames)
    if name in (BROWSER, SCRAPED):
        if not sent_at_warm or sent_at_warm[0] == 0:
            raise RuntimeError(f"the browser had no frame after {warm} frames: --warm is too short")
        row["browser_ms"] = browser_ms
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=60, help="frames per run (default 60)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every variant (default 3)")
    p.add_argument("--warm", type=int, default=10,
                   help="frames before the steady window (the page loads; default 10)")  # fmt: skip
    p.add_argument("--size", type=parse_size, default=(480, 640), help="HxW (default 480x640)")
    p.add_argument("--out", help="JSON path (default benchmarks/results/web_<size>.json)")
    args = p.parse_args()
    tune_cpu_allocator()  # before any thread exists, as the program does
    h, w = args.size
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        checkpoint = random_checkpoint(os.path.join(tmp, "ckpt"), preset="default", seed=2)
        clip = write_clip(os.path.join(tmp, "clip.avi"), args.frames, h, w, fps=30.0)
        browser = Browser(os.path.join(tmp, "chromium"))
        try:
            for r in range(args.rounds):
                for name in VARIANTS:
                    row = run_once(
                        name, clip, checkpoint, args.size, args.frames, args.warm, browser
                    )
                    runs[name].append(row)
                    extra = "".join(f"  {k} {v:.1f}" for k, v in row.items() if k != "fps")
                    print(f"round {r + 1}: {name:<28} {row['fps']:6.2f} fps{extra}", flush=True)
        finally:
            browser.close()
    rows = []
    for name in VARIANTS:
        ratios = [a["fps"] / b["fps"] for a, b in zip(runs[name], runs["none"])]
        whole = [a["fps_run"] / b["fps_run"] for a, b in zip(runs[name], runs["none"])]
        # CPU per frame beyond no outputs (the pipeline process + the browser), per round
        extra = [(a["process_ms"] + a.get("browser_ms", 0.0)) / b["process_ms"] - 1
                 for a, b in zip(runs[name], runs["none"])]  # fmt: skip
        rows.append({
            "variant": name, "runs": runs[name], "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "ratio_run_median": statistics.median(whole),
            "extra_cpu_median": statistics.median(extra),
            **{f"{k}_median": statistics.median(r[k] for r in runs[name])
               for k in ("fps", "fps_run", "process_ms", "server_ms", "browser_ms", "sent")
               if k in runs[name][0]},
        })  # fmt: skip
    print(f"\n{h}x{w}, small default model, eager fp32, "
          f"{args.frames} frames x {args.rounds} rounds; medians, CPU in ms per frame")  # fmt: skip
    print(f"{'variant':<28}{'fps':>7}{'vs none':>9}{'range':>11}{'whole':>7}{'CPU proc':>10}"
          f"{'server':>8}{'browser':>9}{'extra CPU':>11}")  # fmt: skip
    for row in rows:
        print(f"{row['variant']:<28}{row['fps_median']:>7.2f}{100 * row['ratio_median']:>8.0f}%"
              f"{100 * row['ratio_min']:>6.0f}-{100 * row['ratio_max']:.0f}%"
              f"{100 * row['ratio_run_median']:>6.0f}%"
              f"{row['process_ms_median']:>10.1f}{row.get('server_ms_median', 0):>8.1f}"
              f"{row.get('browser_ms_median', 0):>9.1f}"
              f"{100 * row['extra_cpu_median']:>10.1f}%")  # fmt: skip
    out = args.out or os.path.join(RESULTS, f"web_{h}x{w}.json")
    data = {"size": [h, w], "frames": args.frames, "rounds": args.rounds, "rows": rows}
    print(f"wrote {write_results(out, data)}")


if __name__ == "__main__":
    main()
