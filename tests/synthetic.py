"""Synthetic pruned encoders for tests and benchmarks (random weights, no training).

A test helper, not part of the package: tests import it as ``synthetic`` (pytest puts tests/ on
``sys.path``), the benchmarks through :mod:`entropi.benchmarks.synthetic_models`.

``randomize_batchnorm_`` gives batch norms non-trivial statistics (a fresh encoder's BN is the
identity in eval mode, which would make folding untested); ``magnitude_prune_`` applies one global
unstructured magnitude mask (REFERENCE eq. 7) keeping ``round(alpha * n)`` weights;
``kill_channels_`` zeroes every weight of a random subset of output channels, which is what
iterative magnitude pruning of a trained network does to many channels at alpha ~ 0.01.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from entropi.export import RungInfo, prunable_parameters
from entropi.host.ladder.models import build_encoder

__all__ = [
    "SLOW_ARCHS",
    "LazyTable",
    "arch_params",
    "fake_rung_meta",
    "kill_channels_",
    "magnitude_prune_",
    "randomize_batchnorm_",
    "synthetic_encoder",
]


def synthetic_encoder(
    arch: str,
    *,
    alpha: float = 1.0,
    kill: float = 0.0,
    seed: int = 0,
    positive_shifts: bool = False,
) -> nn.Module:
    """A seeded random eval-mode encoder: non-trivial BN statistics, ``kill`` of every layer's
    output channels zeroed, then pruned to ``alpha``.

    With ``positive_shifts`` every batch-norm shift is > 0, so each dead channel outputs a
    positive constant after ReLU / hardswish (the case zero-padded convs cannot simply drop).
    """
    torch.manual_seed(seed)
    encoder = randomize_batchnorm_(build_encoder(arch), seed)
    if positive_shifts:
        with torch.no_grad():
            for m in encoder.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.bias.abs_().add_(0.1)
    if kill > 0:
        kill_channels_(encoder, kill, seed=seed)
    if alpha < 1:
        magnitude_prune_(encoder, alpha)
    return encoder.eval()


def randomize_batchnorm_(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm random affine parameters and running statistics (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return encoder.eval()


def magnitude_prune_(encoder: nn.Module, alpha: float) -> int:
    """Zero all but the ``round(alpha * n)`` largest-magnitude prunable weights, globally.

    Returns the number of non-zeros kept.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    params = [p for _, p in prunable_parameters(encoder)]
    flat = torch.cat([p.detach().abs().reshape(-1) for p in params])
    keep = round(alpha * flat.numel())
    if keep >= flat.numel():
        return int(flat.numel())
    order = torch.argsort(flat, descending=True, stable=True)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[order[:keep]] = True
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.mul_(mask[offset : offset + n].reshape(p.shape))
            offset += n
    return keep


def kill_channels_(encoder: nn.Module, fraction: float, seed: int = 0) -> int:
    """Zero every weight of a random ``fraction`` of output channels of each conv/linear whose
    weight is prunable (never all of them). Returns the number of channels killed."""
    g = torch.Generator().manual_seed(seed)
    killed = 0
    with torch.no_grad():
        for _, p in prunable_parameters(encoder):
            out = p.shape[0]
            n = min(int(fraction * out), out - 1)
            idx = torch.randperm(out, generator=g)[:n]
            p[idx] = 0.0
            killed += n
    return killed


def fake_rung_meta(encoder: nn.Module, arch: str, **overrides: object) -> RungInfo:
    """A :class:`RungInfo` for ``encoder`` (rung 0, 32x32 inputs, CIFAR-10's normalization;
    alpha and nnz measured from its prunable weights); ``overrides`` replace fields."""
    params = [p for _, p in prunable_parameters(encoder)]
    n = sum(p.numel() for p in params)
    nnz = int(sum(int(torch.count_nonzero(p)) for p in params))
    info = RungInfo(
        arch=arch,
        feature_dim=int(getattr(encoder, "feature_dim", 0)),
        input_shape=(3, 32, 32),
        normalization={"mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616]},
        alpha=nnz / n,
        nnz=nnz,
        n_prunable=n,
        source_dataset="synthetic",
        num_source_classes=10,
        source_accuracy=float("nan"),
        index=0,
    )
    return dataclasses.replace(info, **overrides)


# the architectures slow to convert and export (about a minute of the per-architecture export tests)
SLOW_ARCHS = ("mobilenetv3_small", "resnet18_imagenet")


def arch_params(archs):
    """``archs`` as pytest params, those in SLOW_ARCHS marked slow (the full suite runs them)."""
    # lazy: the benchmarks import this module (entropi.benchmarks.synthetic_models) without pytest
    import pytest

    return [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in archs]


class LazyTable(dict):
    """A dict that builds a missing entry as ``make(*key)`` on first use: a module fixture of
    several architectures then builds only those whose tests run (the slow ones are left to the
    full suite by ``pytest.mark.slow`` params)."""

    def __init__(self, make) -> None:
        super().__init__()
        self._make = make

    def __missing__(self, key):
        value = self[key] = self._make(*key)
        return value
