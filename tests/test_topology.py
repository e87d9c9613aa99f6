"""The topology: stages, endpoints and queues described as data, from which the runner launches
stages and the reporting derives queues and order."""

from __future__ import annotations

import os
import pickle

import pytest
import zmq
from pipeline_helpers import depthstream_threads, eager_factory, write_images

from pipeline import Pipeline, load_config
from pipeline.engine_spec import EngineSpec
from pipeline.inference import InferenceStage
from pipeline.launch import ThreadLauncher
from pipeline.output import SinkStage
from pipeline.topology import Addresses, Connect, Link, StageSpec, Topology


def config(transport="inproc", **extra):
    return load_config({
        "sources": [
            {"uri": "rtsp://cam/stream", "id": "cam"},  # live
            {"uri": "clip.mp4", "id": "clip"},  # lossless
            {"uri": "external", "id": "ext", "kind": "external"},  # no capture stage
        ],
        "model": {"checkpoint": "ckpt", "max_batch": 2},
        "transport": {"kind": transport},
        **extra,
    })  # fmt: skip


def topology(cfg, results=False):
    return Topology.from_config(
        cfg,
        Addresses(cfg.transport, "uid"),
        engine_factory=EngineSpec.from_config(cfg),
        results=results,
    )


def test_stages_in_flow_order_and_launched_downstream_first():
    topo = topology(config())
    flow = ["capture:cam", "capture:clip", "preprocess", "inference", "postprocess", "sink"]
    assert topo.names() == flow
    # every stage after the ones it connects to: the sink first, captures last (config order)
    order = [s.name for s in topo.launch_order()]
    assert order == flow[::-1][:4] + ["capture:cam", "capture:clip"]


def test_queues_are_the_frame_links_not_the_credit_socket():
    topo = topology(config())
    assert topo.links() == [
        Link("capture:cam", "preprocess", "live"),
        Link("capture:clip", "preprocess", "lossless"),
        Link("preprocess", "inference", "input"),
        Link("inference", "postprocess", "input"),
        Link("postprocess", "sink", "input"),
    ]
    assert topo.upstream("preprocess") == ["capture:cam", "capture:clip"]
    assert topo.upstream("capture:cam") == []
    assert Connect("credit", "inference", "credit", data=False) in topo["preprocess"].connects


def test_a_spec_is_data_and_names_its_live_arguments():
    cfg = config()
    topo = topology(cfg, results=True)
    again = pickle.loads(pickle.dumps(topo))  # what a process launcher would send to a child
    assert again == topo
    infer = again["inference"]
    assert infer.factory is InferenceStage and infer.args == (EngineSpec.from_config(cfg),)
    sink = again["sink"]
    assert sink.factory is SinkStage and sink.args == (cfg.outputs,)
    assert sink.hooks == ("callback", "request_stop")  # the only live objects, supplied at launch
    assert [b.role for b in sink.binds] == ["input", "results"]
    assert "results" not in [b.role for b in topology(cfg)["sink"].binds]
    for spec in topo.stages:
        assert spec.control == f"inproc://depthstream-uid/control/{spec.name.replace(':', '-')}"
        assert all(b.address.startswith("inproc://depthstream-uid/") for b in spec.binds)


def test_a_closure_engine_factory_is_the_one_thing_that_does_not_pickle():
    cfg = config()
    topo = Topology.from_config(cfg, Addresses(cfg.transport, "u"), engine_factory=lambda: None)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        pickle.dumps(topo)


def test_addresses_per_transport(tmp_path):
    assert Addresses(config("tcp").transport, "u").data("sink") == "tcp://127.0.0.1:*"
    ipc = Addresses(config("ipc").transport, "u")
    address = ipc.data("sink")
    folder = os.path.dirname(address.removeprefix("ipc://"))
    assert address.startswith("ipc://") and os.path.isdir(folder)
    assert ipc.data("inference") == f"ipc://{folder}/inference"  # one folder per run
    ipc.cleanup()
    assert not os.path.exists(folder)
    fixed = load_config({"sources": [{"uri": "0"}], "transport": {"kind": "ipc", "ipc_dir": "/d"}})
    assert Addresses(fixed.transport, "u").data("sink") == "ipc:///d/ds-u-sink"


def test_launch_order_refuses_a_dangling_connect():
    lonely = StageSpec("a", SinkStage, connects=(Connect("output", "nowhere", "input"),))
    with pytest.raises(ValueError, match="dangling"):
        list(Topology((lonely,)).launch_order())


def test_public_endpoints_come_from_the_bound_roles():
    topo = topology(config(), results=True)
    bound = {
        "preprocess": {"live": "L", "lossless": "LL"},
        "inference": {"input": "I", "credit": "C"},
        "postprocess": {"input": "P"},
        "sink": {"input": "S", "publish": "PUB", "results": "R"},
    }
    assert topo.public_endpoints(lambda name: bound.get(name, {})) == {
        "preprocess.live": "L",
        "preprocess.lossless": "LL",
        "inference": "I",
        "postprocess": "P",
        "sink": "S",
        "publish": "PUB",
        "results": "R",
    }


def test_the_pipeline_reports_the_stages_of_its_topology(tmp_path, tiny_checkpoint):
    folder = tmp_path / "imgs"
    write_images(str(folder), 3, 40, 32)
    cfg = {
        "sources": [{"uri": str(folder), "id": "a"}, {"uri": str(folder), "id": "b"}],
        "model": {"checkpoint": tiny_checkpoint},
        "metrics": {"interval_s": 0},
    }
    pipe = Pipeline(cfg, engine_factory=eager_factory(tiny_checkpoint))
    assert pipe.metrics() == {} and pipe.topology is None  # nothing launched yet
    summary = pipe.run()
    assert list(summary.stages) == pipe.topology.names()
    assert summary.stages["preprocess"]["processed"] == 6  # both captures feed it
    assert summary.frames == {"a": 3, "b": 3}


def test_stages_run_where_the_launcher_puts_them(tmp_path, tiny_checkpoint):
    contexts = []

    def new_context():  # a launcher's context factory (a process launcher's makes one per child)
        contexts.append(zmq.Context())
        return contexts[-1]

    class Recording(ThreadLauncher):
        def __init__(self):
            super().__init__(context_factory=new_context)
            self.started = []

        def start(self, stage):
            self.started.append(stage.name)
            super().start(stage)

    class Pipe(Pipeline):
        launcher_factory = Recording

    folder = tmp_path / "imgs"
    write_images(str(folder), 2, 40, 32)
    cfg = {"sources": [{"uri": str(folder), "id": "a"}], "metrics": {"interval_s": 0}}
    pipe = Pipe(cfg, engine_factory=eager_factory(tiny_checkpoint))
    assert pipe.run().frames == {"a": 2}
    assert pipe._launcher.started == [s.name for s in pipe.topology.launch_order()]
    assert (
        contexts == [pipe.context] and pipe.context.closed
    )  # its factory's, terminated at the end
    assert depthstream_threads() == []
