"""The ladder's kept fractions, torch-free: a config checks its ladder at load with these."""

from __future__ import annotations

import math

__all__ = ["geometric_alphas", "planned_rungs"]


def geometric_alphas(keep_per_round: float, alpha_min: float) -> list[float]:
    """Kept fractions ``[1, k, k**2, ...]`` down to the last one that is ``>= alpha_min``.

    >>> geometric_alphas(0.5, 0.2)
    [1.0, 0.5, 0.25]
    """
    if not 0.0 < keep_per_round < 1.0:
        raise ValueError(f"keep_per_round must be in (0, 1), got {keep_per_round!r}")
    if not 0.0 < alpha_min <= 1.0:
        raise ValueError(f"alpha_min must be in (0, 1], got {alpha_min!r}")
    return [keep_per_round**r for r in range(planned_rungs(keep_per_round, alpha_min))]


def planned_rungs(keep_per_round: float, alpha_min: float) -> int:
    """Rungs of the ladder ``[1, k, k**2, ...]`` down to the last fraction >= ``alpha_min``
    (:func:`geometric_alphas` builds it)."""
    return math.floor(math.log(alpha_min) / math.log(keep_per_round) + 1e-9) + 1
