"""The registry of export formats: what :func:`~entropi.export.export_encoder` writes and checks.

An :class:`ExportFormat` knows how to

- ``write(module, example, *, sparse, metadata) -> (bytes, SparseStats)``: serialize one module
  (the BN-folded or the compact encoder) traced at ``example`` (``1 x C x H x W``), pruned
  weights stored sparse when ``sparse``, the provenance dict ``metadata`` stored inside the file;
- ``run(path, inputs) -> np.ndarray``: run such a file in its stock runtime on a float32 NCHW
  batch (the verifier);
- ``requires()``: raise :class:`~entropi.export.MissingDependencyError` naming the extra to
  install when its writer or runtime is missing (called before any work);

and the tolerance ``atol + rtol * max|ref|`` its verification uses. :data:`FORMATS` holds them by
name, in the order files are written; config validation, the CLI's ``--format`` choices and the
export loop read it. Adding a format is one more entry (the device runtime picks an interpreter
by suffix, ``device/encoder.py``).
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

from ._errors import ExportError, require
from .onnx_export import ONNX_OPSET, export_onnx
from .tflite_export import convert_tflite, import_converter, sparsify_tflite
from .verify import DEFAULT_ATOL, DEFAULT_RTOL, ModelSource, run_onnx, run_tflite
from .weights import SparseStats

__all__ = ["FORMATS", "FORMAT_NAMES", "ExportFormat", "resolve_formats"]

Writer = Callable[..., tuple[bytes, SparseStats]]
"""``write(module, example, *, sparse, metadata) -> (file bytes, what was stored sparse)``."""
Runner = Callable[[ModelSource, np.ndarray], np.ndarray]
"""``run(path or bytes, float32 NCHW inputs) -> N x feature_dim outputs``."""


@dataclass(frozen=True)
class ExportFormat:
    """One file format of the exported encoder (see the module docstring)."""

    name: str
    """Registry key: the ``--format`` value and the ``[export] formats`` entry."""
    suffix: str
    """File suffix, dot included (``encoder`` + suffix is the file name)."""
    label: str
    """Human-readable name, in messages."""
    write: Writer
    run: Runner
    runtime: str
    """Distribution name of the runtime that ``run`` uses (its version goes into export.json)."""
    requires: Callable[[], None]
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def filename(self, stem: str) -> str:
        return f"{stem}{self.suffix}"

    def runtime_version(self) -> str:
        """``"<runtime> <version>"`` (``unknown`` when the distribution is not installed)."""
        try:
            version = importlib.metadata.version(self.runtime)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return f"{self.runtime} {version}"


def _write_onnx(
    module: nn.Module, example: torch.Tensor, *, sparse: bool, metadata: dict[str, Any]
) -> tuple[bytes, SparseStats]:
    """ONNX ``metadata_props``: ``entropi.<key>`` -> the value (JSON unless a string)."""
    props = {
        f"entropi.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()
    }
    props["entropi.onnx_opset"] = str(ONNX_OPSET)
    return export_onnx(module, example, sparse=sparse, metadata=props)


def _onnx_requires() -> None:
    require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export (the torch dynamo exporter)")
    require("onnxruntime", "export", "verifying the ONNX export")


def _write_tflite(
    module: nn.Module, example: torch.Tensor, *, sparse: bool, metadata: dict[str, Any]
) -> tuple[bytes, SparseStats]:
    """litert-torch conversion, then TFLite sparse storage; ``metadata`` as one JSON entry."""
    return sparsify_tflite(convert_tflite(module, example), sparse=sparse, metadata=metadata)


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
            write=_write_onnx,
            run=run_onnx,
            runtime="onnxruntime",
            requires=_onnx_requires,
        ),
        ExportFormat(
            name="tflite",
            suffix=".tflite",
            label="TFLite",
            write=_write_tflite,
            run=run_tflite,
            runtime="ai-edge-litert",
            requires=_tflite_requires,
        ),
    )
}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)
"""Every registered format, in registry order (the default of every export)."""


def resolve_formats(names: str | Iterable[str]) -> tuple[ExportFormat, ...]:
    """The formats named (one name or several), in registry order; an unknown or empty choice
    is an :class:`~entropi.export.ExportError`."""
    if isinstance(names, str):
        names = (names,)
    try:
        names = tuple(dict.fromkeys(names))
    except TypeError:
        raise ExportError(f"formats must be format names, got {names!r}") from None
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise ExportError(
            f"unknown export format(s) {bad or list(names)!r}; valid: {list(FORMAT_NAMES)}"
        )
    return tuple(f for name, f in FORMATS.items() if name in names)
