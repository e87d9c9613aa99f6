"""Config values that cannot work: exit 2 with one short `error:` line, at once (issue 9).

Every number has a finite range, and a config file is read with bounds on its size, its nesting
and what its YAML aliases expand to. The command-line cases are the ones measured in the issue.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import tracemalloc

import pytest

from pipeline import cli
from pipeline import config as schema
from pipeline.config import ZmqSinkConfig, load_config
from pipeline.errors import MESSAGE_LIMIT, ConfigError, one_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(ROOT, "assets", "demo.mp4")
LINE_LIMIT = len("error: ") + MESSAGE_LIMIT

# The classic "billion laughs": 9 levels of 9 aliases each, 10**9 strings once expanded.
BOMB = "".join(
    [f"l0: &l0 [{', '.join(['lol'] * 9)}]\n"]
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)]
    + ["model: *l8\n"]  # the old loader echoed it in "model must be a mapping, got [...]"
)
DEEP = "x: " + "[" * 20_000 + "]" * 20_000 + "\n"


def source(**fields) -> str:
    items = ", ".join(f"{k}: {v}" for k, v in {"uri": f"'{CLIP}'", **fields}.items())
    return f"sources: [{{{items}}}]\n"


# (config file text, a word the error line must contain); each one failed or hung before.
CLI_CASES = {
    "linger_ms": (source() + "transport: {linger_ms: 3000000000}\n", "transport.linger_ms"),
    "transport_hwm": (source() + "transport: {hwm: 10000000000000}\n", "transport.hwm"),
    "open_timeout": (
        "sources: [{uri: 'rtsp://127.0.0.1:9/x', open_timeout_s: 1.0e+300}]\n",
        "sources[0].open_timeout_s",
    ),
    "fps_pace": (source(pace="true", fps=".inf"), "sources[0].fps"),
    "deep": (DEEP, "nested deeper"),
    "interval": (source() + "metrics: {interval_s: .inf}\n", "metrics.interval_s"),
    "max_wait": (source() + "model: {max_wait_ms: .inf}\n", "model.max_wait_ms"),
    "depth_range": (source() + "postprocess: {depth_range: [0, .inf]}\n", "depth_range"),
    "window": (source() + "metrics: {window: 100000000000}\n", "metrics.window"),
    "alias_bomb": (BOMB, "aliases"),
}


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_refuses_at_once_with_one_short_line(tmp_path, name):
    text, word = CLI_CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_stream.py"), "--config", str(path),
         "--max-frames", "2", "--save-depth", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert word in lines[0] and len(lines[0]) <= LINE_LIMIT, lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything ran
    assert time.monotonic() - t0 < 30


def test_alias_bomb_is_refused_while_parsing_with_little_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"bomb\.yaml.*more than 20000 values") as e:
            load_config(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20 and len(str(e.value)) < MESSAGE_LIMIT


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("deep.json", '{"x": ' + "[" * 20_000 + "]" * 20_000 + "}", "nested deeper than 32"),
        ("deep2.json", '{"x": ' + "[" * 500 + "]" * 500 + "}", "nested deeper than 32"),
        ("deep.yaml", DEEP, "nested deeper than 32"),
        ("recursive.yaml", "sources: &a [*a]\n", "recursive alias"),
        ("wide.yaml", "sources: [" + "a, " * 20_000 + "]\n", "more than 20000 values"),
        ("big.yaml", "sources: [a]\n" + "#" * (1 << 20) + "\n", "larger than 1048576 bytes"),
    ],
)
def test_files_that_cannot_be_read_are_one_config_error(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(str(path)) and "\n" not in message and len(message) < MESSAGE_LIMIT


def test_the_cli_reads_files_with_the_same_reader(tmp_path):
    path = tmp_path / "digits.yaml"
    path.write_text("sources: [a]\nmetrics: {window: " + "9" * 5000 + "}\n")  # int() refuses
    with pytest.raises(cli.CliError, match="digits.yaml: cannot parse") as e:
        cli.read_config_file(str(path))
    assert e.value.code == 2
    path.write_text("sources: [a]\n")
    assert cli.read_config_file(str(path)) == schema.read_config_file(path) == {"sources": ["a"]}
    long = cli.CliError("config: x.y: " + "bad " * 10_000_000)  # 40 MB
    assert len(str(long)) == MESSAGE_LIMIT and str(long).startswith("config: x.y: bad bad")


def test_aliases_within_the_budget_still_work(tmp_path):  # the budget must not cost them
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "sources:\n"
        "  - {<<: &base {uri: a.mp4, mode: live, input_size: &size [224, 320]}, id: one}\n"
        "  - {<<: *base, id: two}\n"
        "model: {input_size: *size}\n"
    )
    config = load_config(path)
    assert [(s.id, s.mode, s.input_size) for s in config.sources] == [
        ("one", "live", (224, 320)),
        ("two", "live", (224, 320)),
    ]
    assert config.model.input_size == (224, 320)


# (section, key, value) out of range; the message names the key and gives the range.
OUT_OF_RANGE = [
    ("transport", "linger_ms", 3_000_000_000),
    ("transport", "linger_ms", -1),
    ("transport", "hwm", 10**13),
    ("transport", "hwm", 0),
    ("transport", "max_message_bytes", 2**63),
    ("transport", "max_message_bytes", 100),
    ("metrics", "interval_s", math.inf),
    ("metrics", "interval_s", math.nan),
    ("metrics", "interval_s", 1e-9),
    ("metrics", "interval_s", -1),
    ("metrics", "window", 10**11),
    ("metrics", "window", 8),
    ("model", "max_wait_ms", math.inf),
    ("model", "max_wait_ms", -1),
    ("model", "input_size", [32, 2**40]),
    ("postprocess", "depth_range", [0, math.inf]),
    ("postprocess", "depth_range", [0, 1e9]),
    ("source", "open_timeout_s", 1e300),
    ("source", "open_timeout_s", 1e-300),
    ("source", "read_timeout_s", math.inf),
    ("source", "fps", math.inf),
    ("source", "fps", 1e-300),
    ("source", "fps", math.nan),
    ("source", "max_frames", 10**12),
    ("source", "max_frames", 0),
    ("source", "camera_size", [480, 10**9]),
    ("source", "camera_size", [0, 640]),
    ("source", "input_size", [96, 2**20]),
    ("reconnect", "max_attempts", 10**12),
    ("reconnect", "max_attempts", -2),
    ("reconnect", "initial_delay_s", math.inf),
    ("reconnect", "max_delay_s", 1e10),
    ("zmq", "hwm", 10**13),
    ("zmq", "wait_subscribers", 1001),
    ("zmq", "wait_subscribers", -1),
    ("zmq", "wait_timeout_s", 0),
    ("zmq", "wait_timeout_s", math.inf),
    ("video", "fps", math.inf),
    ("video", "fps", 0.001),
]

WHERE = {
    "source": "sources[0]",
    "reconnect": "sources[0].reconnect",
    "zmq": "outputs.zmq",
    "video": "outputs.video",
}


def config_with(section: str, key: str, value) -> dict:
    data = {"sources": [{"uri": "a.mp4"}]}
    if section == "source":
        data["sources"][0][key] = value
    elif section == "reconnect":
        data["sources"][0]["reconnect"] = {key: value}
    elif section in ("zmq", "video"):
        extra = {"path": "v.mp4"} if section == "video" else {}
        data["outputs"] = {section: {**extra, key: value}}
    else:
        data[section] = {key: value}
    return data


@pytest.mark.parametrize("section, key, value", OUT_OF_RANGE)
def test_numbers_out_of_range_name_the_key_and_the_range(section, key, value):
    with pytest.raises(ConfigError) as e:
        load_config(config_with(section, key, value))
    message = str(e.value)
    assert f"{WHERE.get(section, section)}.{key}" in message
    assert (".." in message or "<=" in message) and len(message) < MESSAGE_LIMIT, message


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("transport", "linger_ms", 60_000),
        ("transport", "hwm", 1_000_000),
        ("transport", "max_message_bytes", 2**31),
        ("metrics", "interval_s", 0),
        ("metrics", "interval_s", 86_400),
        ("metrics", "window", 1_000_000),
        ("model", "max_wait_ms", 10_000),
        ("model", "input_size", [8192, 32]),
        ("postprocess", "depth_range", [0, 10_000]),
        ("source", "open_timeout_s", 3600),
        ("source", "fps", 0.01),
        ("source", "fps", 1000),
        ("source", "max_frames", 10**9),
        ("source", "camera_size", [16384, 1]),
        ("reconnect", "max_attempts", -1),
        ("zmq", "wait_subscribers", 1000),
        ("zmq", "wait_timeout_s", 3600),
        ("video", "fps", 1000),
    ],
)
def test_numbers_at_the_ends_of_their_ranges_are_accepted(section, key, value):  # not too tight
    load_config(config_with(section, key, value))


def test_zmq_sink_waits_for_subscribers_only_when_asked():
    assert (ZmqSinkConfig().wait_subscribers, ZmqSinkConfig().wait_timeout_s) == (0, 10.0)
    zmq = load_config(config_with("zmq", "wait_subscribers", 2)).outputs.zmq
    assert (zmq.wait_subscribers, zmq.wait_timeout_s) == (2, 10.0)


def test_numbers_written_as_text_or_beyond_floats_are_clean_errors(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("sources: [a]\ntransport: {hwm: 1e13}\n")  # YAML 1.1: the text '1e13'
    with pytest.raises(ConfigError, match=r"transport\.hwm must be an integer.*write 1000000"):
        load_config(path)
    path.write_text("sources: [a]\nmodel: {max_wait_ms: 1e3}\n")
    with pytest.raises(ConfigError, match=r"model\.max_wait_ms must be a number.*1\.0e\+6"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"model\.max_wait_ms is out of range"):
        load_config(config_with("model", "max_wait_ms", 10**400))  # float() overflows
    with pytest.raises(ConfigError, match=r"transport\.hwm must be an integer, got 2\.0"):
        load_config(config_with("transport", "hwm", 2.0))


def test_values_echoed_in_messages_are_shortened_first():
    huge = ["x" * 1000] * 100_000
    cases = [
        ({"sources": ["a"], "model": huge}, "model must be a mapping"),
        ({"sources": [huge]}, "sources[0] must be a uri string"),
        ({"sources": [{"uri": "a", "mode": "x" * 10**6}]}, "sources[0].mode"),
        ({"sources": ["a"], "model": {"input_size": huge}}, "model.input_size must have 2"),
        ({"sources": ["a"], "model": {"y" * 10**6: 1}}, "unknown key 'model.yyy"),
    ]
    for data, start in cases:
        with pytest.raises(ConfigError) as e:
            load_config(data)
        assert start in str(e.value) and len(str(e.value)) < MESSAGE_LIMIT, str(e.value)[:500]


def test_one_line_keeps_the_start_within_the_limit():
    assert one_line("a\n  b\tc") == "a b c"
    text = one_line("key.name: " + "word " * 10**6, limit=50)
    assert len(text) == 50 and text.startswith("key.name: word") and text.endswith("…")
    full = "x" * MESSAGE_LIMIT
    assert one_line(full) == full and one_line(full + "x") == full[:-1] + "…"
