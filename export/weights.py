"""Which weights of an encoder are pruned, what they count, and what a writer stored sparse.

:func:`prunable_parameters` is the one definition of the pruned weights (every conv and linear
weight, REFERENCE eq. 7) shared by the host's pruning, the rung record and the exporter's size
accounting; it lives in the export layer, the lowest one that holds torch modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["SparseStats", "WeightStats", "prunable_parameters", "weight_stats"]


def prunable_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weights that IMP prunes: every conv and linear weight of ``module`` (eq. 7).

    Biases and batch-norm parameters are not pruned. Order is the module order, which fixes the
    layout of flat masks.
    """
    return [
        (f"{name}.weight" if name else "weight", m.weight)
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]


class WeightStats(NamedTuple):
    """What :func:`weight_stats` counts."""

    nnz: int
    """Non-zero prunable weights."""
    n_weights: int
    """Elements of the prunable weights."""
    dense_bytes: int
    """float32 bytes of all parameters (batch norms included)."""


def weight_stats(module: nn.Module) -> WeightStats:
    """Non-zeros and element count of the prunable weights, float32 bytes of all parameters."""
    weights = [p for _, p in prunable_parameters(module)]
    nnz = int(sum(int(torch.count_nonzero(p)) for p in weights))
    numel = int(sum(p.numel() for p in weights))
    dense_bytes = 4 * int(sum(p.numel() for p in module.parameters()))
    return WeightStats(nnz, numel, dense_bytes)


@dataclass(frozen=True)
class SparseStats:
    """What a format's writer stored sparse (ONNX ``sparse_initializer``, TFLite
    ``SparsityParameters``)."""

    tensors: int
    """Weight tensors stored sparse."""
    nnz: int
    """Non-zeros in them."""
    numel: int
    """Dense elements they stand for."""
