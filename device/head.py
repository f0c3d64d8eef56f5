"""The trained head on disk: ``head.npz`` (weights, bias, class_names, encoder_sha256), no
pickle.

:func:`load_head` treats the file as untrusted: every member is read through :mod:`._npz` (headers
checked before allocating, CRC-checked), and the arrays must make a usable head: ``weights`` a
finite 2-D float array (D, C), ``bias`` a finite float array (C,), ``class_names`` (optional) C
distinct strings, ``encoder_sha256`` (optional) the sha256 hex digests of the encoder files of
the bundle the head was trained with. Anything else is a :class:`.errors.DataError` naming the
file and the member. Heads written before names and digests were recorded load with None there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._npz import load_npz, save_npz
from .errors import DataError, DeviceError
from .softmax import cross_entropy, logits, predict_proba

__all__ = ["HEAD_FILE", "Head", "load_head", "save_head"]

HEAD_FILE = "head.npz"

_MAX_HEAD_BYTES = 1 << 30
"""Most bytes any member of a head file may claim (a head is small: D x C floats)."""


@dataclass
class Head:
    """A softmax-regression head: ``weights`` (D, C), ``bias`` (C,), the names of its C classes
    and the sha256 of the encoder files it was trained on (None: not recorded)."""

    weights: np.ndarray
    bias: np.ndarray
    class_names: list[str] | None = None
    encoder_sha256: list[str] | None = None
    """Digests of every encoder file of the training bundle (its formats of one encoder)."""

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return predict_proba(logits(features, self.weights, self.bias))

    def evaluate(self, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Accuracy and mean cross-entropy on ``features`` / ``labels``."""
        z = logits(np.asarray(features, np.float64), self.weights, self.bias)
        return {
            "accuracy": float(np.mean(z.argmax(axis=1) == labels)),
            "loss": cross_entropy(z, labels),
            "samples": len(labels),
        }


def save_head(headdir: str | os.PathLike, head: Head) -> Path:
    """Write ``headdir/head.npz`` atomically."""
    arrays = {"weights": head.weights, "bias": head.bias}
    if head.class_names is not None:
        arrays["class_names"] = np.asarray(head.class_names, dtype=str)
    if head.encoder_sha256 is not None:
        arrays["encoder_sha256"] = np.asarray(head.encoder_sha256, dtype=str)
    return save_npz(Path(headdir) / HEAD_FILE, arrays)


def load_head(headdir: str | os.PathLike) -> Head:
    """Read ``headdir/head.npz`` (or a path to the file itself)."""
    path = Path(headdir)
    if path.is_dir():
        path = path / HEAD_FILE
    if not os.path.lexists(path):
        raise DeviceError(f"no head at {path}; train one with `entropi-device train --out DIR`")
    if not path.is_file():
        raise DeviceError(f"head {path} is not a regular file (a FIFO, device or dangling link)")
    data = load_npz(path, max_bytes=_MAX_HEAD_BYTES)
    kind = "is not a head written by `entropi-device train`"
    missing = [k for k in ("weights", "bias") if k not in data]
    if missing:
        raise DataError(f"{path} {kind}: it has no {' or '.join(missing)} member")
    weights, bias = data["weights"], data["bias"]
    for name, arr, rank in (("weights", weights, 2), ("bias", bias, 1)):
        if arr.ndim != rank or arr.dtype.kind != "f":
            want = "(feature_dim, classes)" if rank == 2 else "(classes,)"
            raise DataError(
                f"{path} {kind}: {name} must be a float array {want}, got {arr.dtype} {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: {name} holds NaN or inf; retrain the head")
    c = weights.shape[1]
    if c < 1 or weights.shape[0] < 1 or bias.shape != (c,):
        raise DataError(
            f"{path} {kind}: weights {weights.shape} and bias {bias.shape} do not make a head "
            "(weights (D, C) with D, C >= 1, bias (C,))"
        )
    names = digests = None
    if "class_names" in data:
        arr = data["class_names"]
        if arr.ndim != 1 or arr.dtype.kind != "U" or len(arr) != c:
            raise DataError(
                f"{path} {kind}: class_names must be {c} strings (one per class), got "
                f"{arr.dtype} {arr.shape}"
            )
        names = [str(s) for s in arr.tolist()]
        if len(set(names)) != c:
            raise DataError(f"{path} {kind}: class_names holds a name twice")
    if "encoder_sha256" in data:
        arr = data["encoder_sha256"]
        digests = [str(s) for s in arr.tolist()] if arr.ndim == 1 and arr.dtype.kind == "U" else []
        if not digests or not all(_SHA256.fullmatch(s) for s in digests):
            raise DataError(
                f"{path} {kind}: encoder_sha256 must be sha256 hex digests, got "
                f"{arr.dtype} {arr.shape}"
            )
    return Head(weights, bias, names, digests)


_SHA256 = re.compile(r"[0-9a-f]{64}")
