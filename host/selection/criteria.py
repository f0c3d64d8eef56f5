"""Selection criteria: scores of a frozen encoder's features on the target data, chosen by name.

Each criterion is a function ``fn(features, labels, opts) -> float`` over ``features`` (n samples
x d units) and, for the supervised ones, integer class ``labels`` (n,). They are registered in
:data:`CRITERIA` (name -> :class:`Criterion`) so that a rung of the pruning ladder can be picked
by any of them; :func:`compute_criteria` validates the inputs once and runs several. numpy only
(vectorized over samples; loops run over classes or unit subsets). All logs are natural (nats).

================  ======  ======  ============  =====  =====  ========================
name              labels  better  x c (c > 0)   order  relab  source
================  ======  ======  ============  =====  =====  ========================
entropy           no      higher  invariant     yes    --     ENTROPI eqs. 2-6
entropy_bound     no      higher  invariant     yes    --     ENTROPI eq. 8
subset_entropy    no      higher  invariant     yes    --     ENTROPI quantizer, subsets
von_neumann       no      higher  invariant     yes    --     paper 000, S(C_auto)
numerical_rank    yes     higher  invariant     yes    yes    paper 001, App. A
nc1               yes     lower   invariant     yes    yes    paper 001, eq. 4
cdnv              yes     lower   invariant     yes    yes    paper 001, App. A
logme             yes     higher  approx.       yes    yes    You et al., ICML 2021
knn               yes     higher  invariant     yes*   yes    LOO k-NN accuracy
h_score           yes     higher  invariant     yes    yes    Bao et al., ICIP 2019
cv_probe          yes     higher  invariant     no**   yes    k-fold ridge probe accuracy
================  ======  ======  ============  =====  =====  ========================

"x c": the score under ``features * c`` (the quantizer's Delta scales with the features, so the
three entropies are unchanged up to float round-off at a bin edge; exact for powers of two).
LogME is scale-free at its fixed point only for full-column-rank features, and the authors' 1e-5
added to m2 and res2 breaks that for large features (x 1000 moved one test set 0.21 -> 0.085).
"order": unchanged when rows and labels are permuted together (*knn: exactly when every sample
is a query, n <= ``knn_max_queries``, and no two neighbours have bit-equal similarity; **cv_probe:
the seeded folds follow the row order).
"relab": unchanged when class ids are renamed (labels are remapped to 0..K-1 by sorted value).

A criterion may also register a ``resampled`` form, ``fn(x, y, opts, idx) -> values`` over the
bootstrap index rows ``idx`` (resamples x n): the same numbers as ``fn`` on each ``x[idx[b]]``,
computed at once (``entropy`` and ``subset_entropy`` quantize each sample once per distinct
resample range and count each resample's drawn states from those keys).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from entropi.common.errors import EntropiError
from entropi.host.selection.entropy import (
    DEFAULT_LEVELS,
    FeatureError,
    _row_keys,
    check_levels,
    state_entropy,
)

__all__ = [
    "CRITERIA",
    "CRITERIA_VERSION",
    "DEFAULT_CRITERION",
    "Criterion",
    "CriterionError",
    "CriterionOptions",
    "as_criterion",
    "cdnv",
    "check_inputs",
    "compute_criteria",
    "criterion_names",
    "cv_probe",
    "entropy",
    "entropy_bound",
    "h_score",
    "knn",
    "logme",
    "nc1",
    "numerical_rank",
    "register",
    "stratified_folds",
    "subset_entropy",
    "von_neumann",
]

PINV_RTOL = 1e-10
"""Pseudo-inverses (nc1, h_score) drop eigenvalues <= PINV_RTOL x the largest (scale-free)."""
LOGME_RESAMPLE_BLOCK = 64
"""LogME's bootstrap weighs this many resamples at a time (their counts and class sums: 64 x n
and 64 x K x D floats)."""
KNN_CHUNK_BYTES = 32 * 2**20
"""Working memory of one block of k-NN similarities (float32 similarities + int64 indices).
32 MB: a block's passes (similarities, block maxima, candidates) stay closer to the caches;
on the quickstart's 10,000 target images k-NN ran 1.5x faster than with 256 MB blocks, with the
same values (the blocks split the queries, not the sums)."""


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class CriterionError(EntropiError, ValueError):
    """Features, labels, a criterion name or an option are unusable for a criterion."""


@dataclass(frozen=True)
class CriterionOptions:
    levels: int = DEFAULT_LEVELS
    """M, quantization levels of the paper's estimator (entropy, entropy_bound, subset_entropy)."""
    knn_k: int = 10
    """neighbours of the leave-one-out k-NN vote."""
    knn_max_queries: int = 5_000
    """k-NN scores at most this many seeded random queries (each against all n - 1 others). 5,000
    (10,000 before criteria version 3) halves k-NN's cost on the quickstart's 10,000 target
    images, the largest of the score stage's criteria (8.7 s -> 4.1 s over its 8 rungs, the
    same argmax rung); every target of the selection studies had at most 5,000 images."""
    subsets: int = 256
    """subset_entropy: number of random unit subsets averaged."""
    seed: int = 0
    """seed of the k-NN query sample, of the unit subsets and of cv_probe's folds."""
    cv_folds: int = 5
    """cv_probe: folds of the cross-validation (stratified; each class needs that many)."""
    cv_ridge: float = 1.0
    """cv_probe: ridge penalty on the standardized features (scikit-learn's ``alpha``)."""

    def __post_init__(self) -> None:
        try:
            check_levels(self.levels)
        except ValueError as err:
            raise CriterionError(f"CriterionOptions.levels: {err}") from None
        for field in ("knn_k", "knn_max_queries", "subsets"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise CriterionError(
                    f"CriterionOptions.{field} must be an integer >= 1, got {value!r}"
                )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int | np.integer)
            or self.seed < 0
        ):
            raise CriterionError(
                f"CriterionOptions.seed must be an integer >= 0, got {self.seed!r}"
            )
        if not _is_int(self.cv_folds) or self.cv_folds < 2:
            raise CriterionError(
                f"CriterionOptions.cv_folds must be an integer >= 2, got {self.cv_folds!r}"
            )
        ridge = self.cv_ridge
        if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge > 0:
            raise CriterionError(f"CriterionOptions.cv_ridge must be a number > 0, got {ridge!r}")
        if not np.isfinite(ridge):
            raise CriterionError(f"CriterionOptions.cv_ridge must be finite, got {ridge!r}")


_DEFAULTS = CriterionOptions()


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    """one line: what it measures and where the formula comes from."""
    fn: Callable[[np.ndarray, np.ndarray | None, CriterionOptions], float]
    higher_is_better: bool
    needs_labels: bool
    resampled: (
        Callable[[np.ndarray, np.ndarray | None, CriterionOptions, np.ndarray], np.ndarray] | None
    ) = None
    """optional: ``fn(x, y, opts, idx)`` -> the score on every bootstrap row ``x[idx[b]]`` at
    once, equal to ``fn`` on each (x, y checked by :func:`check_inputs` already)."""


CRITERIA_VERSION = 3
"""Bumped whenever a registered formula or default changes (3: knn_max_queries 5,000): stored
scores of an older version (or missing a criterion) are recomputed from the cached features by
``stage_score``."""

CRITERIA: dict[str, Criterion] = {}
"""Every registered criterion by name, in registration order."""
DEFAULT_CRITERION = "logme"
"""The criterion a rung is picked by unless told otherwise (``[select] criterion``): the rule
study's pick by its pre-stated decision rule (docs/studies.md, "Selection rule study": the lowest
mean regret, 0.10 points under argmax, of the criteria studied); ``entropy`` is the paper's
estimator, ``subset_entropy`` the label-free one for targets without labels."""


def register(criterion: Criterion) -> Criterion:
    """Add ``criterion`` to :data:`CRITERIA`; a name already taken raises ``ValueError``."""
    if criterion.name in CRITERIA:
        raise ValueError(f"criterion {criterion.name!r} is already registered")
    CRITERIA[criterion.name] = criterion
    return criterion


def as_criterion(criterion: Criterion | str) -> Criterion:
    """``criterion`` as its :class:`Criterion` (a name is looked up in :data:`CRITERIA`; an
    unknown one is a :class:`CriterionError` listing the known names)."""
    if isinstance(criterion, Criterion):
        return criterion
    try:
        return CRITERIA[criterion]
    except KeyError:
        known = ", ".join(sorted(CRITERIA))
        raise CriterionError(f"unknown criterion {criterion!r}; known: {known}") from None


def criterion_names(*, with_labels: bool = True) -> list[str]:
    """Registered names; ``with_labels=False``: only the label-free ones."""
    return [n for n, c in CRITERIA.items() if with_labels or not c.needs_labels]


# ------------------------------------------------------------------------------------ validation


def check_inputs(features, labels=None) -> tuple[np.ndarray, np.ndarray | None]:
    """``features`` as finite float64 (n x d, n >= 2) and ``labels`` as int64 remapped to 0..K-1
    (sorted original values; K >= 2), or :class:`CriterionError` saying what is wrong."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise CriterionError(
            f"features must be 2-D (samples x units), got shape {x.shape} (rank {x.ndim})"
        )
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise CriterionError(f"features must be real numbers, got dtype {x.dtype}")
    n, d = x.shape
    if n < 2 or d < 1:
        raise CriterionError(f"features need at least 2 samples and 1 unit, got shape {x.shape}")
    x = x.astype(np.float64, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise CriterionError(
            f"features contain {len(bad)} NaN/inf values (first at row {bad[0, 0]}, "
            f"unit {bad[0, 1]}); fix the encoder or the data"
        )
    if labels is None:
        return x, None
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise CriterionError(
            f"labels must be 1-D with one entry per sample ({n}), got shape {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise CriterionError(f"labels must be integers, got dtype {y.dtype}")
    classes, y = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise CriterionError(f"labels need at least 2 classes, got only {classes.tolist()}")
    return x, y.astype(np.int64).reshape(-1)


def _need_labels(name: str, labels) -> None:
    if labels is None:
        raise CriterionError(f"criterion {name!r} needs labels; none were given")


def _classes(y: np.ndarray, name: str, min_size: int = 1) -> list[np.ndarray]:
    """Sample indices of each class 0..K-1; a class smaller than ``min_size`` is an error."""
    order = np.argsort(y, kind="stable")
    counts = np.bincount(y)
    if counts.min() < min_size:
        small = np.flatnonzero(counts < min_size)
        raise CriterionError(
            f"{name} needs at least {min_size} samples per class; class index(es) "
            f"{small[:10].tolist()} (after remapping to 0..K-1) have {counts[small[:10]].tolist()}"
        )
    return np.split(order, np.cumsum(counts)[:-1])


def _class_means(x: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    return np.stack([x[g].mean(axis=0) for g in groups])


# -------------------------------------------------------------------------- label-free criteria


def entropy(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """The paper's quantized joint-state entropy H(D) at M = ``opts.levels`` (ENTROPI eqs. 2-6:
    Delta = (max - min) / M over all values, q = floor(y / Delta + 1/2), H = -sum p log p over the
    n state vectors); :func:`entropi.host.selection.entropy.state_entropy`. Saturates at log n."""
    x, _ = check_inputs(features)
    return state_entropy(x, opts.levels).entropy


def _entropy_resampled(x, labels, opts: CriterionOptions, idx: np.ndarray) -> np.ndarray:
    """:func:`entropy` of every bootstrap row ``x[idx[b]]``, exactly the direct call's numbers.

    Delta is set by a resample's drawn extremes, so the rows are quantized and hashed (the
    estimator's own row hash) once per distinct (min, max) pair among the resamples; a
    resample's state counts are a bincount of its drawn rows' state ids, numbered in the
    direct call's (k1, k2) key order, so the entropy sums the same terms in the same order.
    States below the resample's minimum belong to rows it did not draw: they are clipped to it
    (the hash subtracts the minimum state), and never counted. Should two distinct rows share
    both hash keys (the direct call then falls back to ``np.unique``), those resamples are
    computed directly."""

    n = len(x)
    m = opts.levels
    lo = x.min(axis=1)[idx].min(axis=1)
    hi = x.max(axis=1)[idx].max(axis=1)
    pairs, which = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)
    which = which.ravel()
    out = np.empty(len(idx))
    for g, (lo_g, hi_g) in enumerate(pairs):
        rows = np.flatnonzero(which == g)
        delta = (float(hi_g) - float(lo_g)) / m
        if not np.isfinite(delta):  # as quantize: hi - lo overflows
            delta = float(hi_g) / m - float(lo_g) / m
        if delta == 0.0:
            out[rows] = 0.0  # one state
            continue
        q = np.floor(x / delta + 0.5).astype(np.int64)
        q = np.maximum(q, int(np.floor(float(lo_g) / delta + 0.5)))
        k1, k2 = _row_keys(q)
        order = np.lexsort((k2, k1))
        new = np.ones(n, dtype=bool)
        new[1:] = (k1[order][1:] != k1[order][:-1]) | (k2[order][1:] != k2[order][:-1])
        if not np.array_equal(q[order][1:][~new[1:]], q[order][:-1][~new[1:]]):
            out[rows] = [entropy(x[idx[b]], None, opts) for b in rows]  # a hash collision
            continue
        ids = np.empty(n, dtype=np.int64)
        ids[order] = np.cumsum(new) - 1
        for b in rows:
            counts = np.bincount(ids[idx[b]])
            p = counts[counts > 0] / n
            out[b] = min(float(max(0.0, -(p * np.log(p)).sum())), float(np.log(n)))
    return out


def entropy_bound(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """The paper's per-unit bound sum_i H_i (ENTROPI eq. 8), H_i the entropy of unit i's states."""
    x, _ = check_inputs(features)
    return state_entropy(x, opts.levels).per_unit_bound


def _subset_size(n: int, levels: int) -> int:
    """Largest u >= 1 with (M + 1)**u <= n / 10 (a unit takes at most M + 1 states)."""
    u = 1
    while (levels + 1) ** (u + 1) * 10 <= n:
        u += 1
    return u


def subset_entropy(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """A saturation-free form of the paper's estimator: the paper's quantized joint-state entropy
    (eqs. 2-6) of random subsets of u units, averaged and rescaled by d / u to read on the scale
    of the full estimator.

    ``opts.subsets`` subsets of u distinct units are drawn with
    ``numpy.random.default_rng(opts.seed)``, u the largest integer with (M + 1)**u <= n / 10 (at
    least 1, at most d). Each subset is quantized as the paper quantizes a whole feature matrix
    (Delta_S = (max - min) / M over the subset's values, q = floor(y / Delta_S + 1/2)), so a unit
    takes at most M + 1 states, a subset at most (M + 1)**u <= n / 10 joint states, and its
    entropy is at most log(n / 10) < log n: no subset, hence no rung, can reach the log n ceiling
    where the full estimator reads the same for every rung. Delta per subset rather than over
    the whole matrix: the global Delta is set by the single largest activation (one outlier unit
    moves every quantization edge, REFERENCE.md 7), which leaves most units in one or two states;
    per subset an outlier only coarsens the subsets that hold it. Score = (d / u) x
    mean_S H(q_S). (Only for n < 10 (M + 1), where u = 1 is forced, can a subset's bound exceed
    log(n / 10).) With u = d it is exactly :func:`entropy`.
    """
    x, _ = check_inputs(features)
    n, d = x.shape
    total = 0.0
    for y, powers in _unit_subsets(x, opts):
        delta = (float(y.max()) - float(y.min())) / opts.levels
        if delta == 0.0:
            continue  # one state: entropy 0
        q = np.floor(y / delta + 0.5).astype(np.int64)
        keys = (q - q.min()) @ powers  # mixed-radix joint state of each sample, < base**u
        counts = np.bincount(keys)
        p = counts[counts > 0] / n
        total += float(-(p * np.log(p)).sum())
    return max(0.0, total / opts.subsets) * d / len(powers)


def _unit_subsets(x: np.ndarray, opts: CriterionOptions):
    """subset_entropy's ``opts.subsets`` random u-unit column blocks of ``x`` (seeded), each with
    the mixed-radix place values (M + 1)**j of its u units."""
    n, d = x.shape
    u = min(_subset_size(n, opts.levels), d)
    powers = (opts.levels + 1) ** np.arange(u, dtype=np.int64)
    rng = np.random.default_rng(opts.seed)
    for _ in range(opts.subsets):
        yield x[:, rng.choice(d, size=u, replace=False)], powers


def _subset_entropy_resampled(x, labels, opts: CriterionOptions, idx: np.ndarray) -> np.ndarray:
    """:func:`subset_entropy` of every bootstrap row ``x[idx[b]]`` at once: the same subsets,
    Delta and states as the direct call, equal to it to float round-off (the entropy sums add
    the same terms in another order; tests/test_bootstrap_fast.py holds it to 1e-12).

    A resample's Delta for a subset is set by its drawn extremes, so the samples are quantized
    once per distinct (min, max) pair among the resamples (a handful: the few top rows by
    value), not once per resample; each resample's state counts are then one bincount of the
    keys of the samples it drew (all resamples of a pair in one call). A sample the resample
    did not draw may fall outside its range: its digits are clipped to the spare value M + 1
    (keys in base M + 2, which keep the drawn states apart); it is never counted."""
    n, d = x.shape
    n_res = len(idx)
    drawn = np.zeros((n_res, n), dtype=bool)
    drawn[np.repeat(np.arange(n_res), idx.shape[1]), idx.ravel()] = True
    idx_small = idx.astype(np.int32) if n < 2**31 else idx
    totals = np.zeros(n_res)
    m = opts.levels
    u = 1
    for y, powers in _unit_subsets(x, opts):
        u = len(powers)
        wide = (m + 2) ** np.arange(u, dtype=np.int64)
        bins = int((m + 2) ** u)
        lo = -_drawn_max(-y.min(axis=1), drawn)  # each resample's extremes over the subset
        hi = _drawn_max(y.max(axis=1), drawn)
        pairs, which = np.unique(np.stack([lo, hi], axis=1), axis=0, return_inverse=True)
        which = which.ravel()
        for g, (lo_g, hi_g) in enumerate(pairs):
            delta = (float(hi_g) - float(lo_g)) / m
            if delta == 0.0:
                continue  # one state: entropy 0
            qmin = np.floor(lo_g / delta + 0.5)
            q = np.clip(np.floor(y / delta + 0.5) - qmin, 0, m + 1).astype(np.int64)
            rows = np.flatnonzero(which == g)
            kind = np.int32 if len(rows) * bins < 2**31 else np.int64  # half the memory traffic
            flat = (q @ wide).astype(kind)[idx_small[rows]]
            flat += (np.arange(len(rows), dtype=kind) * bins)[:, None]
            counts = np.bincount(flat.ravel(), minlength=len(rows) * bins)
            p = counts.reshape(len(rows), bins) / n
            with np.errstate(divide="ignore", invalid="ignore"):
                totals[rows] += -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return np.maximum(0.0, totals / opts.subsets) * d / u


def _drawn_max(values: np.ndarray, drawn: np.ndarray, top: int = 64) -> np.ndarray:
    """max of ``values`` (n,) over the drawn samples of each resample (``drawn``: resamples x
    n), looking first among the ``top`` largest values (a resample of n draws misses all of
    them with probability about e**-top)."""
    n = len(values)
    if n <= top:
        return np.where(drawn, values, -np.inf).max(axis=1)
    cand = np.argpartition(-values, top)[:top]
    cand = cand[np.argsort(-values[cand], kind="stable")]
    hit = drawn[:, cand]
    out = values[cand][hit.argmax(axis=1)]
    miss = ~hit.any(axis=1)
    if miss.any():
        out[miss] = np.where(drawn[miss], values, -np.inf).max(axis=1)
    return out


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise CriterionError(
            f"{name} normalizes every sample; {len(zero)} rows have zero norm "
            f"(first: row {zero[0]})"
        )
    return x / norms[:, None]


def von_neumann(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """von Neumann entropy S(C_auto) of paper 000 (REFERENCE.md sec. 2): h_i = z_i / ||z_i||,
    C_auto = (1/N) sum_i h_i h_i^T (trace 1), S = -sum_j l_j log l_j over eigenvalues l_j > 0.
    The eigenvalues come from the smaller of H^T H / N (d x d) and H H^T / N (N x N), which
    share their non-zero spectrum. 0 <= S <= log min(N, d). A zero row is an error."""
    x, _ = check_inputs(features)
    n, d = x.shape
    h = _unit_rows(x, "von_neumann")
    gram = (h.T @ h) if d <= n else (h @ h.T)
    lam = np.linalg.eigvalsh(gram / n)
    lam = lam[lam > 0]
    return float(max(0.0, -(lam * np.log(lam)).sum()))


# ---------------------------------------------------------------------------- label criteria


def numerical_rank(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """Mean numerical rank over classes (paper 001, App. A): (1/K) sum_k ||H_k||_F^2 / ||H_k||_2^2
    with H_k the (uncentred) features of class k; ||.||_2^2 is the largest eigenvalue of the
    smaller Gram of H_k (exact, not the paper's power method). 1 <= score <= min(n_k, d);
    smaller = more collapse. Needs 2 samples per class; an all-zero class is an error."""
    _need_labels("numerical_rank", labels)
    x, y = check_inputs(features, labels)
    ranks = []
    for k, g in enumerate(_classes(y, "numerical_rank", 2)):
        hk = x[g]
        gram = hk @ hk.T if len(g) < hk.shape[1] else hk.T @ hk
        top = float(np.linalg.eigvalsh(gram)[-1])
        if top <= 0:
            raise CriterionError(f"numerical_rank: class index {k} has all-zero features")
        ranks.append(float(np.trace(gram)) / top)
    return float(np.mean(ranks))


def _varying(x: np.ndarray, name: str) -> None:
    """Refuse features that are constant across samples (to 1e-9 of their magnitude), e.g. a
    dead rung's: class statistics of them are rounding noise (a pseudo-inverse of Sigma_B at
    1e-34 would make NC1 look perfect)."""
    spread = float(np.ptp(x, axis=0).max())
    if spread <= 1e-9 * float(np.abs(x).max()) or spread == 0.0:
        raise CriterionError(f"{name}: the features are the same for every sample (a dead rung?)")


def nc1(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """NC1 = (1/K) tr(Sigma_W pinv(Sigma_B)) (paper 001 eq. 4; REFERENCE.md sec. 3):
    Sigma_W = (1/N) sum_k sum_i (h_ki - mu_k)(h_ki - mu_k)^T, Sigma_B = (1/K) sum_k
    (mu_k - mu_G)(mu_k - mu_G)^T, mu_G the mean of all samples. pinv over the eigenvalues of
    Sigma_B above PINV_RTOL x the largest, from the SVD of the K x d centred means, so that no
    d x d matrix is formed: NC1 = sum_j (v_j^T Sigma_W v_j) / s_j^2. Lower = more collapse.
    Needs 2 samples per class."""
    _need_labels("nc1", labels)
    x, y = check_inputs(features, labels)
    _varying(x, "nc1")
    n = x.shape[0]
    groups = _classes(y, "nc1", 2)
    means = _class_means(x, groups)
    _, s, vt = np.linalg.svd(means - x.mean(axis=0), full_matrices=False)
    keep = s**2 > PINV_RTOL * s[0] ** 2 if s[0] > 0 else np.zeros(len(s), bool)
    if not keep.any():
        raise CriterionError("nc1: all class means are equal, Sigma_B is zero")
    v = vt[keep].T  # d x r
    within = np.zeros(v.shape[1])
    for k, g in enumerate(groups):
        within += (((x[g] - means[k]) @ v) ** 2).sum(axis=0)
    return float((within / n / s[keep] ** 2).sum())


def cdnv(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """Class-distance normalized variance (paper 001, App. A), averaged over pairs i < j:
    (Var_i + Var_j) / (2 ||mu_i - mu_j||^2), Var_k = mean_i ||h_ki - mu_k||^2. Lower = classes
    tighter relative to their separation. Needs 2 samples per class and distinct class means."""
    _need_labels("cdnv", labels)
    x, y = check_inputs(features, labels)
    _varying(x, "cdnv")
    groups = _classes(y, "cdnv", 2)
    means = _class_means(x, groups)
    var = np.array([((x[g] - means[k]) ** 2).sum(axis=1).mean() for k, g in enumerate(groups)])
    total, pairs = 0.0, 0
    for i in range(len(groups) - 1):
        dist2 = ((means[i + 1 :] - means[i]) ** 2).sum(axis=1)
        if (dist2 == 0).any():
            j = i + 1 + int(np.flatnonzero(dist2 == 0)[0])
            raise CriterionError(f"cdnv: class indices {i} and {j} have identical means")
        total += float(((var[i] + var[i + 1 :]) / (2 * dist2)).sum())
        pairs += len(dist2)
    return total / pairs


def logme(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """LogME (You et al., ICML 2021), the fixed-point form of the authors' ``LogME.py``
    (thuml/LogME, ``_fit_fixed_point``; You et al., arXiv 2110.10545).

    Per class k a Bayesian linear model y_k = f w + noise, y_k the one-hot column, prior
    w ~ N(0, alpha^-1 I), noise N(0, beta^-1); the log evidence is maximised over alpha, beta by
    the fixed point (t = alpha / beta, sigma_i the squared singular values of F, x = U^T y_k):
    gamma = sum sigma/(sigma + t), m2 = sum sigma x^2/(sigma + t)^2,
    res2 = sum x^2/(1 + sigma/t)^2 + (||y_k||^2 - ||x||^2), alpha = gamma/(m2 + 1e-5),
    beta = (N - gamma)/(res2 + 1e-5); at most 11 iterations, stopping (as the authors do) once t
    changes by <= 1e-3 relative. evidence = D/2 log alpha + N/2 log beta
    - 1/2 sum log(alpha + beta sigma) - beta/2 res2 - alpha/2 m2 - N/2 log 2 pi, the log-det over
    the non-zero sigma. Rank-deficient F (dead units of a pruned encoder): a null direction adds
    1/2 log alpha to the first term and -1/2 log alpha to the full log-det, so it cancels; the
    authors' code gets this by keeping the numerically-zero directions (its absolute cut s >
    1e-10 lets them through), so here D counts only the directions it keeps: D - (min(N, D) -
    rank). A plain rank cut with D unchanged would reward dead units (measured on the quickstart
    ladder: the score then rose with sparsity where the authors' falls). For N < D the authors'
    thin SVD drops the D - N null directions, so their score carries (D - N)/2 log alpha more
    than the Bayesian evidence; kept, for fidelity to the published score. Matches the authors'
    code to round-off in every regime (tests/test_criteria.py, fixture with dead units).
    Score = mean_k evidence_k / N.

    One decomposition for all classes: for N > D the eigendecomposition of F^T F (D x D), with
    U^T y_k = V^T (F^T y_k) / s, so only the class sums F^T y_k are needed; directions with
    sigma <= D eps sigma_max are null (the reference cuts s at an absolute 1e-10; the two agree
    on full-rank features). For N <= D the thin SVD of F. Classes iterate in parallel, each
    freezing at its own stopping step.
    """
    _need_labels("logme", labels)
    x, y = check_inputs(features, labels)
    n, d = x.shape
    k = int(y.max()) + 1
    counts = np.bincount(y, minlength=k).astype(np.float64)
    if n > d:
        class_sums = np.zeros((k, d))
        for c, g in enumerate(_classes(y, "logme")):
            class_sums[c] = x[g].sum(axis=0)
        return _logme_gram(x.T @ x, class_sums, counts, n)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    sigma = s**2
    keep = sigma > max(n, d) * np.finfo(np.float64).eps * max(float(sigma.max()), 0.0)
    sigma, u = sigma[keep], u[:, keep]
    proj = np.stack([u[y == c].sum(axis=0) for c in range(k)], axis=1)
    return _logme_evidence(sigma, proj, counts, n, d)


def _logme_gram(gram: np.ndarray, class_sums: np.ndarray, counts: np.ndarray, n: int) -> float:
    """:func:`logme` for N > D from F^T F (D x D), the class sums F^T y_k (K x D) and the class
    sizes n_k: the eigendecomposition of F^T F gives sigma and U^T y_k = V^T (F^T y_k) / s."""
    d = len(gram)
    sigma, v = np.linalg.eigh(gram)
    keep = sigma > d * np.finfo(np.float64).eps * max(float(sigma[-1]), 0.0)
    sigma, v = sigma[keep], v[:, keep]
    proj = (v.T @ class_sums.T) / np.sqrt(sigma)[:, None]  # r x K, = U^T Y
    return _logme_evidence(sigma, proj, counts, n, d)


def _logme_evidence(sigma: np.ndarray, proj: np.ndarray, counts, n: int, d: int) -> float:
    """LogME's fixed point and mean evidence per sample from the non-zero squared singular
    values ``sigma`` (r) of F, ``proj`` = U^T Y (r x K) and the class sizes (K)."""
    k = len(counts)
    # the authors' code keeps min(n, d) directions, numerically-zero ones included (which then
    # cancel): its first term counts d - (min(n, d) - rank) directions
    if not len(sigma):
        raise CriterionError("logme: the features are all zero (rank 0)")
    dims = d - (min(n, d) - len(sigma))
    sig = sigma[:, None]
    x2 = proj**2
    res_x2 = counts - x2.sum(axis=0)  # ||y_k||^2 = n_k for a one-hot column
    alpha, beta = np.ones(k), np.ones(k)
    m2, res2 = np.zeros(k), np.zeros(k)
    active = np.ones(k, dtype=bool)
    for _ in range(11):
        t = alpha / beta
        gamma = (sig / (sig + t)).sum(axis=0)
        new_m2 = (sig * x2 / (t + sig) ** 2).sum(axis=0)
        new_res2 = (x2 / (1 + sig / t) ** 2).sum(axis=0) + res_x2
        new_alpha = gamma / (new_m2 + 1e-5)
        new_beta = (n - gamma) / (new_res2 + 1e-5)
        alpha = np.where(active, new_alpha, alpha)
        beta = np.where(active, new_beta, beta)
        m2 = np.where(active, new_m2, m2)
        res2 = np.where(active, new_res2, res2)
        active &= np.abs(new_alpha / new_beta - t) / t > 1e-3
        if not active.any():
            break
    evidence = (
        dims / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * np.log(alpha + beta * sig).sum(axis=0)
        - beta / 2 * res2
        - alpha / 2 * m2
        - n / 2 * np.log(2 * np.pi)
    )
    return float(np.mean(evidence / n))


def _logme_resampled(x, labels, opts: CriterionOptions, idx: np.ndarray) -> np.ndarray:
    """:func:`logme` of every bootstrap row ``x[idx[b]]``, equal to the direct call to float
    round-off (tests/test_bootstrap_fast.py). A resample that draws sample i w_i times has
    F^T F = sum_i w_i f_i f_i^T, the symmetric product of the drawn rows scaled by sqrt(w_i)
    (numpy's symmetric product does half a general one's work), and class sums
    sum_i w_i f_i over the class: one small matrix product per class for all resamples at once
    (resamples x class size x D), so the resampled copy of F (n x D) is never made. A class the
    resample did not draw is left out, as the direct call's relabelling leaves it out; NaN
    where that call raises (fewer than 2 classes drawn, all-zero features). N <= D: the direct
    call per row."""
    n, d = x.shape
    if n <= d:
        return np.array([_logme_or_nan(x[rows], labels[rows], opts) for rows in idx])
    order = np.argsort(labels, kind="stable")
    xs, ys = x[order], labels[order]
    where = np.empty(n, dtype=np.int64)
    where[order] = np.arange(n)  # sample i sits at row where[i] of the class-sorted copy
    bounds = np.r_[np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]]), n]
    out = np.empty(len(idx))
    for start in range(0, len(idx), LOGME_RESAMPLE_BLOCK):  # bounded memory at any resamples
        block = idx[start : start + LOGME_RESAMPLE_BLOCK]
        weights = np.stack([np.bincount(where[rows], minlength=n) for rows in block])
        weights = weights.astype(np.float64)
        class_sums = np.stack(  # resamples x K x D
            [weights[:, lo:hi] @ xs[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)],
            axis=1,
        )
        counts = np.add.reduceat(weights, bounds[:-1], axis=1)  # resamples x K
        for b, w in enumerate(weights):
            out[start + b] = _logme_weighted(xs, w, class_sums[b], counts[b], n)
    return out


def _logme_weighted(xs, w, class_sums, counts, n: int) -> float:
    """LogME of the resample that draws row i of ``xs`` ``w[i]`` times (NaN where the direct
    call raises)."""
    drawn_classes = counts > 0
    if drawn_classes.sum() < 2:
        return np.nan
    drawn = np.flatnonzero(w)
    rooted = xs[drawn] * np.sqrt(w[drawn])[:, None]
    try:
        return _logme_gram(rooted.T @ rooted, class_sums[drawn_classes], counts[drawn_classes], n)
    except CriterionError:
        return np.nan


def _logme_or_nan(x: np.ndarray, y: np.ndarray, opts: CriterionOptions) -> float:
    try:
        return logme(x, y, opts)
    except CriterionError:
        return np.nan


def _topk(sims: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row, most similar first; equal
    similarities in index order. Exact: a cheap pre-filter keeps every entry >= the k-th largest
    of per-block maxima (a lower bound of the k-th largest value), then sorts the survivors."""
    rows, m = sims.shape
    block = 64
    if m >= 4 * block * k:
        mb = m - m % block
        bmax = sims[:, :mb].reshape(rows, -1, block).max(axis=2)
        if mb < m:
            bmax = np.concatenate([bmax, sims[:, mb:].max(axis=1, keepdims=True)], axis=1)
        floor = np.partition(bmax, -k, axis=1)[:, -k]
        r, c = np.nonzero(sims >= floor[:, None])
        per_row = np.bincount(r, minlength=rows)
        width = int(per_row.max())
        if width <= 64 * k:  # else: many ties at the top; sort whole rows below
            start = np.cumsum(per_row) - per_row
            cand_idx = np.full((rows, width), m, dtype=np.int64)
            cand_val = np.full((rows, width), -np.inf, dtype=sims.dtype)
            slot = np.arange(len(r)) - start[r]
            cand_idx[r, slot] = c
            cand_val[r, slot] = sims[r, c]
            order = np.lexsort((cand_idx, -cand_val), axis=1)[:, :k]
            return np.take_along_axis(cand_idx, order, axis=1)
    cols = np.broadcast_to(np.arange(m), sims.shape)
    return np.lexsort((cols, -sims), axis=1)[:, :k]


def knn(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """Leave-one-out k-NN accuracy, k = ``opts.knn_k``, cosine similarity, majority vote.

    Queries: every sample if n <= ``opts.knn_max_queries``, else that many distinct samples drawn
    with ``default_rng(opts.seed)``; each is classified by its k most similar *other* samples
    (all n - 1). Tie rule (deterministic): among neighbours with bit-equal similarity the lower
    sample index ranks first; a tie of vote counts goes to the tied class of the most similar
    neighbour (relabelling-invariant, unlike "smallest label"). Similarities are float32 matrix
    products of the unit-normalized rows in blocks of at most ``KNN_CHUNK_BYTES``; neighbours
    whose similarities differ by less than ~1e-6 may rank either way. Zero rows are an error.
    """
    _need_labels("knn", labels)
    x, y = check_inputs(features, labels)
    n = x.shape[0]
    k = opts.knn_k
    if k > n - 1:
        raise CriterionError(f"knn: knn_k = {k} needs at least {k + 1} samples, got {n}")
    h = _unit_rows(x, "knn").astype(np.float32)
    if n <= opts.knn_max_queries:
        queries = np.arange(n)
    else:
        queries = np.sort(np.random.default_rng(opts.seed).choice(n, opts.knn_max_queries, False))
    n_classes = int(y.max()) + 1
    chunk = max(1, KNN_CHUNK_BYTES // (n * 12))
    correct = 0
    for lo in range(0, len(queries), chunk):
        q = queries[lo : lo + chunk]
        sims = h[q] @ h.T
        sims[np.arange(len(q)), q] = -np.inf  # leave the query itself out
        near = y[_topk(sims, k)]  # labels of the neighbours, most similar first
        votes = np.zeros((len(q), n_classes), dtype=np.int64)
        np.add.at(votes, (np.repeat(np.arange(len(q)), k), near.ravel()), 1)
        tied = votes == votes.max(axis=1, keepdims=True)
        first = np.argmax(np.take_along_axis(tied, near, axis=1), axis=1)
        pred = near[np.arange(len(q)), first]
        correct += int((pred == y[q]).sum())
    return correct / len(queries)


def h_score(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """H-score (Bao et al., ICIP 2019): tr(pinv(cov(f)) cov(E[f | y])), cov(E[f|y]) =
    sum_k (n_k / N)(mu_k - mu)(mu_k - mu)^T. No ridge: the pseudo-inverse drops eigenvalues of
    cov(f) <= PINV_RTOL x the largest (dead units make cov(f) exactly singular), which keeps the
    score scale-free. Computed as sum_j (v_j^T cov(E[f|y]) v_j) / lambda_j over the eigenpairs
    of cov(f). 0 <= score <= min(K - 1, rank)."""
    _need_labels("h_score", labels)
    x, y = check_inputs(features, labels)
    _varying(x, "h_score")
    n, d = x.shape
    mu = x.mean(axis=0)
    cov = np.zeros((d, d))
    step = max(1, 2**24 // d)  # centre in blocks: no second n x d array
    for lo in range(0, n, step):
        xc = x[lo : lo + step] - mu
        cov += xc.T @ xc
    lam, v = np.linalg.eigh(cov / n)
    keep = lam > PINV_RTOL * lam[-1] if lam[-1] > 0 else np.zeros(d, bool)
    if not keep.any():
        raise CriterionError("h_score: all features are constant, cov(f) is zero")
    groups = _classes(y, "h_score")
    weights = np.array([len(g) for g in groups]) / n
    proj = (_class_means(x, groups) - mu) @ v[:, keep]  # K x r
    return float(((weights[:, None] * proj**2).sum(axis=0) / lam[keep]).sum())


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold id (0 .. folds - 1) of every sample: each class is shuffled (seeded) and dealt round
    the folds, starting where the previous class stopped, so fold sizes differ by at most one;
    every class needs at least ``folds`` samples, so that every fold holds every class."""
    y = np.asarray(y)
    if folds < 2:
        raise FeatureError(f"cross-validation needs at least 2 folds, got {folds}")
    classes, counts = np.unique(y, return_counts=True)
    if len(y) < folds:
        raise FeatureError(f"{folds}-fold cross-validation needs at least {folds} samples")
    if counts.min() < folds:
        c = classes[int(np.argmin(counts))]
        raise FeatureError(
            f"{folds}-fold cross-validation: class {c} has only {int(counts.min())} samples; "
            + (
                f"lower probe.folds to at most {int(counts.min())}"
                if counts.min() >= 2
                else "set probe.folds = 0 (the test split)"
            )
        )
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), dtype=np.int64)
    start = 0
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        out[idx] = (start + np.arange(len(idx))) % folds
        start = (start + len(idx)) % folds
    return out


def cv_probe(features, labels=None, opts: CriterionOptions = _DEFAULTS) -> float:
    """k-fold cross-validated linear probe accuracy on the target TRAINING features (the split
    the criteria see; never the test split): the label-using baseline every entropy must beat.

    Folds: :func:`stratified_folds` (k = ``opts.cv_folds``, ``opts.seed``). Fold f trains on the
    others: features standardized with the training folds' mean and sd (sd 0 -> 1, as
    scikit-learn's StandardScaler), then a ridge least-squares classifier (scikit-learn's
    RidgeClassifier: targets +1 for the class and -1 otherwise, unpenalized intercept, penalty
    ``opts.cv_ridge`` x ||W||^2), W = (Z^T Z + a I)^-1 Z^T (T - mean T); prediction = argmax of
    Z W + b. Score = share of all samples predicted right. A ridge probe rather than the
    ground truth's Adam-trained softmax (host/selection/probe.py): it is closed form
    (deterministic, no
    epochs or learning rate) and costs about one d x d covariance per fold, where k softmax
    probes would cost k times the probe the selection is meant to save. Each class needs at
    least k samples. The folds follow the row order (not invariant to shuffling the rows) but
    not the class names."""
    _need_labels("cv_probe", labels)
    x, y = check_inputs(features, labels)
    _classes(y, f"cv_probe ({opts.cv_folds} folds)", opts.cv_folds)
    _, first = np.unique(y, return_index=True)  # classes in order of first appearance: the
    fold = stratified_folds(np.argsort(np.argsort(first))[y], opts.cv_folds, opts.seed)  # folds
    # do not depend on how the classes are named
    n, d = x.shape
    k = int(y.max()) + 1
    targets = np.where(np.arange(k) == y[:, None], 1.0, -1.0)
    right = 0
    for f in range(opts.cv_folds):
        tr, te = fold != f, fold == f
        mu, sd = x[tr].mean(axis=0), x[tr].std(axis=0)
        sd = np.where(sd == 0, 1.0, sd)
        z = (x[tr] - mu) / sd
        zm, tm = z.mean(axis=0), targets[tr].mean(axis=0)
        zc = z - zm
        w = np.linalg.solve(zc.T @ zc + opts.cv_ridge * np.eye(d), zc.T @ (targets[tr] - tm))
        pred = ((x[te] - mu) / sd - zm) @ w + tm
        right += int((pred.argmax(axis=1) == y[te]).sum())
    return right / n


# -------------------------------------------------------------------------------- the registry

_TABLE = [
    # name, description, fn, higher_is_better, needs_labels
    (
        "entropy",
        "quantized joint-state entropy H(D), ENTROPI eqs. 2-6",
        entropy,
        True,
        False,
        _entropy_resampled,
    ),
    ("entropy_bound", "per-unit bound sum_i H_i, ENTROPI eq. 8", entropy_bound, True, False),
    (
        "subset_entropy",
        "state entropy of random u-unit subsets x d/u (ENTROPI quantizer, no log n ceiling)",
        subset_entropy,
        True,
        False,
        _subset_entropy_resampled,
    ),
    ("von_neumann", "von Neumann entropy S(C_auto), paper 000", von_neumann, True, False),
    ("numerical_rank", "mean ||H_k||_F^2 / ||H_k||_2^2, paper 001", numerical_rank, True, True),
    ("nc1", "(1/K) tr(Sigma_W pinv(Sigma_B)), paper 001 eq. 4", nc1, False, True),
    ("cdnv", "mean (Var_i + Var_j) / (2 ||mu_i - mu_j||^2), paper 001", cdnv, False, True),
    (
        "logme",
        "LogME evidence per sample, You et al. ICML 2021",
        logme,
        True,
        True,
        _logme_resampled,
    ),
    ("knn", "leave-one-out cosine k-NN accuracy", knn, True, True),
    ("h_score", "tr(pinv(cov f) cov E[f|y]), Bao et al. 2019", h_score, True, True),
    (
        "cv_probe",
        "k-fold cross-validated ridge linear probe accuracy on the target training split",
        cv_probe,
        True,
        True,
    ),
]
for _row in _TABLE:
    register(Criterion(*_row))
del _row


def compute_criteria(
    features,
    labels=None,
    names: Iterable[str] | None = None,
    opts: CriterionOptions = _DEFAULTS,
) -> dict[str, float]:
    """Scores of ``features`` (and ``labels``) by name. ``names=None``: every registered criterion,
    or only the label-free ones when ``labels`` is None. Inputs are validated once, up front, so
    a bad input fails before any criterion runs."""
    if names is None:
        names = criterion_names(with_labels=labels is not None)
    names = list(names)
    unknown = [n for n in names if n not in CRITERIA]
    if unknown:
        raise CriterionError(f"unknown criteria {unknown}; known: {sorted(CRITERIA)}")
    if labels is None:
        needy = [n for n in names if CRITERIA[n].needs_labels]
        if needy:
            raise CriterionError(f"criteria {needy} need labels; none were given")
    x, y = check_inputs(features, labels)
    return {n: float(CRITERIA[n].fn(x, y, opts)) for n in names}
