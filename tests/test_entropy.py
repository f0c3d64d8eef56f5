"""The entropy estimator vs hand-computed values, its bounds, and its invariances."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from entropi.host.selection.entropy import FeatureError, quantize, state_entropy

TOL = 1e-12  # float64 sums of a few terms


def test_hand_computed_two_units():
    # range 1, M = 2 -> Delta 0.5; q = floor(2y + 0.5): 0->0, 1->2
    y = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    q, delta = quantize(y, 2)
    assert delta == 0.5
    np.testing.assert_array_equal(q, [[0, 0], [0, 2], [2, 2], [2, 2]])
    r = state_entropy(y, 2)
    # states: (0,0) 1/4, (0,2) 1/4, (2,2) 1/2
    assert r.entropy == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)), abs=TOL)
    # unit 0: {0: 1/2, 2: 1/2}; unit 1: {0: 1/4, 2: 3/4}
    h0 = math.log(2)
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert r.per_unit_bound == pytest.approx(h0 + h1, abs=TOL)
    assert r.distinct_states == 3


def test_rounding_at_half_step_goes_up():
    # Delta = 4/4 = 1: y = 0.5 -> floor(1.0) = 1, y = 0.49 -> 0, y = -0.5 -> 0
    y = np.array([[0.5], [0.49], [-0.5], [3.5]])
    q, _ = quantize(y, 4)
    np.testing.assert_array_equal(q.ravel(), [1, 0, 0, 4])


def test_all_distinct_reaches_log_n_and_constant_is_zero():
    y = np.arange(8, dtype=float).reshape(8, 1)
    assert state_entropy(y, 8).entropy == pytest.approx(math.log(8), abs=TOL)
    assert state_entropy(np.ones((5, 3)), 4).entropy == 0.0
    assert state_entropy(np.ones((5, 3)), 4).per_unit_bound == 0.0


feature_arrays = arrays(
    np.float64,
    st.tuples(st.integers(1, 40), st.integers(1, 6)),
    elements=st.floats(-100, 100, allow_nan=False, width=32),
)


@settings(max_examples=200, deadline=None)
@given(feature_arrays, st.integers(2, 8))
def test_bounds(y, levels):
    r = state_entropy(y, levels)
    n, dim = y.shape
    assert 0.0 <= r.entropy <= math.log(n) + 1e-12
    # a unit's values span (max - min) / Delta <= levels bins: at most levels + 1 integers, one
    # more when float rounding of y / Delta lands both range ends just across a bin edge
    assert r.entropy <= dim * math.log(levels + 2) + 1e-9
    assert r.entropy <= r.per_unit_bound + 1e-12


@settings(max_examples=100, deadline=None)
@given(feature_arrays, st.integers(0, 2**32 - 1))
def test_invariant_to_sample_order(y, seed):
    perm = np.random.default_rng(seed).permutation(len(y))
    a, b = state_entropy(y), state_entropy(y[perm])
    assert a.entropy == pytest.approx(b.entropy, abs=1e-12)
    assert a.per_unit_bound == pytest.approx(b.per_unit_bound, abs=1e-12)


def test_matches_exact_unique_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2000, 6))
    q, _ = quantize(y, 4)
    _, counts = np.unique(q, axis=0, return_counts=True)
    p = counts / counts.sum()
    assert state_entropy(y, 4).entropy == pytest.approx(-(p * np.log(p)).sum(), abs=1e-10)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(5), "2-D"),
        (np.zeros((2, 2, 2)), "rank 3"),
        (np.array([[1.0, np.nan]]), "NaN"),
        (np.array([[1.0, np.inf]]), "NaN/inf"),
        (np.zeros((0, 3)), "non-empty"),
    ],
)
def test_bad_features(bad, match):
    with pytest.raises(FeatureError, match=match):
        state_entropy(bad)


@pytest.mark.parametrize("levels", [0, -1, 2.5, True])
def test_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        state_entropy(np.zeros((3, 2)), levels)
