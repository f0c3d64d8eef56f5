"""Run exported files in their stock runtimes and compare them with the PyTorch encoder.

Criterion (the same for every runtime): ``max|out - ref| <= atol + rtol * max|ref|``, i.e. the
tolerance is relative to the scale of the reference output, not elementwise (post-ReLU features
contain exact zeros, where an elementwise relative error is meaningless). ``max_rel_diff`` is
reported with the same convention: ``max|out - ref| / max|ref|``. :data:`DEFAULT_ATOL` and
:data:`DEFAULT_RTOL` are the float32 tolerance (each export format states its own, see
:mod:`.formats`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from entropi.device.encoder import refused_ops

from ._errors import ExportError, VerificationError, require

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "Diff",
    "compare_arrays",
    "compare_onnx_torch",
    "compare_tflite_torch",
    "device_ops_check",
    "run_onnx",
    "run_tflite",
    "torch_features",
]

# Float32 accumulation-order differences between runtimes are ~1e-7 of the output scale for
# these encoders; 1e-4 leaves room for deeper or trained nets and is still far below what a wrong
# weight, channel or layout produces (order 1).
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4

ModelSource = str | os.PathLike | bytes
"""A model file: its path or its bytes."""


@dataclass(frozen=True)
class Diff:
    """Largest deviation of a runtime's output from the reference over all compared inputs."""

    max_abs_diff: float
    max_rel_diff: float  # max_abs_diff / max|reference|
    ref_scale: float  # max|reference|
    atol: float
    rtol: float
    n_inputs: int


def compare_arrays(
    out: np.ndarray, ref: np.ndarray, *, atol: float, rtol: float, what: str = "output"
) -> Diff:
    """Compare ``out`` with ``ref``; raise :class:`VerificationError` beyond tolerance."""
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if out.shape != ref.shape:
        raise VerificationError(f"{what}: output shape {out.shape} != reference shape {ref.shape}")
    if not np.all(np.isfinite(out)):
        raise VerificationError(f"{what}: output contains NaN or inf")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    max_abs = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    diff = Diff(max_abs, max_abs / max(scale, 1e-30), scale, atol, rtol, int(ref.shape[0]))
    if max_abs > atol + rtol * scale:
        raise VerificationError(
            f"{what} differs from the PyTorch encoder: max abs diff {max_abs:.3g} > "
            f"atol {atol:g} + rtol {rtol:g} * max|ref| {scale:.3g}"
        )
    return diff


def torch_features(module: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """The reference: ``module`` in eval mode on float32 NCHW ``inputs``, one batch."""
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(inputs, np.float32))).numpy()


def load_model_bytes(model: ModelSource) -> bytes:
    """The bytes of a model file given as a path or as bytes."""
    return bytes(model) if isinstance(model, bytes | bytearray) else Path(model).read_bytes()


def open_tflite(model: ModelSource, *, num_threads: int | None = None, what: str = "running"):
    """The stock LiteRT interpreter on a TFLite file (path or bytes), tensors allocated; a file
    it cannot load raises :class:`~entropi.export.ExportError`."""
    interp_mod = require("ai_edge_litert.interpreter", "litert", f"{what} a TFLite file")
    try:
        interp = interp_mod.Interpreter(
            model_content=load_model_bytes(model), num_threads=num_threads
        )
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"the LiteRT interpreter cannot load the TFLite file: {e}") from e
    return interp


def device_ops_check(model: ModelSource, fmt: str) -> None:
    """Refuse (:class:`~entropi.export.ExportError`) an exported file whose operators the device
    runtime would refuse when it loads the bundle (:data:`entropi.device.encoder.ONNX_OPS` /
    ``TFLITE_OPS``): an export that adds an operator must add it there too, or every bundle of
    it would be unusable."""
    unknown = refused_ops(load_model_bytes(model), fmt)
    if unknown:
        raise ExportError(
            f"the exported {fmt} file {_label(model)} uses operators the device runtime refuses: "
            f"{', '.join(unknown)}; add them to entropi.device.encoder.{fmt.upper()}_OPS if the "
            "device may run them"
        )


def run_onnx(model: ModelSource, inputs: np.ndarray) -> np.ndarray:
    """Run an ONNX file (path or bytes) in onnxruntime on one float32 NCHW batch, after
    :func:`device_ops_check`."""
    ort = require("onnxruntime", "export", "verifying an ONNX file")
    device_ops_check(model, "onnx")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(load_model_bytes(model), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(inputs, np.float32)})[0]


def run_tflite(model: ModelSource, inputs: np.ndarray) -> np.ndarray:
    """Run a TFLite file (path or bytes) in the stock LiteRT interpreter, one sample at a time
    when the model's batch dimension is 1, after :func:`device_ops_check`."""
    device_ops_check(model, "tflite")
    interp = open_tflite(model, what="verifying")
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    batch = int(inp["shape"][0]) or 1
    x = np.ascontiguousarray(inputs, np.float32)
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) != batch:
            raise VerificationError(f"{len(x)} inputs do not split into batches of {batch}")
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        results.append(interp.get_tensor(out["index"]).copy())
    return np.concatenate(results, axis=0)


def compare_onnx_torch(
    model: ModelSource, module: nn.Module, inputs: np.ndarray, *, atol: float, rtol: float
) -> Diff:
    """onnxruntime on ``model`` vs ``module`` on the same NCHW float32 ``inputs``."""
    return compare_arrays(
        run_onnx(model, inputs),
        torch_features(module, inputs),
        atol=atol,
        rtol=rtol,
        what=f"ONNX model {_label(model)}",
    )


def compare_tflite_torch(
    model: ModelSource, module: nn.Module, inputs: np.ndarray, *, atol: float, rtol: float
) -> Diff:
    """The LiteRT interpreter on ``model`` vs ``module`` on the same NCHW float32 ``inputs``."""
    return compare_arrays(
        run_tflite(model, inputs),
        torch_features(module, inputs),
        atol=atol,
        rtol=rtol,
        what=f"TFLite model {_label(model)}",
    )


def _label(model: ModelSource) -> str:
    return "(in memory)" if isinstance(model, bytes | bytearray) else str(model)
