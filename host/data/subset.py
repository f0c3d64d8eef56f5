"""Seeded, stratified low-data subsets (N per class or a fraction of each class)."""

from __future__ import annotations

import numbers

import numpy as np

from .base import DataError

__all__ = ["stratified_split", "stratified_subset"]


def _per_class_count(n: int, per_class: int | None, fraction: float | None) -> int:
    if per_class is not None:
        return min(per_class, n)
    return min(n, max(1, round(fraction * n)))


def stratified_split(
    y: np.ndarray,
    *,
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices of ``y`` into ``(chosen, rest)``: disjoint, sorted, covering all rows.

    Exactly one of ``per_class`` (take ``min(per_class, count)`` of each class) or ``fraction``
    (take ``round(fraction * count)``, at least 1, of each class present) must be given. The
    draw is a seeded permutation per class (classes in increasing label order), so the same
    ``y`` and ``seed`` always give the same indices.
    """
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y must be a 1-D integer label array, got {y.dtype} {y.shape}")
    if (per_class is None) == (fraction is None):
        raise DataError(
            f"give exactly one of per_class or fraction (got per_class={per_class!r}, "
            f"fraction={fraction!r})"
        )
    if per_class is not None and (
        isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1
    ):
        raise DataError(f"per_class must be an integer >= 1, got {per_class!r}")
    if fraction is not None and (
        isinstance(fraction, bool)
        or not isinstance(fraction, numbers.Real)
        or not 0.0 < fraction <= 1.0
    ):
        raise DataError(f"fraction must be a number in (0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = _per_class_count(idx.size, per_class, fraction)
        chosen.append(rng.permutation(idx)[:k])
    take = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
    mask = np.ones(y.shape[0], dtype=bool)
    mask[take] = False
    return take.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def stratified_subset(
    y: np.ndarray,
    *,
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Sorted indices of a seeded stratified subset of ``y`` (see :func:`stratified_split`)."""
    return stratified_split(y, per_class=per_class, fraction=fraction, seed=seed)[0]
