"""Run a bundle's encoder over images in batches and store the features.

``extract_features`` writes a float32 ``.npy`` feature store (opened back as a read-only
memmap: the "flash" the trainer streams batches from), rows in a seeded random order, atomically
(temp file + rename). Labels are returned in the same order.

Memory: images are read sequentially in chunks (:mod:`.data` streams an ``.npz`` or an image
folder, converting them to the encoder's size with the bundle's preprocessing); the features
of each chunk are written to their shuffled rows of the store with ``os.pwrite`` (no memory
mapping: with large page-cache folios, a mapped file's random writes would map megabytes per
row), so the process never holds the image array or the feature store.
:func:`stream_features` yields features chunk by chunk instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from entropi.common.files import ensure_real_dir

from .data import ArrayImages, FolderImages, NpzImages, as_image_source, check_image_size
from .errors import DataError

__all__ = ["extract_features", "preprocess", "stream_features"]


def preprocess(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, ``(pixel / 255 - mean) / std`` per channel."""
    x = images.astype(np.float32) * np.float32(1 / 255)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def stream_features(
    encoder: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray | ArrayImages | NpzImages | FolderImages,
    *,
    input_shape: tuple[int, int, int],
    mean,
    std,
    batch_size: int = 64,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, features of images[start:start + batch_size])`` in image order.

    Raises :class:`DataError` on a size mismatch or NaN/inf features.
    """
    src = as_image_source(images)
    check_image_size(src, input_shape)
    for start, chunk in src.chunks(batch_size):
        f = encoder(preprocess(chunk, mean, std))
        if not np.isfinite(f).all():
            raise DataError(
                f"the encoder produced NaN/inf features for images {start}..."
                f"{start + len(chunk) - 1}; check the bundle's normalization"
            )
        yield start, f


def _write_store(path: Path, chunks, dest: np.ndarray | None, n: int, dim: int) -> None:
    """Write a new ``.npy`` (n, dim) float32 whose row ``dest[i]`` (or ``i``) is feature row
    ``i``. ``path`` is created (``O_EXCL | O_NOFOLLOW``: never a file or link already there)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
    row = dim * 4
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with open(os.open(path, flags, 0o666), "wb", buffering=0) as f:
        np.lib.format.write_array_header_1_0(f, {**header, "shape": (n, dim)})
        offset = f.tell()
        f.truncate(offset + n * row)
        fd = f.fileno()
        for start, feats in chunks:
            data = memoryview(np.ascontiguousarray(feats, "<f4")).cast("B")
            if dest is None:
                os.pwrite(fd, data, offset + start * row)
                continue
            for j, r in enumerate(dest[start : start + len(feats)].tolist()):
                os.pwrite(fd, data[j * row : (j + 1) * row], offset + r * row)


def extract_features(
    encoder: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray | ArrayImages | NpzImages | FolderImages,
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
    src = as_image_source(images)
    check_image_size(src, input_shape)
    n = len(src)
    order = np.random.default_rng(seed).permutation(n) if seed is not None else None
    dest = np.argsort(order) if order is not None else None  # image i -> row dest[i]
    chunks = stream_features(
        encoder, src, input_shape=input_shape, mean=mean, std=std, batch_size=batch_size
    )
    if out_path is None:
        feats = np.empty((n, feature_dim), np.float32)
        for start, f in chunks:
            rows = slice(start, start + len(f)) if dest is None else dest[start : start + len(f)]
            feats[rows] = f
    else:
        out_path = Path(out_path)
        ensure_real_dir(out_path.parent)  # never a planted link to elsewhere
        tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")  # one per writer
        tmp.unlink(missing_ok=True)  # a killed writer's of the same pid (or a link: not followed)
        try:
            _write_store(tmp, chunks, dest, n, feature_dim)
            os.replace(tmp, out_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        feats = np.load(out_path, mmap_mode="r")
    if labels is not None and order is not None:
        labels = labels[order]
    return feats, labels
