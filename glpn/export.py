"""ONNX export of a GLPN depth model, checked against onnxruntime.

    python -m glpn.export CHECKPOINT_DIR model.onnx --size 480 640 [--dynamic-batch]

The graph takes `pixel_values` (B, 3, H, W) float32 in [0, 1] and returns `predicted_depth`
(B, H, W) metres. By default the exported model is `InferenceGLPN` (BatchNorm and the head's
upsampling folded: same numbers, ~40% fewer FLOPs for the small model); `optimize=False` exports
`GLPNDepth` as is. With `check=True` the file is run in onnxruntime on a structured synthetic frame
(at a second size too when the size is dynamic) and compared with PyTorch fp32.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError
from .fileio import atomic_write
from .fused import InferenceGLPN
from .metrics import DepthError, depth_error
from .model import GLPNDepth
from .synthetic import synthetic_image

INPUT_NAME, OUTPUT_NAME = "pixel_values", "predicted_depth"
DEFAULT_OPSET = 17
# fp32 ONNX vs fp32 PyTorch: only summation order differs.
CHECK_MEAN_REL, CHECK_MAX_REL = 1e-4, 1e-3


class ExportError(RuntimeError):
    """Export failed or the exported graph disagrees with PyTorch; the message says how."""


@dataclass(frozen=True)
class ExportResult:
    path: str | None  # the written file (None for export_onnx_bytes)
    seconds: float  # time spent exporting (not checking)
    errors: tuple[tuple[tuple[int, int], DepthError], ...]  # ((h, w), error vs PyTorch) per check


def _frame(h: int, w: int, batch: int, seed: int = 0) -> torch.Tensor:
    frames = [synthetic_image(h, w, seed=seed + i) for i in range(batch)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


def export_onnx_bytes(
    model: nn.Module,
    *,
    input_size: tuple[int, int] = (480, 640),
    batch_size: int = 1,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
) -> bytes:
    """The ONNX model as bytes (fp32). `model` is a GLPNDepth or an InferenceGLPN."""
    if isinstance(model, GLPNDepth) and optimize:
        model = InferenceGLPN(model)
    model = model.float().eval().to("cpu")
    h, w = input_size
    example = torch.zeros(batch_size, 3, h, w)
    axes: dict[int, str] = {}
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_size:
        axes.update({2: "height", 3: "width"})
    out_axes = {k if k == 0 else k - 1: v for k, v in axes.items()}  # (B, H, W): no channel axis
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript
        # (not a dependency here) and takes minutes for this model; this one takes seconds.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: out_axes} if axes else None,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as e:
            raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from None
    return buffer.getvalue()


def check_onnx(
    onnx_model: bytes | str,
    model: nn.Module,
    *,
    sizes: list[tuple[int, int]],
    batch_size: int = 1,
    threads: int | None = None,
) -> tuple[tuple[tuple[int, int], DepthError], ...]:
    """Run the ONNX model in onnxruntime (CPU) and compare with `model` in PyTorch fp32."""
    session = onnx_session(onnx_model, threads=threads)
    model = model.float().eval().to("cpu")
    results = []
    for h, w in sizes:
        x = _frame(h, w, batch_size)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"onnxruntime output shape {got.shape} != PyTorch's {ref.shape}")
        err = depth_error(got, ref)
        if not err.finite or err.mean_rel > CHECK_MEAN_REL or err.max_rel > CHECK_MAX_REL:
            raise ExportError(
                f"onnxruntime disagrees with PyTorch at {h}x{w}: {err} (allowed: mean rel "
                f"{CHECK_MEAN_REL:g}, max rel {CHECK_MAX_REL:g})"
            )
        results.append(((h, w), err))
    return tuple(results)


def onnx_session(onnx_model: bytes | str, *, threads: int | None = None, providers=None):
    """An onnxruntime InferenceSession with full graph optimisation; ExportError without ORT."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "onnxruntime is not installed (pip install onnxruntime, or depthstream[onnx])"
        ) from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(
        onnx_model, sess_options=options, providers=providers or ["CPUExecutionProvider"]
    )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: tuple[int, int] = (480, 640),
    batch_size: int = 1,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
    check: bool = True,
) -> ExportResult:
    """Export to `path` (written atomically) and, with check, verify it in onnxruntime."""
    path = os.fspath(path)
    h, w = input_size
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise ExportError(f"input_size must be multiples of 32 (>= 32), got {h}x{w}")
    if batch_size < 1:
        raise ExportError(f"batch_size must be >= 1, got {batch_size}")
    reference = InferenceGLPN(model) if isinstance(model, GLPNDepth) and optimize else model
    start = time.perf_counter()
    data = export_onnx_bytes(
        reference,
        input_size=input_size,
        batch_size=batch_size,
        dynamic_batch=dynamic_batch,
        dynamic_size=dynamic_size,
        opset=opset,
        optimize=False,
    )
    seconds = time.perf_counter() - start
    errors: tuple = ()
    if check:
        sizes = [(h, w)]
        if dynamic_size:
            sizes.append((h + 32, w - 32 if w > 64 else w + 64))
        errors = check_onnx(data, model, sizes=sizes, batch_size=batch_size + int(dynamic_batch))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, data)  # 0666 less the umask, like every other output
    return ExportResult(path=path, seconds=seconds, errors=errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glpn.export", description="Export a GLPN checkpoint to ONNX."
    )
    parser.add_argument("checkpoint", help="checkpoint directory (config.json + weights)")
    parser.add_argument("output", help="ONNX file to write")
    parser.add_argument("--size", nargs=2, type=int, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1, help="batch size of the example input")
    parser.add_argument("--dynamic-batch", action="store_true", help="batch axis left free")
    parser.add_argument("--dynamic-size", action="store_true", help="height and width left free")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--no-optimize", action="store_true", help="export GLPNDepth unfused")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--flip-tta", action="store_true", help="bake horizontal-flip TTA in")
    args = parser.parse_args(argv)
    try:
        model = GLPNDepth.from_pretrained(args.checkpoint)
        model.flip_tta = args.flip_tta
        result = export_onnx(
            model,
            args.output,
            input_size=tuple(args.size),
            batch_size=args.batch,
            dynamic_batch=args.dynamic_batch,
            dynamic_size=args.dynamic_size,
            opset=args.opset,
            optimize=not args.no_optimize,
            check=not args.no_check,
        )
    except (CheckpointError, ExportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size_mb = os.path.getsize(result.path) / 1e6
    print(f"wrote {result.path} ({size_mb:.1f} MB, exported in {result.seconds:.1f} s)")
    for (h, w), err in result.errors:
        print(f"onnxruntime vs PyTorch at {h}x{w}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
