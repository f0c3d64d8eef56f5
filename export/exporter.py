"""Export a pruned encoder (or a rung of a run) to verified ONNX / TFLite files.

Layout of an export directory::

    OUT/encoder.onnx           BN folded, pruned weights in sparse_initializer, opset 18
    OUT/encoder.tflite         litert-torch output, pruned weights as SparsityParameters + DENSIFY
    OUT/encoder_compact.onnx   (--compact) dead channels removed: a smaller network that
                               runs faster; its remaining pruned weights are still stored sparse
    OUT/encoder_compact.tflite (--compact)
    OUT/export.json            provenance, sizes, sha256 and verification diffs of every file

Every model reads a float32 NCHW batch ``(pixels / 255 - mean) / std`` (``normalization`` in the
provenance) and returns the ``N x feature_dim`` features. ONNX files have a dynamic batch
dimension; TFLite files take one image per call.

All files are written to a temporary directory next to ``OUT`` and moved into place only after
every file has passed verification, so a failed export leaves no model behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from entropi.device.io import default_mode

from ._errors import ExportError, require
from .compact import compact_encoder
from .fold import fold_batchnorm
from .onnx_export import ONNX_OPSET, export_onnx
from .tflite_export import convert_tflite, import_converter, sparsify_tflite
from .verify import compare_arrays, run_onnx, run_tflite, torch_features

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_RTOL",
    "EXPORT_FORMAT",
    "FORMATS",
    "INDEX_BYTES",
    "export_encoder",
    "export_rung",
    "images_to_inputs",
]

EXPORT_FORMAT = 1
FORMATS = ("onnx", "tflite")
# Tolerance of every verification, relative to the output scale (see verify.py): float32
# accumulation-order differences between runtimes are ~1e-7 of the output scale for these
# encoders; 1e-4 leaves room for deeper or trained nets and is still far below what a wrong
# weight, channel or layout produces (order 1).
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
# The information floor counts a 32-bit index per non-zero: the narrowest power-of-two integer
# that addresses every position of every weight tensor of these encoders (the largest has
# 512 * 512 * 9 = 2.36 M entries). ONNX itself mandates int64 indices.
INDEX_BYTES = 4
_DEFAULT_NORMALIZATION = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


def images_to_inputs(images: np.ndarray, normalization: dict[str, Sequence[float]]) -> np.ndarray:
    """uint8 ``N x H x W x 3`` images -> float32 ``N x 3 x H x W`` normalized encoder inputs."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ExportError(
            f"verification images must be a uint8 array N x H x W x 3, got {images.dtype} "
            f"with shape {images.shape}"
        )
    mean = np.asarray(normalization["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(normalization["std"], np.float32).reshape(1, 3, 1, 1)
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _package_version() -> str:
    try:
        return importlib.metadata.version("entropi")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _provenance(meta: dict[str, Any], encoder: nn.Module, config_sha256: str | None) -> dict:
    input_shape = [int(v) for v in meta.get("input_shape", [3, 32, 32])]
    return {
        "entropi_version": _package_version(),
        "arch": meta.get("arch", type(encoder).__name__),
        "rung_index": meta.get("index"),
        "alpha": _finite_or_none(float(meta["alpha"])) if "alpha" in meta else None,
        "nnz": int(meta["nnz"]) if "nnz" in meta else None,
        "n_prunable": meta.get("n_prunable"),
        "source_dataset": meta.get("source_dataset"),
        "source_accuracy": _finite_or_none(meta.get("source_accuracy")),
        "normalization": meta.get("normalization", _DEFAULT_NORMALIZATION),
        "input_shape": input_shape,
        "input_layout": "NCHW float32, (pixels / 255 - mean) / std",
        "feature_dim": int(meta.get("feature_dim") or getattr(encoder, "feature_dim", 0)),
        "config_sha256": config_sha256,
    }


def _weight_stats(encoder: nn.Module) -> tuple[int, int, int]:
    """(nnz of conv/linear weights, their element count, float32 bytes of all parameters)."""
    from entropi.host.models import prunable_parameters

    weights = [p for _, p in prunable_parameters(encoder)]
    nnz = int(sum(int(torch.count_nonzero(p)) for p in weights))
    numel = int(sum(p.numel() for p in weights))
    dense_bytes = 4 * int(sum(p.numel() for p in encoder.parameters()))
    return nnz, numel, dense_bytes


def _file_entry(path: Path, diff, **extra: Any) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_abs_diff": diff.max_abs_diff,
        "max_rel_diff": diff.max_rel_diff,
        **extra,
    }


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ExportError(f"unknown export format(s) {bad or formats!r}; valid: {list(FORMATS)}")
    return formats


def export_encoder(
    encoder: nn.Module,
    meta: dict[str, Any],
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMATS,
    compact: bool = False,
    verify_images: np.ndarray | None = None,
    n_random: int = 4,
    seed: int = 0,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    config_sha256: str | None = None,
) -> dict[str, Any]:
    """Export ``encoder`` with rung metadata ``meta`` to ``out_dir``; return export.json's content.

    ``meta`` is the dict :func:`entropi.host.checkpoint.load_rung` returns (``alpha``, ``nnz``,
    ``normalization``, ``input_shape``, ``arch``, ``feature_dim``, ``source_dataset``,
    ``source_accuracy``, ...; missing keys are recorded as null). Every file is verified against
    ``encoder`` in PyTorch on ``n_random`` standard-normal inputs and on ``verify_images`` (uint8
    N x H x W x 3, normalized with the rung's normalization) before anything is moved into
    ``out_dir``; a difference beyond ``atol + rtol * max|ref|`` raises
    :class:`~entropi.export.VerificationError` and leaves ``out_dir`` untouched.
    """
    formats = _check_formats(formats)
    if "onnx" in formats:
        require("onnx", "export", "ONNX export")
        require("onnxruntime", "export", "verifying the ONNX export")
    if "tflite" in formats:
        import_converter()
        require("ai_edge_litert", "litert", "verifying the TFLite export")
    if n_random < 1:
        raise ExportError(f"n_random must be >= 1 (random verification inputs), got {n_random}")
    encoder = encoder.eval()
    provenance = _provenance(meta, encoder, config_sha256)
    inputs = _verification_inputs(provenance, verify_images, n_random, seed)
    example = torch.from_numpy(inputs[:1].copy())

    # the PyTorch reference every form and file is checked against, computed once
    reference = torch_features(encoder, inputs)
    folded = fold_batchnorm(encoder)
    fold_diff = compare_arrays(
        torch_features(folded, inputs),
        reference,
        atol=atol,
        rtol=rtol,
        what="BN-folded encoder",
    )
    nnz, numel, dense_bytes = _weight_stats(encoder)
    variants: list[tuple[str, nn.Module, bool]] = [("encoder", folded, True)]
    compact_info = None
    if compact:
        small, report = compact_encoder(folded, example)
        compact_diff = compare_arrays(
            torch_features(small, inputs),
            reference,
            atol=atol,
            rtol=rtol,
            what="compact encoder (PyTorch)",
        )
        compact_info = {**report.as_dict(), "torch_max_abs_diff": compact_diff.max_abs_diff}
        variants.append(("encoder_compact", small, True))

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    os.chmod(tmp, default_mode(directory=True))
    try:
        files: dict[str, Any] = {}
        for stem, module, sparse in variants:
            md = {**provenance, "form": "compact" if stem.endswith("compact") else "pruned"}
            for fmt in (f for f in FORMATS if f in formats):
                path = tmp / f"{stem}.{fmt}"
                if fmt == "onnx":
                    props = {
                        f"entropi.{k}": v if isinstance(v, str) else json.dumps(v)
                        for k, v in md.items()
                    }
                    props["entropi.onnx_opset"] = str(ONNX_OPSET)
                    data, stats = export_onnx(module, example, sparse=sparse, metadata=props)
                    run, runtime, label = run_onnx, "onnxruntime", "ONNX"
                else:
                    tflite = convert_tflite(module, example)
                    data, stats = sparsify_tflite(tflite, sparse=sparse, metadata=md)
                    run, runtime, label = run_tflite, "ai-edge-litert", "TFLite"
                path.write_bytes(data)
                diff = compare_arrays(
                    run(path, inputs),
                    reference,
                    atol=atol,
                    rtol=rtol,
                    what=f"{label} model {path.name}",
                )
                files[path.name] = _file_entry(
                    path,
                    diff,
                    runtime=f"{runtime} {_version(runtime)}",
                    sparse_tensors=stats.tensors,
                    sparse_nnz=stats.nnz,
                    params=_param_count(module),
                )
        result = {
            "export_format": EXPORT_FORMAT,
            "provenance": provenance,
            "onnx_opset": ONNX_OPSET,
            "nnz": nnz,
            "n_weights": numel,
            "dense_bytes": dense_bytes,
            "index_bytes": INDEX_BYTES,
            "floor_bytes": nnz * (4 + INDEX_BYTES),
            "floor_convention": (
                f"non-zero conv/linear weights x (4 bytes float32 + {INDEX_BYTES}-byte index); "
                "dense_bytes = 4 x all encoder parameters (BN included)"
            ),
            "tolerance": {
                "atol": atol,
                "rtol": rtol,
                "criterion": "max|out - ref| <= atol + rtol * max|ref| over all inputs",
                "max_rel_diff": "max|out - ref| / max|ref|",
            },
            "verification_inputs": {
                "random": n_random,
                "images": 0 if verify_images is None else int(len(verify_images)),
                "reference": "PyTorch encoder (eval, BN not folded), float32",
            },
            "bn_fold_max_abs_diff": fold_diff.max_abs_diff,
            "compact": compact_info,
            "files": files,
        }
        (tmp / "export.json").write_text(json.dumps(result, indent=2) + "\n")
        _move_into_place(tmp, out_dir, [*files, "export.json"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _verification_inputs(provenance: dict, images: np.ndarray | None, n: int, seed: int):
    shape = provenance["input_shape"]
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    if images is None:
        return x
    real = images_to_inputs(images, provenance["normalization"])
    if list(real.shape[1:]) != list(shape):
        raise ExportError(
            f"verification images are {real.shape[2]}x{real.shape[3]}, the encoder expects "
            f"input shape {shape} (C x H x W)"
        )
    return np.concatenate([x, real], axis=0)


def _move_into_place(tmp: Path, out_dir: Path, names: list[str]) -> None:
    """Rename the verified files into ``out_dir`` (the whole folder when it does not exist)."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not out_dir.is_dir():
        raise ExportError(f"output path {out_dir} exists and is not a directory")
    for name in names:  # export.json last: it describes the files already in place
        os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _param_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def config_hash(rundir: str | os.PathLike) -> str | None:
    """sha256 of ``RUNDIR/config.toml`` (the resolved config), or None if there is none."""
    path = Path(rundir) / "config.toml"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def export_rung(
    rundir: str | os.PathLike,
    rung: str | int = "selected",
    *,
    formats: Sequence[str] = FORMATS,
    compact: bool = False,
    out_dir: str | os.PathLike | None = None,
    verify_images: np.ndarray | None = None,
    n_random: int = 4,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> dict[str, Any]:
    """Export rung ``rung`` (``"selected"`` or an index) of the run in ``rundir``.

    Writes to ``out_dir`` (default ``RUNDIR/export``) and returns export.json's content. Raises
    :class:`~entropi.host.checkpoint.CheckpointError` (a ValueError) for a run without a ladder, a
    rung that does not exist or a corrupt checkpoint.
    """
    from entropi.host.checkpoint import load_rung

    encoder, meta = load_rung(rundir, rung)
    return export_encoder(
        encoder,
        meta,
        Path(rundir) / "export" if out_dir is None else out_dir,
        formats=formats,
        compact=compact,
        verify_images=verify_images,
        n_random=n_random,
        atol=atol,
        rtol=rtol,
        config_sha256=config_hash(rundir),
    )
