"""The encoder for a microcontroller: a dense NHWC TFLite file that TensorFlow Lite Micro runs,
verified in TFLM, with what a firmware author needs to link it.

:func:`mcu_export` writes, atomically, into one folder:

- ``encoder_mcu[_int8].tflite``: BN folded, weights stored dense (TFLM has no ``DENSIFY``),
  input ``1 x H x W x C`` (NHWC: the layout a camera buffer has and TFLM's kernels use, so the
  file starts at its first convolution, with no ``TRANSPOSE``); ``dtype="int8"`` is the
  full-integer file (int8 input and output with their scale and zero point);
- ``model_data.c`` / ``model_data.h``: the file as a 16-byte-aligned ``const`` C array with its
  length, the measured arena as ``ENTROPI_ARENA_BYTES``, the input / output shapes and
  quantization, and ``ENTROPI_ADD_OPS(resolver)``: the ``MicroMutableOpResolver`` calls for the
  ops the graph uses (``ENTROPI_OP_COUNT`` of them);
- ``mcu.json``: the same figures, and how the file was verified.

Verification, before anything is written: the file runs in TFLM's own interpreter
(:mod:`.tflm`) on ``verify_inputs``; TFLM's outputs are compared with LiteRT's on the same file
(float: ``max|diff| <= atol + rtol * max|ref|``, the float tolerance of :mod:`.verify`; int8: the
share of output values within one step is recorded and must be at least
:data:`MIN_WITHIN_ONE_STEP`) and with the PyTorch encoder's (float: the same tolerance; int8:
mean feature cosine at least ``min_cosine``).

The arena is measured on the host, where TFLM's persistent structures hold 64-bit pointers: the
"tail" part is an upper bound of a 32-bit MCU's, the planned activations ("head") are the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from entropi.common.dtypes import DEFAULT_MIN_COSINE
from entropi.common.files import atomic_dir

from ._errors import ExportError, VerificationError
from .compact import compact_encoder
from .fold import fold_batchnorm
from .quantize import _folded, int8_feature_error, tflite_int8_bytes, tflite_io_quantization
from .tflite_export import convert_tflite, quiet_converter
from .tflm import MIN_WITHIN_ONE_STEP, resolver_ops, tflm_arena_bytes, tflm_vs_litert
from .verify import DEFAULT_ATOL, DEFAULT_RTOL, compare_arrays

__all__ = [
    "not_an_mcu_folder",
    "MCU_DTYPES",
    "MIN_WITHIN_ONE_STEP",
    "NHWCInput",
    "c_sources",
    "mcu_export",
    "mcu_module",
    "mcu_tflite_bytes",
]

MCU_DTYPES = ("int8", "float32")


class NHWCInput(nn.Module):
    """``encoder`` taking ``N x H x W x C`` input: a permute that the converter folds into the
    first convolution's layout, so the TFLite file has no TRANSPOSE."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.permute(0, 3, 1, 2))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))


def mcu_module(encoder: nn.Module, input_shape: tuple[int, int, int]) -> nn.Module:
    """What the MCU form is made of: ``encoder`` BN-folded with its dead channels removed
    (a channel rung has none; a magnitude rung loses the channels it emptied)."""
    return compact_encoder(fold_batchnorm(encoder), torch.zeros(1, *input_shape))[0]


def mcu_tflite_bytes(
    encoder: nn.Module,
    dtype: str,
    input_shape: tuple[int, int, int],
    calibration: np.ndarray | None = None,
) -> bytes:
    """The MCU form's TFLite file of ``encoder`` (BN folded here when it has any; a compacted
    module works as it is): NHWC input, dense weights, float32 or full-integer int8 calibrated
    on ``calibration`` (normalized float32 ``N x C x H x W``)."""
    c, h, w = input_shape
    if dtype == "int8":
        if calibration is None or len(calibration) == 0:
            raise ExportError("an int8 MCU export needs calibration images")
        data, _ = tflite_int8_bytes(NHWCInput(encoder), _nhwc(calibration), input_shape=(h, w, c))
        return data
    with quiet_converter():
        return convert_tflite(NHWCInput(_folded(encoder)), torch.zeros(1, h, w, c))


def _verify(
    data: bytes, encoder: nn.Module, dtype: str, inputs: np.ndarray, min_cosine: float, arena: int
) -> dict[str, Any]:
    """TFLM against LiteRT and against PyTorch on NCHW float ``inputs`` (module docstring)."""
    x = _nhwc(inputs)
    vs_litert, ours = tflm_vs_litert(data, x, arena_size=arena)  # one TFLM pass for both
    with torch.no_grad():
        ref = encoder.eval()(torch.from_numpy(np.asarray(inputs, dtype=np.float32))).numpy()
    ref = ref.reshape(len(ref), -1)
    if dtype == "int8":
        if vs_litert["within_one_step"] < MIN_WITHIN_ONE_STEP:
            raise VerificationError(
                f"TFLM's int8 outputs agree with LiteRT's within one step on only "
                f"{vs_litert['within_one_step']:.1%} of values (need {MIN_WITHIN_ONE_STEP:.0%})"
            )
        err = int8_feature_error(ref, ours)
        if err["mean_cos"] < min_cosine:
            raise VerificationError(
                f"TFLM's int8 features reach a mean cosine of {err['mean_cos']:.4f} to "
                f"PyTorch's, below min_cosine {min_cosine}"
            )
        vs_torch = {
            "mean_cos": err["mean_cos"],
            "min_cos": err["min_cos"],
            "max_rel_diff": err["max_rel"],
        }
    else:
        scale = float(np.abs(ref).max(initial=0))
        if vs_litert["max_abs_diff"] > DEFAULT_ATOL + DEFAULT_RTOL * scale:
            raise VerificationError(
                f"TFLM's outputs differ from LiteRT's by {vs_litert['max_abs_diff']:.3g} "
                f"(tolerance {DEFAULT_ATOL} + {DEFAULT_RTOL} x {scale:.3g})"
            )
        d = compare_arrays(ours, ref, atol=DEFAULT_ATOL, rtol=DEFAULT_RTOL, what="TFLM output")
        vs_torch = {"max_abs_diff": d.max_abs_diff, "max_rel_diff": d.max_rel_diff}
    return {"n_inputs": int(len(x)), "tflm_vs_litert": vs_litert, "tflm_vs_torch": vs_torch}


def c_sources(
    data: bytes, *, arena_bytes: int, ops: list[str], io: tuple[dict, dict], prefix: str = "ENTROPI"
) -> dict[str, str]:
    """``{"model_data.h": ..., "model_data.c": ...}`` for the TFLite file ``data`` (module
    docstring). C99; the array is 16-byte aligned (TFLM reads the flatbuffer in place)."""
    sym = prefix.lower()
    inp, out = io
    lines = [
        "/* Generated by entropi: the encoder for TensorFlow Lite Micro. Do not edit. */",
        f"#ifndef {prefix}_MODEL_DATA_H",
        f"#define {prefix}_MODEL_DATA_H",
        "",
        f"#define {prefix}_MODEL_LEN {len(data)}u",
        "/* TFLM arena measured by its recording allocator on the host (64-bit pointers): */",
        "/* an upper bound for a 32-bit MCU's persistent structures, exact for activations. */",
        f"#define {prefix}_ARENA_BYTES {int(arena_bytes)}u",
    ]
    for name, d in (("INPUT", inp), ("OUTPUT", out)):
        dims = ", ".join(str(s) for s in d["shape"])
        nbytes = int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize
        lines += [
            f"/* {name.lower()}: {d['dtype']} [{dims}] */",
            f"#define {prefix}_{name}_BYTES {nbytes}u",
            f"#define {prefix}_{name}_SCALE {d['scale']!r}f",
            f"#define {prefix}_{name}_ZERO_POINT {d['zero_point']}",
        ]
    calls = " ".join(f"(resolver).{op}();" for op in ops)
    lines += [
        f"#define {prefix}_OP_COUNT {len(ops)}",
        f"/* tflite::MicroMutableOpResolver<{prefix}_OP_COUNT> resolver; */",
        f"/* {prefix}_ADD_OPS(resolver); */",
        f"#define {prefix}_ADD_OPS(resolver) do {{ {calls} }} while (0)",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        f"extern const unsigned char {sym}_model_data[{prefix}_MODEL_LEN];",
        f"extern const unsigned int {sym}_model_len;",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        f"#endif /* {prefix}_MODEL_DATA_H */",
        "",
    ]
    header = "\n".join(lines)
    hexed = [", ".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)]
    source = "\n".join(
        [
            "/* Generated by entropi: the encoder for TensorFlow Lite Micro. Do not edit. */",
            '#include "model_data.h"',
            "",
            "#if defined(__GNUC__) || defined(__clang__)",
            f"#define {prefix}_ALIGNED __attribute__((aligned(16)))",
            "#else",
            f"#define {prefix}_ALIGNED",
            "#endif",
            "",
            f"const unsigned char {sym}_model_data[{prefix}_MODEL_LEN] {prefix}_ALIGNED = {{",
            *(f"  {row}," for row in hexed),
            "};",
            f"const unsigned int {sym}_model_len = {prefix}_MODEL_LEN;",
            "",
        ]
    )
    return {"model_data.h": header, "model_data.c": source}


_OUR_FILES = {
    "mcu.json",
    "model_data.c",
    "model_data.h",
    "encoder_mcu.tflite",
    "encoder_mcu_int8.tflite",
}


def not_an_mcu_folder(path: Path) -> str | None:
    """Why ``path`` is not a folder :func:`mcu_export` wrote (None when it is: its mcu.json and
    only the files it writes)."""
    names = {p.name for p in path.iterdir()}
    if "mcu.json" not in names:
        return "it has no mcu.json"
    extra = sorted(names - _OUR_FILES)
    return f"it also holds {extra[:3]}" if extra else None


def mcu_export(
    encoder: nn.Module,
    out_dir: str | os.PathLike,
    *,
    input_shape: tuple[int, int, int],
    verify_inputs: np.ndarray,
    dtype: str = "int8",
    calibration: np.ndarray | None = None,
    min_cosine: float = DEFAULT_MIN_COSINE,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the MCU form of ``encoder`` into ``out_dir`` (module docstring); return mcu.json.

    ``input_shape``: ``C x H x W``; ``verify_inputs`` / ``calibration``: normalized float32
    ``N x C x H x W`` images (``calibration`` only for int8). Raises :class:`ExportError`
    (:class:`~entropi.export.tflm.TFLMError` for what TFLM refuses) with nothing written."""
    if dtype not in MCU_DTYPES:
        raise ExportError(f"MCU dtype must be one of {', '.join(MCU_DTYPES)}, got {dtype!r}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ExportError(f"input_shape must be C x H x W, got {list(input_shape)}")
    x = np.asarray(verify_inputs, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != shape or len(x) == 0:
        raise ExportError(f"verify_inputs must be N x {' x '.join(map(str, shape))}, got {x.shape}")
    data = mcu_tflite_bytes(encoder, dtype, shape, calibration)
    ops = resolver_ops(data)
    arena = tflm_arena_bytes(data)
    verification = _verify(data, encoder, dtype, x, min_cosine, arena)
    io = tflite_io_quantization(data)
    name = "encoder_mcu" + ("_int8" if dtype == "int8" else "") + ".tflite"
    info = {
        "file": name,
        "dtype": dtype,
        "file_bytes": len(data),
        "tflm_arena_bytes": arena,
        "layout": "NHWC",
        "input": io[0],
        "output": io[1],
        "resolver_ops": ops,
        "verification": verification,
    }
    with atomic_dir(out_dir, overwrite=overwrite, foreign=not_an_mcu_folder) as tmp:
        tmp = Path(tmp)
        (tmp / name).write_bytes(data)
        for fname, text in c_sources(data, arena_bytes=arena, ops=ops, io=io).items():
            (tmp / fname).write_text(text)
        (tmp / "mcu.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
