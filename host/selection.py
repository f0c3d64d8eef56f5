"""Rung selection: a registry of criteria and the rule that picks a rung from their scores.

A criterion scores the frozen target-training features of one rung (numpy arrays, no torch) and
names the score field that selection maximizes. ``stage_score`` stores every rung's scores in
``scores/rung_NNN.json``; :func:`select_rung` picks the rung with the highest value of the
configured criterion (``[select] criterion``), ties going to the denser rung.

To add a criterion, write ``score(features, labels, cfg) -> dict`` and register it::

    register(Criterion("my_score", "what it measures", my_score, key="my_score"))

``cfg`` is the whole :class:`~entropi.host.config.RunConfig` so a criterion can read its own
section.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .entropy import state_entropy

__all__ = ["CRITERIA", "Criterion", "register", "saturated_rungs", "score_rung", "select_rung"]

TIE_TOLERANCE = 1e-9
"""Scores within this of the maximum tie; the tie goes to the denser rung."""


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    score: Callable[[np.ndarray, np.ndarray, Any], dict[str, float]]
    """``(features n x d, labels n, RunConfig) -> {field: value}`` merged into the rung's scores."""
    key: str
    """The field of the scores that selection maximizes."""

    @property
    def rule(self) -> str:
        return f"argmax {self.key}; ties (within {TIE_TOLERANCE:g}) go to the denser rung"


CRITERIA: dict[str, Criterion] = {}
"""Selection criteria by name."""


def register(criterion: Criterion) -> Criterion:
    if criterion.name in CRITERIA:
        raise ValueError(f"selection criterion {criterion.name!r} is already registered")
    CRITERIA[criterion.name] = criterion
    return criterion


def _entropy(features: np.ndarray, labels: np.ndarray, cfg) -> dict[str, float]:
    ent = state_entropy(features, cfg.entropy.levels)
    return {
        "entropy": ent.entropy,
        "per_unit_bound": ent.per_unit_bound,
        "distinct_states": ent.distinct_states,
        "n": ent.n,
        "delta": ent.delta,
    }


ENTROPY = register(
    Criterion(
        "entropy",
        "the paper's quantized-state entropy of the target features (eqs. 2-6, nats)",
        _entropy,
        key="entropy",
    )
)


def score_rung(features: np.ndarray, labels: np.ndarray, cfg) -> dict[str, float]:
    """The entropy (always: the paper's rung table shows it) and the configured criterion."""
    scores = ENTROPY.score(features, labels, cfg)
    criterion = CRITERIA[cfg.select.criterion]
    if criterion is not ENTROPY:
        scores |= criterion.score(features, labels, cfg)
    return scores


def select_rung(rungs: list[dict], criterion: str = "entropy") -> int:
    """Index of the rung with the highest ``criterion`` score; ties go to the denser rung.

    For the entropy: when it saturates at log n (every target sample in its own quantized
    state, common for wide features and small target sets) several rungs tie at the maximum and
    the estimator cannot rank them; the first rung to reach the plateau (the densest) is kept,
    and :func:`saturated_rungs` lists the tied rungs so the user can see it happened.
    """
    key = CRITERIA[criterion].key
    top = max(r[key] for r in rungs)
    return next(i for i, r in enumerate(rungs) if r[key] >= top - TIE_TOLERANCE)


def saturated_rungs(rungs: list[dict]) -> list[int]:
    """Rungs whose entropy reached log n (n = target training samples): unrankable."""
    n = max(r.get("n", 0) for r in rungs)
    if not n:
        return []
    return [r["index"] for r in rungs if r["entropy"] >= math.log(n) - TIE_TOLERANCE]
