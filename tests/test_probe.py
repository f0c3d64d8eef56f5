"""The linear probe and its cross-validated form: fold assignment checked by counting, the CV
accuracy against a hand loop over the folds, and the standard error against its formula."""

from __future__ import annotations

import numpy as np
import pytest

from entropi.host.run.config import ConfigError, ProbeConfig, load_config
from entropi.host.run.stages import _probe
from entropi.host.selection.entropy import FeatureError
from entropi.host.selection.probe import cross_validated_probe, linear_probe, stratified_folds

FAST = ProbeConfig(epochs=20, batch_size=32, lr=0.05, repeats=2)


def _blobs(n=120, classes=3, d=8, seed=0, sep=3.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[np.arange(n), y] += sep
    return x, y


@pytest.mark.parametrize("folds", [2, 5, 10])
def test_folds_cover_every_sample_once_and_are_stratified(folds):
    y = np.repeat(np.arange(4), [10, 13, 25, 40])
    fold = stratified_folds(y, folds, seed=3)
    assert fold.shape == y.shape and set(fold) == set(range(folds))
    sizes = np.bincount(fold, minlength=folds)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(y)
    for c in range(4):  # each class dealt evenly: per-fold counts differ by at most one
        per = np.bincount(fold[y == c], minlength=folds)
        assert per.max() - per.min() <= 1
    assert (stratified_folds(y, folds, seed=3) == fold).all()
    assert not (stratified_folds(y, folds, seed=4) == fold).all()


def test_fold_errors_name_the_problem():
    with pytest.raises(FeatureError, match="at least 2 folds"):
        stratified_folds(np.zeros(10), 1, seed=0)
    with pytest.raises(FeatureError, match="class 1 has only 2 samples"):
        stratified_folds(np.array([0] * 8 + [1] * 2), 3, seed=0)
    x, y = _blobs(30)
    with pytest.raises(FeatureError, match="30 feature rows but 29 labels"):
        cross_validated_probe(x, y[:-1], FAST, folds=3, num_classes=3)


def test_cv_accuracy_equals_a_hand_loop_over_the_folds():
    x, y = _blobs(90, sep=1.0)
    r = cross_validated_probe(x, y, FAST, folds=3, num_classes=3, seed=7)
    fold = stratified_folds(y, 3, seed=7)
    right = 0
    for f in range(3):
        tr, te = fold != f, fold == f
        p = linear_probe(x[tr], y[tr], x[te], y[te], FAST, num_classes=3, seed=7)
        right += round(p.test_accuracy * te.sum())
    assert r.test_n == 90 and r.test_accuracy == right / 90  # exact: counts of right answers
    assert 0.4 < r.test_accuracy < 1.0  # separable but noisy: above chance (1/3), not perfect


def test_cv_is_at_chance_on_labels_independent_of_the_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = rng.integers(0, 2, 600)
    r = cross_validated_probe(x, y, FAST, folds=5, num_classes=2)
    assert abs(r.test_accuracy - 0.5) < 4 * np.sqrt(0.25 / 600)  # 4 binomial standard errors


@pytest.mark.parametrize("folds", [0, 4])
def test_probe_reports_its_test_size_and_standard_error(folds):
    cfg = load_config("quickstart", [f"probe.folds={folds}", "probe.epochs=3", "probe.repeats=2"])
    x, y = _blobs(160, sep=1.0)
    out = _probe(cfg, x[:100], y[:100], x[100:], y[100:], 3, "cpu")
    n = 160 if folds else 60
    assert out["probe_test_n"] == n and out["probe_folds"] == folds
    p = out["probe_accuracy"]
    assert p == pytest.approx(np.mean(out["probe_accuracies"]))
    assert out["probe_accuracy_se"] == pytest.approx(np.sqrt(p * (1 - p) / n), rel=1e-12)


@pytest.mark.parametrize("bad", [1, -1, True, 2.5])
def test_bad_fold_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="probe.folds"):
        ProbeConfig(folds=bad)
