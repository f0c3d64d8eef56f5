"""Rung selection: the rule that picks a rung from its criteria, how good each pick was, and how
sure the pick is.

The criteria themselves (numpy on features) live in :mod:`entropi.host.selection.criteria`;
``stage_score`` stores every rung's values of every criterion in ``scores/rung_NNN.json`` under
``criteria``. This module works on those stored scores (and, for the bootstrap, on the cached
features), so ``entropi select --criterion / --rule`` re-selects without recomputing features:

- :data:`RULES`, the selection-rule seam beside the criterion seam (``[select] rule``):

  - ``argmax`` (the paper's; :func:`select_rung`): argmax of the criterion (argmin where lower is
    better), ties going to the denser rung;
  - ``smallest_tied``: the smallest rung (fewest non-zero weights, :func:`rung_sizes`) whose
    criterion is not significantly below the best rung's. "Significantly" is the one-standard-
    error rule on PAIRED bootstrap differences: every resample of the target training set scores
    every rung (:func:`bootstrap_values`), so the difference d_b(r) = v_b(r) - v_b(best) of each
    rung to the best on resample b cancels what the resample does to all rungs alike;
    SE(r) = sd_b d_b(r) (:func:`paired_se`), and rung r is tied when
    v(r) >= v(best) - ``tie_se`` x SE(r) on the stored (full-data) values. Why one SE and not a
    percentile test ("r at least as good as the best on >= 5% of resamples"): it is the
    established rule for exactly this choice (the simplest model within one SE of the best:
    Breiman et al., CART, 1984; Hastie, Tibshirani & Friedman, ESL 7.10); it uses every
    resample, where a 5% tail of 100 resamples rests on 5 of them and flips with one; and it is
    the stricter of the two (about a one-sided 16% test instead of 5%), erring toward accuracy
    over size until the selection study says otherwise. ``tie_se`` widens or narrows it.

  A rule sees ``(values, sizes, se, tie_se)`` and returns a rung index; the same rule, with the
  same SE matrix, is applied to each resample's values for the selection confidence.
- :func:`criteria_summary`: per criterion the rung it would pick, its regret against the best
  probe accuracy, Kendall's tau and the weighted tau (hyperbolic weights, as the
  transferability literature reports) between the criterion and the probe accuracies
  (``scipy.stats``);
- :func:`selection_confidence` / :func:`choose_rung`: the share of bootstrap resamples of the
  target training set on which the rule picks the same rung (computed from the cached features
  of every rung; a criterion with a ``resampled`` form, e.g. ``subset_entropy``, quantizes each
  sample once and reweights its state counts per resample instead of recomputing).

Inputs at the edges (documented behaviour): one rung is picked with confidence 1; when every rung
is tied, ``smallest_tied`` picks the smallest; a rung whose criterion is undefined (NaN, None)
is never picked nor tied, unless every rung is undefined (then the dense rung 0, as argmax
does); a resample on which every rung is undefined is dropped.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .criteria import (
    CRITERIA,
    Criterion,
    CriterionError,
    CriterionOptions,
    as_criterion,
    check_inputs,
    compute_criteria,
)
from .entropy import state_entropy

__all__ = [
    "undefined_notes",
    "BOOTSTRAP_WORKERS",
    "CRITERIA",
    "DEFAULT_RULE",
    "DEFAULT_TIE_SE",
    "RULES",
    "TIE_TOLERANCE",
    "SelectionRule",
    "bootstrap_values",
    "choose_rung",
    "criteria_summary",
    "criterion_options",
    "criterion_values",
    "one_blas_thread",
    "paired_se",
    "resample_summary",
    "rung_sizes",
    "saturated_rungs",
    "score_rung",
    "select_rung",
    "selection_confidence",
    "selection_rule",
    "stored_value",
]

TIE_TOLERANCE = 1e-9
"""Scores within this of the best tie; the tie goes to the denser rung."""
DEFAULT_RULE = "smallest_tied"
"""The rule that picks unless told otherwise (``[select] rule``): the rule study's decision
(docs/studies.md); ``argmax`` is the paper's."""
DEFAULT_TIE_SE = 2.0
"""``smallest_tied``: paired-bootstrap standard errors below the best that still tie
(``[select] tie_se``): 2, the rule study's decision (1 is the classic one-SE rule)."""


BOOTSTRAP_WORKERS = 4
"""The most rungs :func:`bootstrap_values` resamples at once (one per core, each with its
features and per-resample arrays in memory: at paper scale, 50,000 x 512 features are 200 MB a
rung)."""


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS limited to one thread inside the block, as the probe runs torch
    (host/selection/probe.py).

    The criteria work on d x d or class-sized matrices (d = 256 on the quickstart), too small
    for threads to pay, and a second BLAS thread on a busy 2-core machine spins against the
    other processes: measured on the quickstart's 8 cached rungs under load, the criteria took
    80 s with numpy's default threads and 5 s with one (nc1 25 s -> 0.13 s). One thread also
    makes the criteria's rounding independent of the machine's core count. Through
    threadpoolctl when it is installed, else through the thread setter of numpy's bundled
    OpenBLAS (ctypes); with neither, the block runs unchanged."""
    try:
        # lazy: loads only when BLAS threads are limited
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    calls = _openblas_thread_calls()
    if calls is None:
        yield
        return
    get, put = calls
    before = get()
    put(1)
    try:
        yield
    finally:
        put(before)


def _openblas_thread_calls():
    """(get, set) of the thread count of the OpenBLAS numpy loaded, or None."""
    names = [
        ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
        ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
        ("openblas_get_num_threads", "openblas_set_num_threads"),
    ]
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "blas" in line.rsplit("/", 1)[-1].lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get, put in names:
            if hasattr(lib, get) and hasattr(lib, put):
                return getattr(lib, get), getattr(lib, put)
    return None


def criterion_options(cfg) -> CriterionOptions:
    """The criteria's settings from a :class:`~entropi.host.run.config.RunConfig`."""
    return CriterionOptions(levels=cfg.entropy.levels, seed=cfg.seed)


def score_rung(features: np.ndarray, labels: np.ndarray, cfg) -> dict[str, Any]:
    """Every criterion on one rung's target-training features, plus the paper's estimator's
    details (per-unit bound, distinct states, n, delta) that the rung table shows, and each
    criterion's cost in seconds (``criterion_seconds``).

    A criterion that is undefined on these features (a dead rung whose features are all zero has
    no von Neumann entropy, a class drawn once has no within-class spread) is stored as None
    with the reason in ``criteria_undefined``; such a rung never wins by that criterion. Bad
    features (NaN, wrong shape) still raise.
    """

    x, y = check_inputs(features, labels)
    ent = state_entropy(x, cfg.entropy.levels)
    opts = criterion_options(cfg)
    values: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    seconds: dict[str, float] = {}
    with one_blas_thread():
        for name in CRITERIA:
            t0 = time.perf_counter()
            try:
                values[name] = compute_criteria(x, y, [name], opts)[name]
            except CriterionError as e:
                values[name], undefined[name] = None, str(e)
            seconds[name] = time.perf_counter() - t0
    out = {
        "entropy": ent.entropy,
        "per_unit_bound": ent.per_unit_bound,
        "distinct_states": ent.distinct_states,
        "n": ent.n,
        "delta": ent.delta,
        "criteria": values,
        "criterion_seconds": seconds,
    }
    if undefined:
        out["criteria_undefined"] = undefined
    return out


def selection_rule(
    criterion: Criterion | str, rule: str = "argmax", tie_se: float = DEFAULT_TIE_SE
) -> str:
    """One line saying how the rung is picked."""
    c = as_criterion(criterion)
    way = "argmax" if c.higher_is_better else "argmin"
    if check_rule(rule) == "argmax":
        return f"{way} {c.name}; ties (within {TIE_TOLERANCE:g}) go to the denser rung"
    return (
        f"smallest rung (fewest non-zero weights) whose {c.name} is within {tie_se:g} paired-"
        f"bootstrap SE of the {way} rung's"
    )


def stored_value(rung: dict, criterion: Criterion | str) -> float | None:
    """The value of ``criterion`` stored for one rung, as computed (None: undefined there).

    Score files written before the criteria table (``entropy`` at the top level only) still
    give the entropy.
    """

    name = as_criterion(criterion).name
    table = rung.get("criteria", {})
    if name in table:
        return table[name]
    if name == "entropy" and "entropy" in rung:
        return rung["entropy"]
    raise CriterionError(
        f"rung {rung.get('index')} has no stored {name!r} score (scored by an older "
        "entropi, or the criterion needs labels); rescore with `entropi probe`"
    )


def criterion_values(rungs: Sequence[dict], criterion: Criterion | str) -> np.ndarray:
    """:func:`stored_value` of every rung, signed so that higher is better (None -> NaN)."""
    c = as_criterion(criterion)
    values = [stored_value(r, c) for r in rungs]
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    return v if c.higher_is_better else -v


def _argbest(values: np.ndarray) -> int:
    """First (densest) index within TIE_TOLERANCE of the maximum; NaN (undefined) never wins
    unless every value is undefined (then the dense rung)."""
    v = np.where(np.isfinite(values), values, -np.inf)
    if not np.isfinite(v).any():
        return 0
    return int(np.flatnonzero(v >= v.max() - TIE_TOLERANCE)[0])


def select_rung(rungs: Sequence[dict], criterion: Criterion | str) -> int:
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
    # lazy: scipy loads only for this statistic
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
    minus the pick's, as a fraction), Kendall's tau and the weighted tau against the probe, and
    its cost (``seconds`` over every rung)."""
    probes = np.array([r["probe_accuracy"] for r in rungs], dtype=np.float64)
    stored = [c for c in CRITERIA.values() if all(c.name in r.get("criteria", {}) for r in rungs)]
    out = {}
    for c in stored:
        v = criterion_values(rungs, c)
        pick = _argbest(v)
        tau, wtau = rank_agreement(v, probes)
        out[c.name] = {
            "selected_index": pick,
            "regret": float(probes.max() - probes[pick]),
            "kendall_tau": tau,
            "weighted_tau": wtau,
            "higher_is_better": c.higher_is_better,
            "needs_labels": c.needs_labels,
            "seconds": _total_seconds(rungs, c.name),
        }
    return out


def _total_seconds(rungs: Sequence[dict], name: str) -> float | None:
    """Seconds ``name`` took over every rung (score files' ``criterion_seconds``; None when a
    rung was scored by an entropi that did not time it, or holds no time there: informational,
    so a damaged entry is not an error)."""
    times = [
        t.get(name) if isinstance(t := r.get("criterion_seconds"), dict) else None for r in rungs
    ]
    return float(sum(times)) if all(seconds_or_none(t) is not None for t in times) else None


def seconds_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number of seconds >= 0, else None."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and value >= 0 else None


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """``resamples x n`` indices drawn with replacement (seeded): one row per resample, the
    same rows for every rung so that the rungs are compared on the same resampled target."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_values(
    load_features: Callable[[int], np.ndarray],
    labels: np.ndarray,
    n_rungs: int,
    criterion: Criterion | str,
    opts: CriterionOptions,
    *,
    resamples: int,
    seed: int,
) -> np.ndarray:
    """``resamples x n_rungs`` values of ``criterion``, signed so that higher is better, on the
    paired resamples of :func:`bootstrap_indices` (row b: the same resample for every rung);
    NaN where the criterion is undefined on that resample (e.g. a class drawn fewer than
    twice). ``load_features(i)``: rung ``i``'s target-training features; at most
    :data:`BOOTSTRAP_WORKERS` rungs (one per core) in memory at a time. A criterion with a
    ``resampled`` form computes all resamples of a rung at once (same numbers as the direct
    loop); the others are recomputed per resample."""
    c = as_criterion(criterion)
    idx = bootstrap_indices(len(labels), resamples, seed)
    sign = 1.0 if c.higher_is_better else -1.0
    values = np.empty((resamples, n_rungs))

    def column(r: int) -> None:
        values[:, r] = _resampled_values(c, load_features(r), labels, opts, idx) * sign

    # one rung per core, each on one BLAS thread (numpy releases the GIL in its linear algebra
    # and bincounts): the columns are independent, so the values are the same at any count
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    workers = min(n_rungs, cores, BOOTSTRAP_WORKERS)
    with one_blas_thread(), ThreadPoolExecutor(max(workers, 1)) as pool:
        list(pool.map(column, range(n_rungs)))
    return values


def _resampled_values(c, f: np.ndarray, labels: np.ndarray, opts, idx: np.ndarray) -> np.ndarray:
    """Criterion ``c`` on every bootstrap row of ``f`` (NaN where undefined)."""

    if c.resampled is not None:
        x, y = check_inputs(f, labels if c.needs_labels else None)
        return c.resampled(x, y, opts, idx)
    out = np.empty(len(idx))
    for b, rows in enumerate(idx):
        y = labels[rows] if c.needs_labels else None
        try:
            out[b] = compute_criteria(f[rows], y, [c.name], opts)[c.name]
        except CriterionError:  # e.g. a resample left a class with too few samples
            out[b] = np.nan
    return out


def paired_se(boot: np.ndarray) -> np.ndarray:
    """``R x R``: SE[i, j] = sd over resamples (ddof 1) of boot[:, i] - boot[:, j], the paired
    bootstrap standard error of the difference between rungs i and j (the diagonal is 0); over
    the resamples on which both are defined, NaN where fewer than 2 are."""
    se = np.empty((boot.shape[1],) * 2)
    for j in range(boot.shape[1]):  # one column at a time: resamples x rungs in memory
        diff = boot - boot[:, j : j + 1]
        ok = np.isfinite(diff)
        m = ok.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(ok, diff, 0.0).sum(axis=0) / m
            var = np.where(ok, (diff - mean) ** 2, 0.0).sum(axis=0) / (m - 1)
        se[:, j] = np.where(m >= 2, np.sqrt(var), np.nan)
    np.fill_diagonal(se, 0.0)
    return se


def rung_sizes(rungs: Sequence[dict]) -> np.ndarray:
    """The size ``smallest_tied`` minimizes: each rung's non-zero encoder weights (``nnz``; a
    score file without it counts as its index from the dense end, so sparser rungs are smaller).
    The hook for deployment size: pass the deployment table's flash bytes per rung as ``sizes``
    to :func:`choose_rung` instead."""
    return np.array([r.get("nnz", len(rungs) - i) for i, r in enumerate(rungs)], dtype=np.float64)


def _argmax_rule(values, sizes, se, tie_se) -> int:
    return _argbest(values)


def _smallest_tied_rule(values, sizes, se, tie_se) -> int:
    best = _argbest(values)
    if not np.isfinite(values[best]):  # every rung undefined: the dense rung, as argmax
        return best
    with np.errstate(invalid="ignore"):
        tied = values >= values[best] - tie_se * se[:, best] - TIE_TOLERANCE  # NaN: not tied
    tied[best] = True
    cand = np.flatnonzero(tied)
    return int(cand[np.argmin(sizes[cand])])  # equal sizes: the denser (first) rung


@dataclass(frozen=True)
class SelectionRule:
    name: str
    description: str
    needs_bootstrap: bool
    """the rule needs the paired bootstrap (cached features, ``[select] resamples >= 2``)."""
    pick: Callable[[np.ndarray, np.ndarray, np.ndarray | None, float], int]
    """``(values signed higher-is-better, sizes, paired SE matrix or None, tie_se) -> rung``."""


RULES: dict[str, SelectionRule] = {
    r.name: r
    for r in (
        SelectionRule("argmax", "the best criterion value (the paper's)", False, _argmax_rule),
        SelectionRule(
            "smallest_tied",
            "the fewest non-zero weights among rungs within tie_se paired-bootstrap SE of the best",
            True,
            _smallest_tied_rule,
        ),
    )
}
"""Every selection rule by name (``[select] rule``, ``entropi select --rule``)."""


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise CriterionError(f"unknown selection rule {rule!r}; known: {', '.join(RULES)}")
    return rule


def resample_summary(
    boot: np.ndarray, pick_one: Callable[[np.ndarray], int] | None = None
) -> dict[str, Any]:
    """The rung ``pick_one`` (default: the argmax) picks on each usable resample of ``boot``
    (:func:`bootstrap_values`): ``resamples``, ``resamples_dropped``, ``wins``, ``picks``."""
    pick_one = pick_one or _argbest
    usable = np.isfinite(boot).any(axis=1)  # an undefined rung loses; all undefined: dropped
    picks = np.array([pick_one(v) for v in boot[usable]], dtype=np.int64)
    wins = np.bincount(picks, minlength=boot.shape[1])
    return {
        "resamples": int(usable.sum()),
        "resamples_dropped": int((~usable).sum()),
        "wins": wins.tolist(),
        "picks": picks.tolist(),
    }


def choose_rung(
    rungs: Sequence[dict],
    criterion: Criterion | str,
    rule: str = "argmax",
    boot: np.ndarray | None = None,
    *,
    sizes: np.ndarray | None = None,
    tie_se: float = DEFAULT_TIE_SE,
) -> dict[str, Any]:
    """The rung ``rule`` picks by ``criterion`` from the stored scores, and how sure it is.

    ``boot``: :func:`bootstrap_values` of the same criterion (None: no bootstrap, then no
    confidence, and a rule that needs it raises :class:`CriterionError`). ``sizes``: what
    ``smallest_tied`` minimizes (default :func:`rung_sizes`, non-zero weights). Returns
    ``selected_index``, ``rule``, ``best_index`` (the argmax rung), ``tied`` (the rungs the rule
    counts as tied with it; argmax: the best only), ``paired_se`` (per rung, the SE of its
    difference to the best, in criterion units; None without bootstrap), ``tie_se``,
    ``confidence`` (share of usable resamples on which the rule picks ``selected_index``) and
    the resample summary (``resamples``, ``resamples_dropped``, ``wins``, ``picks``)."""

    spec = RULES[check_rule(rule)]
    values = criterion_values(rungs, criterion)
    if len(values) == 0:
        raise CriterionError("no rungs to select from")
    sizes = rung_sizes(rungs) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if sizes.shape != values.shape:
        raise CriterionError(f"{len(sizes)} sizes for {len(values)} rungs")
    if boot is not None and boot.shape[1:] != values.shape:
        raise CriterionError(f"bootstrap of {boot.shape[1]} rungs for {len(values)} rungs")
    if spec.needs_bootstrap and (boot is None or len(boot) < 2):
        raise CriterionError(
            f"selection rule {rule!r} needs the paired bootstrap: [select] resamples >= 2 and "
            "the cached features (RUNDIR/features/); rescore with `entropi probe`"
        )
    if not (math.isfinite(tie_se) and tie_se >= 0):
        raise CriterionError(f"tie_se must be a finite number >= 0, got {tie_se!r}")
    se = paired_se(boot) if boot is not None else None
    pick = spec.pick(values, sizes, se, tie_se)
    best = _argbest(values)
    if spec.needs_bootstrap:
        with np.errstate(invalid="ignore"):
            tied = values >= values[best] - tie_se * se[:, best] - TIE_TOLERANCE
        tied[best] = bool(np.isfinite(values[best]))
        tied_list = np.flatnonzero(tied).tolist()
    else:
        tied_list = [best]
    out: dict[str, Any] = {
        "rule": rule,
        "selected_index": int(pick),
        "best_index": best,
        "tied": tied_list,
        "tie_se": tie_se,
        "paired_se": None if se is None else [_finite_or_none(v) for v in se[:, best]],
        "confidence": None,
    }
    if boot is not None:
        summary = resample_summary(boot, lambda v: spec.pick(v, sizes, se, tie_se))
        out |= summary
        if summary["resamples"]:
            out["confidence"] = summary["wins"][pick] / summary["resamples"]
    return out


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def selection_confidence(*args, **kwargs) -> dict[str, Any]:
    """How often ``criterion``'s argmax picks each rung over bootstrap resamples of the target
    set: :func:`resample_summary` of :func:`bootstrap_values` (same arguments).

    Returns ``wins`` (resamples won per rung), ``picks`` (the rung picked on each resample),
    ``resamples`` (those used) and ``resamples_dropped`` (those on which the criterion was
    undefined for every rung, e.g. a class drawn fewer than twice); a rung undefined on a
    resample (dead features) loses it. A sample drawn twice is two samples to every criterion
    (for the leave-one-out k-NN its copy is its nearest neighbour, the same for every rung, so
    the comparison between rungs stays fair). Other rules: :func:`choose_rung`.
    """
    return resample_summary(bootstrap_values(*args, **kwargs))


def undefined_notes(undefined: dict[str, dict[str, Any]], criterion: str, n_rungs: int):
    """Lines for the log and the report: which criteria the pick could not use, and where."""
    for name, entry in undefined.items():
        where = "every rung" if len(entry["rungs"]) == n_rungs else f"rungs {entry['rungs']}"
        why = f" ({entry['reason']})" if entry["reason"] else ""
        if name != criterion:
            yield f"{name} is undefined on {where}{why}; its pick ignores those rungs"
        elif len(entry["rungs"]) == n_rungs:
            yield (
                f"{name}, the selection criterion, is undefined on every rung{why}: it cannot "
                "pick, so the pick is the dense rung 0; choose another criterion "
                "(`entropi select RUNDIR --criterion NAME`)"
            )
        else:
            yield f"{name}, the selection criterion, is undefined on {where}{why}: not picked"
