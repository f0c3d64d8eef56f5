"""Export a pruned encoder to verified ONNX / TFLite files, stored sparse, plus a compact form.

Entry points: :func:`export_rung` (a rung of a run directory) and :func:`export_encoder` (any
encoder plus rung metadata). :func:`compare_onnx_torch` / :func:`compare_tflite_torch` check an
exported file against a PyTorch module.
"""

from ._errors import ExportError, MissingDependencyError, UnsupportedModuleError, VerificationError
from .compact import CompactReport, ConvWithBiasMap, InputShapeError, compact_encoder
from .exporter import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    FORMATS,
    INDEX_BYTES,
    export_encoder,
    export_rung,
    images_to_inputs,
)
from .fold import fold_batchnorm
from .onnx_export import ONNX_OPSET, export_onnx
from .tflite_export import convert_tflite, read_metadata, sparsify_tflite
from .verify import Diff, compare_onnx_torch, compare_tflite_torch, run_onnx, run_tflite

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "FORMATS",
    "INDEX_BYTES",
    "ONNX_OPSET",
    "CompactReport",
    "ConvWithBiasMap",
    "Diff",
    "ExportError",
    "InputShapeError",
    "MissingDependencyError",
    "UnsupportedModuleError",
    "VerificationError",
    "compact_encoder",
    "compare_onnx_torch",
    "compare_tflite_torch",
    "convert_tflite",
    "export_encoder",
    "export_onnx",
    "export_rung",
    "fold_batchnorm",
    "images_to_inputs",
    "read_metadata",
    "run_onnx",
    "run_tflite",
    "sparsify_tflite",
]
