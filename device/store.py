"""The feature store the trainer reads: validation, and batch reads from its ``.npy`` file.

The store is an (N, D) array, preferably a read-only ``np.memmap`` of an ``.npy`` file ("flash",
written shuffled by :func:`.features.extract_features`). :func:`validate_training_data` checks
it in chunks, giving back the pages it touched. :class:`StoreReader` reads rows of a whole
memory-mapped store with ``os.preadv`` straight into the batch buffer: page cache, not process
memory, so no page of the store stays mapped and the process RSS does not grow with the store.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from ._pages import mapping_of, release_pages
from .errors import DataError

__all__ = ["StoreReader", "validate_training_data"]

_CHECK_ROWS = 1024
"""Rows checked for NaN/inf per chunk."""


def validate_training_data(
    features: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> int:
    """Check shapes, finiteness (in chunks) and label range; return the number of classes."""
    if features.ndim != 2:
        raise DataError(f"features must be 2-D (samples, feature_dim), got shape {features.shape}")
    if labels.ndim != 1 or len(labels) != len(features):
        raise DataError(
            f"labels must be 1-D with one label per feature row: got labels {labels.shape} "
            f"for features {features.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {labels.dtype}")
    mapping = mapping_of(features)
    for start in range(0, len(features), _CHECK_ROWS):
        chunk = features[start : start + _CHECK_ROWS]
        finite = bool(np.isfinite(chunk).all())
        release_pages(mapping)
        if not finite:
            bad = start + int(np.argwhere(~np.isfinite(chunk))[0, 0])
            raise DataError(
                f"features contain NaN or inf (first at row {bad}); check the encoder and the "
                "input normalization"
            )
    if len(labels) == 0:
        raise DataError("no training samples")
    lo, hi = int(labels.min()), int(labels.max())
    n_cls = num_classes if num_classes is not None else hi + 1
    if lo < 0 or hi >= n_cls:
        raise DataError(
            f"labels must lie in [0, {n_cls}), got values in [{lo}, {hi}]; "
            "pass the right number of classes"
        )
    if len(np.unique(labels)) < 2:
        raise DataError(f"labels hold a single class ({lo}); softmax training needs >= 2")
    return n_cls


class StoreReader:
    """Reads rows of a memory-mapped ``.npy`` feature store into a batch buffer with
    ``os.preadv``. Make one with :meth:`open`; :meth:`close` (or garbage collection) closes the
    file."""

    def __init__(self, filename: str, offset: int, row_bytes: int, out: np.ndarray) -> None:
        self.filename, self.offset, self.row_bytes = filename, offset, row_bytes
        self.fd = os.open(filename, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)
        self.out = memoryview(out).cast("B")

    @classmethod
    def open(cls, x: np.ndarray, out: np.ndarray) -> StoreReader | None:
        """A reader of ``x`` into ``out`` (C-contiguous, rows of ``x``'s width and dtype) when
        ``x`` is a whole memory-mapped ``.npy`` store; None otherwise (gather in memory)."""
        if (
            isinstance(x, np.memmap)
            and mapping_of(x) is x.base
            and x.filename
            and x.flags.c_contiguous
            and x.dtype.isnative
        ):
            return cls(x.filename, int(x.offset), x.shape[1] * x.dtype.itemsize, out)
        return None

    def close(self) -> None:
        """Close the store file; idempotent."""
        self._closer()

    def read_rows(self, idx: np.ndarray, m: int) -> None:
        """Rows ``idx[:m]`` of the store into ``out[:m]`` (one ``preadv`` per row)."""
        fd, off, rb, mv = self.fd, self.offset, self.row_bytes, self.out
        pos = 0
        for r in idx[:m].tolist():
            if os.preadv(fd, [mv[pos : pos + rb]], off + r * rb) != rb:
                raise DataError(f"feature store {self.filename} is truncated at row {r}")
            pos += rb

    def read_range(self, r0: int, m: int) -> None:
        """Consecutive rows ``[r0, r0 + m)`` of the store into ``out[:m]`` (one read)."""
        rb = self.row_bytes
        if os.preadv(self.fd, [self.out[: m * rb]], self.offset + r0 * rb) != m * rb:
            raise DataError(f"feature store {self.filename} is truncated at row {r0}")
