"""The registry of export formats: what :func:`~entropi.export.export_encoder` writes and checks.

An :class:`ExportFormat` knows how to

- ``convert(module, example) -> bytes``: the format's file of one module (the BN-folded or the
  compact encoder) traced at ``example`` (``1 x C x H x W``), weights dense, no metadata: the
  expensive step, done once per distinct graph;
- ``store(data, *, sparse, metadata) -> (bytes, SparseStats)``: that file as one encoder form
  stores it: pruned weights stored sparse when ``sparse``, the provenance dict ``metadata``
  stored inside the file (``write`` = ``store`` of ``convert``);
- ``run(path, inputs) -> np.ndarray``: run such a file in its stock runtime on a float32 NCHW
  batch (the verifier);
- ``requires()``: raise :class:`~entropi.export.MissingDependencyError` naming the extra to
  install when its writer or runtime is missing (called before any work);

- ``quantize(module, float_bytes, calibration, *, input_shape) -> (bytes, io)``: the int8 file
  of the same module (:mod:`.quantize`), calibrated on float32 NCHW ``calibration`` inputs,
  weights dense (``float_bytes``: one of the module's float files, for a format that quantizes
  the file rather than the module; ``io``: the file's input / output ``{"dtype", "shape",
  "scale", "zero_point"}``), once per distinct graph; ``store_quantized(data, *, sparse,
  metadata) -> (bytes, SparseStats)`` its storage as a form, and ``run_quantized`` its runner
  (float32 NCHW in, dequantized float32 features out);

and the tolerance ``atol + rtol * max|ref|`` its verification uses. :data:`FORMATS` holds them by
name, in the order files are written; config validation, the CLI's ``--format`` choices and the
export loop read it. Adding a format is one more entry (the device runtime picks an interpreter
by suffix, ``device/encoder.py``).

:data:`ENCODER_FORMS` is the other axis: which module a file holds and how its weights are
stored (:class:`EncoderForm`): ``sparse`` (every channel, pruned weights stored sparse: the
smallest file), ``compact`` (dead channels removed, the rest stored sparse: smaller and faster)
and ``compact-dense`` (dead channels removed, weights stored dense: a larger file that a device
reads in place, so it needs the least RAM; a sparse file's weights are rebuilt in RAM at load).
The exporter, the bundle, the deploy table and the CLI's ``--form`` choices read it.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from entropi.common.dtypes import QUANTIZE

from ._errors import ExportError, require
from .onnx_export import ONNX_OPSET, onnx_file, onnx_graph
from .quantize import (
    onnx_qdq_bytes,
    run_onnx_qdq,
    run_tflite_int8,
    sparsify_onnx_int8,
    tflite_int8_bytes,
)
from .tflite_export import convert_tflite, import_converter, sparsify_tflite
from .verify import DEFAULT_ATOL, DEFAULT_RTOL, ModelSource, run_onnx, run_tflite
from .weights import SparseStats

__all__ = [
    "ENCODER_FORMS",
    "FORMATS",
    "FORMAT_NAMES",
    "QUANTIZE",
    "EncoderForm",
    "ExportFormat",
    "resolve_forms",
    "resolve_formats",
    "resolve_quantize",
]


Converter = Callable[[nn.Module, torch.Tensor], bytes]
"""``convert(module, example) -> the file, weights dense, no metadata``."""
Storer = Callable[..., tuple[bytes, SparseStats]]
"""``store(data, *, sparse, metadata) -> (file bytes, what was stored sparse)``."""
Runner = Callable[[ModelSource, np.ndarray], np.ndarray]
"""``run(path or bytes, float32 NCHW inputs) -> N x feature_dim outputs``."""
Quantizer = Callable[..., tuple[bytes, dict[str, Any]]]
"""``quantize(module, float_bytes, calibration, *, input_shape) -> (int8 file, io)``."""


@dataclass(frozen=True)
class ExportFormat:
    """One file format of the exported encoder (see the module docstring)."""

    name: str
    """Registry key: the ``--format`` value and the ``[export] formats`` entry."""
    suffix: str
    """File suffix, dot included (``encoder`` + suffix is the file name)."""
    label: str
    """Human-readable name, in messages."""
    convert: Converter
    store: Storer
    run: Runner
    runtime: str
    """Distribution name of the runtime that ``run`` uses (its version goes into export.json)."""
    requires: Callable[[], None]
    quantize: Quantizer
    store_quantized: Storer
    run_quantized: Runner
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def write(
        self, module: nn.Module, example: torch.Tensor, *, sparse: bool, metadata: dict[str, Any]
    ) -> tuple[bytes, SparseStats]:
        """One file of ``module``: ``store`` of ``convert`` (file bytes, what was stored sparse)."""
        return self.store(self.convert(module, example), sparse=sparse, metadata=metadata)

    def filename(self, stem: str, dtype: str = "float32") -> str:
        """``stem`` + suffix; an int8 file is ``<stem>_int8<suffix>``."""
        return f"{stem}{'' if dtype == 'float32' else '_' + dtype}{self.suffix}"

    def runtime_version(self) -> str:
        """``"<runtime> <version>"`` (``unknown`` when the distribution is not installed)."""
        try:
            version = importlib.metadata.version(self.runtime)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return f"{self.runtime} {version}"


def _store_onnx(
    data: bytes, *, sparse: bool, metadata: dict[str, Any]
) -> tuple[bytes, SparseStats]:
    """``metadata`` as ``metadata_props`` (:func:`_onnx_props`), pruned weights sparse."""
    return onnx_file(data, sparse=sparse, metadata=_onnx_props(metadata))


def _onnx_props(metadata: dict[str, Any]) -> dict[str, str]:
    """ONNX ``metadata_props``: ``entropi.<key>`` -> the value (JSON unless a string)."""
    props = {
        f"entropi.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()
    }
    props["entropi.onnx_opset"] = str(ONNX_OPSET)
    return props


def _onnx_requires() -> None:
    require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export (the torch dynamo exporter)")
    require("onnxruntime", "export", "verifying the ONNX export")


def _store_tflite(
    data: bytes, *, sparse: bool, metadata: dict[str, Any]
) -> tuple[bytes, SparseStats]:
    """TFLite sparse storage (float32 or int8 weights); ``metadata`` as one JSON entry."""
    return sparsify_tflite(data, sparse=sparse, metadata=metadata)


def _quantize_onnx(
    module: nn.Module, float_bytes: bytes, calibration: np.ndarray, *, input_shape
) -> tuple[bytes, dict[str, Any]]:
    """onnxruntime's QDQ quantization of the float file (same graph; its storage and metadata
    do not change the result: sparse initializers are densified first, and the metadata is
    replaced by :func:`_store_onnx_int8`)."""
    data, info = onnx_qdq_bytes(float_bytes, calibration)
    return data, {"input": info["input"], "output": info["output"]}


def _store_onnx_int8(
    data: bytes, *, sparse: bool, metadata: dict[str, Any]
) -> tuple[bytes, SparseStats]:
    """``metadata`` replaces the QDQ file's; int8 weights sparse below the density where
    ONNX's int64 indices pay."""
    onnx = require("onnx", "export", "int8 ONNX export")
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    for key, value in _onnx_props(metadata).items():
        model.metadata_props.add(key=key, value=value)
    data = model.SerializeToString()
    if sparse:
        return sparsify_onnx_int8(data)
    return data, SparseStats(0, 0, 0)


def _quantize_tflite(
    module: nn.Module, float_bytes: bytes, calibration: np.ndarray, *, input_shape
) -> tuple[bytes, dict[str, Any]]:
    """litert-torch's PT2E full-integer conversion of ``module`` (the float file is not read)."""
    data, info = tflite_int8_bytes(module, calibration, input_shape=input_shape)
    return data, {"input": info["input"], "output": info["output"]}


def _tflite_requires() -> None:
    import_converter()
    require("ai_edge_litert", "litert", "verifying the TFLite export")


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            name="onnx",
            suffix=".onnx",
            label="ONNX",
            convert=onnx_graph,
            store=_store_onnx,
            run=run_onnx,
            runtime="onnxruntime",
            requires=_onnx_requires,
            quantize=_quantize_onnx,
            store_quantized=_store_onnx_int8,
            run_quantized=run_onnx_qdq,
        ),
        ExportFormat(
            name="tflite",
            suffix=".tflite",
            label="TFLite",
            convert=convert_tflite,
            store=_store_tflite,
            run=run_tflite,
            runtime="ai-edge-litert",
            requires=_tflite_requires,
            quantize=_quantize_tflite,
            store_quantized=_store_tflite,
            run_quantized=run_tflite_int8,
        ),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
"""Every registered format, in registry order (the default of every export)."""


def _resolve(names: str | Iterable[str], registry: dict[str, Any], what: str) -> tuple:
    """The entries of ``registry`` named (one name or several), in registry order; an unknown
    or empty choice is an :class:`~entropi.export.ExportError` listing the valid names."""
    if isinstance(names, str):
        names = (names,)
    try:
        names = tuple(dict.fromkeys(names))
    except TypeError:
        raise ExportError(f"{what}s must be names, got {names!r}") from None
    bad = [f for f in names if f not in registry]
    if bad or not names:
        raise ExportError(f"unknown {what}(s) {bad or list(names)!r}; valid: {list(registry)}")
    return tuple(f for name, f in registry.items() if name in names)


def resolve_formats(names: str | Iterable[str]) -> tuple[ExportFormat, ...]:
    """The formats named (one name or several), in registry order; an unknown or empty choice
    is an :class:`~entropi.export.ExportError`."""
    return _resolve(names, FORMATS, "export format")


def resolve_quantize(value: str | None) -> str:
    """``quantize`` checked: ``none`` (or None / empty) or ``int8``; anything else is an
    :class:`~entropi.export.ExportError` listing the valid values."""
    value = "none" if value in (None, "", False) else value
    if value not in QUANTIZE:
        raise ExportError(f"unknown quantize dtype {value!r}; valid: {list(QUANTIZE)}")
    return value


@dataclass(frozen=True)
class EncoderForm:
    """One form of the exported encoder (see the module docstring)."""

    name: str
    """Registry key: the ``--form`` value and the ``[export] form`` entry."""
    stem: str
    """File stem in the export folder (``stem`` + a format's suffix)."""
    compact: bool
    """Dead channels removed (:func:`~entropi.export.compact_encoder`)."""
    sparse: bool
    """Pruned weights stored sparse where that is smaller (else every weight dense)."""


ENCODER_FORMS: dict[str, EncoderForm] = {
    f.name: f
    for f in (
        EncoderForm("sparse", "encoder", compact=False, sparse=True),
        EncoderForm("compact", "encoder_compact", compact=True, sparse=True),
        EncoderForm("compact-dense", "encoder_compact_dense", compact=True, sparse=False),
    )
}


def resolve_forms(names: str | Iterable[str]) -> tuple[EncoderForm, ...]:
    """The encoder forms named (one name or several), in registry order; an unknown or empty
    choice is an :class:`~entropi.export.ExportError`."""
    return _resolve(names, ENCODER_FORMS, "encoder form")
