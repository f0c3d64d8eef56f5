"""Host-side linear probe: train a softmax head on frozen encoder features, report accuracy.

Features are standardized with the training mean and std (the head is linear, so this changes
only the optimization, not what is reachable), then a linear layer is trained with Adam on
mini-batches. Deterministic for a given seed.

:func:`cross_validated_probe` is the ground truth for targets whose test split is small: the
binomial standard error of an accuracy on n test images is sqrt(p (1 - p) / n), 3.7 points for
PACS photo's 171, larger than most differences between rungs. k-fold cross-validation over train
and test pooled tests every image once (n = all of them) while each fold still trains on
(k - 1) / k of the pool. The fold assignment
(:func:`~entropi.host.selection.criteria.stratified_folds`,
shared with the ``cv_probe`` criterion) is a few lines of numpy (scikit-learn is not a runtime
dependency of the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from entropi.export.threads import cpu_threads

from ..run.config import ProbeConfig
from .criteria import stratified_folds
from .entropy import FeatureError

__all__ = ["ProbeResult", "cross_validated_probe", "linear_probe", "stratified_folds"]


@dataclass(frozen=True)
class ProbeResult:
    train_accuracy: float
    test_accuracy: float
    final_loss: float
    test_n: int = 0
    """images the test accuracy is measured on."""


def _as_tensor(a: np.ndarray, name: str, device) -> torch.Tensor:
    a = np.asarray(a)
    if a.ndim != 2:
        raise FeatureError(f"{name} must be 2-D (samples x features), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise FeatureError(f"{name} contains NaN/inf")
    return torch.as_tensor(a, dtype=torch.float32, device=device)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    cfg: ProbeConfig | None = None,
    *,
    num_classes: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """Train ``Linear(features, num_classes)`` on (train_x, train_y); top-1 on (test_x, test_y).

    ``cfg`` is the ``[probe]`` section (epochs, batch size, AdamW learning rate and decay);
    ``None`` means its defaults.

    On the CPU this runs single-threaded: the matrices are small, and intra-op threading made the
    probe 18x slower on a busy 2-core machine (9.6 s vs 0.55 s for 5,000 x 256, 20 epochs).
    """
    with cpu_threads(1, device):
        return _linear_probe(
            train_x,
            train_y,
            test_x,
            test_y,
            cfg or ProbeConfig(),
            num_classes=num_classes,
            seed=seed,
            device=device,
        )


def _linear_probe(
    train_x, train_y, test_x, test_y, cfg: ProbeConfig, *, num_classes, seed, device
) -> ProbeResult:
    epochs, batch_size, lr, weight_decay = cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay
    xtr = _as_tensor(train_x, "train_x", device)
    xte = _as_tensor(test_x, "test_x", device)
    if xtr.shape[1] != xte.shape[1]:
        raise FeatureError(f"train/test feature widths differ: {xtr.shape[1]} vs {xte.shape[1]}")
    ytr = torch.as_tensor(np.asarray(train_y), dtype=torch.int64, device=device)
    yte = torch.as_tensor(np.asarray(test_y), dtype=torch.int64, device=device)
    for name, y in (("train_y", ytr), ("test_y", yte)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise FeatureError(f"{name} has labels outside [0, {num_classes})")
    mu = xtr.mean(0, keepdim=True)
    sd = xtr.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    gen = torch.Generator(device="cpu").manual_seed(seed)
    head = torch.nn.Linear(xtr.shape[1], num_classes).to(device)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(xtr)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(head(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        train_acc = float((head(xtr).argmax(1) == ytr).float().mean())
        test_acc = float((head(xte).argmax(1) == yte).float().mean())
    return ProbeResult(train_acc, test_acc, float(loss.detach()), len(yte))


def cross_validated_probe(
    x: np.ndarray,
    y: np.ndarray,
    cfg: ProbeConfig,
    *,
    folds: int,
    num_classes: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ProbeResult:
    """k-fold cross-validated :func:`linear_probe` over all of (x, y): fold f trains on the other
    folds (standardized with their statistics) and predicts fold f; test_accuracy is the share of
    all samples predicted right, train_accuracy and final_loss the folds' means."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise FeatureError(f"{len(x)} feature rows but {len(y)} labels")
    fold = stratified_folds(y, folds, seed)
    right, train_acc, loss = 0.0, [], []
    for f in range(folds):
        tr, te = fold != f, fold == f
        r = linear_probe(
            x[tr], y[tr], x[te], y[te], cfg, num_classes=num_classes, seed=seed, device=device
        )
        right += r.test_accuracy * r.test_n
        train_acc.append(r.train_accuracy)
        loss.append(r.final_loss)
    return ProbeResult(
        float(np.mean(train_acc)), float(round(right) / len(y)), float(np.mean(loss)), len(y)
    )
