"""``gemm`` from the BLAS that numpy already loaded (OpenBLAS in numpy's wheels), via ctypes.

The training step's weight update ``W <- beta * W - X^T Z`` is one BLAS call with ``alpha = -1``
and ``beta = 1 - lr * weight_decay``: no gradient buffer, and one pass over ``W`` instead of
three (write the gradient, read it, update ``W``). numpy's ``matmul`` cannot accumulate into its
output, hence this module. :func:`find_gemm` returns None when no known symbol is found (other
numpy builds); the trainer then falls back to numpy (``matmul`` into a gradient block).

Known symbols: ``scipy_cblas_{s,d}gemm64_`` (numpy's scipy-openblas64, 64-bit integers),
``cblas_{s,d}gemm64_`` (OpenBLAS ILP64) and ``scipy_cblas_{s,d}gemm`` (scipy-openblas32).

The module is public so that benchmarks time exactly the step the trainer runs.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["ROW_MAJOR", "NO_TRANS", "TRANS", "find_gemm"]

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_SYMBOLS = (("scipy_cblas_{}gemm64_", ctypes.c_int64), ("cblas_{}gemm64_", ctypes.c_int64))
_SYMBOLS += (("scipy_cblas_{}gemm", ctypes.c_int32),)
_cache: dict[str, Callable | None] = {}


def _libraries() -> list[Path]:
    """BLAS libraries numpy loaded: from /proc/self/maps (Linux), else numpy.libs."""
    found: list[Path] = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if line.count("/") else ""
                if "blas" in os.path.basename(path).lower() and Path(path) not in found:
                    found.append(Path(path))
    except OSError:
        pass
    libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
    if libs.is_dir():
        found += sorted(p for p in libs.iterdir() if "blas" in p.name.lower() and p not in found)
    return found


def find_gemm(dtype: np.dtype | type = np.float32) -> Callable | None:
    """``gemm(order, transa, transb, m, n, k, alpha, a_ptr, lda, b_ptr, ldb, beta, c_ptr, ldc)``
    (CBLAS) for float32 (sgemm) or float64 (dgemm), or None when not found.

    Set ``ENTROPI_DEVICE_NO_BLAS=1`` to force None (the numpy fallback).
    """
    kind = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(np.dtype(dtype))
    if kind is None or os.environ.get("ENTROPI_DEVICE_NO_BLAS") == "1":
        return None
    if kind in _cache:
        return _cache[kind]
    np.ones((2, 2)) @ np.ones((2, 2))  # make sure numpy's BLAS is loaded
    real = ctypes.c_float if kind == "s" else ctypes.c_double
    fn = None
    for lib_path in _libraries():
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError:
            continue
        for pattern, integer in _SYMBOLS:
            f = getattr(lib, pattern.format(kind), None)
            if f is None:
                continue
            p, i, e = ctypes.c_void_p, integer, ctypes.c_int
            f.argtypes = [e, e, e, i, i, i, real, p, i, p, i, real, p, i]
            f.restype = None
            fn = f
            break
        if fn is not None:
            break
    _cache[kind] = fn
    return fn
