"""Selection criteria against independent references, each with its tolerance and why.

References: the authors' LogME (recorded by ``scripts/logme_reference.py``), the other Gram's
eigendecomposition, per-sample Python loops with ``np.linalg.pinv``/``np.cov``, scikit-learn's
k-NN classifier and the paper's estimator :func:`state_entropy`. float64 references agree to
~1e-12 relative; tolerances are 1e-9 (rel) unless a comment says otherwise.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scripts_loader import load_script

from entropi.host.selection import criteria as crit
from entropi.host.selection.criteria import (
    CRITERIA,
    Criterion,
    CriterionError,
    CriterionOptions,
    compute_criteria,
    criterion_names,
)
from entropi.host.selection.entropy import state_entropy

LOGME_FIXTURE = Path(__file__).parent / "data" / "logme_reference.json"
LABEL_FREE = {"entropy", "entropy_bound", "subset_entropy", "von_neumann"}
REL = 1e-9


def clustered(n=240, d=12, classes=4, spread=2.0, seed=0):
    """Gaussian clusters: every class present, centres ``spread`` apart, unit noise."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])
    y = y[rng.permutation(n)]
    x = rng.standard_normal((classes, d))[y] * spread + rng.standard_normal((n, d))
    return x, y


# ----------------------------------------------------------------------------- the registry


def test_registry_names_and_directions():
    assert list(CRITERIA) == [
        "entropy",
        "entropy_bound",
        "subset_entropy",
        "von_neumann",
        "numerical_rank",
        "nc1",
        "cdnv",
        "logme",
        "knn",
        "h_score",
        "cv_probe",
    ]
    assert set(criterion_names(with_labels=False)) == LABEL_FREE
    lower = {n for n, c in CRITERIA.items() if not c.higher_is_better}
    assert lower == {"nc1", "cdnv"}
    for name, c in CRITERIA.items():
        assert c.name == name and c.description and c.fn.__doc__
        assert c.needs_labels == (name not in LABEL_FREE)


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        crit.register(Criterion("nc1", "again", crit.nc1, False, True))


def test_compute_criteria_without_labels_is_exactly_the_label_free_ones():
    x, y = clustered()
    assert set(compute_criteria(x)) == LABEL_FREE
    full = compute_criteria(x, y)
    assert list(full) == list(CRITERIA)
    for name, value in full.items():
        assert math.isfinite(value)
        assert value == pytest.approx(CRITERIA[name].fn(x, y, CriterionOptions()), rel=1e-12)


# -------------------------------------------------------------------------------- entropies


def test_entropy_and_bound_are_the_paper_estimator():
    x, _ = clustered()
    for levels in (2, 4, 16):
        opts = CriterionOptions(levels=levels)
        ref = state_entropy(x, levels)
        assert crit.entropy(x, None, opts) == ref.entropy
        assert crit.entropy_bound(x, None, opts) == ref.per_unit_bound


def test_subset_entropy_distinguishes_what_the_saturated_estimator_cannot():
    # two feature sets whose full state entropy both read log n (every sample its own state),
    # but in B half of the units barely move across the quantization bins
    n, d = 2000, 64
    rng = np.random.default_rng(3)
    a = rng.standard_normal((n, d))
    b = a.copy()
    b[:, d // 2 :] *= 0.05
    log_n = math.log(n)
    assert crit.entropy(a) == pytest.approx(log_n, abs=1e-9)
    assert crit.entropy(b) == pytest.approx(log_n, abs=1e-9)
    u = crit._subset_size(n, CriterionOptions().levels)
    assert (4 + 1) ** u * 10 <= n < (4 + 1) ** (u + 1) * 10
    sa, sb = crit.subset_entropy(a), crit.subset_entropy(b)
    ceiling = d / u * math.log(n / 10)  # every subset has at most n / 10 joint states
    assert sb < sa <= ceiling < d / u * log_n
    assert sa - sb > 0.3 * sa  # B loses about half its unit entropy
    assert crit.subset_entropy(a, None, CriterionOptions(seed=1)) == pytest.approx(sa, rel=0.05)


def test_subset_entropy_equals_full_entropy_when_the_subset_is_every_unit():
    x, _ = clustered(n=400, d=2)  # u = min(2, d): each subset is both units
    assert crit.subset_entropy(x) == pytest.approx(crit.entropy(x), rel=1e-12)
    assert crit.subset_entropy(np.ones((50, 3))) == 0.0


# ------------------------------------------------------------------------------ von Neumann


def _vn_reference(x, gram: str) -> float:
    h = x / np.linalg.norm(x, axis=1, keepdims=True)
    g = h @ h.T if gram == "samples" else h.T @ h
    lam = np.linalg.eigh(g / len(x))[0]
    lam = lam[lam > 1e-300]
    return float(-(lam * np.log(lam)).sum())


@pytest.mark.parametrize(("n", "d"), [(200, 10), (15, 40)])
def test_von_neumann_matches_the_other_gram(n, d):
    x, _ = clustered(n=n, d=d)
    other = "samples" if d <= n else "units"  # the code uses the smaller one
    # eigenvalues ~1e-17 of the larger Gram contribute < 1e-14 nats
    assert crit.von_neumann(x) == pytest.approx(_vn_reference(x, other), rel=1e-10)


def test_von_neumann_orthonormal_rows_read_log_n():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((32, 8)))  # 8 orthonormal columns
    rows = q.T * rng.uniform(0.5, 3.0, (8, 1))  # the norms do not matter
    assert crit.von_neumann(rows) == pytest.approx(math.log(8), rel=1e-12)
    assert crit.von_neumann(np.tile(rows[:1], (5, 1))) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------- collapse metrics vs loops


def _loop_stats(x, y):
    classes = sorted(set(y.tolist()))
    means = {k: sum(x[i] for i in range(len(x)) if y[i] == k) / (y == k).sum() for k in classes}
    return classes, means


def test_nc1_matches_loops_and_pinv():
    x, y = clustered(n=90, d=6, classes=3)
    classes, means = _loop_stats(x, y)
    mu_g = x.mean(axis=0)
    sw = sum(np.outer(x[i] - means[y[i]], x[i] - means[y[i]]) for i in range(len(x))) / len(x)
    sb = sum(np.outer(means[k] - mu_g, means[k] - mu_g) for k in classes) / len(classes)
    ref = np.trace(sw @ np.linalg.pinv(sb, rcond=crit.PINV_RTOL)) / len(classes)
    assert crit.nc1(x, y) == pytest.approx(ref, rel=1e-8)  # pinv of a rank-2 matrix: ~1e-10


def test_cdnv_matches_loops():
    x, y = clustered(n=90, d=6, classes=4)
    classes, means = _loop_stats(x, y)
    var = {
        k: np.mean([np.sum((x[i] - means[k]) ** 2) for i in range(len(x)) if y[i] == k])
        for k in classes
    }
    pairs = [(i, j) for i in classes for j in classes if i < j]
    ref = np.mean([(var[i] + var[j]) / (2 * np.sum((means[i] - means[j]) ** 2)) for i, j in pairs])
    assert crit.cdnv(x, y) == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("d", [5, 40])  # Gram over units, and over samples (n_k < d)
def test_numerical_rank_matches_norms(d):
    x, y = clustered(n=60, d=d, classes=3)
    ref = np.mean(
        [
            np.linalg.norm(x[y == k], "fro") ** 2 / np.linalg.norm(x[y == k], 2) ** 2
            for k in range(3)
        ]
    )
    assert crit.numerical_rank(x, y) == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("dead_unit", [False, True])
def test_h_score_matches_numpy_cov_and_pinv(dead_unit):
    x, y = clustered(n=120, d=7, classes=3)
    if dead_unit:
        x[:, 2] = 0.7  # cov(f) singular: the pseudo-inverse must drop that direction
    g = np.stack([x[y == k].mean(axis=0) for k in y])  # E[f | y] per sample
    ref = np.trace(np.linalg.pinv(np.cov(x.T), rcond=crit.PINV_RTOL) @ np.cov(g.T))
    assert crit.h_score(x, y) == pytest.approx(ref, rel=1e-8)
    assert 0 <= crit.h_score(x, y) <= 3 - 1 + 1e-9


# ------------------------------------------------------------------------------------ LogME


def _logme_cases():
    return json.loads(LOGME_FIXTURE.read_text())["cases"]


def test_logme_fixture_records_its_source():
    record = json.loads(LOGME_FIXTURE.read_text())
    assert len(record["commit"]) == 40 and "thuml/LogME" in record["source"]
    assert [c["seed"] for c in record["cases"]] == [
        c["seed"] for c in load_script("logme_reference").CASES
    ]


@pytest.mark.parametrize("case", _logme_cases(), ids=lambda c: f"seed{c['seed']}")
def test_logme_matches_the_authors_implementation(case):
    # theirs: SVD of F^T F (or of F), numba; ours: eigh of F^T F and class sums. Both float64 and
    # the same fixed point, so the scores agree to round-off (measured: <= 3e-14 relative).
    gen = load_script("logme_reference")
    params = {k: case[k] for k in ("seed", "n", "d", "classes", "spread", "dead") if k in case}
    x, y = gen.make_inputs(**params)
    assert crit.logme(x, y) == pytest.approx(case["score"], rel=1e-9)


# -------------------------------------------------------------------------------------- k-NN


@pytest.mark.parametrize("k", [1, 3, 7])
def test_knn_matches_scikit_learn(k):
    neighbors = pytest.importorskip("sklearn.neighbors")
    x, y = clustered(n=120, d=5, classes=2, spread=0.6, seed=k)  # 2 classes, odd k: no vote ties
    hits = 0
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        clf = neighbors.KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
        hits += int(clf.fit(x[rest], y[rest]).predict(x[i : i + 1])[0] == y[i])
    assert 0.5 < hits / len(x) < 1.0  # a test that discriminates
    assert crit.knn(x, y, CriterionOptions(knn_k=k)) == hits / len(x)


def _knn_loop(x, y, k, queries):
    """Brute-force LOO k-NN with the documented tie rule, one sample at a time, float64."""
    hits = 0
    for i in queries:
        sims = [
            (-(x[i] @ x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])), j)
            for j in range(len(x))
            if j != i
        ]
        near = [y[j] for _, j in sorted(sims)[:k]]
        votes = Counter(near)
        best = max(votes.values())
        pred = next(c for c in near if votes[c] == best)  # tied class of the nearest neighbour
        hits += int(pred == y[i])
    return hits / len(queries)


def test_knn_matches_a_brute_force_loop_with_vote_ties():
    x, y = clustered(n=150, d=6, classes=5, spread=0.8, seed=2)
    opts = CriterionOptions(knn_k=4)  # even k, 5 classes: ties happen
    assert crit.knn(x, y, opts) == _knn_loop(x, y, 4, range(len(x)))
    # more samples than queries: a seeded random subset, each against all n - 1 others
    sub = CriterionOptions(knn_k=4, knn_max_queries=40, seed=5)
    queries = np.sort(np.random.default_rng(5).choice(len(x), 40, replace=False))
    assert crit.knn(x, y, sub) == _knn_loop(x, y, 4, queries)


def test_topk_prefilter_is_exact_including_ties():
    rng = np.random.default_rng(0)
    sims = np.round(rng.standard_normal((50, 5000)), 1).astype(np.float32)  # many equal values
    sims[3] = 0.0  # a row of ties only: the full-sort fallback
    cols = np.broadcast_to(np.arange(5000), sims.shape)
    ref = np.lexsort((cols, -sims), axis=1)[:, :10]
    np.testing.assert_array_equal(crit._topk(sims, 10), ref)


# ------------------------------------------------------------------------------- invariances


def test_every_criterion_is_invariant_to_sample_order():
    x, y = clustered(n=200, d=10, classes=5)
    perm = np.random.default_rng(9).permutation(len(x))
    a, b = compute_criteria(x, y), compute_criteria(x[perm], y[perm])
    for name in CRITERIA:
        if name == "cv_probe":
            continue  # its seeded folds follow the row order (the module table's **)
        assert b[name] == pytest.approx(a[name], rel=REL, abs=1e-12), name


SCALE_INVARIANT = [n for n in CRITERIA if n != "logme"]


@pytest.mark.parametrize("c", [4.0, 3.7, 1e-3])
def test_scale_behaviour(c):
    x, y = clustered(n=200, d=10, classes=5)
    a, b = compute_criteria(x, y), compute_criteria(x * c, y)
    for name in SCALE_INVARIANT:
        if name in LABEL_FREE - {"von_neumann"} and c != 4.0:
            continue  # the quantizer is exactly scale-free for powers of two only (bin edges)
        assert b[name] == pytest.approx(a[name], rel=1e-7), name
    # LogME is scale-free at its fixed point (alpha -> c^2 alpha) but for the authors' 1e-5 added
    # to m2 and res2 and the 11-step cap: close here, far apart once m2 ~ 1/c^2 nears 1e-5
    assert b["logme"] == pytest.approx(a["logme"], rel=1e-4)
    assert crit.logme(x * 1e3, y) < 0.5 * a["logme"]


def test_label_criteria_are_invariant_to_relabelling():
    x, y = clustered(n=200, d=10, classes=5)
    renamed = np.array([40, -3, 7, 1000, 2])[y]  # another order, not 0..K-1
    a, b = compute_criteria(x, y), compute_criteria(x, renamed)
    for name in CRITERIA:
        assert b[name] == pytest.approx(a[name], rel=REL, abs=1e-12), name


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("features", "labels", "match"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), None, "1 NaN/inf"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), None, "NaN/inf"),
        (np.zeros(5), None, "2-D"),
        (np.zeros((2, 3, 4)), None, "2-D"),
        (np.zeros((1, 3)), None, "at least 2 samples"),
        (np.array([["a", "b"], ["c", "d"]]), None, "real numbers"),
        (np.ones((4, 2)), np.array([0, 1, 0]), "one entry per sample"),
        (np.ones((4, 2)), np.array([[0, 1], [0, 1]]), "1-D"),
        (np.ones((4, 2)), np.array([0.0, 1.0, 0.0, 1.0]), "integers"),
        (np.ones((4, 2)), np.array([3, 3, 3, 3]), "at least 2 classes"),
    ],
)
def test_check_inputs_rejects(features, labels, match):
    with pytest.raises(CriterionError, match=match):
        check = crit.check_inputs(features, labels)
        assert check is None  # pragma: no cover


def test_errors_are_entropi_value_errors():
    from entropi.common.errors import EntropiError

    assert issubclass(CriterionError, EntropiError) and issubclass(CriterionError, ValueError)


def test_criterion_level_errors():
    x, y = clustered(n=40, d=4, classes=2)
    with pytest.raises(CriterionError, match="unknown criteria.*'nope'.*known"):
        compute_criteria(x, y, names=["entropy", "nope"])
    with pytest.raises(CriterionError, match=r"\['nc1'\] need labels"):
        compute_criteria(x, names=["entropy", "nc1"])
    for name in sorted(set(CRITERIA) - LABEL_FREE):
        with pytest.raises(CriterionError, match="needs labels"):
            CRITERIA[name].fn(x, None, CriterionOptions())
    zero = x.copy()
    zero[7] = 0.0
    with pytest.raises(CriterionError, match="zero norm.*row 7"):
        crit.von_neumann(zero)
    with pytest.raises(CriterionError, match="zero norm"):
        crit.knn(zero, y)
    single = y.copy()
    single[:] = 0
    single[5] = 1  # class 1 has one sample
    for fn in (crit.nc1, crit.cdnv, crit.numerical_rank):
        with pytest.raises(CriterionError, match="at least 2 samples per class"):
            fn(x, single)
    with pytest.raises(CriterionError, match="knn_k = 10 needs at least 11"):
        crit.knn(x[:8], np.array([0, 1] * 4))
    same = np.repeat(np.eye(4)[:2], 20, axis=0) + 0.0
    with pytest.raises(CriterionError, match="identical means"):
        crit.cdnv(np.vstack([same, same]), np.array([0] * 40 + [1] * 40))


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("levels", 1, "levels"),
        ("knn_k", 0, "knn_k must be an integer >= 1"),
        ("knn_max_queries", 2.5, "knn_max_queries"),
        ("subsets", True, "subsets"),
        ("seed", -1, "seed must be an integer >= 0"),
    ],
)
def test_options_are_validated(field, value, match):
    with pytest.raises(CriterionError, match=match):
        CriterionOptions(**{field: value})


@pytest.mark.parametrize("name", ["nc1", "cdnv", "h_score", "logme"])
def test_dead_features_are_refused_by_class_statistics(name):
    """A dead rung's features (identical rows, or all zero): a pseudo-inverse of rounding noise
    would make NC1 or the H-score look perfect, so these criteria refuse them."""
    y = np.repeat(np.arange(3), 20)
    for feats in (np.zeros((60, 8)), np.full((60, 8), 0.3)):
        if name == "logme" and feats.any():
            continue  # LogME of constant non-zero features is defined
        with pytest.raises(CriterionError, match="same for every sample|all zero"):
            CRITERIA[name].fn(feats, y, CriterionOptions())


# ---------------------------------------------------------------------------------- cv_probe


@pytest.mark.parametrize(("classes", "ridge", "folds"), [(4, 1.0, 5), (2, 10.0, 3), (6, 0.1, 4)])
def test_cv_probe_matches_scikit_learn_ridge_classifier(classes, ridge, folds):
    """Reference: scikit-learn's StandardScaler + RidgeClassifier(alpha) scored by
    cross_val_score on the same folds; accuracy is a count, so equal unless a prediction sits
    on a tie of two decision values (none here): tolerance 1e-12."""
    from sklearn.linear_model import RidgeClassifier
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = clustered(n=300, d=14, classes=classes, spread=0.8, seed=classes)
    x[:, 3] = 2.5  # a constant (dead) unit: sd 0 -> 1 on both sides
    opts = CriterionOptions(cv_folds=folds, cv_ridge=ridge, seed=7)
    _, first = np.unique(y, return_index=True)
    fold = crit.stratified_folds(np.argsort(np.argsort(first))[y], folds, 7)
    cv = [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(folds)]
    model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=ridge))
    per_fold = cross_val_score(model, x, y, cv=cv)
    ref = sum(s * len(te) for s, (_, te) in zip(per_fold, cv, strict=True)) / len(y)
    assert crit.cv_probe(x, y, opts) == pytest.approx(ref, abs=1e-12)
    assert 1.0 / classes < ref < 1.0  # a real signal, not a degenerate case


def test_cv_probe_refuses_classes_smaller_than_the_folds_and_needs_labels():
    x, y = clustered(n=40, d=4, classes=2)
    y[:3] = 5  # a third class with 3 samples
    with pytest.raises(CriterionError, match=r"cv_probe \(5 folds\) needs at least 5 samples"):
        crit.cv_probe(x, y)
    assert crit.cv_probe(x, y, CriterionOptions(cv_folds=3)) > 0
    with pytest.raises(CriterionError, match="needs labels"):
        crit.cv_probe(x, None)


@pytest.mark.parametrize(
    ("field", "value"), [("cv_folds", 1), ("cv_folds", 2.0), ("cv_ridge", 0), ("cv_ridge", True)]
)
def test_cv_probe_options_are_validated(field, value):
    with pytest.raises(CriterionError, match=f"CriterionOptions.{field}"):
        CriterionOptions(**{field: value})
