"""The numpy head (math and full SGD runs) against torch autograd and torch.optim.SGD."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from entropi.device import DataError, TrainConfig, train_head
from entropi.device.blas import find_gemm
from entropi.device.budget import UFUNC_BUFSIZE, plan_memory
from entropi.device.schedule import batch_rows, epoch_order, learning_rate
from entropi.device.softmax import cross_entropy, gradients, logits
from entropi.device.trainer import StepLoop

torch.set_num_threads(1)


def _data(n=240, d=16, c=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    centers = rng.standard_normal((c, d)) * 2
    x = centers[y] + rng.standard_normal((n, d))
    return x.astype(dtype), y


def test_logits_loss_gradients_match_torch_autograd_float64():
    x, y = _data(n=37)
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((16, 5)), rng.standard_normal(5)
    loss, dw, db = gradients(x, y, w, b)
    tw = torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    tz = torch.tensor(x) @ tw + tb
    tloss = torch.nn.functional.cross_entropy(tz, torch.tensor(y))
    tloss.backward()
    # float64 throughout: only summation order differs, so 1e-12 is generous.
    np.testing.assert_allclose(logits(x, w, b), tz.detach().numpy(), rtol=0, atol=1e-12)
    assert loss == pytest.approx(tloss.item(), abs=1e-12)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=0, atol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    assert cross_entropy(z, np.array([0, 0])) == pytest.approx(0.0, abs=1e-12)


def _torch_sgd(x, y, cfg: TrainConfig, batch, n_train, num_classes):
    """A straightforward torch loop: same rows per step, torch.optim.SGD, same lr per step."""
    d = x.shape[1]
    w = torch.zeros(d, num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    spe = n_train // batch
    total = cfg.epochs * spe
    tx, ty = torch.tensor(x[:n_train]), torch.tensor(y[:n_train])
    for step in range(total):
        epoch, k = divmod(step, spe)
        rows = torch.from_numpy(batch_rows(cfg.seed, epoch, k, batch, n_train))
        for group in opt.param_groups:
            group["lr"] = learning_rate(
                cfg.schedule,
                cfg.lr,
                step,
                total,
                steps_per_epoch=spe,
                step_epochs=cfg.step_epochs,
                gamma=cfg.gamma,
            )
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tx[rows] @ w + b, ty[rows])
        loss.backward()
        opt.step()
    return w.detach().numpy(), b.detach().numpy()


@pytest.mark.parametrize(
    "momentum,weight_decay,schedule,budget,blas",
    [
        (0.0, 0.0, "cosine", None, True),
        (0.0, 0.0, "cosine", None, False),
        (0.9, 1e-3, "cosine", None, True),
        (0.0, 5e-3, "step", None, True),
        (0.0, 5e-3, "step", None, False),
        # a budget this small forces blocked weight updates (numpy path) and a smaller batch
        (0.0, 1e-3, "cosine", 4096, False),
        (0.0, 1e-3, "cosine", 2048, True),
        (0.9, 1e-3, "constant", 4096 + 16 * 5 * 8 + 5 * 8, True),
    ],
)
def test_training_run_matches_torch_sgd_float64(momentum, weight_decay, schedule, budget, blas):
    x, y = _data()
    cfg = TrainConfig(
        epochs=4,
        lr=0.2,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        step_epochs=2,
        batch_size=12,
        val_fraction=0.2,
        patience=0,
        seed=3,
        dtype="float64",
        budget="unlimited" if budget is None else budget + 24 * 1024,
    )
    res = train_head(x, y, cfg, measure_memory=False, blas=blas)
    fused = blas and momentum == 0 and find_gemm(np.float64) is not None
    assert res.plan.fused_update == fused
    if budget is not None:
        assert res.plan.block_rows < 16 or res.plan.batch_size < 12
    w, b = _torch_sgd(x, y, cfg, res.plan.batch_size, res.n_train, 5)
    # float64 on both sides; the only differences are summation order and p*(1-lr*wd) vs
    # p - lr*wd*p, which stay below 1e-12 over these ~80 steps.
    np.testing.assert_allclose(res.weights, w, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.bias, b, rtol=0, atol=1e-12)


@pytest.mark.skipif(find_gemm(np.float32) is None, reason="numpy's BLAS exposes no cblas sgemm")
def test_blas_and_numpy_updates_agree_float32():
    """The fused BLAS update (W = (1 - lr*wd) W - x^T z) against the numpy path (gradient block,
    then subtract): same plan batch, float32, 5 epochs with weight decay."""
    x, y = _data()
    cfg = TrainConfig(
        epochs=5, lr=0.2, momentum=0.0, weight_decay=1e-3, batch_size=12, patience=0, seed=2
    )
    fused = train_head(x.astype(np.float32), y, cfg, measure_memory=False, blas=True)
    plain = train_head(x.astype(np.float32), y, cfg, measure_memory=False, blas=False)
    assert fused.plan.fused_update and not plain.plan.fused_update
    assert fused.plan.batch_size == plain.plan.batch_size and "grad_block" not in fused.plan.buffers
    # one rounding instead of two per weight per step, over ~100 steps of O(0.1) updates
    np.testing.assert_allclose(fused.weights, plain.weights, rtol=0, atol=1e-5)
    # the bias update is the same code, but its logits see the slightly different weights
    np.testing.assert_allclose(fused.bias, plain.bias, rtol=0, atol=1e-6)


def test_large_logits_fall_back_to_the_max_shift():
    """Inputs scaled so that exp(logits) overflows: the step recomputes with the max shift and
    still equals torch (float64)."""
    x, y = _data()
    x = x * 200.0
    cfg = TrainConfig(
        epochs=2,
        lr=0.5,
        momentum=0.0,
        weight_decay=0.0,
        batch_size=12,
        patience=0,
        seed=1,
        dtype="float64",
    )
    res = train_head(x, y, cfg, measure_memory=False)
    z = x @ res.weights + res.bias
    assert np.abs(z).max() > 800  # exp would overflow float64 without the shift
    w, b = _torch_sgd(x, y, cfg, res.plan.batch_size, res.n_train, 5)
    np.testing.assert_allclose(res.weights, w, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(res.bias, b, rtol=1e-10, atol=1e-9)


def test_float32_run_tracks_float64_run():
    x, y = _data()
    kw = dict(epochs=3, lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=16, patience=0, seed=1)
    r64 = train_head(x, y, TrainConfig(dtype="float64", **kw), measure_memory=False)
    r32 = train_head(x.astype(np.float32), y, TrainConfig(**kw), measure_memory=False)
    assert r32.weights.dtype == np.float32
    # float32 rounding (eps 6e-8) accumulated over ~40 steps of O(1) updates
    np.testing.assert_allclose(r32.weights, r64.weights, rtol=0, atol=1e-4)


def test_training_learns_and_reports():
    x, y = _data(n=600)
    cfg = TrainConfig(epochs=10, lr=0.5, momentum=0.0, weight_decay=0.0, patience=3)
    res = train_head(x.astype(np.float32), y, cfg)
    assert res.val_accuracy > 0.9
    assert res.samples == res.steps * res.plan.batch_size
    assert res.peak_bytes >= res.plan.analytic_bytes


def test_epoch_order_is_a_permutation_and_seeded():
    for n in (1, 2, 97, 100, 1024):
        a, c = epoch_order(5, 2, n)
        rows = (a * np.arange(n) + c) % n
        assert sorted(rows.tolist()) == list(range(n))
    assert epoch_order(5, 2, 100) == epoch_order(5, 2, 100)
    assert epoch_order(5, 2, 100) != epoch_order(5, 3, 100)


def test_learning_rate_golden_values():
    assert learning_rate("cosine", 0.1, 0, 100) == pytest.approx(0.1)
    assert learning_rate("cosine", 0.1, 50, 100) == pytest.approx(0.05)
    assert learning_rate("step", 0.1, 25, 100, steps_per_epoch=10, step_epochs=2) == pytest.approx(
        0.01
    )
    assert learning_rate("constant", 0.1, 99, 100) == 0.1
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        learning_rate("linear", 0.1, 0, 1)


@pytest.mark.parametrize("budget", [None, 262144])
def test_training_step_allocates_nothing_in_steady_state(budget):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 512)).astype(np.float32)
    y = rng.integers(0, 100, 400).astype(np.intp)
    cfg = TrainConfig(budget=budget or "unlimited", momentum=0.0)
    plan = plan_memory(512, 100, budget, max_batch_size=32)
    loop = StepLoop(x, y, 400, 100, cfg, plan)
    noop = lambda s: None  # noqa: E731
    old = np.setbufsize(UFUNC_BUFSIZE)
    try:
        loop.run_epoch_steps(0, 0, 5, 0, lambda s: 0.01, noop)
        tracemalloc.start()
        loop.run_epoch_steps(0, 0, 5, 0, lambda s: 0.01, noop)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loop.run_epoch_steps(0, 0, 12, 0, lambda s: 0.01, noop)
        after, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        np.setbufsize(old)
    # Nothing is kept from step to step; transients are small objects and views, plus numpy's
    # ufunc buffer (UFUNC_BUFSIZE elements) during broadcasting ops.
    assert after - before <= 1024
    assert peak - before <= UFUNC_BUFSIZE * 4 + 4096


def test_bad_training_data_is_rejected():
    x, y = _data(n=50, dtype=np.float32)
    cfg = TrainConfig(epochs=1)
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(DataError, match="NaN or inf .*row 7"):
        train_head(bad, y, cfg)
    bad[7, 3] = np.inf
    with pytest.raises(DataError, match="NaN or inf"):
        train_head(bad, y, cfg)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 3\), got values in \[0, 4\]"):
        train_head(x, y, cfg, num_classes=3)
    with pytest.raises(DataError, match="got values in \\[-1"):
        train_head(x, np.where(y == 0, -1, y), cfg)
    with pytest.raises(DataError, match="single class"):
        train_head(x, np.zeros_like(y), cfg)
    with pytest.raises(DataError, match="2-D"):
        train_head(x[:, 0], y, cfg)
    with pytest.raises(ValueError, match="momentum must be in \\[0, 1\\), got 1.5"):
        TrainConfig(momentum=1.5)
