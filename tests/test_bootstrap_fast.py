"""The bootstrap on reused state keys (issue 28): ``subset_entropy``'s resampled form quantizes
each sample once per distinct resample range and reweights its state counts, and must give the
numbers of the direct recomputation on every resample (to 1e-12: the entropy sums add the same
terms in another order), so that the selection confidence does not change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from entropi.host.selection import criteria as crit
from entropi.host.selection import rules as selection
from entropi.host.selection.criteria import CRITERIA, CriterionOptions


def _features(n=300, d=20, seed=0):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, d), 0.0)  # ReLU-like
    x[:, 2] = 0.0  # a dead unit
    x[:, 5] = np.round(x[:, 5])  # many equal values: states on bin edges, ties
    x[: n // 3, 7] = 40.0  # an outlier unit that sets Delta when its rows are drawn
    return x


@pytest.mark.parametrize(("levels", "subsets", "n"), [(4, 40, 300), (2, 25, 90), (8, 30, 700)])
def test_resampled_subset_entropy_equals_the_direct_loop(levels, subsets, n):
    x = _features(n=n, seed=levels)
    opts = CriterionOptions(levels=levels, subsets=subsets, seed=3)
    idx = selection.bootstrap_indices(n, 25, seed=levels)
    fast = crit._subset_entropy_resampled(x, None, opts, idx)
    direct = np.array([crit.subset_entropy(x[rows], None, opts) for rows in idx])
    np.testing.assert_allclose(fast, direct, rtol=1e-12, atol=1e-12)


def test_a_subset_constant_on_a_resample_and_tiny_inputs():
    # two samples, one unit: many resamples draw one sample twice (Delta 0, entropy 0)
    x = np.array([[0.0], [1.0]])
    idx = selection.bootstrap_indices(2, 20, seed=0)
    opts = CriterionOptions(subsets=3)
    fast = crit._subset_entropy_resampled(x, None, opts, idx)
    direct = [crit.subset_entropy(x[rows], None, opts) for rows in idx]
    np.testing.assert_allclose(fast, direct, rtol=1e-12, atol=1e-12)
    assert (fast == 0).any() and (fast > 0).any()


def test_drawn_max_falls_back_when_no_top_value_is_drawn():
    values = np.arange(10.0)
    drawn = np.zeros((3, 10), dtype=bool)
    drawn[0, [9, 1]] = True
    drawn[1, [0, 1]] = True  # none of the top 4 drawn: the exact fallback
    drawn[2, :] = True
    assert crit._drawn_max(values, drawn, top=4).tolist() == [9.0, 1.0, 9.0]


def test_bootstrap_values_equal_with_and_without_the_fast_form(monkeypatch):
    """Rung by rung, the fast path gives the direct loop's matrix, hence the same wins."""
    feats = [_features(seed=s) for s in range(3)]
    labels = np.zeros(300, dtype=np.int64)
    opts = CriterionOptions(subsets=30)
    kw = {"resamples": 30, "seed": 5}
    fast = selection.bootstrap_values(lambda i: feats[i], labels, 3, "subset_entropy", opts, **kw)
    slow_spec = dataclasses.replace(CRITERIA["subset_entropy"], resampled=None)
    monkeypatch.setitem(CRITERIA, "subset_entropy", slow_spec)
    slow = selection.bootstrap_values(lambda i: feats[i], labels, 3, "subset_entropy", opts, **kw)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    assert selection.resample_summary(fast) == selection.resample_summary(slow)


def test_one_blas_thread_limits_numpy_blas_and_restores_it(monkeypatch):
    """The fallback without threadpoolctl: numpy's bundled OpenBLAS set to 1 thread inside the
    block, its count restored after (also after an error)."""
    import sys

    calls = selection._openblas_thread_calls()
    if calls is None:
        pytest.skip("numpy's BLAS is not an OpenBLAS with a thread setter")
    get, put = calls
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails: the ctypes path
    before = get()
    with pytest.raises(RuntimeError), selection.one_blas_thread():
        assert get() == 1
        raise RuntimeError
    assert get() == before


@pytest.mark.parametrize(("levels", "n", "d"), [(4, 300, 20), (2, 60, 3), (16, 40, 30)])
def test_resampled_paper_entropy_equals_the_direct_loop_exactly(levels, n, d):
    """The same counts in the same (hash-key) order: bit-equal, saturated resamples included
    (n = 40, 30 units: every drawn row its own state, entropy at log n)."""
    x = _features(n=n, d=max(d, 8), seed=levels)[:, :d]
    opts = CriterionOptions(levels=levels)
    idx = selection.bootstrap_indices(n, 25, seed=levels)
    fast = crit._entropy_resampled(x, None, opts, idx)
    direct = np.array([crit.entropy(x[rows], None, opts) for rows in idx])
    assert (fast == direct).all()


def test_resampled_paper_entropy_falls_back_on_a_hash_collision(monkeypatch):
    """Keys that collide for distinct rows (forced here: every row hashes alike) send those
    resamples to the direct call, which then counts exact rows (np.unique: the same counts,
    summed in another order)."""
    from entropi.host.selection import entropy as estimator

    x = _features(n=80, d=8)
    idx = selection.bootstrap_indices(80, 6, seed=2)
    direct = np.array([crit.entropy(x[rows]) for rows in idx])

    def constant_keys(q):
        zeros = np.zeros(len(q), dtype=np.uint64)
        return zeros, zeros

    monkeypatch.setattr(estimator, "_row_keys", constant_keys)
    fast = crit._entropy_resampled(x, None, CriterionOptions(), idx)
    assert (fast == [crit.entropy(x[rows]) for rows in idx]).all()  # both via np.unique
    np.testing.assert_allclose(fast, direct, rtol=1e-12)  # the same counts as the hashes give


def _labelled(n=400, d=24, k=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, d)) * 2
    x = np.maximum(centers[y] + rng.normal(size=(n, d)), 0.0)
    x[:, 3] = 0.0  # a dead unit: rank-deficient F^T F
    return x, y


@pytest.mark.parametrize(("n", "d", "k"), [(400, 24, 6), (120, 10, 3), (60, 80, 4)])
def test_resampled_logme_equals_the_direct_loop(n, d, k):
    """Counts-weighted F^T F and class sums against logme() on each resampled copy (the
    N <= D case, 60 x 80, takes the direct path); 1e-9 relative: the sums add in another
    order, and the eigendecomposition carries that round-off."""
    x, y = _labelled(n, d, k, seed=n)
    idx = selection.bootstrap_indices(n, 25, seed=1)
    fast = crit._logme_resampled(x, y, CriterionOptions(), idx)
    direct = np.array([crit.logme(x[rows], y[rows]) for rows in idx])
    np.testing.assert_allclose(fast, direct, rtol=1e-9, atol=0)


def test_resampled_logme_leaves_an_undrawn_class_out_as_the_direct_call_does():
    x, y = _labelled(200, 12, 5, seed=3)
    y[:2] = 5  # class 5 has 2 samples: the rows below never draw them
    idx = np.stack([np.arange(2, 200), np.r_[np.arange(3, 200), 2]])
    idx = np.concatenate([idx, np.zeros((2, 2), dtype=idx.dtype) + 7], axis=1)
    fast = crit._logme_resampled(x, y, CriterionOptions(), idx)
    direct = [crit.logme(x[rows], y[rows]) for rows in idx]
    np.testing.assert_allclose(fast, direct, rtol=1e-9)
    one_class = np.full((1, 200), 10)  # every draw the same sample: one class, rank 1
    assert np.isnan(crit._logme_resampled(x, y, CriterionOptions(), one_class)).all()


@pytest.mark.parametrize("criterion", ["logme", "subset_entropy", "von_neumann"])
def test_bootstrap_values_are_the_same_with_one_worker_or_several(monkeypatch, criterion):
    """The rungs are resampled one per core (threads): every column is the serial one."""
    feats = [_labelled(150, 12, 4, seed=s)[0] for s in range(5)]
    labels = _labelled(150, 12, 4, seed=0)[1]
    opts = CriterionOptions(subsets=20)
    kw = {"resamples": 12, "seed": 3}
    monkeypatch.setattr(selection, "BOOTSTRAP_WORKERS", 1)
    serial = selection.bootstrap_values(lambda i: feats[i], labels, 5, criterion, opts, **kw)
    monkeypatch.setattr(selection, "BOOTSTRAP_WORKERS", 4)
    monkeypatch.setattr(selection.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    threaded = selection.bootstrap_values(lambda i: feats[i], labels, 5, criterion, opts, **kw)
    np.testing.assert_array_equal(threaded, serial)


def test_resampled_logme_in_blocks_equals_one_block(monkeypatch):
    x, y = _labelled(300, 16, 5, seed=9)
    idx = selection.bootstrap_indices(300, 23, seed=4)
    whole = crit._logme_resampled(x, y, CriterionOptions(), idx)
    monkeypatch.setattr(crit, "LOGME_RESAMPLE_BLOCK", 5)  # 23 = 4 blocks of 5 and one of 3
    blocked = crit._logme_resampled(x, y, CriterionOptions(), idx)
    # the class sums' matrix products round by block shape (BLAS kernels): 1e-12 relative
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=0)
