"""The quantized-state entropy estimator at the size ENTROPI scores: 50,000 x 512 features."""

from __future__ import annotations

import math

import numpy as np

from entropi.host.selection.entropy import state_entropy

N, DIM, LEVELS = 50_000, 512, 4


def _features() -> np.ndarray:
    # 25,000 distinct ReLU-like rows, each present twice (in shuffled order): the joint state
    # distribution is uniform over 25,000 states, so H = log(25,000) exactly.
    rng = np.random.default_rng(0)
    rows = np.maximum(rng.standard_normal((N // 2, DIM), dtype=np.float32), 0.0)
    feats = np.concatenate([rows, rows])
    return feats[rng.permutation(N)]


def test_state_entropy_50k_x_512(benchmark):
    feats = _features()
    result = benchmark(state_entropy, feats, LEVELS)
    assert (result.n, result.dim, result.levels) == (N, DIM, LEVELS)
    assert result.distinct_states == N // 2
    assert math.isclose(result.entropy, math.log(N // 2), rel_tol=1e-12)
    assert result.entropy <= result.per_unit_bound
    benchmark.extra_info["samples_per_second"] = (
        N / benchmark.stats.stats.median if (benchmark.stats) else None
    )
