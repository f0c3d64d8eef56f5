"""Convert an encoder to TFLite with litert-torch, then store pruned weights in TFLite's own
sparse format.

litert-torch writes dense weights. :func:`sparsify_tflite` rewrites the flatbuffer with the
``ai_edge_litert`` schema object API: every float32 weight of a CONV_2D / DEPTHWISE_CONV_2D /
FULLY_CONNECTED op (float32, or int8 in a full-integer file) whose sparse form is smaller gets a
new constant tensor with
``SparsityParameters`` (traversal order = dimension order, all dimensions dense except the last,
which is CSR: ``array_segments`` [rows + 1] and ``array_indices`` [NNZ], each in the narrowest of
uint8 / uint16 / int32 that holds its values) and one DENSIFY op that rebuilds the original dense
tensor when the interpreter prepares the graph. The stock LiteRT interpreter runs such files
(it densifies once at load; its DENSIFY kernel takes float32 and int8), except an int8
FULLY_CONNECTED behind a DENSIFY, which its XNNPACK delegate fails to prepare: that weight
stays dense. An int8 sparse tensor
carries the dense tensor's quantization (per-channel scales, zero points 0), so a reader can
dequantize it without the DENSIFY op. :func:`dense_weight` reads either form back. Provenance
goes into the model's ``metadata`` list.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections import Counter

import numpy as np
import torch
from torch import nn

from ._errors import require
from .weights import SparseStats

__all__ = [
    "METADATA_NAME",
    "convert_tflite",
    "dense_weight",
    "import_converter",
    "read_metadata",
    "sparsify_tflite",
]

METADATA_NAME = "entropi_provenance"
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_SPARSE_TYPES = {0: np.float32, 9: np.int8}
"""TensorType -> dtype of the weights stored sparse (schema: FLOAT32 = 0, INT8 = 9)."""


def convert_tflite(module: nn.Module, example: torch.Tensor) -> bytes:
    """Convert ``module`` (eval mode, fixed input shape of ``example``) to TFLite bytes."""
    module.eval()
    with quiet_converter():
        litert_torch = import_converter()
        edge_model = litert_torch.convert(module, (example,))
        return bytes(edge_model.model_content())


@contextlib.contextmanager
def quiet_converter():
    """Keep a conversion's output off the terminal (C++ logging on fd 2, Python warnings,
    stdout/stderr, the litert_torch logger, whose level is restored after); it is replayed when
    the block fails."""
    logger = logging.getLogger("litert_torch")
    level = logger.level
    sink = io.StringIO()
    with (
        fd2_captured() as captured,
        warnings.catch_warnings(),
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
    ):
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        except Exception:
            captured.show = True
            raise
        finally:
            logger.setLevel(level)


def import_converter():
    """Import litert-torch (or raise naming the extra), keeping its import-time C++ logging
    (oneDNN, torchao, absl) off the terminal unless the import fails."""
    with fd2_captured() as captured:
        try:
            return require("litert_torch", "tflite", "TFLite export (litert-torch)")
        except Exception:
            captured.show = True
            raise


@contextlib.contextmanager
def fd2_captured():
    """Send file descriptor 2 to a temp file while the converter runs: its C++ logging (absl,
    TF, torchao) bypasses Python's sys.stderr. The text is replayed if the conversion fails."""

    class _State:
        show = False

    state = _State()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (embedded interpreters): nothing to capture
        yield state
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield state
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if state.show:
                tmp.seek(0)
                os.write(2, tmp.read()[-20000:])


def _narrowest(values: np.ndarray):
    """(union type, vector object) of the narrowest TFLite index vector holding ``values``."""
    schema = require("ai_edge_litert.schema_py_generated", "litert", "TFLite sparsification")
    top = int(values.max()) if values.size else 0
    if top < 2**8:
        vec, kind, dtype = schema.Uint8VectorT(), schema.SparseIndexVector.Uint8Vector, np.uint8
    elif top < 2**16:
        vec, kind, dtype = schema.Uint16VectorT(), schema.SparseIndexVector.Uint16Vector, np.uint16
    else:
        vec, kind, dtype = schema.Int32VectorT(), schema.SparseIndexVector.Int32Vector, np.int32
    vec.values = values.astype(dtype)
    return kind, vec


def _csr_sparsity(arr: np.ndarray):
    """SparsityParametersT (dense outer dims, CSR last dim), the values (``arr``'s dtype), and
    the stored size."""
    schema = require("ai_edge_litert.schema_py_generated", "litert", "TFLite sparsification")
    rows = arr.reshape(-1, arr.shape[-1])
    nz_rows, nz_cols = np.nonzero(rows)
    values = np.ascontiguousarray(rows[nz_rows, nz_cols])
    segments = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(nz_rows, minlength=rows.shape[0]), out=segments[1:])
    dims = [
        schema.DimensionMetadataT(format=schema.DimensionType.DENSE, denseSize=int(s))
        for s in arr.shape[:-1]
    ]
    seg_kind, seg_vec = _narrowest(segments)
    idx_kind, idx_vec = _narrowest(nz_cols)
    dims.append(
        schema.DimensionMetadataT(
            format=schema.DimensionType.SPARSE_CSR,
            arraySegmentsType=seg_kind,
            arraySegments=seg_vec,
            arrayIndicesType=idx_kind,
            arrayIndices=idx_vec,
        )
    )
    params = schema.SparsityParametersT(
        traversalOrder=list(range(arr.ndim)), blockMap=[], dimMetadata=dims
    )
    stored = values.nbytes + seg_vec.values.nbytes + idx_vec.values.nbytes
    return params, values, stored


def _opcode_index(model, builtin: int) -> int:
    schema = require("ai_edge_litert.schema_py_generated", "litert", "TFLite sparsification")
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    model.operatorCodes.append(
        schema.OperatorCodeT(
            deprecatedBuiltinCode=min(builtin, 127), builtinCode=builtin, version=1
        )
    )
    return len(model.operatorCodes) - 1


def sparsify_tflite(
    model_bytes: bytes, *, sparse: bool = True, metadata: dict[str, object] | None = None
) -> tuple[bytes, SparseStats]:
    """Rewrite pruned weights of a TFLite model to sparse storage and attach ``metadata``.

    With ``sparse=False`` only the metadata is attached.
    """
    schema = require("ai_edge_litert.schema_py_generated", "litert", "TFLite sparsification")
    fb = require("ai_edge_litert.tools.flatbuffer_utils", "litert", "TFLite sparsification")
    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    n_t = n_nnz = n_el = 0
    if sparse:
        densify = _opcode_index(model, schema.BuiltinOperator.DENSIFY)
        refs = Counter(t.buffer for sg in model.subgraphs for t in sg.tensors)
        for sg in model.subgraphs:
            weights: dict[int, str] = {}  # weight tensor -> the op that reads it
            for op in sg.operators:
                code = model.operatorCodes[op.opcodeIndex]
                name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
                if name in _WEIGHT_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
                    weights[int(op.inputs[1])] = name
            new_ops = []
            for t_idx in sorted(weights):
                tensor = sg.tensors[t_idx]
                buf = model.buffers[tensor.buffer]
                dtype = _SPARSE_TYPES.get(tensor.type)
                if dtype is None or buf.data is None:
                    continue
                if weights[t_idx] == "FULLY_CONNECTED" and tensor.type == schema.TensorType.INT8:
                    # LiteRT's XNNPACK delegate cannot prepare an int8 FULLY_CONNECTED whose
                    # weights a DENSIFY op computes ("failed to prepare"): it stays dense
                    continue
                if refs[tensor.buffer] > 1:  # a buffer shared with another tensor stays dense
                    continue
                if tensor.sparsity is not None or len(tensor.shape) < 2:
                    continue
                arr = np.frombuffer(bytes(buf.data), dtype=dtype).reshape(tensor.shape)
                params, values, stored = _csr_sparsity(arr)
                if stored >= arr.nbytes:
                    continue
                model.buffers.append(schema.BufferT())
                model.buffers[-1].data = values.view(np.uint8)
                sparse_t = schema.TensorT()
                sparse_t.shape = list(tensor.shape)
                sparse_t.type = tensor.type
                sparse_t.buffer = len(model.buffers) - 1
                sparse_t.name = f"{_name(tensor)}/sparse"
                sparse_t.sparsity = params
                sparse_t.quantization = tensor.quantization
                sg.tensors.append(sparse_t)
                buf.data = None  # the dense tensor is now computed by DENSIFY
                op = schema.OperatorT()
                op.opcodeIndex = densify
                op.inputs = [len(sg.tensors) - 1]
                op.outputs = [t_idx]
                new_ops.append(op)
                n_t, n_nnz, n_el = n_t + 1, n_nnz + values.size, n_el + arr.size
            sg.operators = new_ops + list(sg.operators)
    if metadata is not None:
        model.buffers.append(schema.BufferT())
        blob = json.dumps(metadata, sort_keys=True).encode()
        model.buffers[-1].data = np.frombuffer(blob, dtype=np.uint8).copy()
        entry = schema.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata = [m for m in (model.metadata or []) if _name(m) != METADATA_NAME]
        model.metadata.append(entry)
    out = fb.convert_object_to_bytearray(model)
    return bytes(out), SparseStats(n_t, int(n_nnz), int(n_el))


def _index_vector(kind: int, vec) -> np.ndarray:
    if vec is None or vec.values is None:
        raise ValueError(f"sparse index vector of type {kind} has no values")
    return np.asarray(vec.values, dtype=np.int64)


def dense_weight(model, tensor) -> np.ndarray | None:
    """The dense array of constant ``tensor`` of ``model`` (flatbuffer object API), read from its
    buffer (None when it has none: an activation, or the output of a DENSIFY op), decoding the
    CSR storage :func:`sparsify_tflite` writes (dense outer dimensions, last one SPARSE_CSR).
    Any other sparsity layout raises ``ValueError``."""
    dtype = _SPARSE_TYPES.get(tensor.type)
    buf = model.buffers[tensor.buffer]
    if dtype is None or buf.data is None:
        return None
    raw = np.frombuffer(bytes(np.asarray(buf.data, np.uint8)), dtype=dtype)
    shape = [int(s) for s in tensor.shape]
    sp = tensor.sparsity
    if sp is None:
        return raw.reshape(shape)
    dims = sp.dimMetadata or []
    order = list(sp.traversalOrder) if sp.traversalOrder is not None else []
    if order != list(range(len(shape))) or len(dims) != len(shape) or sp.blockMap:
        raise ValueError("only dense-outer, CSR-last sparsity without blocks is read")
    if any(d.format != 0 for d in dims[:-1]) or dims[-1].format != 1:  # DENSE = 0, CSR = 1
        raise ValueError("only dense-outer, CSR-last sparsity without blocks is read")
    last = dims[-1]
    segments = _index_vector(last.arraySegmentsType, last.arraySegments)
    indices = _index_vector(last.arrayIndicesType, last.arrayIndices)
    rows = int(np.prod(shape[:-1]))
    if (
        len(segments) != rows + 1
        or segments[0] != 0
        or np.any(np.diff(segments) < 0)
        or segments[-1] != len(indices)
        or len(indices) != len(raw)
        or (len(indices) and (indices.min() < 0 or indices.max() >= shape[-1]))
    ):
        raise ValueError("inconsistent CSR segments / indices")
    dense = np.zeros((rows, shape[-1]), dtype=dtype)
    row_of = np.repeat(np.arange(rows), np.diff(segments))
    dense[row_of, indices] = raw
    return dense.reshape(shape)


def read_metadata(model: bytes | str | os.PathLike) -> dict[str, object]:
    """The entropi provenance stored in a TFLite file (empty dict if none)."""
    fb = require("ai_edge_litert.tools.flatbuffer_utils", "litert", "reading TFLite metadata")
    data = bytes(model) if isinstance(model, bytes | bytearray) else open(model, "rb").read()
    obj = fb.read_model_from_bytearray(bytearray(data))
    for m in obj.metadata or []:
        if _name(m) == METADATA_NAME:
            return json.loads(bytes(obj.buffers[m.buffer].data).decode())
    return {}


def _name(obj) -> str:
    name = obj.name
    return name.decode() if isinstance(name, bytes) else str(name or "")
