"""What a TFLite encoder file needs on the device: its flash (the file) and its RAM at inference.

:func:`tflite_footprint` reads the graph (the ``ai_edge_litert`` flatbuffer object API) and
returns

- ``activation_peak_bytes``: the largest sum of live activation tensors over the operator
  sequence. A tensor is an activation when no buffer holds its data (graph inputs, op outputs);
  it is live from the op that produces it (the first op for a graph input) to the last op that
  reads it (the end for a graph output), and each costs ``prod(shape) x itemsize`` bytes. This
  is the arena a planner that never shares or reuses a tensor in place needs at the busiest op:
  TFLite's and TFLite Micro's greedy planners reach it or come within their alignment padding,
  in-place ops (reshape) can make the real arena smaller.
- ``densified_bytes``: the dense weights that DENSIFY ops rebuild when the interpreter prepares
  the graph (a sparse file is small in flash but holds its weights dense in RAM once loaded);
- ``constant_bytes``: the bytes of every constant buffer (weights stored in the file).

:func:`tflite_latency_ms` times one invoke of the file in the stock LiteRT interpreter (opened
and prepared once, so DENSIFY and allocation are not in the time; a zero input of the file's
input dtype: a dense or densified convolution costs the same whatever the values).

Why by hand: neither the LiteRT interpreter nor litert-torch reports an arena size for a file
(the interpreter's allocation is internal; TFLite Micro's ``RecordingMicroInterpreter`` is a
C++ tool), and the rule is a few lines over the graph the exporter already reads.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import numpy as np

from ._errors import ExportError, require
from .verify import ModelSource, load_model_bytes, open_tflite

__all__ = ["tflite_footprint", "tflite_latency_ms", "tflite_op_names"]

# TensorType -> bytes per element (schema_generated.h enum order)
_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 11: 16, 16: 4}


def _read_graph(data: bytes):
    """``(model object, {builtin code: op name}, first subgraph, its operators)`` of a TFLite
    file's bytes, or :class:`ExportError` when it is not a readable TFLite file."""
    schema = require("ai_edge_litert.schema_py_generated", "litert", "reading a TFLite graph")
    fb = require("ai_edge_litert.tools.flatbuffer_utils", "litert", "reading a TFLite graph")
    try:
        obj = fb.read_model_from_bytearray(bytearray(data))
    except Exception as e:  # flatbuffers raises struct / index errors on garbage
        raise ExportError(f"not a readable TFLite file ({type(e).__name__}: {e})") from e
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    if not obj.subgraphs:
        raise ExportError("the TFLite file has no subgraph")
    sg = obj.subgraphs[0]
    return obj, names, sg, list(sg.operators or [])


def tflite_op_names(model: ModelSource) -> list[str]:
    """The builtin op name of every operator of a TFLite file (path or bytes), in graph order
    (``"CUSTOM:<name>"`` for a custom op)."""
    obj, names, _, ops = _read_graph(load_model_bytes(model))
    out = []
    for op in ops:
        code = obj.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")
        if name == "CUSTOM":
            custom = code.customCode
            name = "CUSTOM:" + (custom.decode() if isinstance(custom, bytes) else str(custom))
        out.append(name)
    return out


def tflite_footprint(model: ModelSource) -> dict[str, Any]:
    """``{"file_bytes", "activation_peak_bytes", "peak_op", "densified_bytes",
    "constant_bytes", "ops"}`` of a TFLite file (path or bytes); see the module docstring."""
    data = load_model_bytes(model)
    obj, names, sg, ops = _read_graph(data)

    def nbytes(t) -> int:
        shape = [max(int(s), 1) for s in (t.shape if t.shape is not None else [])]
        return math.prod(shape) * _ITEMSIZE.get(int(t.type), 4)

    def has_data(t) -> bool:
        buf = obj.buffers[t.buffer] if 0 <= t.buffer < len(obj.buffers) else None
        return buf is not None and buf.data is not None and len(buf.data) > 0

    densified, first, last = set(), {}, {}
    for k, op in enumerate(ops):
        code = obj.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        outs = [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0]
        if name == "DENSIFY":
            densified.update(outs)
            continue
        ins = [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0]
        for i in ins:
            last[i] = k
        for i in outs:
            first.setdefault(i, k)
            last.setdefault(i, k)
    end = len(ops)
    inputs = [int(i) for i in (sg.inputs if sg.inputs is not None else [])]
    outputs = [int(i) for i in (sg.outputs if sg.outputs is not None else [])]
    for i in inputs:
        first[i] = 0
        last.setdefault(i, 0)
    for i in outputs:
        last[i] = end
    live = np.zeros(end + 1, dtype=np.int64)
    for i in set(first) | set(last):
        t = sg.tensors[i]
        if i in densified or has_data(t):
            continue
        live[first.get(i, 0) : last.get(i, end) + 1] += nbytes(t)
    peak_at = int(np.argmax(live))
    peak_name = None
    if peak_at < end and ops:
        code = obj.operatorCodes[ops[peak_at].opcodeIndex]
        peak_name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
    constant = sum(len(b.data) for b in obj.buffers if b is not None and b.data is not None)
    return {
        "file_bytes": len(data),
        "activation_peak_bytes": int(live.max()) if len(live) else 0,
        "peak_op": peak_name,
        "densified_bytes": int(sum(nbytes(sg.tensors[i]) for i in densified)),
        "constant_bytes": int(constant),
        "ops": len(ops),
    }


def tflite_latency_ms(model: ModelSource, *, repeats: int = 15, num_threads: int = 1) -> float:
    """Median milliseconds of one ``invoke`` of a TFLite file (path or bytes), one sample, after
    one warm-up call; the interpreter is opened once (module docstring)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    interp = open_tflite(model, num_threads=num_threads, what="timing")
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    interp.invoke()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)
