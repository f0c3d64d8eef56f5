"""Memory budget: size parsing, the analytic plan, the measured peak, and the budget error."""

from __future__ import annotations

import numpy as np
import pytest

from entropi.device import BudgetError, TrainConfig, parse_size, plan_memory, train_head
from entropi.device.budget import RESERVE_BYTES, UFUNC_BUFSIZE, buffer_bytes


@pytest.mark.parametrize(
    "text,expected",
    [
        ("256KB", 262144),
        ("256kb", 262144),
        ("1MB", 1048576),
        ("512", 512),
        ("100B", 100),
        ("1.5KB", 1536),
        ("64KiB", 65536),
        (4096, 4096),
        ("10GB", 10 * 1024**3),
        ("2gib", 2 * 1024**3),
        ("1G", 1024**3),
        ("0.5KB", 512),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["256XB", "", "KB", "-5KB", "0B", "abc", "inf", "nan", "1e3", "2TB", "5000GB", 10**400]
)
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_buffer_accounting_golden_bytes():
    # 512 x 100 float32, batch 14, 19-row blocks, no momentum: every buffer by hand.
    bufs = buffer_bytes(512, 100, 14, 19, momentum=False)
    assert bufs == {
        "weights": 512 * 100 * 4,
        "bias": 400,
        "features_batch": 14 * 512 * 4,
        "logits_batch": 14 * 100 * 4,
        "row_stat": 56,
        "label_logit": 56,
        "ones_batch": 56,
        "ones_classes": 400,
        "grad_block": 19 * 100 * 4,
        "grad_bias": 400,
        "ufunc_buffer": UFUNC_BUFSIZE * 4,
        "index_base": 112,
        "index_batch": 112,
        "labels_batch": 112,
        "flat_index": 112,
        "row_offsets": 112,
    }
    assert buffer_bytes(512, 100, 14, 19, momentum=False, epochs=30)["history"] == 2 * 8 * 30
    mom = buffer_bytes(512, 100, 14, 19, momentum=True)
    assert mom["momentum_weights"] == 204800 and mom["momentum_bias"] == 400


def test_plan_fits_256kb_for_512x100_and_uses_blocks():
    plan = plan_memory(512, 100, parse_size("256KB"), max_batch_size=32)
    assert plan.analytic_bytes + RESERVE_BYTES <= 262144
    assert plan.block_rows < 512 and plan.batch_size >= 8
    assert plan.analytic_bytes == sum(plan.buffers.values())
    roomy = plan_memory(512, 100, parse_size("4MB"), max_batch_size=32)
    assert (roomy.batch_size, roomy.block_rows) == (32, 512)


def test_budget_that_cannot_fit_fails_before_training_with_minimum():
    # batch 1, 1-row blocks: weights, bias, one feature row, logits, 3 row scalars, ones(C),
    # 1-row gradient block, bias gradient, ufunc buffer (C elements), 5 indices, reserve
    minimum = 204800 + 400 + 2048 + 400 + 3 * 4 + 400 + 400 + 400 + 400 + 5 * 8 + RESERVE_BYTES
    assert minimum == 233876
    with pytest.raises(BudgetError, match=r"the minimum is 228\.4 KB \(233876 B") as e:
        plan_memory(512, 100, parse_size("100KB"))
    assert e.value.minimum_bytes == minimum
    # the minimum itself is accepted, one byte less is not
    plan_memory(512, 100, minimum)
    with pytest.raises(BudgetError, match="at least 229KB"):
        plan_memory(512, 100, minimum - 1)
    with pytest.raises(BudgetError, match="or train without momentum"):
        plan_memory(512, 100, parse_size("256KB"), momentum=True)
    x = np.zeros((40, 512), np.float32)
    y = np.arange(40) % 100
    with pytest.raises(BudgetError, match="minimum is"):
        train_head(x, y, TrainConfig(budget="64KB"), num_classes=100)


@pytest.mark.parametrize("budget,momentum", [("256KB", 0.0), ("480KB", 0.9), ("2MB", 0.9)])
def test_measured_peak_within_budget_and_above_floor(budget, momentum, tmp_path):
    rng = np.random.default_rng(0)
    n, d, c = 700, 512, 100
    y = rng.integers(0, c, n)
    x = (rng.standard_normal((c, d))[y] + rng.standard_normal((n, d))).astype(np.float32)
    cfg = TrainConfig(
        epochs=2,
        lr=0.05,
        momentum=momentum,
        budget=budget,
        checkpoint_every=10,
        patience=1,
    )
    res = train_head(x, y, cfg, num_classes=c, workdir=tmp_path)
    assert res.plan.analytic_bytes <= res.peak_bytes <= parse_size(budget)
    # everything on top of the buffers is small: interpreter objects, zip writer, views
    assert res.peak_bytes - res.plan.analytic_bytes <= RESERVE_BYTES
