"""Learning-rate schedules (pure functions of the step) and the data order of each epoch."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SCHEDULES", "batch_rows", "epoch_order", "learning_rate"]

SCHEDULES = ("cosine", "step", "constant")


def learning_rate(
    schedule: str,
    base_lr: float,
    step: int,
    total_steps: int,
    *,
    steps_per_epoch: int = 1,
    step_epochs: int = 30,
    gamma: float = 0.1,
) -> float:
    """Learning rate at global step ``step`` (0-based) of ``total_steps``.

    ``cosine``: ``base_lr * (1 + cos(pi * step / total_steps)) / 2``; ``step``: ``base_lr *
    gamma ** (epoch // step_epochs)``; ``constant``: ``base_lr``.
    """
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    if schedule == "step":
        return base_lr * gamma ** ((step // steps_per_epoch) // step_epochs)
    if schedule == "constant":
        return base_lr
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def epoch_order(seed: int, epoch: int, n: int) -> tuple[int, int]:
    """The epoch's visiting order of ``n`` rows as an affine map ``k -> (a*k + c) mod n``.

    ``a`` is coprime to ``n`` (so the map is a permutation) and both are drawn from a generator
    seeded with ``(seed, epoch)``: the order is a pure function of its arguments, needs no
    O(n) permutation array in RAM, and a resumed run replays it exactly. The feature store is
    shuffled once when it is written, so the composition is a well-mixed order.
    """
    if n <= 1:
        return 1, 0
    rng = np.random.default_rng([int(seed), int(epoch)])
    while True:
        a = int(rng.integers(1, n))
        if math.gcd(a, n) == 1:
            break
    return a, int(rng.integers(0, n))


def batch_rows(seed: int, epoch: int, step_in_epoch: int, batch_size: int, n: int) -> np.ndarray:
    """Rows of step ``step_in_epoch`` of ``epoch`` (a reference for tests and tools)."""
    a, c = epoch_order(seed, epoch, n)
    k = np.arange(step_in_epoch * batch_size, (step_in_epoch + 1) * batch_size, dtype=np.int64)
    return (a * k + c) % n
