"""Quantized-state entropy of encoder outputs (ENTROPI eqs. 2-6) and the per-unit bound (eq. 8).

Given features ``Y`` (n samples x N units) and ``M`` levels:

    Delta = (max Y - min Y) / M                       (over the whole dataset, all units)
    q_i   = floor(y_i / Delta + 1/2)                   (integer state of each unit)
    H(D)  = -sum_kappa p(kappa) log p(kappa)           (p over the n state vectors q)
    bound = sum_i H_i                                  (H_i: entropy of unit i's states alone)

Entropies are in nats. ``0 <= H <= min(log n, N log M')`` and ``H <= bound``. If all features are
equal, Delta is 0 and every sample has the same state: H = bound = 0.

The estimator needs numpy only. Rows of integer states are hashed to 64-bit keys with two
independent multiply-add hashes and counted with one sort, so 50,000 x 512 takes about a second on
one core; the hash keys are then checked for collisions against the exact rows (a colliding pair
of distinct rows would be merged), and the exact ``np.unique(axis=0)`` is used if any is found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from entropi.common.errors import EntropiError

__all__ = [
    "DEFAULT_LEVELS",
    "LEVELS_RANGE",
    "EntropyResult",
    "FeatureError",
    "LevelsError",
    "check_levels",
    "quantize",
    "state_entropy",
]

DEFAULT_LEVELS = 4
"""Quantization levels M; the paper uses 4 (the config's and the CLI's default)."""
LEVELS_RANGE = (2, 1024)
"""Valid M, inclusive: M = 1 would put every unit in at most two states around one bin edge."""


class FeatureError(EntropiError, ValueError):
    """Features are not a finite 2-D array."""


class LevelsError(EntropiError, ValueError):
    """The number of quantization levels is not an integer in :data:`LEVELS_RANGE`."""


def check_levels(levels) -> int:
    """``levels`` as an int, or :class:`LevelsError` naming the valid range."""
    lo, hi = LEVELS_RANGE
    if (
        isinstance(levels, bool)
        or not isinstance(levels, int | np.integer)
        or not lo <= levels <= hi
    ):
        raise LevelsError(f"levels must be an integer in [{lo}, {hi}], got {levels!r}")
    return int(levels)


@dataclass(frozen=True)
class EntropyResult:
    entropy: float
    """H(D) of the joint quantized state, nats."""
    per_unit_bound: float
    """sum_i H_i over units, nats (eq. 8); always >= entropy."""
    n: int
    dim: int
    levels: int
    delta: float
    """quantization step (max - min) / levels."""
    distinct_states: int

    def as_dict(self) -> dict:
        return {
            "entropy": self.entropy,
            "per_unit_bound": self.per_unit_bound,
            "n": self.n,
            "dim": self.dim,
            "levels": self.levels,
            "delta": self.delta,
            "distinct_states": self.distinct_states,
            "max_entropy": float(np.log(self.n)) if self.n else 0.0,
            "units": "nats",
        }


def _check(features: np.ndarray, levels: int) -> np.ndarray:
    check_levels(levels)
    y = np.asarray(features)
    if y.ndim != 2:
        raise FeatureError(
            f"features must be 2-D (samples x units), got shape {y.shape} (rank {y.ndim})"
        )
    if y.shape[0] == 0 or y.shape[1] == 0:
        raise FeatureError(f"features must be non-empty, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or np.iscomplexobj(y):
        raise FeatureError(f"features must be real numbers, got dtype {y.dtype}")
    if not np.isfinite(y).all():
        bad = int(np.size(y) - np.count_nonzero(np.isfinite(y)))
        raise FeatureError(f"features contain {bad} NaN/inf values; fix the encoder or the data")
    return y


def quantize(features: np.ndarray, levels: int = DEFAULT_LEVELS) -> tuple[np.ndarray, float]:
    """Integer states ``floor(y / Delta + 1/2)`` (int64) and Delta for ``features``."""
    y = _check(features, levels)
    y = y.astype(np.float64, copy=False)
    lo, hi = float(y.min()), float(y.max())
    delta = (hi - lo) / levels
    if not np.isfinite(delta):  # hi - lo overflows (values near +-1.8e308): divide first
        delta = hi / levels - lo / levels
    if delta == 0.0:
        return np.zeros(y.shape, dtype=np.int64), 0.0
    return np.floor(y / delta + 0.5).astype(np.int64), delta


def _entropy_from_counts(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(max(0.0, -(p * np.log(p)).sum()))


def _row_keys(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of every row of ``q`` (wrapping uint64 arithmetic)."""
    qs = (q - q.min()).astype(np.uint64)  # small non-negative ints
    rng = np.random.default_rng(0x5EED)
    a = rng.integers(1, 2**63, size=q.shape[1], dtype=np.uint64) | np.uint64(1)
    b = rng.integers(1, 2**63, size=q.shape[1], dtype=np.uint64) | np.uint64(1)
    # matrix-vector products in uint64 wrap modulo 2**64: a linear hash over Z/2^64
    with np.errstate(over="ignore"):
        k1 = qs @ a
        k2 = (qs ^ (qs >> np.uint64(1))) @ b + qs.sum(axis=1, dtype=np.uint64)
    return k1, k2


def _state_counts(q: np.ndarray) -> np.ndarray:
    """Counts of each distinct row of ``q``."""
    n = q.shape[0]
    k1, k2 = _row_keys(q)
    order = np.lexsort((k2, k1))
    k1s, k2s = k1[order], k2[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = (k1s[1:] != k1s[:-1]) | (k2s[1:] != k2s[:-1])
    # collision check: rows that share a key must be identical
    same = ~new[1:]
    if same.any():
        qs = q[order]
        if not np.array_equal(qs[1:][same], qs[:-1][same]):
            _, counts = np.unique(q, axis=0, return_counts=True)
            return counts
    starts = np.flatnonzero(new)
    return np.diff(np.append(starts, n))


def state_entropy(features: np.ndarray, levels: int = DEFAULT_LEVELS) -> EntropyResult:
    """Entropy of the quantized joint state of ``features`` (n x N) and the per-unit bound."""
    q, delta = quantize(features, levels)
    n, dim = q.shape
    state_counts = _state_counts(q)
    # clamp float round-off so that the documented bounds hold exactly
    h = min(_entropy_from_counts(state_counts, n), float(np.log(n)))
    # per-unit: entropy of each column's states, vectorized via offsets into one bincount
    qmin = q.min(axis=0)
    span = int((q.max(axis=0) - qmin).max()) + 1
    flat = (q - qmin) + np.arange(dim, dtype=np.int64) * span
    counts = np.bincount(flat.ravel(), minlength=dim * span).reshape(dim, span)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / n
        logp = np.where(counts > 0, np.log(np.where(counts > 0, p, 1.0)), 0.0)
    bound = max(float(-(p * logp).sum()), h)  # H <= sum_i H_i holds exactly; absorb round-off
    return EntropyResult(
        entropy=h,
        per_unit_bound=bound,
        n=n,
        dim=dim,
        levels=int(levels),
        delta=delta,
        distinct_states=len(state_counts),
    )
