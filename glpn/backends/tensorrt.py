"""TensorRT through torch-tensorrt's dynamo path: one static-shape engine per batch size, cached.

The model is exported with torch.export and converted to a serialized TensorRT plan in strongly
typed mode (`use_explicit_typing`): the precision of every layer is the dtype it has in the
PyTorch graph, so the layers that `keep_fp32` keeps in float32 (LayerNorm by default under
fp16, the MiT overflow trap) stay float32 inside the engine. Plans are stored in the engine cache,
keyed by the weights, input shape, batch size, precision, fp32 layers, GPU model and torch /
torch-tensorrt / TensorRT / CUDA versions, and run through TensorRT's own runtime (no Python code
is loaded).

Needs CUDA, torch-tensorrt >= 2.5 and the tensorrt package it depends on.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..engine_cache import EngineCache, default_cache_dir
from ..hardware import gpu_description, package_version
from ..precision import DTYPES, cast_model
from . import BackendUnavailable, BuildSpec, Runner

log = logging.getLogger(__name__)


def available(device: torch.device) -> tuple[bool, str]:
    if device.type != "cuda":
        return False, "needs a CUDA device"
    if not torch.cuda.is_available():
        return False, "needs CUDA, which this torch build or machine lacks"
    if package_version("torch_tensorrt") is None or package_version("tensorrt") is None:
        return False, "needs torch-tensorrt (pip install depthstream[tensorrt])"
    return True, f"torch-tensorrt {package_version('torch_tensorrt')}"


def unavailable(precision: str, device: torch.device, input_size) -> str | None:
    if device.type == "cpu":
        return "backend='tensorrt' needs a CUDA device; on CPU use 'eager' or 'onnxruntime'"
    if input_size is None:
        return "backend='tensorrt' compiles for a fixed shape: pass input_size=(h, w)"
    ok, why = available(device)
    if not ok:
        return f"backend='tensorrt' {why}"
    if precision == "bf16":
        return "backend='tensorrt' is built for fp16 or fp32 here; use precision='fp16'"
    return None


class _Float32IO(nn.Module):
    """float32 in and out around a reduced-precision model, so the engine's I/O is float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values.to(self.dtype)).float()


class TensorRTPlan:
    """A deserialized TensorRT engine with one input and one output, run on torch's stream."""

    def __init__(self, plan: bytes, device: torch.device) -> None:
        import tensorrt as trt

        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ValueError("TensorRT could not deserialize the plan")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"expected 1 input and 1 output, got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.output_shape = tuple(self.engine.get_tensor_shape(self.output_name))
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16}
        self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32).contiguous()
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"engine built for {self.input_shape}, got {tuple(x.shape)}")
        out = torch.empty(self.output_shape, dtype=self.output_dtype, device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


def _serialize(module: nn.Module, example: torch.Tensor, precision: str) -> bytes:
    import torch_tensorrt

    with torch.no_grad():
        program = torch.export.export(module, (example,), strict=False)
    try:
        plan = torch_tensorrt.dynamo.convert_exported_program_to_serialized_trt_engine(
            program,
            arg_inputs=[example],
            use_explicit_typing=True,  # layer precisions come from the graph's dtypes
            disable_tf32=precision == "fp32",  # fp32 means fp32, not TF32 matmuls
            require_full_compilation=True,
            min_block_size=1,
            device=example.device,
        )
    except TypeError as e:  # an older torch-tensorrt without these options
        raise BackendUnavailable(f"needs torch-tensorrt >= 2.5 ({e})") from None
    except Exception as e:
        raise BackendUnavailable(f"TensorRT build failed: {type(e).__name__}: {e}") from None
    if not plan:
        raise BackendUnavailable("TensorRT build produced no engine (see the log above)")
    return bytes(plan)


def build(model: nn.Module, spec: BuildSpec) -> Runner:
    ok, why = available(spec.device)
    if not ok:
        raise BackendUnavailable(why)
    if spec.input_size is None:
        raise BackendUnavailable("builds for a fixed input size: pass input_size=(h, w)")
    if spec.precision == "bf16":
        raise BackendUnavailable("is built for fp16 or fp32 here, not bf16")
    import tensorrt as trt

    dtype = DTYPES[spec.precision]
    module = _Float32IO(cast_model(model, dtype, spec.keep_fp32), dtype).to(spec.device).eval()
    h, w = spec.input_size
    cache = EngineCache(spec.cache_dir or default_cache_dir())
    base = {
        "kind": "tensorrt",
        "weights": spec.weights_digest,
        "input_size": [h, w],
        "precision": spec.precision,
        "keep_fp32": sorted(spec.keep_fp32),
        "flip_tta": bool(getattr(model, "flip_tta", False)),
        "folded": bool(getattr(model, "folded", False)),
        # Plans built before the head's output stayed float32 (glpn.fused) must not be reused.
        "float32_output": True,
        "gpu": gpu_description(spec.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torch_tensorrt": package_version("torch_tensorrt"),
        "tensorrt": trt.__version__,
    }
    plans: dict[int, TensorRTPlan] = {}
    statuses = []
    for b in spec.batch_sizes:
        example = torch.rand(b, 3, h, w, device=spec.device)
        plan, status = cache.load_or_build(
            {**base, "batch_size": b},
            build=lambda example=example: _serialize(module, example, spec.precision),
            load=lambda blob: TensorRTPlan(blob, spec.device),
        )
        plans[b] = plan
        statuses.append(f"batch {b}: {status}")
        log.info("TensorRT engine for batch %d at %dx%d: %s", b, h, w, status)

    def run(x: torch.Tensor) -> torch.Tensor:
        return plans[x.shape[0]](x)

    return Runner(
        run=run,
        fixed_batch=True,
        notes={"cache": ", ".join(statuses), "gpu": base["gpu"], "tensorrt": trt.__version__},
    )
