"""onnxruntime on the exported fp32 graph (CPU, or CUDA with onnxruntime-gpu).

The exported model (batch axis free, spatial size fixed when input_size is given) is kept in the
engine cache, so a restart skips the export. Measured slower than eager on the build machine's CPU
(its DepthToSpace and Slice kernels are slow on this graph), so `auto` does not choose it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine_cache import EngineCache, default_cache_dir
from ..export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, ExportError, export_onnx_bytes
from ..export import onnx_session as _session
from ..hardware import package_version
from . import BackendUnavailable, BuildSpec, Runner


def _version() -> str | None:
    return package_version("onnxruntime") or package_version("onnxruntime-gpu")


def unavailable(precision: str, device: torch.device, input_size) -> str | None:
    if _version() is None:
        return "backend='onnxruntime' needs onnxruntime (pip install depthstream[onnx])"
    if precision != "fp32":
        return f"backend='onnxruntime' runs fp32 graphs only, not precision={precision!r}"
    return None


def build(model: nn.Module, spec: BuildSpec) -> Runner:
    version = _version()
    if version is None:
        raise BackendUnavailable("needs onnxruntime (pip install depthstream[onnx])")
    if spec.precision != "fp32":
        raise BackendUnavailable(f"runs fp32 graphs only, not {spec.precision}")
    import onnxruntime as ort

    if spec.device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable("on CUDA needs onnxruntime-gpu (CUDAExecutionProvider)")
        providers = [("CUDAExecutionProvider", {"device_id": spec.device.index or 0})]
    else:
        providers = ["CPUExecutionProvider"]
    size = spec.input_size or (480, 640)
    fields = {
        "kind": "onnx",
        "weights": spec.weights_digest,
        "input_size": list(spec.input_size) if spec.input_size else "dynamic",
        "batch": "dynamic",
        "opset": DEFAULT_OPSET,
        "torch": torch.__version__,
        "flip_tta": bool(getattr(model, "flip_tta", False)),
        "folded": bool(getattr(model, "folded", False)),
    }

    def export() -> bytes:
        return export_onnx_bytes(
            model,
            input_size=size,
            batch_size=spec.batch_sizes[0],
            dynamic_batch=True,
            dynamic_size=spec.input_size is None,
            optimize=False,  # model is already an InferenceGLPN
        )

    def load(blob: bytes):
        try:
            return _session(blob, threads=spec.threads, providers=providers)
        except ExportError:
            raise
        except Exception as e:  # onnxruntime's own errors (e.g. a corrupt protobuf)
            raise ExportError(f"onnxruntime cannot load the model: {e}") from None

    cache = EngineCache(spec.cache_dir or default_cache_dir())
    session, status = cache.load_or_build(fields, export, load, suffix=".onnx")
    device = spec.device

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out).to(device)

    return Runner(
        run=run,
        fixed_batch=False,
        notes={"cache": status, "onnxruntime": version, "path": cache.paths(fields, ".onnx")[0]},
    )
