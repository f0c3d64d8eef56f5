"""The trained head on disk: ``head.npz`` (weights, bias, class_names), no pickle."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._npz import load_npz, save_npz
from .errors import DeviceError
from .softmax import cross_entropy, logits, predict_proba

__all__ = ["HEAD_FILE", "Head", "load_head", "save_head"]

HEAD_FILE = "head.npz"


@dataclass
class Head:
    """A softmax-regression head: ``weights`` (D, C), ``bias`` (C,)."""

    weights: np.ndarray
    bias: np.ndarray
    class_names: list[str] | None = None

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
    return save_npz(Path(headdir) / HEAD_FILE, arrays)


def load_head(headdir: str | os.PathLike) -> Head:
    """Read ``headdir/head.npz`` (or a path to the file itself)."""
    path = Path(headdir)
    if path.is_dir():
        path = path / HEAD_FILE
    if not path.is_file():
        raise DeviceError(f"no head at {path}; train one with `entropi-device train --out DIR`")
    try:
        data = load_npz(path)
        weights, bias = data["weights"], data["bias"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DeviceError(f"{path} is not a head written by `entropi-device train` ({e})") from e
    names = [str(s) for s in data["class_names"]] if "class_names" in data else None
    return Head(weights, bias, names)
