"""Export a (BN-folded) encoder to one self-contained ONNX file, pruned weights stored sparse.

Sparse storage: every float initializer of rank >= 2 that feeds a Conv/Gemm/MatMul and whose COO
form is smaller than its dense form (``nnz * (4 + 8) < numel * 4``, i.e. density < 1/3) moves
from ``graph.initializer`` to ``graph.sparse_initializer`` as a ``SparseTensorProto`` with
float32 ``values`` [NNZ] and int64 ``indices`` [NNZ] (flat, row-major positions into the dense
shape; ONNX requires int64 indices). onnxruntime densifies these at session creation.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from torch import nn

from ._errors import require
from .weights import SparseStats

__all__ = ["ONNX_OPSET", "export_onnx", "onnx_file", "onnx_graph", "sparsify_onnx"]

ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "features"
# Add: the compact form's bias maps (zero but for the padded border) are stored sparse too
_WEIGHT_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose", "Add"}


def sparsify_onnx(model, *, index_bytes: int = 8) -> SparseStats:
    """Move sparse-enough weight initializers of ``model`` (an ``onnx.ModelProto``, edited in
    place) to ``graph.sparse_initializer``."""
    onnx = require("onnx", "export", "ONNX export")
    # lazy: onnx is an optional extra ("export"); the require() above names it when missing
    from onnx import helper, numpy_helper

    graph = model.graph
    weight_names = {
        name for node in graph.node if node.op_type in _WEIGHT_OPS for name in node.input[1:]
    }
    keep, sparse, n_t, n_nnz, n_el = [], [], 0, 0, 0
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if init.name not in weight_names or arr.ndim < 2 or arr.dtype != np.float32:
            keep.append(init)
            continue
        flat = arr.reshape(-1)
        idx = np.flatnonzero(flat)
        if idx.size * (4 + index_bytes) >= flat.size * 4:
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[idx].astype(np.float32), name=init.name)
        indices = numpy_helper.from_array(idx.astype(np.int64), name=f"{init.name}.indices")
        sparse.append(helper.make_sparse_tensor(values, indices, list(arr.shape)))
        n_t, n_nnz, n_el = n_t + 1, n_nnz + idx.size, n_el + flat.size
    del graph.initializer[:]
    graph.initializer.extend(keep)
    graph.sparse_initializer.extend(sparse)
    onnx.checker.check_model(model)  # full_check rejects sparse_initializer; the default passes
    return SparseStats(n_t, int(n_nnz), int(n_el))


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    *,
    sparse: bool,
    metadata: dict[str, str],
    opset: int = ONNX_OPSET,
) -> tuple[bytes, SparseStats]:
    """Export ``module`` (eval mode, batch dimension dynamic) to serialized ONNX bytes.

    ``metadata`` goes into ``metadata_props``; with ``sparse`` the pruned weights are moved to
    ``sparse_initializer``. Returns the bytes and what was stored sparse. The same as
    :func:`onnx_file` of :func:`onnx_graph`: an exporter that writes one module in several
    storages traces it once.
    """
    return onnx_file(onnx_graph(module, example, opset=opset), sparse=sparse, metadata=metadata)


def onnx_graph(module: nn.Module, example: torch.Tensor, *, opset: int = ONNX_OPSET) -> bytes:
    """The dynamo exporter's ONNX model of ``module`` (eval mode, batch dimension dynamic),
    debug annotations stripped, weights dense, no metadata: what :func:`onnx_file` stores."""
    require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export (the torch dynamo exporter)")
    module.eval()
    with warnings.catch_warnings(), _quiet("torch.onnx"):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
    model = program.model_proto
    _strip_debug_info(model)
    return model.SerializeToString()


def onnx_file(graph: bytes, *, sparse: bool, metadata: dict[str, str]) -> tuple[bytes, SparseStats]:
    """The ONNX file of ``graph`` (:func:`onnx_graph`'s bytes): pruned weights moved to
    ``sparse_initializer`` when ``sparse``, ``metadata`` as ``metadata_props``, checked."""
    onnx = require("onnx", "export", "ONNX export")
    model = onnx.load_from_string(graph)
    stats = sparsify_onnx(model) if sparse else SparseStats(0, 0, 0)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "entropi"
    onnx.checker.check_model(model)
    return model.SerializeToString(), stats


def _strip_debug_info(model) -> None:
    """Drop the exporter's per-node debug annotations (stack traces, fx node names, class
    hierarchies in ``metadata_props`` and ``doc_string``): they are most of the graph's bytes and
    nothing a runtime reads."""
    graph = model.graph
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*graph.value_info, *graph.input, *graph.output, *graph.initializer]:
        del value.metadata_props[:]
        value.doc_string = ""


class _quiet:
    """Silence a logger (the exporter logs a line per skipped torchvision op)."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def __enter__(self) -> None:
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)
