"""A run interrupted mid-way and resumed ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest

from entropi.device import ResumeError, TrainConfig, train_head


class Interrupt(Exception):
    pass


def _data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 300)
    x = (rng.standard_normal((6, 24))[y] + rng.standard_normal((300, 24))).astype(np.float32)
    return x, y


@pytest.mark.parametrize("momentum,budget", [(0.9, "unlimited"), (0.0, 24 * 1024 + 2000)])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, momentum, budget):
    x, y = _data()
    cfg = TrainConfig(
        epochs=6,
        lr=0.3,
        momentum=momentum,
        weight_decay=1e-3,
        batch_size=16,
        patience=2,
        checkpoint_every=7,
        seed=11,
        budget=budget,
    )
    full = train_head(x, y, cfg, workdir=tmp_path / "full")

    def kill_at(k):
        def hook(step):
            if step == k:
                raise Interrupt(f"killed after step {k}")

        return hook

    work = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        train_head(x, y, cfg, workdir=work, hook=kill_at(40))
    with np.load(work / "checkpoint.npz") as ckpt:
        assert int(ckpt["step"]) == 35  # last multiple of checkpoint_every before the kill
    with pytest.raises(Interrupt):  # killed again, after resuming once
        train_head(x, y, cfg, workdir=work, resume=True, hook=kill_at(60))
    rest = train_head(x, y, cfg, workdir=work, resume=True)
    assert rest.steps < full.steps
    np.testing.assert_array_equal(rest.weights, full.weights)
    np.testing.assert_array_equal(rest.bias, full.bias)
    assert rest.best_epoch == full.best_epoch
    assert rest.val_accuracy == full.val_accuracy
    assert rest.history == full.history


def test_resume_with_other_settings_is_refused(tmp_path):
    x, y = _data()
    cfg = TrainConfig(epochs=2, checkpoint_every=5, batch_size=16)
    train_head(x, y, cfg, workdir=tmp_path)
    with pytest.raises(ResumeError, match="different configuration"):
        train_head(
            x,
            y,
            TrainConfig(epochs=2, lr=0.5, checkpoint_every=5, batch_size=16),
            workdir=tmp_path,
            resume=True,
        )
    (tmp_path / "checkpoint.npz").write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="unreadable"):
        train_head(x, y, cfg, workdir=tmp_path, resume=True)


def test_truncated_checkpoint_is_a_resume_error_not_a_zip_error(tmp_path):
    x, y = _data()
    cfg = TrainConfig(epochs=2, checkpoint_every=5, batch_size=16)
    train_head(x, y, cfg, workdir=tmp_path)
    ck = tmp_path / "checkpoint.npz"
    good = ck.read_bytes()
    for cut in (len(good) // 2, len(good) - 1, 22, 0):
        ck.write_bytes(good[:cut])
        with pytest.raises(ResumeError, match="unreadable.*delete it to start over"):
            train_head(x, y, cfg, workdir=tmp_path, resume=True)
