"""--metrics-port: the Prometheus endpoint, scraped over HTTP during a run and parsed with
prometheus_client's own text parser (what a Prometheus server reads).

Frames come from an external source the test feeds, so the test decides when frames flow: after
it fed N frames and the sink delivered them, nothing moves, and the scrape must show exactly what
Pipeline.metrics() shows. The latency histograms are checked against the timings the delivered
frames carry in their headers (stage_ms, wait_ms, latency_ms): what each stage measured.
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from pipeline_helpers import eager_factory, frame_at, wait_until
from test_cli import (
    RUN_STREAM,
    assert_one_error_line,
    child_env,
    env_without,
    paced_config,
    write_clip,
)

from pipeline import EndpointError, FrameSender, Pipeline

parser = pytest.importorskip("prometheus_client.parser")

H, W, FRAMES = 48, 64, 5
DEADLINE_S = 120.0  # generous: 2 shared cores; every wait ends as soon as its event happens
# The documented bucket bounds (seconds, README): 0.5 ms .. 60 s, then +Inf.
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HEADER_MS = 0.0005  # the headers' timings are rounded to 3 decimals of a millisecond

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def samples(text: str) -> Samples:
    """(sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(url: str) -> Samples:
    """(sample name, sorted labels) -> value, from one HTTP GET of the endpoint."""
    return samples(scrape_text(url))


def histogram(
    got: Samples, name: str, **labels: str
) -> tuple[list[tuple[float, float]], float, float]:
    """One histogram's (le, cumulative count) in le order, its _sum and _count."""
    key = tuple(sorted(labels.items()))
    buckets = sorted(
        (float(dict(lab)["le"]), value)
        for (sample, lab), value in got.items()
        if sample == f"{name}_bucket" and tuple(kv for kv in lab if kv[0] != "le") == key
    )
    return buckets, got[(f"{name}_sum", key)], got[(f"{name}_count", key)]


def check_histogram(
    got: Samples, name: str, ms: list[float], *, tol_ms: float, **labels: str
) -> None:
    """The histogram `name` counted exactly the values `ms` (milliseconds), known to `tol_ms`:
    cumulative monotone buckets at the documented bounds, +Inf = _count = len(ms), each bucket
    holds the values <= its bound, _sum their sum."""
    buckets, total, count = histogram(got, name, **labels)
    assert [le for le, _ in buckets] == [*BOUNDS, math.inf], (name, labels)
    counts = [n for _, n in buckets]
    assert counts == sorted(counts), (name, labels, counts)  # cumulative
    assert counts[-1] == count == len(ms), (name, labels)
    tol_s = tol_ms / 1000 + 1e-12
    for le, n in buckets[:-1]:
        surely = sum(v / 1000 <= le - tol_s for v in ms)  # values this close to a bound may
        maybe = sum(v / 1000 <= le + tol_s for v in ms)  # have been rounded across it
        assert surely <= n <= maybe, (name, labels, le, n, sorted(ms))
    assert total == pytest.approx(sum(ms) / 1000, rel=1e-9, abs=len(ms) * tol_s), (name, labels)


def refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.URLError as e:
        return isinstance(e.reason, ConnectionRefusedError)
    return False


def prometheus_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if "prometheus" in t.name]


def external_config(port: int | None = 0) -> dict:
    return {
        "sources": [{"uri": "external", "id": "cam", "kind": "external"}],
        "model": {"precision": "fp32"},
        "metrics": {"interval_s": 0, "port": port},
    }


def test_a_scrape_during_the_run_shows_what_the_pipeline_measured(tiny_checkpoint):
    results = []  # the delivered frames, with the timings each stage stamped in their headers
    pipe = Pipeline(
        external_config(), engine_factory=eager_factory(tiny_checkpoint), on_result=results.append
    ).start()
    url = pipe.endpoints["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    assert not url.endswith(":0/metrics")  # the port it got, not the 0 asked for
    sender = FrameSender(pipe.endpoints["preprocess.lossless"], "cam", context=pipe.context)
    try:
        for i in range(FRAMES):
            sender.send(frame_at(i, H, W))
        wait_until(lambda: pipe.metrics()["sink"]["sent"] == FRAMES, DEADLINE_S, "the frames")
        text = scrape_text(url)  # frames stopped flowing: nothing changes between these two reads
        stages = pipe.metrics()
    finally:
        sender.close()  # ends the stream
    summary = pipe.join(timeout=DEADLINE_S)
    assert summary.outcome == "finished"

    got = samples(text)
    types = {f.name: f.type for f in parser.text_string_to_metric_families(text)}
    for name in ("stage_latency_seconds", "stage_wait_seconds", "end_to_end_latency_seconds"):
        assert types[f"depthstream_{name}"] == "histogram", name
    assert len(results) == FRAMES
    assert got[("depthstream_frames_delivered_total", (("stream", "cam"),))] == FRAMES
    assert set(stages) == {"preprocess", "inference", "postprocess", "sink"}
    for stage, s in stages.items():
        label = (("stage", stage),)
        for key in ("received", "processed", "sent", "malformed"):
            assert got[(f"depthstream_stage_{key}_total", label)] == s[key], (stage, key)
        assert got[("depthstream_stage_queue_depth", label)] == s["queue"] == 0
        # Every stage waited before each frame: the waits in the headers are what it recorded.
        waits = [r.wait_ms[stage] for r in results]
        check_histogram(got, "depthstream_stage_wait_seconds", waits, tol_ms=0, stage=stage)
        if stage == "sink":  # its work (the sinks' writes) is timed after its header is made
            buckets, total, count = histogram(got, "depthstream_stage_latency_seconds", stage=stage)
            assert count == s["processed"] == FRAMES and buckets[-1] == (math.inf, FRAMES)
            worst = s["latency_ms"]["max"] / 1000  # all FRAMES are in the window
            assert worst - HEADER_MS / 1000 <= total <= FRAMES * worst + HEADER_MS / 1000
        else:
            work = [r.stage_ms[stage] for r in results]
            check_histogram(
                got, "depthstream_stage_latency_seconds", work, tol_ms=HEADER_MS, stage=stage
            )
            assert len(work) == s["processed"]
    assert stages["sink"]["processed"] == FRAMES and stages["sink"]["latency_ms"]["max"] > 0
    e2e = [r.latency_ms for r in results]
    check_histogram(got, "depthstream_end_to_end_latency_seconds", e2e, tol_ms=HEADER_MS)
    assert got[("depthstream_end_to_end_latency_seconds_count", ())] == FRAMES
    assert min(e2e) > 0
    assert not any(name == "depthstream_stage_dropped_total" for name, _ in got)  # none dropped
    engine = (("backend", "eager"), ("device", "cpu"), ("precision", "fp32"))
    assert got[("depthstream_engine_info", engine)] == 1
    assert got[("depthstream_startup_seconds", ())] == pytest.approx(summary.startup_s)

    # The endpoint ended with the pipeline: its port is closed, its threads are gone.
    assert refused(url)
    assert prometheus_threads() == []


def test_a_port_in_use_fails_the_start_naming_the_key(tiny_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pipe = Pipeline(external_config(port), engine_factory=eager_factory(tiny_checkpoint))
        with pytest.raises(
            EndpointError, match=rf"metrics\.port: cannot serve on 127\.0\.0\.1:{port}"
        ):
            pipe.start()
    assert pipe.stages == []  # nothing was launched: the port is checked first
    assert prometheus_threads() == []


def test_cli_serves_metrics_while_it_runs(tiny_checkpoint, tmp_path):
    clip = write_clip(str(tmp_path / "long.avi"), 300, fps=10.0)  # 30 s when paced
    proc = subprocess.Popen(
        [sys.executable, RUN_STREAM, "--config", paced_config(tmp_path / "p.yaml", clip),
         "--checkpoint", tiny_checkpoint, "--metrics-port", "127.0.0.1:0",
         "--metrics-interval", "0"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = ""
        for line in proc.stderr:  # the endpoint is logged before the engine is built
            if "Prometheus metrics on " in line:
                url = line.split("Prometheus metrics on ", 1)[1].strip()
                break
        assert url.startswith("http://127.0.0.1:"), "the endpoint was not logged"
        key = ("depthstream_frames_delivered_total", (("stream", "source0"),))
        wait_until(lambda: scrape(url).get(key, 0) >= 2, DEADLINE_S, "frames in a scrape")
        got = scrape(url)
        assert got[("depthstream_stage_processed_total", (("stage", "capture:source0"),))] >= 2
        assert got[("depthstream_frames_captured_total", (("stream", "source0"),))] >= 2
        proc.send_signal(2)  # SIGINT: a clean stop
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "stopped (SIGINT)" in stdout
    assert refused(url)


def test_cli_refuses_a_bad_metrics_port():
    proc = subprocess.run(
        [sys.executable, RUN_STREAM, "--metrics-port", "70000"],
        env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--metrics-port" in proc.stderr and "[HOST:]PORT" in proc.stderr


def test_without_prometheus_client_the_cli_says_what_to_install(tiny_checkpoint, tmp_path):
    env = env_without(tmp_path, "prometheus_client")
    clip = write_clip(str(tmp_path / "clip.avi"), 2)
    proc = subprocess.run(
        [sys.executable, RUN_STREAM, "--source", clip, "--checkpoint", tiny_checkpoint,
         "--metrics-port", "0"],
        env=env, capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert_one_error_line(proc, 2, "metrics.port", "pip install depthstream[metrics]")
