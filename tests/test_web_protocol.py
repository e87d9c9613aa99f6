"""--web on the wire, without a browser: what a page receives and what it can ask for (the
message format of pipeline/web_sink.py), spoken by a `websockets` client as the page speaks it;
and the view's options.

The depth values travel only for the streams the page asks them for (its pointer is over them),
the frame it has comes again with them when it asks, and every stream's last frame comes with
them at the end of the run; the values equal the depth the pipeline delivered, to 1/512 m.
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

import cv2
import numpy as np
import pytest
from pipeline_helpers import eager_factory, frame_at
from test_cli import assert_one_error_line, run_cli

from pipeline import ConfigError, FrameSender, Pipeline, cli
from pipeline.colour import colorize
from pipeline.colour import levels as colour_levels
from pipeline.config import WebConfig
from pipeline.config_file import config_from_dict
from pipeline.results import DepthResult
from pipeline.web_server import on_this_host
from pipeline.web_sink import WebSink

pytest.importorskip("websockets.sync.client")
from websockets.sync.client import ClientConnection, connect  # noqa: E402

DEADLINE_S = 60.0


class Frame(NamedTuple):
    meta: dict[str, Any]
    depth: np.ndarray | None  # uint16 units (metres x meta.depth.scale), when sent
    levels: np.ndarray | None  # the colour levels of the depth, when sent so
    jpeg: bytes


def parse(message: bytes) -> Frame:
    """One binary frame message, taken apart as the page does."""
    n = struct.unpack_from("<I", message)[0]
    meta = json.loads(message[4 : 4 + n])
    d = meta["depth"]
    size, at = d["width"] * d["height"], 4 + n
    shape = (d["height"], d["width"])
    depth = levels = None
    if d["values"]:
        depth = np.frombuffer(message, "<u2", size, at).reshape(shape)
        at += 2 * size
    if meta["levels"]:
        levels = np.frombuffer(message, np.uint8, size, at).reshape(shape)
        at += size
    jpeg = message[at:]
    assert len(jpeg) == meta["jpeg"], (len(jpeg), meta["jpeg"])
    return Frame(meta, depth, levels, jpeg)


def receive(ws: ClientConnection) -> Frame:
    """The next frame message; text messages (end) before it are skipped."""
    while True:
        message = ws.recv(timeout=DEADLINE_S)
        if isinstance(message, bytes):
            return parse(message)
        assert json.loads(message)["type"] == "end", message


@pytest.mark.parametrize(
    "encoding, side_by_side",
    [("auto", False), ("jpeg", False), ("levels", True), ("jpeg", True)],
)
def test_depth_values_travel_only_when_asked_for_and_with_the_last_frame(
    tmp_path, tiny_checkpoint, encoding, side_by_side
):
    h, w = 60, 80
    delivered: dict[int, tuple[np.ndarray, float]] = {}  # index -> (depth, max depth)
    config = {
        "sources": [{"uri": "external", "id": "cam", "kind": "external"}],
        "model": {"precision": "fp32"},
        "outputs": {"web": {"port": 0, "encoding": encoding, "side_by_side": side_by_side}},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(
        config,
        engine_factory=eager_factory(tiny_checkpoint),
        on_result=lambda r: delivered.__setitem__(r.index, (r.depth.copy(), r.header["max_depth"])),
    ).start()
    got: list[Frame] = []
    try:
        url = pipe.endpoints["web"].replace("http", "ws", 1) + "ws"
        with connect(url, proxy=None, max_size=None) as ws:
            assert json.loads(ws.recv(timeout=DEADLINE_S))["streams"] == ["cam"]
            sender = FrameSender(pipe.endpoints["preprocess.lossless"], "cam", context=pipe.context)
            try:
                sender.send(frame_at(0, h, w))
                got.append(receive(ws))  # nobody asked: no values
                for junk in ("[" * 3000, "5", "[1, 2]", "not json", '{"ack": 5, "depth": "cam"}'):
                    ws.send(junk)  # ignored; the connection goes on
                # Asked for (with names that are not streams, ignored): the same frame again,
                # once the page acknowledged the one it has.
                ws.send(json.dumps({"depth": [5, "nope", "cam"]}))
                ws.send(json.dumps({"ack": "cam"}))
                got.append(receive(ws))
                ws.send(json.dumps({"ack": "cam"}))
                sender.send(frame_at(1, h, w))
                got.append(receive(ws))  # still asked for
                ws.send(json.dumps({"depth": []}))  # the pointer left
                ws.send(json.dumps({"ack": "cam"}))
                sender.send(frame_at(2, h, w))
                got.append(receive(ws))
            finally:
                sender.close()  # the stream ends, then the run
            got.append(receive(ws))  # the last frame, now with its values
            while (message := ws.recv(timeout=DEADLINE_S)) and '"stopped"' not in message:
                assert json.loads(message)["type"] == "end", message
        summary = pipe.join(timeout=DEADLINE_S)
    finally:
        pipe.stop()
        pipe.join(timeout=DEADLINE_S)
    assert summary.outcome == "finished"
    shown = [(frame.meta["index"], frame.depth is not None) for frame in got]
    assert shown == [(0, False), (0, True), (1, True), (2, False), (2, True)]
    x = w if side_by_side else 0
    for frame in got:
        meta, index = frame.meta, frame.meta["index"]
        depth, far = delivered[index]
        values = frame.depth is not None
        assert meta["depth"] == {"x": x, "width": w, "height": h, "scale": 256, "values": values}
        assert meta["view"] == [h, x + w] and meta["range"] == [0.0, far]
        if values:
            metres = frame.depth / meta["depth"]["scale"]
            assert np.abs(metres - depth).max() <= 0.5 / 256 + 1e-6
        # the picture: colour levels (the browser is on this host: auto) or a JPEG of it all
        assert meta["levels"] == (encoding != "jpeg")
        picture = None
        if frame.jpeg:
            picture = cv2.imdecode(np.frombuffer(frame.jpeg, np.uint8), cv2.IMREAD_COLOR)
        if meta["levels"]:
            assert np.array_equal(frame.levels, colour_levels(depth, (0.0, far)))
            if not side_by_side:
                assert picture is None  # nothing else to show
        else:
            assert frame.levels is None and picture.shape == (h, x + w, 3)
            error = np.abs(picture[:, x:].astype(int) - colorize(depth, (0.0, far)))
            assert error.mean() < 3.0, error.mean()
        if side_by_side:  # the input frame, left of the depth
            error = np.abs(picture[:, :x].astype(int) - frame_at(index, h, w))
            assert error.mean() < 10.0, error.mean()  # a textured scene: more JPEG error
    assert got[0].jpeg == got[1].jpeg  # frame 0 again: the same picture, now with its values


@pytest.mark.parametrize(
    "remote, local, here",
    [
        (("127.0.0.1", 50000), ("127.0.0.1", 8080), True),
        (("::1", 50000, 0, 0), ("::1", 8080, 0, 0), True),
        (("192.168.1.5", 50000), ("192.168.1.5", 8080), True),  # this host, by its own address
        (("192.168.1.7", 50000), ("192.168.1.5", 8080), False),  # another host: JPEG
        (None, None, False),  # unknown
    ],
)
def test_which_browsers_are_on_this_host(remote, local, here):
    assert on_this_host(remote, local) is here


# ---- the options -----------------------------------------------------------------------------


def test_bad_web_options_are_usage_errors():
    proc = run_cli("--source", "x.avi", "--web", "127.0.0.1:70000")
    assert_one_error_line(proc, 2, "--web", "70000")
    proc = run_cli("--source", "x.avi", "--web-encoding", "jpeg")
    assert_one_error_line(proc, 2, "--web-encoding needs --web")
    with pytest.raises(ConfigError, match="outputs.web.jpeg_quality"):
        config_from_dict({"sources": ["x.avi"], "outputs": {"web": {"jpeg_quality": 5}}})
    with pytest.raises(ConfigError, match="outputs.web.encoding: 'png' is not one of"):
        config_from_dict({"sources": ["x.avi"], "outputs": {"web": {"encoding": "png"}}})


@pytest.mark.parametrize(
    "argv, web",
    [
        (["--web"], WebConfig()),  # the defaults: loopback, 8080
        (["--web", "0"], WebConfig(port=0)),
        (["--web", "[::1]:9000", "--side-by-side"], WebConfig(host="::1", port=9000,
                                                              side_by_side=True)),
        (["--web", "--web-encoding", "jpeg"], WebConfig(encoding="jpeg")),
    ],
)  # fmt: skip
def test_web_options_set_outputs_web(argv, web):
    config = cli.build_config(cli.build_parser().parse_args(["--source", "x.avi", *argv]))
    assert config.outputs.web == web


def test_web_options_on_a_config_with_web_true(tmp_path):
    path = tmp_path / "web.yaml"
    path.write_text("sources: [x.avi]\noutputs:\n  web: true\n")
    argv = ["--config", str(path), "--side-by-side", "--web-encoding", "jpeg"]
    config = cli.build_config(cli.build_parser().parse_args(argv))
    assert config.outputs.web == WebConfig(side_by_side=True, encoding="jpeg")


def test_each_form_of_a_frame_is_made_once_and_a_browser_elsewhere_gets_jpeg():
    """The per-frame cache is keyed by the form: a browser here gets levels, one elsewhere the
    JPEG, each made once and the same bytes for every browser wanting it."""
    h, w = 30, 40
    depth = np.linspace(0.5, 9.5, h * w, dtype=np.float32).reshape(h, w)
    result = DepthResult({"stream": "cam", "index": 7, "max_depth": 10.0}, depth)
    sink = WebSink(WebConfig(port=0), ["cam"])
    try:
        frame = sink.encode((result, {"fps": 1.0, "latency_ms": 2.0, "drops": 0, "delivered": 1}))
        here, elsewhere = frame.payload(False, local=True), frame.payload(False, local=False)
        assert frame.payload(False, local=True) is here  # made once
        assert frame.payload(False, local=False) is elsewhere
        assert parse(here).meta["levels"] and not parse(elsewhere).meta["levels"]
        assert np.array_equal(parse(here).levels, colour_levels(depth, (0.0, 10.0)))
        assert parse(here).jpeg == b"" and len(parse(elsewhere).jpeg) > 0
        with_values = parse(frame.payload(True, local=False))
        assert with_values.depth is not None and with_values.jpeg == parse(elsewhere).jpeg
    finally:
        sink.close()
