"""Rung selection: the rule that picks a rung from its criteria, how good each pick was, and how
sure the pick is.

The criteria themselves (numpy on features) live in :mod:`entropi.host.criteria`;
``stage_score`` stores every rung's values of every criterion in ``scores/rung_NNN.json`` under
``criteria``. This module works on those stored scores only, so ``entropi select --criterion``
re-selects without recomputing features:

- :func:`select_rung`: argmax of the criterion (argmin where lower is better), ties going to the
  denser rung;
- :func:`criteria_summary`: per criterion the rung it would pick, its regret against the best
  probe accuracy, Kendall's tau and the weighted tau (hyperbolic weights, as the
  transferability literature reports) between the criterion and the probe accuracies
  (``scipy.stats``);
- :func:`selection_confidence`: the share of bootstrap resamples of the target training set on
  which the criterion picks the same rung (computed from the cached features of every rung).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .criteria import CRITERIA, CriterionOptions, compute_criteria

__all__ = [
    "CRITERIA",
    "TIE_TOLERANCE",
    "criteria_summary",
    "criterion_options",
    "criterion_values",
    "saturated_rungs",
    "score_rung",
    "select_rung",
    "selection_confidence",
    "selection_rule",
    "stored_value",
]

TIE_TOLERANCE = 1e-9
"""Scores within this of the best tie; the tie goes to the denser rung."""


def criterion_options(cfg) -> CriterionOptions:
    """The criteria's settings from a :class:`~entropi.host.config.RunConfig`."""
    return CriterionOptions(levels=cfg.entropy.levels, seed=cfg.seed)


def score_rung(features: np.ndarray, labels: np.ndarray, cfg) -> dict[str, Any]:
    """Every criterion on one rung's target-training features, plus the paper's estimator's
    details (per-unit bound, distinct states, n, delta) that the rung table shows.

    A criterion that is undefined on these features (a dead rung whose features are all zero has
    no von Neumann entropy, a class drawn once has no within-class spread) is stored as None
    with the reason in ``criteria_undefined``; such a rung never wins by that criterion. Bad
    features (NaN, wrong shape) still raise.
    """
    from .criteria import CriterionError, check_inputs
    from .entropy import state_entropy

    x, y = check_inputs(features, labels)
    ent = state_entropy(x, cfg.entropy.levels)
    opts = criterion_options(cfg)
    values: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    for name in CRITERIA:
        try:
            values[name] = compute_criteria(x, y, [name], opts)[name]
        except CriterionError as e:
            values[name], undefined[name] = None, str(e)
    out = {
        "entropy": ent.entropy,
        "per_unit_bound": ent.per_unit_bound,
        "distinct_states": ent.distinct_states,
        "n": ent.n,
        "delta": ent.delta,
        "criteria": values,
    }
    if undefined:
        out["criteria_undefined"] = undefined
    return out


def selection_rule(criterion: str) -> str:
    c = CRITERIA[criterion]
    way = "argmax" if c.higher_is_better else "argmin"
    return f"{way} {criterion}; ties (within {TIE_TOLERANCE:g}) go to the denser rung"


def stored_value(rung: dict, criterion: str) -> float | None:
    """The value of ``criterion`` stored for one rung, as computed (None: undefined there).

    Score files written before the criteria table (``entropy`` at the top level only) still
    give the entropy.
    """
    from .criteria import CriterionError

    if criterion not in CRITERIA:
        raise CriterionError(
            f"unknown criterion {criterion!r}; known: {', '.join(sorted(CRITERIA))}"
        )
    table = rung.get("criteria", {})
    if criterion in table:
        return table[criterion]
    if criterion == "entropy" and "entropy" in rung:
        return rung["entropy"]
    raise CriterionError(
        f"rung {rung.get('index')} has no stored {criterion!r} score (scored by an older "
        "entropi, or the criterion needs labels); rescore with `entropi probe`"
    )


def criterion_values(rungs: Sequence[dict], criterion: str) -> np.ndarray:
    """:func:`stored_value` of every rung, signed so that higher is better (None -> NaN)."""
    values = [stored_value(r, criterion) for r in rungs]
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    return v if CRITERIA[criterion].higher_is_better else -v


def _argbest(values: np.ndarray) -> int:
    """First (densest) index within TIE_TOLERANCE of the maximum; NaN (undefined) never wins
    unless every value is undefined (then the dense rung)."""
    v = np.where(np.isfinite(values), values, -np.inf)
    if not np.isfinite(v).any():
        return 0
    return int(np.flatnonzero(v >= v.max() - TIE_TOLERANCE)[0])


def select_rung(rungs: Sequence[dict], criterion: str = "entropy") -> int:
    """Index of the rung ``criterion`` rates best; ties go to the denser rung.

    For the paper's entropy: when it saturates at log n (every target sample in its own
    quantized state, common for wide features and small target sets) several rungs tie at the
    maximum and the estimator cannot rank them; the first rung to reach the plateau (the densest)
    is kept, and :func:`saturated_rungs` lists the tied rungs so the user can see it happened.
    """
    return _argbest(criterion_values(rungs, criterion))


def saturated_rungs(rungs: Sequence[dict]) -> list[int]:
    """Rungs whose paper entropy reached log n (n = target training samples): unrankable."""
    n = max(r.get("n", 0) for r in rungs)
    if not n:
        return []
    return [r["index"] for r in rungs if r["entropy"] >= math.log(n) - TIE_TOLERANCE]


def rank_agreement(values: np.ndarray, probes: np.ndarray) -> tuple[float | None, float | None]:
    """Kendall's tau-b and the weighted tau (hyperbolic weights, ``scipy.stats.weightedtau``
    with its defaults) between signed criterion values and probe accuracies; a rung on which the
    criterion is undefined ranks last; None when either side is constant."""
    from scipy import stats

    finite = np.isfinite(values)
    if not finite.any():
        return None, None
    values = np.where(finite, values, values[finite].min() - 1.0)  # undefined ranks last
    if len(values) < 2 or np.ptp(values) == 0 or np.ptp(probes) == 0:
        return None, None
    tau = stats.kendalltau(values, probes).statistic
    wtau = stats.weightedtau(values, probes).statistic
    return float(tau), float(wtau)


def criteria_summary(rungs: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Per stored criterion: the rung it picks, the regret of that pick (best probe accuracy
    minus the pick's, as a fraction), Kendall's tau and the weighted tau against the probe."""
    probes = np.array([r["probe_accuracy"] for r in rungs], dtype=np.float64)
    names = [n for n in CRITERIA if all(n in r.get("criteria", {}) for r in rungs)]
    out = {}
    for name in names:
        v = criterion_values(rungs, name)
        pick = _argbest(v)
        tau, wtau = rank_agreement(v, probes)
        out[name] = {
            "selected_index": pick,
            "regret": float(probes.max() - probes[pick]),
            "kendall_tau": tau,
            "weighted_tau": wtau,
            "higher_is_better": CRITERIA[name].higher_is_better,
            "needs_labels": CRITERIA[name].needs_labels,
        }
    return out


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples x n`` indices drawn with replacement (seeded): one row per resample, the
    same rows for every rung so that the rungs are compared on the same resampled target."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def selection_confidence(
    load_features: Callable[[int], np.ndarray],
    labels: np.ndarray,
    n_rungs: int,
    criterion: str,
    opts: CriterionOptions,
    *,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """How often ``criterion`` picks each rung over bootstrap resamples of the target set.

    ``load_features(i)`` returns rung ``i``'s target-training features (rows aligned with
    ``labels``); one rung is in memory at a time. Returns ``wins`` (resamples won per rung),
    ``picks`` (the rung picked on each resample), ``resamples`` (those used) and
    ``resamples_dropped`` (those on which the criterion was undefined for every rung, e.g. a
    class drawn fewer than twice); a rung undefined on a resample (dead features) loses it. A
    sample drawn twice is two samples to every criterion (for the leave-one-out k-NN its copy is
    its nearest neighbour, the same for every rung, so the comparison between rungs stays fair).
    """
    from .criteria import CriterionError

    idx = bootstrap_indices(len(labels), resamples, seed)
    sign = 1.0 if CRITERIA[criterion].higher_is_better else -1.0
    needs = CRITERIA[criterion].needs_labels
    values = np.empty((resamples, n_rungs))
    for r in range(n_rungs):
        f = load_features(r)
        for b in range(resamples):
            rows = idx[b]
            y = labels[rows] if needs else None
            try:
                values[b, r] = sign * compute_criteria(f[rows], y, [criterion], opts)[criterion]
            except CriterionError:  # e.g. a resample left a class with too few samples
                values[b, r] = np.nan
    usable = np.isfinite(values).any(axis=1)  # an undefined rung loses; all undefined: dropped
    picks = np.array([_argbest(v) for v in values[usable]], dtype=np.int64)
    wins = np.bincount(picks, minlength=n_rungs)
    return {
        "resamples": int(usable.sum()),
        "resamples_dropped": int((~usable).sum()),
        "wins": wins.tolist(),
        "picks": picks.tolist(),
    }
