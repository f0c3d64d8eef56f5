"""pytest-benchmark: device head training (one epoch at 512 x 100) and the training step.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_device.py`` (``--benchmark-disable`` for
a fast correctness-only pass). Each benchmark also asserts what it times is correct.
"""

from __future__ import annotations

import numpy as np
import pytest

from entropi.device import TrainConfig, plan_memory, train_head
from entropi.device.blas import find_gemm
from entropi.device.budget import UFUNC_BUFSIZE
from entropi.device.softmax import cross_entropy, logits
from entropi.device.trainer import StepLoop

D, C = 512, 100


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, 4000)
    x = rng.standard_normal((C, D), dtype=np.float32)[y] * 0.5
    x += rng.standard_normal((len(y), D), dtype=np.float32)
    return x, y


@pytest.mark.parametrize("budget", [None, "256KB"])
def test_bench_head_epoch(benchmark, data, budget):
    x, y = data
    cfg = TrainConfig(
        epochs=1,
        lr=0.05,
        momentum=0.0,
        weight_decay=0.0,
        patience=0,
        val_fraction=0.1,
        budget=budget or "unlimited",
    )
    res = benchmark(train_head, x, y, cfg, num_classes=C, measure_memory=False)
    z = logits(x[res.n_train :], res.weights, res.bias)
    assert cross_entropy(z, y[res.n_train :]) < np.log(C)  # learned something in one epoch
    assert res.val_accuracy > 0.5


def test_bench_training_step_batch32(benchmark, data):
    x, y = data
    gemm = find_gemm(np.float32)
    plan = plan_memory(D, C, None, max_batch_size=32, fused_update=gemm is not None)
    cfg = TrainConfig(momentum=0.0, weight_decay=0.0, budget="unlimited")
    loop = StepLoop(x, y.astype(np.intp), len(x), C, cfg, plan, gemm)
    old = np.setbufsize(UFUNC_BUFSIZE)
    try:
        steps = len(x) // 32
        benchmark(loop.run_epoch_steps, 0, 0, steps, 0, lambda s: 0.01, lambda s: None)
    finally:
        np.setbufsize(old)
    assert np.isfinite(loop.W).all() and np.abs(loop.W).max() > 0
    benchmark.extra_info["samples_per_call"] = steps * 32
