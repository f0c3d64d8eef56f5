"""entropi.export: a pruned encoder -> verified ONNX / TFLite files, stored sparse, plus a
compact form (dead channels removed). Imports torch and the format writers; never the host.

Entry points:

- :func:`export_encoder` (``exporter.py``): any encoder plus its :class:`RungInfo` -> an export
  folder (one file per form and format, export.json). The host's ``export_rung``
  (host/deployment/rung_export.py)
  loads a rung of a run folder and calls it.
- :data:`FORMATS` (``formats.py``): the registry of export formats (:class:`ExportFormat`:
  writer, runner, suffix, tolerance); :data:`FORMAT_NAMES` for validation and CLI choices.
- The rung record (``rung.py``): :class:`RungInfo`, :class:`Rung`, :func:`save_rung`,
  :func:`load_rung_file` — the one schema the pipeline writes and export, bundle and
  benchmarks read.
- :func:`prunable_parameters` (``weights.py``): which weights are pruned.
- The steps, usable alone: :func:`fold_batchnorm`, :func:`compact_encoder`,
  :func:`export_onnx`, :func:`convert_tflite` / :func:`sparsify_tflite`, and the verifiers
  :func:`run_onnx`, :func:`run_tflite`, :func:`compare_onnx_torch`, :func:`compare_tflite_torch`.
- int8 (``quantize.py``): ``export_encoder(..., quantize="int8")`` adds every format's int8
  form (:attr:`ExportFormat.quantize`); usable alone: :func:`quantize_tflite_int8`
  (full-integer TFLite), :func:`quantize_onnx_qdq` (QDQ ONNX), their runners
  :func:`run_tflite_int8` / :func:`run_onnx_qdq`, :func:`int8_feature_error` and
  :func:`pruned_zeros_kept`.

Every error on bad input is an :class:`ExportError` (or the rung record's
:class:`CheckpointError`), both :class:`~entropi.common.errors.EntropiError`; a missing optional
dependency is a :class:`MissingDependencyError` naming the extra to install.
"""

from ._errors import ExportError, MissingDependencyError, UnsupportedModuleError, VerificationError
from .compact import CompactReport, ConvWithBiasMap, InputShapeError, compact_encoder
from .exporter import DEFAULT_MIN_COSINE, INDEX_BYTES, export_encoder, images_to_inputs
from .fold import fold_batchnorm
from .formats import FORMAT_NAMES, FORMATS, QUANTIZE, ExportFormat, resolve_formats
from .onnx_export import ONNX_OPSET, export_onnx
from .quantize import (
    int8_feature_error,
    pruned_zeros_kept,
    quantize_onnx_qdq,
    quantize_tflite_int8,
    run_onnx_qdq,
    run_tflite_int8,
    tflite_io_quantization,
)
from .rung import CheckpointError, Rung, RungInfo, load_rung_file, save_rung
from .tflite_export import convert_tflite, read_metadata, sparsify_tflite
from .verify import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    Diff,
    compare_onnx_torch,
    compare_tflite_torch,
    run_onnx,
    run_tflite,
)
from .weights import SparseStats, prunable_parameters, weight_stats

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MIN_COSINE",
    "DEFAULT_RTOL",
    "FORMATS",
    "FORMAT_NAMES",
    "INDEX_BYTES",
    "ONNX_OPSET",
    "QUANTIZE",
    "CheckpointError",
    "CompactReport",
    "ConvWithBiasMap",
    "Diff",
    "ExportError",
    "ExportFormat",
    "InputShapeError",
    "MissingDependencyError",
    "Rung",
    "RungInfo",
    "SparseStats",
    "UnsupportedModuleError",
    "VerificationError",
    "compact_encoder",
    "compare_onnx_torch",
    "compare_tflite_torch",
    "convert_tflite",
    "export_encoder",
    "export_onnx",
    "fold_batchnorm",
    "images_to_inputs",
    "int8_feature_error",
    "load_rung_file",
    "prunable_parameters",
    "pruned_zeros_kept",
    "quantize_onnx_qdq",
    "quantize_tflite_int8",
    "read_metadata",
    "resolve_formats",
    "run_onnx",
    "run_onnx_qdq",
    "run_tflite",
    "run_tflite_int8",
    "save_rung",
    "sparsify_tflite",
    "tflite_io_quantization",
    "weight_stats",
]
