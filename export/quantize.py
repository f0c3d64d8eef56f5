"""Post-training int8 quantization of an exported encoder: full-integer TFLite and QDQ ONNX.

What:

- :func:`quantize_tflite_int8`: encoder -> BN folded (:func:`~entropi.export.fold.fold_batchnorm`,
  the graph the float exporters convert) -> PT2E static quantization -> full-integer TFLite file
  (int8 input, int8 output, int8 weights and activations, int32 biases; no float tensor left).
- :func:`quantize_onnx_qdq`: float ONNX file -> ``quant_pre_process`` -> ``quantize_static``
  (QDQ format) -> ONNX file whose I/O stays float32; onnxruntime fuses the QDQ pairs into
  ``QLinearConv`` at load, so the compute is int8.
- :func:`run_tflite_int8`: the LiteRT interpreter on float NCHW inputs, quantizing inputs and
  dequantizing outputs with the file's own parameters (what the device does).
- :func:`int8_feature_error`: the error measures of int8 features against float ones.
- :func:`pruned_zeros_kept`: whether every pruned (exactly zero) float weight is an int8 zero.

What litert-torch 0.10's quantizer leaves float, and what is done about it: residual adds and
squeeze-excitation multiplies lose the source metadata its annotators match under torch 2.13
(:func:`_restore_source_fns`); hardswish, clamps and the squeeze-excitation's global mean have
no annotator (:func:`_quantizer` annotates them); hardsigmoid lowers to scalar float arithmetic
(:func:`_hardsigmoid_into_conv` folds it into the conv before it). With these MobileNetV3-small
is full-integer. An op TFLite has no int8 kernel for still stays float, and the file is refused
with the float ops named.

Why these libraries: they are the quantizers of the two runtimes the files are for, already
dependencies of the ``tflite`` / ``export`` extras. litert-torch converts a torchao PT2E graph
(``prepare_pt2e`` / ``convert_pt2e``, its own :class:`PT2EQuantizer`) straight to TFLite integer
kernels; onnxruntime's ``quantize_static`` writes the QDQ form that its own optimizer fuses.

Scheme (both formats): weights int8 per output channel, symmetric (zero point 0, range
[-127, 127]: ``q = round(w / s_c)``, ``s_c = max|w_c| / 127``; ONNX: 7 bits, [-64, 64], below);
activations int8 per tensor, affine, their ranges calibrated over the N calibration images fed
one at a time (TFLite: the PT2E histogram observer; ONNX: MinMax); biases int32 (scale = input
scale * weight scale).

Why the ONNX weights have 7 bits (``reduce_range``): on x86 onnxruntime turns int8 QDQ
activations into uint8 and runs the convolutions with the U8S8 kernels; on a CPU without VNNI
(AVX2 or AVX-512 alone) these sum two ``uint8 x int8`` products in int16 (``VPMADDUBSW``), which
saturates once ``2 x 255 x |q_w|`` exceeds 32767: full-range per-channel weights lose
accuracy there and not on a VNNI machine (the quickstart's rung 0 was reported at a mean cosine
of 0.9644 on one host; a VNNI host measures 0.99996 for it). With ``|q_w| <= 64`` the sum stays
below 32767 on every kernel, for a measured cost of ~1e-4 in mean cosine (quickstart rung 0,
VNNI host: 0.99996 -> 0.99989 on 200 CIFAR-100 test images). MinMax stays the activation
calibration: entropy calibration gave the same cosine there, percentile (99.99 / 99.999) a lower
one and a larger max_rel, and the distribution method broke the features (0.38).
Because weights are symmetric, ``round(0 / s) = 0``: a pruned weight stays exactly zero, and a
surviving weight rounds to zero only when ``|w| < s_c / 2`` (:func:`pruned_zeros_kept` counts
both). The device quantizes a float input with ``q = clip(round(x / s) + z, -128, 127)`` and
dequantizes an output with ``x = (q - z) * s``, ``(s, z)`` read from the LiteRT interpreter's
input / output details (:func:`tflite_io_quantization`).

Error measures (:func:`int8_feature_error`), ``a`` the float reference rows, ``b`` the int8
features: ``max_rel = max|a - b| / max|a|`` (relative to the output scale, as
:mod:`.verify` does: post-ReLU features hold exact zeros) and ``mean_cos`` = the mean over rows
of ``a.b / (|a| |b|)``, with the cosine of two zero rows defined as 1 (and of a zero row with a
non-zero one as 0). Tolerances the tests use: ``mean_cos >= 0.999`` and ``max_rel <= 0.05``.
Each int8 layer adds up to half an output step (``max / 255``, ~0.2 % of the range) of rounding;
over four conv layers plus the input quantization smallnet measures max_rel ~ 9e-3 and
mean_cos ~ 0.99998 (random weights, random inputs); 0.05 leaves a 5x margin and is still far
below what a wrong scale, zero point or layout gives (order 1, cosines well below 0.99). The
LiteRT XNNPACK and reference kernels differ by up to one int8 step of the output scale.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from entropi.common.files import atomic_write_bytes

from ._errors import ExportError, VerificationError, require
from .fold import fold_batchnorm
from .tflite_export import dense_weight, import_converter, quiet_converter
from .threads import cpu_threads
from .verify import ModelSource, load_model_bytes, open_tflite
from .weights import SparseStats

__all__ = [
    "ONNX_SPARSE_DENSITY",
    "int8_feature_error",
    "onnx_int8_weights",
    "onnx_qdq_bytes",
    "pruned_zeros_kept",
    "quantize_onnx_qdq",
    "quantize_tflite_int8",
    "run_onnx_qdq",
    "run_tflite_int8",
    "sparsify_onnx_int8",
    "tflite_int8_bytes",
    "tflite_float_ops",
    "tflite_int8_weights",
    "tflite_io_quantization",
]

_WEIGHT_OPS_TFLITE = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_WEIGHT_OPS_ONNX = ("Conv", "Gemm", "MatMul", "ConvTranspose")


# --- inputs ------------------------------------------------------------------------------------


def _check_shape(input_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ExportError(f"input_shape must be 3 positive integers C x H x W, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def _calibration_array(calibration, input_shape, *, what: str = "calibration") -> np.ndarray:
    """``calibration`` as a C-contiguous float32 ``N x C x H x W`` array, N >= 1, all finite;
    anything else is an :class:`ExportError` saying what is wrong."""
    if isinstance(calibration, torch.Tensor):
        calibration = calibration.detach().cpu().numpy()
    try:
        arr = np.ascontiguousarray(calibration, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{what} images must be a float array N x C x H x W ({e})") from None
    want = " x ".join(str(s) for s in input_shape)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(input_shape):
        raise ExportError(
            f"{what} images must have shape N x {want} (the encoder's input), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ExportError(f"{what} needs at least one image, got 0 (shape {arr.shape})")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))[0])
        raise ExportError(
            f"{what} images contain NaN or inf ({int(bad.sum())} values, first in image {first})"
        )
    return arr


def _folded(encoder: nn.Module) -> nn.Module:
    """The graph that gets quantized: BN folded when the encoder has batch norms (the exporter's
    folded and compact modules have none and are used as they are)."""
    if not isinstance(encoder, nn.Module):
        raise ExportError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}")
    if any(
        isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) for m in encoder.modules()
    ):
        return fold_batchnorm(encoder)
    return encoder.eval()


_SOURCE_FNS = {"add": operator.add, "mul": operator.mul, "relu": F.relu}


def _restore_source_fns(graph) -> None:
    """Give the ``add`` / ``mul`` nodes of an exported graph the ``source_fn_stack`` metadata
    litert-torch's quantizer partitions by.

    torch 2.13's ``torch.export`` records only ``torch_fn`` (``('add_1',
    'method_descriptor.add')``) for a tensor ``a + b``; litert-torch 0.10's annotators look for
    ``operator.add`` in ``source_fn_stack``, so without this every residual add and every
    squeeze-excitation multiply stays float32 between a DEQUANTIZE and a QUANTIZE op (measured:
    8 float ADDs in ResNet18) and the file is not full-integer."""
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.meta.get("source_fn_stack") is not None:
            continue
        torch_fn = node.meta.get("torch_fn")
        if not torch_fn:
            continue
        fn = _SOURCE_FNS.get(str(torch_fn[1]).rsplit(".", 1)[-1])
        if fn is not None:
            node.meta["source_fn_stack"] = [(torch_fn[0], fn)]


def _hardsigmoid_into_conv(graph) -> int:
    """Rewrite ``hardsigmoid(conv(x; W, b))`` as ``hardtanh(conv(x; W / 6, (b + 3) / 6), 0, 1)``
    (the same function: hardsigmoid(y) = clamp(y / 6 + 1 / 2, 0, 1)); returns how many.

    litert-torch 0.10 lowers ``hardsigmoid`` (MobileNetV3's squeeze-excitation gate) to a float
    ADD and MUL with scalar constants that no annotation quantizes, so the file is not
    full-integer; folded into the conv, what is left is a clamp, which quantizes like any
    activation (:func:`_quantizer`). Only a conv whose output feeds the hardsigmoid alone, with
    constant weight and bias that nothing else reads, is rewritten (its parameters are replaced, not
    changed in place: the graph shares them with the encoder); any other hardsigmoid stays, and
    the full-integer check then names it."""
    aten = torch.ops.aten
    done = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target != aten.hardsigmoid.default:
            continue
        conv = node.args[0]
        if not (
            isinstance(conv, torch.fx.Node)
            and conv.target == aten.conv2d.default
            and len(conv.users) == 1
            and len(conv.args) >= 3
            and all(
                isinstance(a, torch.fx.Node) and a.op == "get_attr" and len(a.users) == 1
                for a in conv.args[1:3]
            )
        ):
            continue
        for attr, fn in ((conv.args[1], lambda w: w / 6), (conv.args[2], lambda b: (b + 3) / 6)):
            owner_name, _, name = attr.target.rpartition(".")
            owner = graph.get_submodule(owner_name) if owner_name else graph
            value = fn(getattr(owner, name).detach().clone())
            setattr(owner, name, nn.Parameter(value, requires_grad=False))
        with graph.graph.inserting_after(node):
            clamp = graph.graph.call_function(aten.hardtanh.default, (conv, 0.0, 1.0))
        clamp.meta = dict(node.meta)
        node.replace_all_uses_with(clamp)
        graph.graph.erase_node(node)
        done += 1
    if done:
        graph.graph.lint()
        graph.recompile()
    return done


_ACTIVATIONS = frozenset(
    {torch.ops.aten.hardswish.default, torch.ops.aten.hardtanh.default, torch.ops.aten.mean.dim}
)
"""aten ops litert-torch 0.10's quantizer leaves unannotated (float) that TFLite runs in int8:
HARD_SWISH, the clamp of :func:`_hardsigmoid_into_conv` (RELU_0_TO_1 / MINIMUM-MAXIMUM) and the
squeeze-excitation's global mean (torch 2.13 records ``adaptive_avg_pool2d(x, 1)`` as
``aten.mean.dim`` without the source metadata the quantizer's pooling annotator matches)."""


def _quantizer(pt2e):
    """litert-torch's :class:`PT2EQuantizer` (per-channel symmetric weights, static activations)
    that also annotates :data:`_ACTIVATIONS`: each such node not annotated by the stock
    annotators gets the config's input and output activation specs, so it is quantized between
    observed int8 tensors like any other op."""
    # lazy: litert-torch is an optional extra ("tflite"); tflite_int8_bytes require()s it
    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_input_act_qspec,
        get_output_act_qspec,
    )

    # lazy: torchao comes with the "tflite" extra; tflite_int8_bytes require()s it
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class _FullInteger(pt2e.PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            config = self.global_config
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in _ACTIVATIONS:
                    continue
                done = node.meta.get("quantization_annotation")
                if done is not None and done._annotated:
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: get_input_act_qspec(config)},
                    output_qspec=get_output_act_qspec(config),
                    _annotated=True,
                )
            return model

    return _FullInteger().set_global(
        pt2e.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )


# --- TFLite ------------------------------------------------------------------------------------


@contextlib.contextmanager
def one_thread():
    """Run torch's CPU ops on one thread inside the block (the previous count is restored).

    Calibration feeds one image at a time, so every op (a batch-1 conv, an observer's
    ``aminmax`` and ``histc``) is too small to split: with several threads each op ends in a
    barrier that waits for every thread, and on a machine whose other cores are busy that wait
    is a scheduler slice, not microseconds. Measured for the quickstart's smallnet on a 2-core
    machine under load (256 images): 14-51 s of calibration on 2 threads, 1.5-2.2 s on one
    (``aminmax`` of a 64 x 32 x 32 activation: 2.7 ms against 0.04 ms). The quickstart rung's
    int8 files are the same bytes either way (measured); on one thread the calibration no
    longer depends on how many cores the machine has."""
    with cpu_threads(1):
        yield


def tflite_int8_bytes(
    encoder: nn.Module,
    calibration: np.ndarray | torch.Tensor,
    *,
    input_shape,
) -> tuple[bytes, dict[str, Any]]:
    """The full-integer int8 TFLite file of ``encoder`` (dense weights) and what
    :func:`quantize_tflite_int8` returns about it (without ``path``).

    ``calibration``: ``N x C x H x W`` float images (the encoder's normalized inputs) that set
    the activation ranges; ``input_shape``: ``C x H x W`` (the file's input is ``1 x C x H x W``).
    """
    shape = _check_shape(input_shape)
    cal = _calibration_array(calibration, shape)
    start = time.perf_counter()
    litert_torch = import_converter()
    pt2e = require("litert_torch.quantize.pt2e_quantizer", "tflite", "int8 TFLite export")
    quant_config = require("litert_torch.quantize.quant_config", "tflite", "int8 TFLite export")
    torchao_pt2e = require(
        "torchao.quantization.pt2e.quantize_pt2e", "tflite", "int8 TFLite export (torchao)"
    )
    model = _folded(encoder)
    example = torch.zeros(1, *shape)
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:  # a shape mismatch surfaces as RuntimeError, ValueError, ...
        raise ExportError(
            f"encoder does not run on inputs of input_shape {list(shape)} (C x H x W): {e}"
        ) from e
    quantizer = _quantizer(pt2e)
    with quiet_converter():  # e.g. "converted in training mode": no BN is left
        graph = torch.export.export(model, (example,)).module()
        _restore_source_fns(graph)
        _hardsigmoid_into_conv(graph)
        graph = torchao_pt2e.prepare_pt2e(graph, quantizer)
        t_cal = time.perf_counter()
        with torch.no_grad(), one_thread():
            for i in range(len(cal)):  # batch 1: the export guards input.size(0) == 1
                graph(torch.from_numpy(cal[i : i + 1]))
        t_cal = time.perf_counter() - t_cal
        graph = torchao_pt2e.convert_pt2e(graph, fold_quantize=False)
        edge = litert_torch.convert(
            graph,
            (example,),
            quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer),
        )
        data = bytes(edge.model_content())
    float_ops = tflite_float_ops(data)
    if float_ops:
        listed = ", ".join(f"{name} x{n}" for name, n in sorted(float_ops.items()))
        raise ExportError(
            f"the int8 TFLite conversion is not full-integer: litert-torch's PT2E quantizer "
            f"left {sum(float_ops.values())} ops in float32 ({listed}); an int8 device runtime "
            "would not run them. This architecture cannot be exported as int8 yet; keep its "
            "float32 export"
        )
    inp, out = tflite_io_quantization(data)
    if inp["dtype"] != "int8" or out["dtype"] != "int8":
        raise ExportError(
            f"the int8 TFLite conversion gave {inp['dtype']} input / {out['dtype']} output, "
            f"expected int8 / int8"
        )
    return data, {
        "bytes": len(data),
        "input": inp,
        "output": out,
        "n_calibration": len(cal),
        "seconds": time.perf_counter() - start,
        "calibration_seconds": t_cal,
    }


def quantize_tflite_int8(
    encoder: nn.Module,
    calibration: np.ndarray | torch.Tensor,
    path: str | os.PathLike,
    *,
    input_shape,
) -> dict[str, Any]:
    """Write ``encoder`` as a full-integer int8 TFLite file at ``path`` (atomically; dense
    weights, see :func:`tflite_int8_bytes`).

    Returns ``{"path", "bytes", "input", "output", "n_calibration", "seconds",
    "calibration_seconds"}``; ``input`` / ``output`` are ``{"dtype", "shape", "scale",
    "zero_point"}`` as the LiteRT interpreter reports them.
    """
    data, info = tflite_int8_bytes(encoder, calibration, input_shape=input_shape)
    atomic_write_bytes(path, data)  # only a file that passed the check appears
    return {"path": str(path), **info}


def _details(d: dict) -> dict[str, Any]:
    scale, zero_point = d["quantization"]
    return {
        "dtype": np.dtype(d["dtype"]).name,
        "shape": [int(s) for s in d["shape"]],
        "scale": float(scale),
        "zero_point": int(zero_point),
    }


def tflite_float_ops(model: ModelSource) -> dict[str, int]:
    """Operators of a TFLite file that compute in float32 (a float32 output, DEQUANTIZE aside),
    counted by name: empty for a full-integer file."""
    interp = open_tflite(model)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found: dict[str, int] = {}
    for op in interp._get_ops_details():  # the interpreter's only per-op listing
        if op["op_name"] == "DEQUANTIZE":
            continue
        outs = [tensors[i] for i in op["outputs"] if i >= 0 and i in tensors]
        if any(np.dtype(t["dtype"]) == np.float32 for t in outs):
            found[op["op_name"]] = found.get(op["op_name"], 0) + 1
    return found


def tflite_io_quantization(model: ModelSource) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(input, output)`` of a TFLite file, each ``{"dtype", "shape", "scale", "zero_point"}``
    from the LiteRT interpreter's details (a float tensor reports scale 0.0, zero point 0)."""
    interp = open_tflite(model)
    return _details(interp.get_input_details()[0]), _details(interp.get_output_details()[0])


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """``q = clip(round(x / s) + z, lo, hi)`` in the integer ``dtype``."""
    info = np.iinfo(dtype)
    q = np.round(x.astype(np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def run_tflite_int8(model: ModelSource, inputs: np.ndarray, *, raw: bool = False) -> np.ndarray:
    """Features of a TFLite file (path or bytes) on float32 NCHW ``inputs``, in the LiteRT
    interpreter: integer inputs quantized with the file's input ``(s, z)``, integer outputs
    dequantized with ``(q - z) * s`` (float I/O passes through), in batches of the file's batch
    size (one at a time when it is fixed at 1). Returns float32 ``N x feature_dim``; with
    ``raw`` an integer output comes back as the integers the file wrote."""
    interp = open_tflite(model)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    want = tuple(int(s) for s in inp["shape"][1:])
    x = _calibration_array(inputs, want, what="input")
    batch = int(inp["shape"][0]) or 1
    in_dtype, out_dtype = np.dtype(inp["dtype"]), np.dtype(out["dtype"])
    (s_in, z_in), (s_out, z_out) = inp["quantization"], out["quantization"]
    if in_dtype.kind in "iu" and s_in <= 0:
        raise ExportError(f"the TFLite file's {in_dtype.name} input has no quantization scale")
    if out_dtype.kind in "iu" and s_out <= 0:
        raise ExportError(f"the TFLite file's {out_dtype.name} output has no quantization scale")
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) != batch:
            raise ExportError(f"{len(x)} inputs do not split into batches of {batch}")
        if in_dtype.kind in "iu":
            chunk = _quantize(chunk, float(s_in), int(z_in), in_dtype)
        interp.set_tensor(inp["index"], np.ascontiguousarray(chunk, dtype=in_dtype))
        interp.invoke()
        y = interp.get_tensor(out["index"]).copy()
        if out_dtype.kind in "iu" and not raw:
            y = (y.astype(np.float64) - int(z_out)) * float(s_out)
        results.append(y if raw else y.astype(np.float32))
    return np.concatenate(results, axis=0).reshape(len(x), -1)


def tflite_int8_weights(model: ModelSource) -> list[dict[str, Any]]:
    """The int8 weights of every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op of a TFLite
    file, in operator order, each ``{"op", "q", "scale", "sparse"}`` with ``q`` the int8 array
    in PyTorch layout (OIHW for convs, ``out x in`` for fully connected), ``scale`` per output
    channel, ``sparse`` whether the file stores it sparse (read back through the DENSIFY op that
    produces it, :func:`~entropi.export.tflite_export.dense_weight`)."""
    schema = require("ai_edge_litert.schema_py_generated", "litert", "reading TFLite weights")
    fb = require("ai_edge_litert.tools.flatbuffer_utils", "litert", "reading TFLite weights")
    obj = fb.read_model_from_bytearray(bytearray(load_model_bytes(model)))
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(op) -> str | None:
        code = obj.operatorCodes[op.opcodeIndex]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode))

    found = []
    for sg in obj.subgraphs:
        densified = {
            int(op.outputs[0]): int(op.inputs[0])
            for op in sg.operators
            if op_name(op) == "DENSIFY" and len(op.inputs) == 1 and len(op.outputs) == 1
        }
        for op in sg.operators:
            name = op_name(op)
            if name not in _WEIGHT_OPS_TFLITE or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            t = sg.tensors[op.inputs[1]]
            if t.type != schema.TensorType.INT8:
                continue
            source = sg.tensors[densified[op.inputs[1]]] if op.inputs[1] in densified else t
            try:
                q = dense_weight(obj, source)
            except ValueError as e:
                raise ExportError(f"cannot read the int8 weight of a {name} op: {e}") from e
            if q is None:
                raise ExportError(f"the int8 weight of a {name} op is computed, not stored")
            q = q.reshape(t.shape)
            scale = np.asarray(t.quantization.scale, np.float64)
            if name == "CONV_2D":
                q = q.transpose(0, 3, 1, 2)  # OHWI -> OIHW
            elif name == "DEPTHWISE_CONV_2D":
                q = q.transpose(3, 0, 1, 2)  # 1HWO -> O1HW
            found.append({"op": name, "q": q, "scale": scale, "sparse": source is not t})
    return found


# --- ONNX --------------------------------------------------------------------------------------


def _densified(model) -> None:
    """Move every ``sparse_initializer`` of ``model`` back to a dense initializer (in place):
    onnxruntime's quantization tools read only ``graph.initializer``."""
    # lazy: onnx is an optional extra ("export"); the callers require() it first
    from onnx import numpy_helper

    for sp in model.graph.sparse_initializer:
        values = numpy_helper.to_array(sp.values)
        indices = numpy_helper.to_array(sp.indices).astype(np.int64)
        dims = tuple(int(d) for d in sp.dims)
        dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
        if indices.ndim == 2:  # [NNZ, rank] coordinates
            indices = np.ravel_multi_index(tuple(indices.T), dims)
        dense[indices] = values
        model.graph.initializer.append(numpy_helper.from_array(dense.reshape(dims), sp.values.name))
    del model.graph.sparse_initializer[:]


def _onnx_input(model) -> tuple[str, tuple]:
    """Name and ``C x H x W`` of the model's one graph input (None where symbolic)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ExportError(f"the ONNX model must have one input, it has {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    if len(shape) != 4:
        raise ExportError(f"the ONNX model's input must be N x C x H x W, it has rank {len(shape)}")
    return inputs[0].name, shape[1:]


def onnx_qdq_bytes(
    onnx_float: ModelSource, calibration: np.ndarray | torch.Tensor
) -> tuple[bytes, dict[str, Any]]:
    """The int8 QDQ form of the float ONNX model ``onnx_float`` (path or bytes), dense weights,
    and what :func:`quantize_onnx_qdq` returns about it (without ``path``)."""
    onnx = require("onnx", "export", "int8 ONNX export")
    quant = require("onnxruntime.quantization", "export", "int8 ONNX export (onnxruntime)")
    shape_inf = require(
        "onnxruntime.quantization.shape_inference", "export", "int8 ONNX export (onnxruntime)"
    )
    start = time.perf_counter()
    try:
        model = onnx.load_from_string(load_model_bytes(onnx_float))
    except Exception as e:  # DecodeError, OSError, ...
        what = "the ONNX bytes" if isinstance(onnx_float, bytes | bytearray) else onnx_float
        raise ExportError(f"cannot read the ONNX file {what}: {e}") from e
    name, chw = _onnx_input(model)
    if None in chw:
        raise ExportError(f"the ONNX model's input needs a fixed C x H x W, got {chw}")
    cal = _calibration_array(calibration, chw)
    metadata = [(p.key, p.value) for p in model.metadata_props]
    _densified(model)

    class _Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(cal):
                return None
            self.i += 1
            return {name: cal[self.i - 1 : self.i]}

    with tempfile.TemporaryDirectory(prefix="entropi-qdq-") as tmp:
        dense, pre, out = (Path(tmp) / n for n in ("dense.onnx", "pre.onnx", "qdq.onnx"))
        onnx.save(model, str(dense))
        with warnings.catch_warnings(), _quiet_root():
            warnings.simplefilter("ignore")
            shape_inf.quant_pre_process(str(dense), str(pre))
            quant.quantize_static(
                str(pre),
                str(out),
                _Reader(),
                quant_format=quant.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,  # 7-bit weights: no int16 saturation (module docstring)
                activation_type=quant.QuantType.QInt8,
                weight_type=quant.QuantType.QInt8,
                calibrate_method=quant.CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )
        qmodel = onnx.load(str(out))
    if metadata and not qmodel.metadata_props:
        for key, value in metadata:
            qmodel.metadata_props.add(key=key, value=value)
    data = qmodel.SerializeToString()
    out_dims = qmodel.graph.output[0].type.tensor_type.shape.dim
    out_shape = [d.dim_value if d.HasField("dim_value") else None for d in out_dims]
    return data, {
        "bytes": len(data),
        "input": {"dtype": "float32", "shape": [None, *chw], "scale": None, "zero_point": None},
        "output": {"dtype": "float32", "shape": out_shape, "scale": None, "zero_point": None},
        "n_calibration": len(cal),
        "seconds": time.perf_counter() - start,
    }


def quantize_onnx_qdq(
    onnx_float_path: str | os.PathLike,
    calibration: np.ndarray | torch.Tensor,
    path: str | os.PathLike,
) -> dict[str, Any]:
    """Write the int8 QDQ form of the float ONNX file ``onnx_float_path`` at ``path``
    (atomically): ``quant_pre_process`` (shape inference, ORT graph optimization), then
    ``quantize_static`` (QDQ, per-channel symmetric 7-bit weights in int8, int8 per-tensor
    activations, MinMax over the calibration images, one at a time; module docstring). Sparse
    initializers are densified first; ``metadata_props`` are kept. I/O stays float32, so
    ``input`` / ``output`` of the returned dict (keys as :func:`quantize_tflite_int8`'s) have
    scale and zero point None.
    """
    data, info = onnx_qdq_bytes(onnx_float_path, calibration)
    atomic_write_bytes(path, data)
    return {"path": str(path), **info}


ONNX_SPARSE_DENSITY = 1 / 9
"""An int8 weight is stored as an ONNX ``sparse_initializer`` only below this density: ONNX
sparse tensors index with int64, so each non-zero costs 1 + 8 bytes against 1 byte dense."""


def sparsify_onnx_int8(model: ModelSource) -> tuple[bytes, SparseStats]:
    """Move the int8 weight initializers of a QDQ ONNX model (the int8 inputs of
    DequantizeLinear nodes feeding a Conv / Gemm / MatMul weight) whose density is below
    :data:`ONNX_SPARSE_DENSITY` into ``sparse_initializer`` (values int8, linear int64
    indices), the form :mod:`.onnx_export` uses for float weights; onnxruntime densifies them
    once at load. Returns the model bytes and what was stored sparse."""
    onnx = require("onnx", "export", "int8 ONNX export")
    # lazy: onnx is an optional extra ("export"); the require() above names it when missing
    from onnx import numpy_helper

    m = onnx.load_from_string(load_model_bytes(model))
    inits = {i.name: i for i in m.graph.initializer}
    moved = []
    n_nnz = n_el = 0
    for entry in _onnx_weight_inputs(m, inits):
        init = inits.get(entry)
        if init is None:
            continue
        q = numpy_helper.to_array(init)
        if q.dtype != np.int8 or q.ndim < 2:
            continue
        flat = q.reshape(-1)
        nz = np.flatnonzero(flat)
        if len(nz) >= ONNX_SPARSE_DENSITY * flat.size:
            continue
        values = numpy_helper.from_array(np.ascontiguousarray(flat[nz]), init.name)
        indices = numpy_helper.from_array(nz.astype(np.int64), f"{init.name}_indices")
        m.graph.sparse_initializer.append(
            onnx.helper.make_sparse_tensor(values, indices, list(q.shape))
        )
        moved.append(init.name)
        n_nnz, n_el = n_nnz + len(nz), n_el + flat.size
    if moved:
        keep = [i for i in m.graph.initializer if i.name not in set(moved)]
        del m.graph.initializer[:]
        m.graph.initializer.extend(keep)
    return m.SerializeToString(), SparseStats(len(moved), int(n_nnz), int(n_el))


def _onnx_weight_inputs(m, inits: dict) -> list[str]:
    """Names of the initializers that DequantizeLinear nodes turn into Conv / Gemm / MatMul
    weights (input 1 of those ops), in node order."""
    consumers: dict[str, list] = {}
    for node in m.graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    names = []
    for node in m.graph.node:
        if node.op_type != "DequantizeLinear" or not node.input:
            continue
        users = consumers.get(node.output[0], [])
        if any(k == 1 and u.op_type in _WEIGHT_OPS_ONNX for u, k in users):
            names.append(node.input[0])
    return names


@contextlib.contextmanager
def _quiet_root():
    """onnxruntime.quantization logs through the root logger (e.g. its pre-process advice)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def run_onnx_qdq(model: ModelSource, inputs: np.ndarray) -> np.ndarray:
    """Features of a (QDQ or float) ONNX file on float32 NCHW ``inputs`` in onnxruntime's CPU
    provider, default (extended) graph optimization, which fuses QDQ into ``QLinearConv``."""
    ort = require("onnxruntime", "export", "running an ONNX file")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            load_model_bytes(model), opts, providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own exception types on a bad model
        raise ExportError(f"onnxruntime cannot load the QDQ model: {e}") from e
    first = sess.get_inputs()[0]
    x = np.asarray(inputs)
    chw = tuple(first.shape[1:])
    if all(isinstance(s, int) for s in chw):
        x = _calibration_array(x, chw, what="input")
    out = sess.run(None, {first.name: np.ascontiguousarray(x, np.float32)})[0]
    return out.reshape(len(x), -1)


def onnx_int8_weights(model: ModelSource) -> list[dict[str, Any]]:
    """The int8 weight initializers of a QDQ ONNX file (the int8 inputs of DequantizeLinear nodes
    that feed a Conv / Gemm / MatMul weight), in node order, in PyTorch layout (MatMul's
    ``in x out`` transposed), each ``{"op", "q", "scale", "sparse"}`` (``sparse``: stored as a
    ``sparse_initializer``, read back dense)."""
    onnx = require("onnx", "export", "reading ONNX weights")
    # lazy: onnx is an optional extra ("export"); the require() above names it when missing
    from onnx import numpy_helper

    m = onnx.load_from_string(load_model_bytes(model))
    sparse = {sp.values.name for sp in m.graph.sparse_initializer}
    _densified(m)
    inits = {i.name: i for i in m.graph.initializer}
    consumers: dict[str, list] = {}
    for node in m.graph.node:
        for k, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, k))
    found = []
    for node in m.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        users = [(u, k) for u, k in consumers.get(node.output[0], []) if k == 1]
        users = [(u, k) for u, k in users if u.op_type in _WEIGHT_OPS_ONNX]
        q = numpy_helper.to_array(inits[node.input[0]])
        if not users or q.dtype != np.int8 or q.ndim < 2:
            continue
        op = users[0][0].op_type
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        trans_b = next((a.i for a in users[0][0].attribute if a.name == "transB"), 0)
        if op == "MatMul" or (op == "Gemm" and not trans_b):
            q = q.T
        found.append({"op": op, "q": q, "scale": scale, "sparse": node.input[0] in sparse})
    return found


# --- error measures and the zeros check --------------------------------------------------------


def int8_feature_error(reference: np.ndarray, quantized: np.ndarray) -> dict[str, float]:
    """How far int8 features ``quantized`` are from the float ``reference`` (same shape, one row
    per input; extra dimensions are flattened).

    ``max_abs = max|a - b|``; ``max_rel = max_abs / max|a|`` (0 when both are all zero, inf when
    only the reference is); per row ``cos = a.b / (|a| |b|)``, 1 when both rows are zero and 0
    when exactly one is; ``mean_cos`` and ``min_cos`` over rows. Raises
    :class:`VerificationError` on a shape mismatch or a non-finite value.
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(quantized, dtype=np.float64)
    if a.shape != b.shape:
        raise VerificationError(f"quantized features {b.shape} != reference shape {a.shape}")
    if a.ndim == 0 or a.shape[0] == 0:
        raise VerificationError(f"no features to compare (shape {a.shape})")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise VerificationError("features contain NaN or inf")
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    max_abs = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(a))) if a.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(na * nb > 0, np.sum(a * b, axis=1) / (na * nb), 0.0)
    cos = np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))
    return {
        "max_abs": max_abs,
        "max_rel": float(max_rel),
        "ref_scale": scale,
        "mean_cos": float(np.mean(cos)),
        "min_cos": float(np.min(cos)),
        "n": len(a),
    }


def _float_weights(encoder: nn.Module) -> list[np.ndarray]:
    layers = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)
    return [
        m.weight.detach().double().numpy()
        for m in _folded(encoder).modules()
        if isinstance(m, layers)
    ]


def _dequantized(entry: dict[str, Any]) -> np.ndarray:
    q, scale = entry["q"].astype(np.float64), entry["scale"].reshape(-1)
    if scale.size == 1:
        return q * scale[0]
    return q * scale.reshape(-1, *([1] * (q.ndim - 1)))  # per output channel (axis 0)


def pruned_zeros_kept(encoder: nn.Module, quantized: ModelSource) -> dict[str, Any]:
    """Check that every weight that is exactly zero in the float (BN-folded) ``encoder`` is an
    exact int8 zero in the ``quantized`` file (TFLite or QDQ ONNX, path or bytes), and count the
    float non-zeros that rounded to zero (``|w| < s / 2``).

    Each int8 weight is paired with the float weight of the same shape that its dequantized
    values are closest to (so the pairing does not depend on layer order). Returns
    ``{"all_kept", "float_zeros", "zeros_lost", "float_nonzeros", "rounded_to_zero", "layers"}``
    (``zeros_lost``: float zeros that are non-zero in int8; ``layers``: the same per weight,
    with its shape and the largest dequantization error in steps of its scale).
    """
    data = load_model_bytes(quantized)
    is_tflite = data[4:8] == b"TFL3"
    entries = tflite_int8_weights(data) if is_tflite else onnx_int8_weights(data)
    floats = _float_weights(encoder)
    if not entries:
        raise ExportError("the quantized file holds no int8 conv / linear weights")
    unused = list(range(len(floats)))
    layers = []
    for e in entries:
        deq = _dequantized(e)
        candidates = [i for i in unused if floats[i].shape == e["q"].shape]
        if not candidates:
            raise ExportError(
                f"no float weight of the encoder has the shape {list(e['q'].shape)} of the "
                f"file's int8 {e['op']} weight: is this file the quantized form of this encoder?"
            )
        best = min(candidates, key=lambda i: float(np.max(np.abs(floats[i] - deq))))
        unused.remove(best)
        f, q = floats[best], e["q"]
        step = _dequantized({"q": np.ones_like(q), "scale": e["scale"]})
        with np.errstate(invalid="ignore", divide="ignore"):
            steps = np.where(step > 0, np.abs(f - deq) / step, 0.0)
        layers.append(
            {
                "op": e["op"],
                "shape": list(q.shape),
                "float_zeros": int(np.sum(f == 0)),
                "zeros_lost": int(np.sum((f == 0) & (q != 0))),
                "float_nonzeros": int(np.sum(f != 0)),
                "rounded_to_zero": int(np.sum((f != 0) & (q == 0))),
                "max_error_steps": float(np.max(steps)) if steps.size else 0.0,
            }
        )
    total = {k: sum(la[k] for la in layers) for k in layers[0] if isinstance(layers[0][k], int)}
    return {"all_kept": total["zeros_lost"] == 0, **total, "layers": layers}
