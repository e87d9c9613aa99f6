"""The pipeline's shape as data: which stages run, what each binds and connects, and the queues.

    capture:<id> (one per source) -> preprocess -> inference -> postprocess -> sink
                    PUSH/PULL      credits ^     PUSH/PULL    PUSH/PULL  (PUB, files, video, API)

`Topology.from_config` describes every stage as a `StageSpec`: its class, constructor arguments
(configs, numbers, the EngineSpec), the endpoints it binds (by role) and the ones it connects to
(another stage's role, resolved once that stage has bound: tcp ports are only known then). Nothing
in a spec is a live object, so a launcher could build the stage in another process; the only
exceptions are named in `hooks` (callbacks into the launching process), which the runner supplies.
The runner launches stages from it, and the reporting derives queues and stage order from it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq

from glpn.fileio import pid_temp_dir

from . import curve
from .capture import CaptureStage
from .config import Config, TransportConfig
from .inference import EngineFactory, InferenceStage
from .ingest import IngestStage
from .metrics import StageMetrics
from .output import SinkStage
from .pool import PoolStage
from .postprocess import PostprocessStage
from .preprocess import PreprocessStage
from .sources import resolve_kind, resolve_mode
from .stage import Stage


@dataclass(frozen=True)
class Bind:
    """An endpoint a stage binds: its constructor gets the address, its `bound` the real one."""

    arg: str  # constructor keyword that receives the address
    role: str  # key of Stage.bound once bound
    address: str  # inproc:// / ipc:// / tcp://host:* (a free port, read back after binding)


@dataclass(frozen=True)
class Connect:
    """An endpoint a stage connects to: another stage's bound role."""

    arg: str  # constructor keyword that receives the address
    stage: str  # the stage that binds it
    role: str  # its role there
    # Frames flow from the connecting stage to the binding one. False for preprocess's credit
    # socket, where inference (the binder) sends credits upstream: not a frame queue.
    data: bool = True


@dataclass(frozen=True)
class Link:
    """A frame queue: `sender` pushes into `receiver`'s `role` endpoint."""

    sender: str
    receiver: str
    role: str


@dataclass(frozen=True)
class StageSpec:
    """How to build one stage, as data (picklable when its arguments are)."""

    name: str  # unique: "capture:<id>", "preprocess", "inference", "postprocess", "sink"
    factory: type[Stage]  # the stage class (importable, so it pickles by reference)
    args: tuple[Any, ...] = ()  # positional constructor arguments (configs, EngineSpec)
    options: Mapping[str, Any] = field(default_factory=dict)  # keyword arguments (plain data)
    binds: tuple[Bind, ...] = ()
    connects: tuple[Connect, ...] = ()
    control: str = ""  # inproc endpoint of the stage's control socket (the runner sends STOP)
    # Keyword arguments that are live objects of the launching process (callbacks): the runner
    # supplies them; a stage with hooks runs in the pipeline's own process.
    hooks: tuple[str, ...] = ()
    # Stage.bound role -> key in Pipeline.endpoints, for the endpoints other programs may use
    # (including ones the stage binds from its own config, such as the sink's PUB socket).
    public: Mapping[str, str] = field(default_factory=dict)
    metrics_window: int = 4096  # latency samples kept for the percentiles
    linger_ms: int = 1000  # see TransportConfig
    max_message_bytes: int = 256 * 1024 * 1024  # see TransportConfig
    # (server, client) CURVE keys of the run's tcp links, one pair per run (transport tcp): only
    # the run's own stages complete a handshake with each other. None: inproc / ipc.
    link_keys: tuple[curve.Keys, curve.Keys] | None = field(default=None, repr=False)

    def build(
        self, context: zmq.Context, connect: Mapping[str, str], hooks: Mapping[str, Any]
    ) -> Stage:
        """The stage object (not started). `connect`: Connect.arg -> resolved address."""
        kwargs = dict(self.options)
        kwargs.update({b.arg: b.address for b in self.binds})
        kwargs.update({c.arg: connect[c.arg] for c in self.connects})
        kwargs.update({h: hooks[h] for h in self.hooks})
        return self.factory(
            *self.args,
            **kwargs,
            context=context,
            control=self.control,
            metrics=StageMetrics(self.name, self.metrics_window),
            linger_ms=self.linger_ms,
            max_message_bytes=self.max_message_bytes,
            link_keys=self.link_keys,
        )


class Addresses:
    """Endpoint addresses of one run, unique to it (`uid`), for the configured transport."""

    def __init__(self, transport: TransportConfig, uid: str) -> None:
        self.transport = transport
        self.uid = uid
        self._ipc_dir: tempfile.TemporaryDirectory | None = None  # made on first use

    def data(self, name: str) -> str:
        t = self.transport
        if t.kind == "inproc":
            return f"inproc://depthstream-{self.uid}/{name}"
        if t.kind == "ipc":
            if t.ipc_dir:
                return f"ipc://{os.path.join(t.ipc_dir, f'ds-{self.uid}-{name}')}"
            if self._ipc_dir is None:
                self._ipc_dir = pid_temp_dir("depthstream-ipc-")
            return f"ipc://{os.path.join(self._ipc_dir.name, name)}"
        return f"tcp://{t.host}:*"  # a free port; the bound endpoint is read back after setup

    def control(self, name: str) -> str:
        return f"inproc://depthstream-{self.uid}/control/{name.replace(':', '-')}"

    def cleanup(self) -> None:
        """Remove the ipc socket folder this run made, if any."""
        if self._ipc_dir is not None:
            self._ipc_dir.cleanup()


@dataclass(frozen=True)
class Topology:
    """Every stage of a pipeline, in the order frames flow (captures first)."""

    stages: tuple[StageSpec, ...]

    @classmethod
    def from_config(
        cls,
        config: Config,
        addresses: Addresses,
        *,
        engine_factory: EngineFactory,
        results: bool = False,
    ) -> Topology:
        """`results`: the sink also binds a PUSH socket for Pipeline.results()."""
        cfg, t = config, config.transport
        streams = config.stream_ids()
        outputs = cfg.outputs
        make_view = (
            cfg.postprocess.view
            if cfg.postprocess.view is not None
            else bool(
                outputs.video
                or outputs.window
                or (outputs.zmq and outputs.zmq.publish_view)
                or (outputs.record and outputs.record.image == "view")
                or (outputs.rerun and outputs.rerun.image == "view")
                or (outputs.foxglove and outputs.foxglove.image == "view")
            )
        )
        points = cfg.points_config()  # point clouds postprocess computes (None: none)
        # an output records the input frame as captured: it travels to the sinks
        input_image = any(o and o.image == "input"
                          for o in (outputs.record, outputs.rerun, outputs.foxglove))
        input_image = input_image or bool(outputs.web and outputs.web.side_by_side)  # shown beside
        live = any(resolve_mode(s, resolve_kind(s)) == "live" for s in cfg.sources)
        common = dict(
            metrics_window=cfg.metrics.window,
            linger_ms=t.linger_ms,
            max_message_bytes=t.max_message_bytes,
            link_keys=curve.ephemeral_pair() if t.kind == "tcp" else None,
        )

        def spec(name: str, factory: type[Stage], *args: Any, **fields: Any) -> StageSpec:
            return StageSpec(
                name, factory, args, control=addresses.control(name), **fields, **common
            )

        captures = []
        for source in cfg.sources:
            kind = resolve_kind(source)
            if kind == "external":
                continue  # frames come from another process (pipeline.client.FrameSender)
            mode = resolve_mode(source, kind)
            role = "live" if mode == "live" else "lossless"
            captures.append(spec(
                f"capture:{source.id}", CaptureStage, source,
                options=dict(kind=kind, mode=mode, hwm=t.hwm),
                connects=(Connect("output", "preprocess", role),),
            ))  # fmt: skip
        if cfg.ingest is not None:  # remote cameras (capture --hub): all the external sources
            remote = {s.id: resolve_mode(s, "external") for s in cfg.sources
                      if resolve_kind(s) == "external"}  # fmt: skip
            captures.append(spec(
                "ingest", IngestStage, cfg.ingest,
                options=dict(modes=remote, hwm=t.hwm),
                binds=(Bind("endpoint", "ingest", cfg.ingest.endpoint),),
                connects=(Connect("live_output", "preprocess", "live"),
                          Connect("lossless_output", "preprocess", "lossless")),
                public={"ingest": "ingest"},
            ))  # fmt: skip
        sizes = {s.id: s.input_size or cfg.model.input_size for s in cfg.sources}
        preprocess = spec(
            "preprocess", PreprocessStage,
            options=dict(
                input_sizes=sizes,
                keep_image=(make_view and cfg.postprocess.side_by_side)
                or bool(points and points.colour) or input_image,
                max_pending=3 * cfg.model.max_batch,
                hwm=t.hwm,
            ),
            binds=(
                Bind("live_input", "live", addresses.data("preprocess-live")),
                Bind("lossless_input", "lossless", addresses.data("preprocess-lossless")),
            ),
            connects=(
                Connect("output", "inference", "input"),
                Connect("credit", "inference", "credit", data=False),
            ),
            public={"live": "preprocess.live", "lossless": "preprocess.lossless"},
        )  # fmt: skip
        pool = cfg.workers  # inference on workers (pipeline.pool): same links, plus a ROUTER
        inference = spec(
            "inference", PoolStage if pool else InferenceStage, engine_factory,
            options=dict(
                streams=streams,
                max_batch=cfg.model.max_batch,
                max_wait_ms=cfg.model.max_wait_ms,
                hwm=t.hwm,
                **(dict(workers=pool, live=live) if pool
                   else dict(prefetch=0 if live else cfg.model.max_batch)),
            ),
            binds=(
                Bind("input", "input", addresses.data("inference")),
                Bind("credit", "credit", addresses.data("credit")),
                *([Bind("endpoint", "workers", pool.endpoint)] if pool else []),
            ),
            connects=(Connect("output", "postprocess", "input"),),
            public={"input": "inference", "workers": "workers"},
        )  # fmt: skip
        postprocess = spec(
            "postprocess", PostprocessStage, cfg.postprocess,
            options=dict(streams=streams, make_view=make_view, sources=cfg.sources,
                         points=points, forward_image=input_image, device=cfg.model.device,
                         hwm=t.hwm),  # fmt: skip
            binds=(Bind("input", "input", addresses.data("postprocess")),),
            connects=(Connect("output", "sink", "input"),),
            public={"input": "postprocess"},
        )  # fmt: skip
        sink_binds = [Bind("input", "input", addresses.data("sink"))]
        if results:
            sink_binds.append(Bind("results", "results", addresses.data("results")))
        sink = spec(
            "sink", SinkStage, outputs,
            options=dict(streams=streams, hwm=t.hwm, postprocess=cfg.postprocess),
            binds=tuple(sink_binds),
            hooks=("callback", "request_stop"),
            public={"input": "sink", "publish": "publish", "results": "results",
                    "foxglove": "foxglove", "web": "web"},
        )  # fmt: skip
        return cls((*captures, preprocess, inference, postprocess, sink))

    # ---- derived views -----------------------------------------------------------------------

    def __getitem__(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def names(self) -> list[str]:
        """Stage names in the order frames flow through them (the reporting order)."""
        return [s.name for s in self.stages]

    def launch_order(self) -> Iterator[StageSpec]:
        """Each stage after every stage it connects to (their bound endpoints are known then):
        the sink first, the captures last, so no frame is read before everything is ready."""
        started: set[str] = set()
        waiting = list(self.stages)
        while waiting:
            ready = [s for s in waiting if all(c.stage in started for c in s.connects)]
            if not ready:
                raise ValueError(f"topology: cyclic or dangling connects among {waiting}")
            for s in ready:
                yield s
                started.add(s.name)
            waiting = [s for s in waiting if s.name not in started]

    def links(self) -> list[Link]:
        """The frame queues (connects that carry frames), in flow order."""
        return [Link(s.name, c.stage, c.role) for s in self.stages for c in s.connects if c.data]

    def upstream(self, name: str) -> list[str]:
        """The stages that push frames into `name` (each once, however many of its links)."""
        return list(dict.fromkeys(link.sender for link in self.links() if link.receiver == name))

    def public_endpoints(self, bound: Callable[[str], Mapping[str, str]]) -> dict[str, str]:
        """Pipeline.endpoints: public name -> bound address; `bound(stage)` is its Stage.bound."""
        out: dict[str, str] = {}
        for s in self.stages:
            addresses = bound(s.name)
            out.update(
                {key: addresses[role] for role, key in s.public.items() if role in addresses}
            )
        return out
