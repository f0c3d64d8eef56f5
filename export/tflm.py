"""TensorFlow Lite Micro on the host: run a TFLite file in TFLM's own interpreter, measure the
arena it needs, and check it against LiteRT.

A microcontroller runs an encoder through TensorFlow Lite Micro (TFLM), not LiteRT. TFLM has
fewer kernels (no ``DENSIFY``, so no file with sparse-stored weights loads) and plans its own
arena, so "LiteRT runs it" says little about an MCU. The ``tflite-micro`` package (extra
``tflm``) is TFLM's C++ interpreter with Python bindings; this module drives it:

- :func:`open_tflm` loads a file into an arena of a given size, turning TFLM's refusals (printed
  from C on file descriptor 2, then a bare ``RuntimeError``) into one :class:`TFLMError` that
  names the missing op or the arena shortfall;
- :func:`tflm_arena_bytes` is the arena the file needs: TFLM's recording allocator's "Arena
  allocation total" after one invoke (head: the planned activations; tail: persistent
  structures), read from ``print_allocations`` (which prints from C, so the descriptor is
  captured);
- :func:`run_tflm` runs float32 NCHW inputs through the file, quantizing int8 inputs and
  dequantizing int8 outputs with the file's own ``(scale, zero_point)``, exactly as
  :func:`~entropi.export.quantize.run_tflite_int8` does for LiteRT;
- :func:`compare_tflm_litert` runs both interpreters on the same inputs and states how close
  they are: float files by ``max|diff|`` relative to the output scale; int8 files by the share of
  output values within one quantization step (the two runtimes' kernels may round a half-step
  differently, nothing more).
- :func:`resolver_ops` is the op list a firmware registers with ``MicroMutableOpResolver``.

Why by hand: TFLM's Python binding exposes only load / set_input / invoke / get_output and a
printout; nothing in the package reports a refusal's cause or the arena as a value.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._errors import ExportError, require
from .footprint import tflite_op_names
from .quantize import _quantize, run_tflite_int8
from .verify import ModelSource, load_model_bytes, open_tflite

__all__ = [
    "DEFAULT_PROBE_ARENA",
    "MIN_WITHIN_ONE_STEP",
    "TFLMError",
    "compare_tflm_litert",
    "open_tflm",
    "resolver_ops",
    "run_tflm",
    "tflm_arena_bytes",
    "tflm_vs_litert",
]

DEFAULT_PROBE_ARENA = 64 << 20
"""Arena (bytes) a file is first loaded into to measure what it really needs: larger than any
encoder this project exports needs (the dense resnet18 float file's activations are ~2 MB)."""

MIN_WITHIN_ONE_STEP = 0.99
"""Least share of int8 outputs on which TFLM and LiteRT agree within one quantization step
(their kernels may round a half step differently; measured 1.0 on smallnet and resnet18)."""

# Builtin ops that TFLM has no kernel for although the exporters may write them.
_NO_TFLM_KERNEL = ("DENSIFY",)


class TFLMError(ExportError):
    """TFLite Micro cannot run a file as asked (an op it lacks, an arena too small)."""

    def __init__(
        self, message: str, *, missing_op: str | None = None, arena_needed: int | None = None
    ) -> None:
        super().__init__(message)
        self.missing_op = missing_op
        self.arena_needed = arena_needed


def _runtime():
    return require(
        "tflite_micro.python.tflite_micro.runtime", "tflm", "running a file in TFLite Micro"
    )


@contextlib.contextmanager
def _c_output() -> Iterator[list[str]]:
    """Send file descriptors 1 and 2 to a temp file (TFLM prints from C); the text is appended
    to the yielded list when the block ends."""
    lines: list[str] = []
    saved = []
    with tempfile.TemporaryFile() as tmp:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:  # no such descriptor (embedded interpreter): nothing to capture
                continue
            os.dup2(tmp.fileno(), fd)
        try:
            yield lines
        finally:
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def resolver_ops(model: ModelSource) -> list[str]:
    """The ``MicroMutableOpResolver`` methods a firmware registers for ``model``, in the order
    the graph first uses them (``CONV_2D`` -> ``AddConv2D``). Raises :class:`TFLMError` naming an
    op TFLM has no kernel for."""
    ops = tflite_op_names(model)
    missing = [op for op in ops if op in _NO_TFLM_KERNEL]
    if missing:
        raise TFLMError(
            f"TFLite Micro has no kernel for {missing[0]}: store the weights dense (encoder form "
            "'compact-dense') for a microcontroller",
            missing_op=missing[0],
        )
    seen: dict[str, None] = {}
    for op in ops:
        seen.setdefault(_method(op), None)
    return list(seen)


def _method(op: str) -> str:
    """``CONV_2D`` -> ``AddConv2D``, ``HARD_SWISH`` -> ``AddHardSwish``, ``RELU6`` ->
    ``AddRelu6``."""
    parts = [p if p[:1].isdigit() else p.capitalize() for p in op.split("_")]
    return "Add" + "".join(parts)


def open_tflm(model: ModelSource, *, arena_size: int = DEFAULT_PROBE_ARENA):
    """A TFLM interpreter over ``model`` (path or bytes) with an ``arena_size``-byte arena.

    TFLM reports a refusal on file descriptor 2 and raises a bare ``RuntimeError``: here it is a
    :class:`TFLMError` naming the op TFLM lacks (``missing_op``) or the bytes the arena is short
    of (``arena_needed``: what the arena must be at least)."""
    rt = _runtime()
    data = load_model_bytes(model)
    if int(arena_size) < 1:
        raise TFLMError(f"arena_size must be a positive number of bytes, got {arena_size}")
    with _c_output() as text:
        try:
            return rt.Interpreter.from_bytes(data, arena_size=int(arena_size))
        except Exception as e:  # RuntimeError from C; struct.error on a garbled flatbuffer
            error = e
    raise _refusal(text, error, int(arena_size)) from error


def _refusal(text: list[str], error: Exception, arena_size: int) -> TFLMError:
    joined = "\n".join(text)
    op = re.search(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'", joined)
    if op:
        return TFLMError(
            f"TFLite Micro has no kernel for {op.group(1)}"
            + (
                ": store the weights dense (encoder form 'compact-dense') for a microcontroller"
                if op.group(1) in _NO_TFLM_KERNEL
                else ""
            ),
            missing_op=op.group(1),
        )
    short = re.search(r"Requested: (\d+), available (\d+), missing: (\d+)", joined)
    if short:
        need = arena_size + int(short.group(3))
        return TFLMError(
            f"the TFLite Micro arena of {arena_size:,} B is too small: the planner asked for "
            f"{int(short.group(1)):,} B more with {int(short.group(2)):,} B left; at least "
            f"{need:,} B (measure it exactly with tflm_arena_bytes)",
            arena_needed=need,
        )
    detail = next((ln.strip() for ln in text if ln.strip()), "")
    return TFLMError(
        f"TFLite Micro refused the file ({type(error).__name__}: {error}"
        + (f"; {detail}" if detail else "")
        + ")"
    )


def tflm_arena_bytes(model: ModelSource, *, arena_size: int = DEFAULT_PROBE_ARENA) -> int:
    """The arena (bytes) TFLM's recording allocator used for ``model`` after one invoke on a
    zero input: the smallest ``arena_size`` this file runs in (alignment included)."""
    interp = open_tflm(model, arena_size=arena_size)
    inp = interp.get_input_details(0)
    interp.set_input(np.zeros(tuple(int(s) for s in inp["shape"]), inp["dtype"]), 0)
    interp.invoke()
    with _c_output() as text:
        interp.print_allocations()
    for line in text:
        m = re.search(r"Arena allocation total (\d+) bytes", line)
        if m:
            return int(m.group(1))
    raise TFLMError(
        "TFLite Micro's recording allocator printed no arena total: " + " | ".join(text[:3])
    )


def _quant(details: dict[str, Any]) -> tuple[float, int]:
    q = details["quantization_parameters"]
    scales, zeros = np.asarray(q["scales"]), np.asarray(q["zero_points"])
    if scales.size == 0:
        return 0.0, 0
    return float(scales[0]), int(zeros[0])


def run_tflm(
    model: ModelSource,
    inputs: np.ndarray,
    *,
    arena_size: int = DEFAULT_PROBE_ARENA,
    raw: bool = False,
) -> np.ndarray:
    """Outputs of ``model`` in TFLM on float32 ``inputs`` of the file's input shape (less the
    batch axis), one image per invoke. Integer inputs are quantized with the file's input
    ``(s, z)``; integer outputs are dequantized with ``(q - z) * s`` unless ``raw`` (then the
    integers come back as they are). Returns ``N x prod(output shape)``."""
    ys, out_quant = _tflm_raw(model, inputs, arena_size)
    return ys if raw else _dequantized(ys, out_quant)


def _tflm_raw(model: ModelSource, inputs: np.ndarray, arena_size: int):
    """TFLM's outputs as the file writes them (``N x prod(output shape)``) and its output
    ``(s, z)``."""
    interp = open_tflm(model, arena_size=arena_size)
    inp, out = interp.get_input_details(0), interp.get_output_details(0)
    shape = tuple(int(s) for s in inp["shape"])
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != len(shape) or x.shape[1:] != shape[1:]:
        raise TFLMError(f"inputs of shape {x.shape} do not match the file's input {shape}")
    in_dtype = np.dtype(inp["dtype"])
    s_in, z_in = _quant(inp)
    if in_dtype.kind in "iu" and s_in <= 0:
        raise TFLMError(f"the file's {in_dtype.name} input has no quantization scale")
    results = []
    for i in range(len(x)):
        chunk = x[i : i + 1].reshape(shape)
        if in_dtype.kind in "iu":
            chunk = _quantize(chunk, s_in, z_in, in_dtype)
        interp.set_input(np.ascontiguousarray(chunk, dtype=in_dtype), 0)
        interp.invoke()
        results.append(np.array(interp.get_output(0), copy=True).reshape(1, -1))
    return np.concatenate(results, axis=0), _quant(out)


def _dequantized(ys: np.ndarray, out_quant: tuple[float, int]) -> np.ndarray:
    """Integer outputs as float32 ``(q - z) * s``; float outputs as they are."""
    if ys.dtype.kind not in "iu":
        return ys
    s_out, z_out = out_quant
    return ((ys.astype(np.float64) - z_out) * s_out).astype(np.float32)


def compare_tflm_litert(
    model: ModelSource, inputs: np.ndarray, *, arena_size: int = DEFAULT_PROBE_ARENA
) -> dict[str, Any]:
    """TFLM's outputs against LiteRT's on the same float32 ``inputs``.

    Returns ``{"dtype", "n_inputs", "max_abs_diff", "max_rel_diff", "ref_scale"}`` (``ref_scale``
    = max|LiteRT's output|, dequantized) and, for an integer output, ``"max_step_diff"``
    (largest difference in output steps) and ``"within_one_step"`` (share of output values that
    differ by at most one step)."""
    return tflm_vs_litert(model, inputs, arena_size=arena_size)[0]


def tflm_vs_litert(
    model: ModelSource, inputs: np.ndarray, *, arena_size: int = DEFAULT_PROBE_ARENA
) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`compare_tflm_litert`'s figures and TFLM's outputs as :func:`run_tflm` returns
    them (dequantized), from one TFLM pass over ``inputs``."""
    details = open_tflite(model).get_output_details()[0]
    out_dtype = np.dtype(details["dtype"])
    ours, out_quant = _tflm_raw(model, inputs, arena_size)
    ref = run_tflite_int8(model, inputs, raw=True)  # LiteRT, the same quantization of inputs
    if ours.shape != ref.shape:
        raise TFLMError(f"TFLM gave outputs of shape {ours.shape}, LiteRT {ref.shape}")
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    worst = float(diff.max(initial=0))
    if out_dtype.kind in "iu":  # diff counts output steps
        s, z = details["quantization"]
        scale = float(np.abs((ref.astype(np.float64) - z) * s).max(initial=0))
        figures = {
            "dtype": out_dtype.name,
            "n_inputs": int(len(ours)),
            "max_step_diff": int(worst),
            "within_one_step": float((diff <= 1).mean()) if diff.size else 1.0,
            "max_abs_diff": worst * float(s),
            "max_rel_diff": worst * float(s) / scale if scale else 0.0,
            "ref_scale": scale,
        }
    else:
        scale = float(np.abs(ref).max(initial=0))
        figures = {
            "dtype": out_dtype.name,
            "n_inputs": int(len(ours)),
            "max_abs_diff": worst,
            "max_rel_diff": worst / scale if scale else 0.0,
            "ref_scale": scale,
        }
    return figures, _dequantized(ours, out_quant)
