"""Run a bundle's encoder over images in batches and store the features.

``extract_features`` writes a float32 ``.npy`` feature store (opened back as a read-only
memmap: the "flash" the trainer streams batches from), rows in a seeded random order, atomically
(temp file + rename). Labels are returned in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .data import check_image_size
from .errors import DataError

__all__ = ["extract_features", "preprocess"]


def preprocess(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, ``(pixel / 255 - mean) / std`` per channel."""
    x = images.astype(np.float32) * np.float32(1 / 255)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def extract_features(
    encoder: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    input_shape: tuple[int, int, int],
    mean,
    std,
    feature_dim: int,
    batch_size: int = 64,
    out_path: str | os.PathLike | None = None,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features (N, feature_dim) of ``images`` and labels in the same (shuffled) order.

    With ``seed`` the rows are written in the order of a seeded permutation. With ``out_path``
    the features go to an ``.npy`` file (written atomically) and come back as a read-only memmap;
    otherwise an in-memory array. Raises :class:`DataError` on a size mismatch or NaN/inf.
    """
    check_image_size(images, input_shape)
    n = len(images)
    order = np.random.default_rng(seed).permutation(n) if seed is not None else np.arange(n)
    if out_path is None:
        feats = np.empty((n, feature_dim), np.float32)
        tmp = None
    else:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        feats = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, feature_dim))
    try:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            f = encoder(preprocess(images[rows], mean, std))
            if not np.isfinite(f).all():
                raise DataError(
                    f"the encoder produced NaN/inf features for images {rows[:5].tolist()}...; "
                    "check the bundle's normalization"
                )
            feats[start : start + len(rows)] = f
        if tmp is not None:
            feats.flush()
            del feats
            os.replace(tmp, out_path)
            feats = np.load(out_path, mmap_mode="r")
    except BaseException:
        if tmp is not None and tmp.exists():
            tmp.unlink()
        raise
    return feats, (labels[order] if labels is not None else None)
