"""Export a pruned encoder to verified files, one per registered format and encoder form.

Layout of an export directory::

    OUT/encoder.onnx           BN folded, pruned weights in sparse_initializer, opset 18
    OUT/encoder.tflite         litert-torch output, pruned weights as SparsityParameters + DENSIFY
    OUT/encoder_compact.onnx   (compact) dead channels removed: a smaller network that runs
                               faster; its remaining pruned weights are still stored sparse
    OUT/encoder_compact.tflite (compact)
    OUT/encoder_compact_dense.*  (compact-dense) dead channels removed, weights stored dense:
                               read in place by a device, so no weight is rebuilt in RAM
    OUT/encoder_int8.tflite    (quantize int8) full-integer: int8 input, weights, activations,
    OUT/encoder_int8.onnx      output (TFLite); QDQ with float32 I/O (ONNX); pruned int8 weights
                               stored sparse where that is smaller; also encoder_compact_int8.*
    OUT/export.json            provenance, sizes, sha256 and verification diffs of every file

(one file per form of :data:`~entropi.export.formats.ENCODER_FORMS` and per format of
:data:`~entropi.export.formats.FORMATS` asked for).
Every model reads a float32 NCHW batch ``(pixels / 255 - mean) / std`` (``normalization`` in the
provenance) and returns the ``N x feature_dim`` features. ONNX files have a dynamic batch
dimension; TFLite files take one image per call.

An int8 file is calibrated on the calibration images (the host passes N seeded target training
images) and checked on real images (the verification images, else the calibration ones) against
the float PyTorch encoder: max relative error and mean cosine of the features
(:func:`~entropi.export.quantize.int8_feature_error`); below ``min_cosine``, or with a pruned
weight that is not an exact int8 zero, the export fails.

Each format converts each distinct graph once (and, for int8, calibrates and quantizes it once):
the compact forms share the compact module, and a compaction that removed nothing
(:func:`~entropi.export.compact.same_graph`) is the folded graph, shared by every form; a form
then only stores the file its way (sparse or dense weights, its own metadata), and every file is
verified on its own.

All files are written to a temporary directory next to ``OUT`` (``.OUT.<pid>.<random>.tmp``) and
moved into place only after every file has passed verification, so a failed export leaves no
model behind. A process killed mid-export leaves its temporary directory; the next export into
``OUT`` removes it (:func:`remove_stale_tmp`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from entropi.common.dtypes import DEFAULT_MIN_COSINE
from entropi.common.files import default_mode
from entropi.common.lock import LOCK_NAME
from entropi.common.provenance import package_version

from ._errors import ExportError, VerificationError
from .compact import compact_encoder, same_graph
from .fold import fold_batchnorm
from .formats import (
    ENCODER_FORMS,
    FORMAT_NAMES,
    FORMATS,
    resolve_formats,
    resolve_forms,
    resolve_quantize,
)
from .onnx_export import ONNX_OPSET
from .quantize import int8_feature_error, pruned_zeros_kept
from .rung import RungInfo
from .tflm import MIN_WITHIN_ONE_STEP, TFLMError, compare_tflm_litert, tflm_arena_bytes
from .verify import DEFAULT_ATOL, DEFAULT_RTOL, Diff, compare_arrays, torch_features
from .weights import weight_stats

__all__ = [
    "DEFAULT_MIN_COSINE",
    "DEFAULT_N_RANDOM",
    "EXPORT_FORMAT",
    "INDEX_BYTES",
    "export_encoder",
    "images_to_inputs",
    "remove_stale_tmp",
]

EXPORT_FORMAT = 1
"""Version of export.json's layout."""
# The information floor counts a 32-bit index per non-zero: the narrowest power-of-two integer
# that addresses every position of every weight tensor of these encoders (the largest has
# 512 * 512 * 9 = 2.36 M entries). ONNX itself mandates int64 indices.
INDEX_BYTES = 4
DEFAULT_N_RANDOM = 4
"""Standard-normal inputs every file is verified on, besides the real images."""


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


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _provenance(info: RungInfo, encoder: nn.Module, config_sha256: str | None) -> dict[str, Any]:
    """What every file and export.json record about the rung they were made from."""
    return {
        "entropi_version": package_version(),
        "arch": info.arch,
        "rung_index": info.index,
        "alpha": _finite_or_none(float(info.alpha)),
        "nnz": int(info.nnz),
        "n_prunable": info.n_prunable,
        "source_dataset": info.source_dataset,
        "source_accuracy": _finite_or_none(info.source_accuracy),
        "normalization": info.normalization,
        "input_shape": [int(v) for v in info.input_shape],
        "input_layout": "NCHW float32, (pixels / 255 - mean) / std",
        "feature_dim": int(info.feature_dim or getattr(encoder, "feature_dim", 0)),
        "config_sha256": config_sha256,
    }


def _check_info(info: RungInfo) -> None:
    if not isinstance(info, RungInfo):
        raise ExportError(
            f"export_encoder needs the rung's RungInfo (entropi.export.rung), got "
            f"{type(info).__name__}"
        )
    shape = tuple(info.input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ExportError(f"input_shape must be 3 positive integers C x H x W, got {shape!r}")
    norm = info.normalization
    if not (
        isinstance(norm, dict) and all(len(norm.get(k) or ()) == shape[0] for k in ("mean", "std"))
    ):
        raise ExportError(
            f"normalization must be {{'mean': [{shape[0]} floats], 'std': [{shape[0]} floats]}}, "
            f"got {norm!r}"
        )


def _file_entry(path: Path, diff: Diff, **extra: Any) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_abs_diff": diff.max_abs_diff,
        "max_rel_diff": diff.max_rel_diff,
        **extra,
    }


TFLM_INPUTS = 8
"""Verification inputs a TFLite file is also run on in TensorFlow Lite Micro (its reference
kernels take ~0.1 s per image for smallnet on the host, so not all of them)."""


def _add_tflm(entry: dict[str, Any], path: Path, inputs: np.ndarray, tol: dict | None) -> None:
    """Run a TFLite file in TensorFlow Lite Micro (when ``tflite-micro`` is installed, extra
    ``tflm``) on the first :data:`TFLM_INPUTS` verification inputs: ``entry["tflm"]`` records
    the arena its recording allocator used and the agreement with LiteRT (float: within the
    file's tolerance; int8: at least 99 % of values within one output step), or why TFLM
    refuses the file (a sparse-stored file needs DENSIFY, which TFLM lacks)."""
    if importlib.util.find_spec("tflite_micro") is None:
        return
    try:
        arena = tflm_arena_bytes(path)
    except TFLMError as e:
        entry["tflm"] = {"refused": str(e), "missing_op": e.missing_op}
        return
    vs = compare_tflm_litert(path, inputs[:TFLM_INPUTS], arena_size=arena)
    if tol is not None:
        ok = vs["max_abs_diff"] <= tol["atol"] + tol["rtol"] * vs["ref_scale"]
    else:
        ok = vs["within_one_step"] >= MIN_WITHIN_ONE_STEP
    if not ok:
        raise VerificationError(f"TFLite Micro's outputs of {path.name} differ from LiteRT's: {vs}")
    entry["tflm"] = {"arena_bytes": arena, "vs_litert": vs}


def calibration_digest(images: np.ndarray) -> str:
    """sha256 of a calibration set (its shape, dtype and pixels): what an int8 export is reused
    for (export.json ``quantization.calibration_sha256``)."""
    a = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def export_encoder(
    encoder: nn.Module,
    info: RungInfo,
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMAT_NAMES,
    compact: bool = False,
    forms: Sequence[str] | None = None,
    verify_images: np.ndarray | None = None,
    n_random: int = DEFAULT_N_RANDOM,
    seed: int = 0,
    atol: float | None = None,
    rtol: float | None = None,
    config_sha256: str | None = None,
    rung_sha256: str | None = None,
    quantize: str | None = None,
    calibration_images: np.ndarray | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
) -> dict[str, Any]:
    """Export ``encoder`` (the rung described by ``info``) to ``out_dir``; return export.json.

    One file per format in ``formats`` (see :data:`~entropi.export.formats.FORMATS`) and per
    encoder form in ``forms`` (:data:`~entropi.export.formats.ENCODER_FORMS`; default ``sparse``:
    BN folded, pruned weights stored sparse; ``compact=True`` is short for ``forms=("sparse",
    "compact")``, dead channels removed). Every file is verified against ``encoder`` in
    PyTorch on ``n_random`` standard-normal inputs (seeded by ``seed``) and on
    ``verify_images`` (uint8 N x H x W x 3, normalized with ``info.normalization``) before
    anything is moved into ``out_dir``; a difference beyond ``atol + rtol * max|ref|`` raises
    :class:`~entropi.export.VerificationError` and leaves ``out_dir`` untouched. ``atol`` /
    ``rtol`` default to each format's own tolerance (and :data:`DEFAULT_ATOL` /
    :data:`DEFAULT_RTOL` for the PyTorch forms); given, they apply to every check.

    ``rung_sha256`` (the sha256 of the rung file the encoder was loaded from) is recorded as
    export.json's ``rung_sha256``: what an export is reused for.

    ``quantize="int8"`` adds the int8 form of every file (``<stem>_int8<suffix>``), calibrated
    on ``calibration_images`` (uint8 N x H x W x 3, N >= 1) and refused, with nothing moved into
    place, when its features' mean cosine to the float encoder's on the real images is below
    ``min_cosine`` or a pruned weight is not an int8 zero (module docstring).

    Bad input raises :class:`~entropi.export.ExportError`; a missing writer or runtime raises
    :class:`~entropi.export.MissingDependencyError` before any work.
    """
    chosen = resolve_formats(formats)
    if forms is not None and compact:
        raise ExportError("give the encoder forms or compact=True, not both")
    wanted = resolve_forms(forms if forms is not None else ("sparse", "compact")[: 1 + compact])
    quantize = resolve_quantize(quantize)
    _check_info(info)
    for fmt in chosen:
        fmt.requires()
    if quantize != "none":
        if not (isinstance(min_cosine, int | float) and -1.0 <= min_cosine <= 1.0):
            raise ExportError(f"min_cosine must be a number in [-1, 1], got {min_cosine!r}")
        if calibration_images is None or len(calibration_images) == 0:
            raise ExportError(
                f"quantize={quantize!r} needs calibration images (uint8 N x H x W x 3, N >= 1); "
                "got none"
            )
    if not isinstance(n_random, int) or n_random < 1:
        raise ExportError(f"n_random must be >= 1 (random verification inputs), got {n_random}")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)  # before any work
    encoder = encoder.eval()
    provenance = _provenance(info, encoder, config_sha256)
    checks = _Checks.of(encoder, provenance, verify_images, n_random, seed, (atol, rtol))
    if quantize != "none":
        checks.add_int8(encoder, provenance, quantize, calibration_images, min_cosine)
    variants, fold_diff, compact_info = _variants(encoder, wanted, checks)
    with _staging(out_dir) as tmp:
        files = _write_files(tmp, chosen, variants, provenance, checks)
        result = {
            "export_format": EXPORT_FORMAT,
            "provenance": provenance,
            "rung_sha256": rung_sha256,
            "onnx_opset": ONNX_OPSET,
            **_sizes(encoder),
            "tolerance": {
                **checks.tol,
                "criterion": "max|out - ref| <= atol + rtol * max|ref| over all inputs",
                "max_rel_diff": "max|out - ref| / max|ref|",
            },
            "verification_inputs": {
                "random": n_random,
                "images": 0 if verify_images is None else int(len(verify_images)),
                "reference": "PyTorch encoder (eval, BN not folded), float32",
            },
            "bn_fold_max_abs_diff": fold_diff.max_abs_diff,
            "forms": [form.name for form in wanted],
            "compact": compact_info,
            "quantization": checks.quantization(calibration_images),
            "files": files,
        }
        (tmp / "export.json").write_text(json.dumps(result, indent=2) + "\n")
        _move_into_place(tmp, out_dir, [*files, "export.json"])
    return result


@dataclass
class _Checks:
    """What every file of one export is checked against, computed once."""

    inputs: np.ndarray
    """The verification inputs: ``n_random`` standard-normal ones, then the images."""
    n_random: int
    on_images: bool
    """Whether there are verification images (int8 files are then checked on them)."""
    reference: np.ndarray
    """The PyTorch encoder's features on ``inputs``."""
    tol: dict[str, float]
    """The common tolerance (the PyTorch forms; export.json's ``tolerance``)."""
    given: tuple[float | None, float | None]
    """The caller's ``atol`` / ``rtol``, which replace every format's own."""
    example: torch.Tensor
    """The ``1 x C x H x W`` input every module is traced and compacted at."""
    quantize: str = "none"
    calibration: np.ndarray | None = None
    """int8: the normalized calibration inputs."""
    real: np.ndarray | None = None
    """int8: the real inputs int8 files are checked on (the images, else the calibration)."""
    real_reference: np.ndarray | None = None
    min_cosine: float = DEFAULT_MIN_COSINE

    @classmethod
    def of(cls, encoder, provenance, verify_images, n_random, seed, given) -> _Checks:
        """The verification inputs and the PyTorch reference on them."""
        inputs = _verification_inputs(provenance, verify_images, n_random, seed)
        try:
            reference = torch_features(encoder, inputs)
        except RuntimeError as e:
            raise ExportError(
                f"encoder {provenance['arch']!r} does not run on inputs of the rung's "
                f"input_shape {provenance['input_shape']} (C x H x W): {e}"
            ) from e
        atol, rtol = given
        tol = {
            "atol": DEFAULT_ATOL if atol is None else atol,
            "rtol": DEFAULT_RTOL if rtol is None else rtol,
        }
        example = torch.from_numpy(inputs[:1].copy())
        on_images = verify_images is not None
        return cls(inputs, n_random, on_images, reference, tol, given, example)

    def add_int8(self, encoder, provenance, quantize, calibration_images, min_cosine) -> None:
        """The calibration inputs, the real inputs and the float features on them."""
        self.quantize, self.min_cosine = quantize, min_cosine
        self.calibration = _real_inputs(provenance, calibration_images, "calibration")
        if self.on_images:
            self.real = self.inputs[self.n_random :]
            self.real_reference = self.reference[self.n_random :]
        else:
            self.real = self.calibration
            self.real_reference = torch_features(encoder, self.real)

    def file_tol(self, fmt) -> dict[str, float]:
        """The tolerance of a float file of ``fmt``: its own unless the caller gave one."""
        atol, rtol = self.given
        return {
            "atol": fmt.atol if atol is None else atol,
            "rtol": fmt.rtol if rtol is None else rtol,
        }

    def quantization(self, calibration_images) -> dict[str, Any] | None:
        """export.json's ``quantization`` (None for a float export)."""
        if self.quantize == "none":
            return None
        return {
            "dtype": self.quantize,
            "scheme": (
                "weights int8 per output channel, symmetric (zero point 0); activations "
                "int8 per tensor, affine, calibrated; biases int32"
            ),
            "calibration_images": int(len(self.calibration)),
            "calibration_sha256": calibration_digest(calibration_images),
            "checked_on": "verification images" if self.on_images else "calibration images",
            "checked_images": int(len(self.real)),
            "min_cosine": float(self.min_cosine),
        }


def _variants(encoder, wanted, checks: _Checks):
    """``(form, module, graph)`` per wanted form (``graph`` numbers the distinct graphs: each
    is converted once per format), the BN fold's diff and export.json's ``compact``."""
    folded = fold_batchnorm(encoder)
    fold_diff = compare_arrays(
        torch_features(folded, checks.inputs),
        checks.reference,
        **checks.tol,
        what="BN-folded encoder",
    )
    compact_info = None
    small = folded
    if any(form.compact for form in wanted):
        small, report = compact_encoder(folded, checks.example)
        compact_diff = compare_arrays(
            torch_features(small, checks.inputs),
            checks.reference,
            **checks.tol,
            what="compact encoder (PyTorch)",
        )
        compact_info = {**report.as_dict(), "torch_max_abs_diff": compact_diff.max_abs_diff}
    # the compact forms share the compact module; a compaction that removed nothing is the
    # folded graph
    graph = {False: 0, True: 0 if small is folded or same_graph(small, folded) else 1}
    variants = [(form, small if form.compact else folded, graph[form.compact]) for form in wanted]
    return variants, fold_diff, compact_info


@contextlib.contextmanager
def _staging(out_dir: Path):
    """A temporary folder next to ``out_dir`` (module docstring), removed on any error."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out_dir)
    tmp = Path(
        tempfile.mkdtemp(
            prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".tmp", dir=out_dir.parent
        )
    )
    os.chmod(tmp, default_mode(directory=True))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_files(tmp: Path, chosen, variants, provenance, checks: _Checks) -> dict[str, Any]:
    """Every file into ``tmp``, verified; export.json's ``files``. One conversion and one int8
    quantization per format and graph (``made``), each form stores them its way."""
    files: dict[str, Any] = {}
    made: dict[tuple[str, str, int], Any] = {}
    for form, module, graph in variants:
        metadata = {**provenance, "form": form.name}
        for fmt in chosen:
            key = (fmt.name, graph)
            if ("float", *key) not in made:
                made["float", *key] = fmt.convert(module, checks.example)
            data, sparse = fmt.store(made["float", *key], sparse=form.sparse, metadata=metadata)
            path = tmp / fmt.filename(form.stem)
            path.write_bytes(data)
            files[path.name] = _check_float(fmt, module, path, checks, sparse)
            if checks.quantize == "none":
                continue
            if ("int8", *key) not in made:
                made["int8", *key] = fmt.quantize(
                    module, data, checks.calibration, input_shape=provenance["input_shape"]
                )
            qdense, io = made["int8", *key]
            qdata, qsparse = fmt.store_quantized(
                qdense, sparse=form.sparse, metadata={**metadata, "dtype": checks.quantize}
            )
            qpath = tmp / fmt.filename(form.stem, checks.quantize)
            qpath.write_bytes(qdata)
            files[qpath.name] = _check_int8(fmt, module, qpath, checks, qsparse, io)
    return files


def _check_float(fmt, module, path: Path, checks: _Checks, sparse) -> dict[str, Any]:
    """export.json's entry of float file ``path``, verified against the PyTorch reference in
    the format's runtime (and, for TFLite, in TensorFlow Lite Micro)."""
    file_tol = checks.file_tol(fmt)
    diff = compare_arrays(
        fmt.run(path, checks.inputs),
        checks.reference,
        **file_tol,
        what=f"{fmt.label} model {path.name}",
    )
    entry = _file_entry(
        path,
        diff,
        runtime=fmt.runtime_version(),
        sparse_tensors=sparse.tensors,
        sparse_nnz=sparse.nnz,
        params=_param_count(module),
        # a format with its own tolerance records it; the common one is export.json's
        **({} if file_tol == checks.tol else {"tolerance": file_tol}),
    )
    if fmt.name == "tflite":
        _add_tflm(entry, path, checks.inputs, file_tol)
    return entry


def _sizes(encoder: nn.Module) -> dict[str, Any]:
    """export.json's weight counts and the information floor."""
    stats = weight_stats(encoder)
    return {
        "nnz": stats.nnz,
        "n_weights": stats.n_weights,
        "dense_bytes": stats.dense_bytes,
        "index_bytes": INDEX_BYTES,
        "floor_bytes": stats.nnz * (4 + INDEX_BYTES),
        "floor_convention": (
            f"non-zero conv/linear weights x (4 bytes float32 + {INDEX_BYTES}-byte index); "
            "dense_bytes = 4 x all encoder parameters (BN included)"
        ),
    }


_IMPORTED_AT = time.time()


def _process_start() -> float:
    """When this process started (Linux ``/proc``; elsewhere, when this module was imported)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        stat = Path("/proc/stat").read_text().split()
        boot = float(stat[stat.index("btime") + 1])
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user
        return True
    return True


def remove_stale_tmp(out_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary directories an interrupted export into ``out_dir`` left next to it.

    A ``.OUT.<pid>.<random>.tmp`` directory is stale when it was last modified before this
    process started and process ``pid`` no longer exists; one without a pid (written by entropi
    before the pid was part of the name) when it was last modified before this process started.
    Anything else (a file, a link, a live or recent export) is left alone. Returns what was
    removed.
    """
    out_dir = Path(out_dir)
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(?:(\d+)\.)?[A-Za-z0-9_]{{8}}\.tmp")
    started = _process_start()
    removed = []
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            if entry.is_symlink() or not entry.is_dir() or entry.stat().st_mtime >= started:
                continue
        except OSError:
            continue
        pid = m.group(1)
        if pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _check_int8(fmt, module, path: Path, checks: _Checks, sparse, io) -> dict:
    """export.json's entry of int8 file ``path``: its feature error on the real inputs against
    the float encoder, the zeros check, its I/O quantization (and, for TFLite, TensorFlow Lite
    Micro's agreement); refused below ``min_cosine``."""
    error = int8_feature_error(checks.real_reference, fmt.run_quantized(path, checks.real))
    min_cosine = checks.min_cosine
    if not error["mean_cos"] >= min_cosine:
        raise VerificationError(
            f"int8 {fmt.label} model {path.name}: mean cosine of its features to the float "
            f"encoder's on {error['n']} real images is {error['mean_cos']:.4f} < min_cosine "
            f"{min_cosine} (max relative error {error['max_rel']:.3g}); calibrate on more "
            "images (--calibration-images), accept it (--min-cosine), leave the format out "
            "(--format), or keep the float export"
        )
    zeros = pruned_zeros_kept(module, path)
    if not zeros["all_kept"]:
        raise VerificationError(
            f"int8 {fmt.label} model {path.name}: {zeros['zeros_lost']} pruned weights are not "
            "int8 zeros"
        )
    data = path.read_bytes()
    entry = {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "dtype": "int8",
        "runtime": fmt.runtime_version(),
        "sparse_tensors": sparse.tensors,
        "sparse_nnz": sparse.nnz,
        "quantization": io,
        "feature_error": error,
        "zeros": {k: v for k, v in zeros.items() if k != "layers"},
        "params": _param_count(module),
    }
    if fmt.name == "tflite":
        _add_tflm(entry, path, checks.real, None)
    return entry


def _real_inputs(provenance: dict, images: np.ndarray, what: str) -> np.ndarray:
    """uint8 images -> the encoder's normalized float inputs, their size checked."""
    shape = provenance["input_shape"]
    real = images_to_inputs(images, provenance["normalization"])
    if list(real.shape[1:]) != list(shape):
        raise ExportError(
            f"{what} images are {real.shape[2]}x{real.shape[3]}, the encoder expects "
            f"input shape {shape} (C x H x W)"
        )
    return real


def _verification_inputs(provenance: dict, images: np.ndarray | None, n: int, seed: int):
    shape = provenance["input_shape"]
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    if images is None:
        return x
    return np.concatenate([x, _real_inputs(provenance, images, "verification")], axis=0)


def _move_into_place(tmp: Path, out_dir: Path, names: list[str]) -> None:
    """Rename the verified files into ``out_dir`` (the whole folder when it does not exist)."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if not os.path.lexists(out_dir):
        os.replace(tmp, out_dir)
        return
    _check_out_dir(out_dir)
    for name in names:  # export.json last: it describes the files already in place
        os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _check_out_dir(out_dir: Path) -> None:
    """An existing ``out_dir`` must be a real folder (files are never renamed through a link)
    that an export wrote: empty, with an ``export.json``, or holding only an export's file
    names (an export killed before its ``export.json`` was moved into place). Another folder
    is refused: its files of an export's names would be replaced."""
    if not os.path.lexists(out_dir):
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ExportError(
            f"output path {out_dir} exists and is not a directory (a file, or a symbolic link "
            "entropi did not create); remove it, or choose another path"
        )
    if (out_dir / "export.json").is_file():
        return
    ours = {"export.json", LOCK_NAME} | {
        fmt.filename(form.stem, dtype)
        for fmt in FORMATS.values()
        for form in ENCODER_FORMS.values()
        for dtype in ("float32", "int8")
    }
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)
    if others:
        raise ExportError(
            f"output path {out_dir} is a folder an export did not write (it holds "
            f"{', '.join(repr(n) for n in others[:5])}{', ...' if len(others) > 5 else ''} and "
            "no export.json); choose an empty or new folder"
        )


def _param_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))
