"""What the inference stage builds its engine from: data only, so it can cross a process boundary.

`EngineSpec` replaces a closure over the config: it pickles (a ModelConfig, two tuples and a flag),
and calling it builds the engine in whichever thread or process calls it, as detectron2's
AsyncPredictor builds its model from config data inside its worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Config, ModelConfig
from .errors import ConfigError

if TYPE_CHECKING:
    from glpn.engine import Engine

# The demo's random weights: seed 2 because its output visibly follows the demo scene's edges and
# boxes (several seeds were looked at); it is still not depth.
DEMO_PRESET = "default"
DEMO_SEED = 2


@dataclass(frozen=True)
class EngineSpec:
    """A zero-argument engine factory: `spec()` -> glpn.engine.Engine (or, for backend
    simulate, pipeline.simulate.SimulatedEngine)."""

    model: ModelConfig  # checkpoint, backend, precision, device
    input_size: tuple[int, int] | None  # fixed model input (backends compile for it); None: any
    batch_sizes: tuple[int, ...]  # batch sizes fixed-shape backends build for
    # The demo: spread random weights (glpn.synthetic, small default preset, seed 2), built in the
    # inference thread; never silently (the CLI warns loudly), never when a checkpoint is given.
    random_weights: bool = False

    @classmethod
    def from_config(cls, config: Config, *, random_weights: bool = False) -> EngineSpec:
        """The engine config.model asks for; ConfigError without a checkpoint (unless random)."""
        model = config.model
        # The load-test engine needs no checkpoint; nor does a hub whose workers run the model.
        simulate = model.backend == "simulate"
        workers_only = config.workers is not None and not config.workers.local_worker
        if not random_weights and not simulate and not workers_only and not model.checkpoint:
            raise ConfigError("config: model.checkpoint is required (or pass engine_factory)")
        # A fixed input size lets backends compile for it; only when every stream uses the same one.
        sizes = {s.input_size or model.input_size for s in config.sources}
        input_size = next(iter(sizes)) if len(sizes) == 1 else None
        batch_sizes = tuple(sorted({1, model.max_batch}))
        return cls(model, input_size, batch_sizes, random_weights)

    def __call__(self) -> Engine:
        if self.model.backend == "simulate":  # selected only by name, never by auto
            from .simulate import SimulatedEngine

            return SimulatedEngine(self.model.simulate_ms)  # type: ignore[return-value]
        # Imported here: torch is heavy, and a process that only describes a pipeline needs none.
        from glpn import engine

        options = dict(
            backend=self.model.backend,
            precision=self.model.precision,
            device=self.model.device,
            input_size=self.input_size,
            batch_sizes=self.batch_sizes,
        )
        if self.random_weights:
            # In memory only: nothing is written, so a killed run leaves nothing behind.
            return engine.from_model(demo_model(), **options)
        return engine.load(self.model.checkpoint, **options)


def demo_model():
    """The small default GLPN with spread random weights (glpn.GLPNDepth)."""
    from glpn import GLPNConfig, GLPNDepth
    from glpn.synthetic import spread_init_

    return spread_init_(GLPNDepth(GLPNConfig.preset(DEMO_PRESET)), seed=DEMO_SEED)
