"""Channel pruning: a rung that is a smaller dense network, not a masked one.

Unstructured magnitude pruning (:mod:`.prune`, the paper's method) zeroes weights but leaves
nearly every channel alive, so a runtime without sparse kernels (TensorFlow Lite Micro, most
MCU and NPU stacks) runs a pruned rung at the dense rung's cost. Channel pruning removes whole
channels: every runtime then stores and computes less.

Dependency tracking (which convs, BNs, residual adds, depthwise groups and squeeze-excite convs
must lose the same channels) is Torch-Pruning's ``DependencyGraph``; this module only chooses
how much to remove. One round (:func:`channel_prune`):

- importance: the L2 norm of each channel's weights summed over its dependency group
  (``MagnitudeImportance(p=2)``), the structured counterpart of the magnitude rule;
- what is counted: ``keep_per_round`` counts the **prunable parameters** (the conv and linear
  weights of :func:`~entropi.export.weights.prunable_parameters`, the magnitude ladder's ``n``),
  so a channel rung at ``alpha`` has the magnitude rung's non-zero count at the same ``alpha``;
- how much: every group loses the same fraction of its channels (Torch-Pruning's local
  pruning), the fraction found by bisection so that the network keeps ``round(alpha * n_dense)``
  prunable parameters within :data:`TOLERANCE` (channels are discrete);
- what stays: the encoder's output width (``feature_dim``) and the source head, so features of
  every rung have the same size and a device head fits any rung.

A rung records its channel widths (:func:`channel_widths`); :func:`resize_to_widths` rebuilds
the smaller network from a freshly built dense one before its state dict is loaded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from entropi.export.rung import CheckpointError
from entropi.export.weights import prunable_parameters

from ..errors import ConfigError

__all__ = [
    "TOLERANCE",
    "ChannelPruneError",
    "channel_prune",
    "channel_widths",
    "prunable_count",
    "resize_to_widths",
]

TOLERANCE = 0.02
"""Largest relative miss of the prunable-parameter target a round accepts."""

_BISECT_STEPS = 24


class ChannelPruneError(ConfigError):
    """A channel ladder cannot reach the asked size (a layer would lose every channel)."""


def prunable_count(encoder: nn.Module) -> int:
    """Number of prunable weights (conv and linear weights of the encoder)."""
    return sum(p.numel() for _, p in prunable_parameters(encoder))


def channel_widths(encoder: nn.Module) -> dict[str, list[int]]:
    """``{module name: widths}`` of every conv (``[in, out, groups]``), linear (``[in, out]``)
    and batch norm (``[features]``): what :func:`resize_to_widths` needs."""
    out: dict[str, list[int]] = {}
    for name, m in encoder.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, nn.Linear):
            out[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            out[name] = [m.num_features]
    return out


def _ints(value: Any, n: int, where: str) -> list[int]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != n
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise CheckpointError(f"{where}: widths must be {n} positive integers, got {value!r}")
    return list(value)


def resize_to_widths(encoder: nn.Module, widths: dict[str, Any], where: str = "rung") -> None:
    """Give ``encoder``'s convs, linears and batch norms the ``widths`` of a channel rung, in
    place (fresh parameters of the new shapes; load the rung's state dict after). A width that
    names no such module of the architecture, or grows a module, is a
    :class:`~entropi.export.rung.CheckpointError`."""
    if not isinstance(widths, dict):
        raise CheckpointError(
            f"{where}: channel widths must be a dict, got {type(widths).__name__}"
        )
    modules = dict(encoder.named_modules())
    unknown = sorted(k for k in widths if not isinstance(modules.get(k), _RESIZABLE))
    if unknown:
        raise CheckpointError(
            f"{where}: channel widths name modules the encoder lacks: {unknown[:5]}"
        )
    for name, value in widths.items():
        m = modules[name]
        if isinstance(m, nn.Conv2d):
            cin, cout, groups = _ints(value, 3, f"{where}: {name}")
            if cin > m.in_channels or cout > m.out_channels or cin % groups or cout % groups:
                raise CheckpointError(
                    f"{where}: {name} cannot be {value} (built {channel_widths(m)['']})"
                )
            m.in_channels, m.out_channels, m.groups = cin, cout, groups
            m.weight = nn.Parameter(m.weight.new_empty(cout, cin // groups, *m.kernel_size))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(cout))
        elif isinstance(m, nn.Linear):
            cin, cout = _ints(value, 2, f"{where}: {name}")
            if cin > m.in_features or cout > m.out_features:
                raise CheckpointError(f"{where}: {name} cannot grow to {value}")
            m.in_features, m.out_features = cin, cout
            m.weight = nn.Parameter(m.weight.new_empty(cout, cin))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(cout))
        else:
            (c,) = _ints(value, 1, f"{where}: {name}")
            if c > m.num_features:
                raise CheckpointError(f"{where}: {name} cannot grow to {value}")
            m.num_features = c
            for attr in ("weight", "bias"):
                if getattr(m, attr) is not None:
                    setattr(m, attr, nn.Parameter(getattr(m, attr).new_empty(c)))
            for attr in ("running_mean", "running_var"):
                if getattr(m, attr) is not None:
                    setattr(m, attr, getattr(m, attr).new_empty(c))


_RESIZABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


def _output_layer(encoder: nn.Module) -> nn.Module:
    """The last conv or linear of the encoder: its output channels are the features."""
    last = None
    for m in encoder.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            last = m
    if last is None:
        raise ChannelPruneError("the encoder has no conv or linear layer to prune")
    return last


def _pruned_copy(model: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` (a Classifier) with ``ratio`` of every prunable group's channels
    removed, features and head kept."""
    # lazy: optional: only channel pruning uses it
    import torch_pruning as tp

    clone = copy.deepcopy(model).eval()
    ignored = [clone.head, _output_layer(clone.encoder)]
    pruner = tp.pruner.MagnitudePruner(
        clone,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        global_pruning=False,
    )
    pruner.step()
    return clone


def channel_prune(model: nn.Module, keep: int, example: torch.Tensor) -> nn.Module:
    """A copy of the Classifier ``model`` whose encoder keeps ``keep`` prunable weights
    (within :data:`TOLERANCE`), channels removed as in the module docstring. ``model`` is left
    as it is. Raises :class:`ChannelPruneError` when ``keep`` is above what ``model`` has or
    below what removing all but one channel per group leaves."""
    have = prunable_count(model.encoder)
    if not 1 <= keep <= have:
        raise ChannelPruneError(
            f"a channel round must keep between 1 and the {have:,} prunable weights the "
            f"network has, asked for {keep:,}"
        )
    if keep == have:
        return copy.deepcopy(model)
    top = _max_ratio(model)
    floor = prunable_count(_pruned_copy(model, top, example).encoder) if top > 0 else have
    if keep < floor * (1 - TOLERANCE):
        raise ChannelPruneError(
            f"channel pruning cannot keep only {keep:,} prunable weights: with one channel left "
            f"per layer the encoder still has {floor:,} (raise [prune] alpha_min)"
        )
    lo, hi = 0.0, top  # ratio lo keeps >= keep; hi keeps fewer
    best = None
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        pruned = _pruned_copy(model, mid, example)
        n = prunable_count(pruned.encoder)
        if abs(n - keep) <= TOLERANCE * keep:
            return pruned
        if n > keep:
            lo = mid
        else:
            hi, best = mid, pruned
    return best if best is not None else _pruned_copy(model, top, example)


def _max_ratio(model: nn.Module) -> float:
    """The largest uniform ratio that leaves every prunable layer at least one channel:
    Torch-Pruning keeps ``int(c * (1 - ratio))`` of a group's ``c`` channels and skips a group
    it would empty (so the kept count would jump back up above this ratio); the bisection
    stays at or below ``1 - 1 / c`` for the narrowest layer that can still shrink."""
    out = _output_layer(model.encoder)
    widths = [
        m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for m in model.encoder.modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m is not out
    ]
    widths = [c for c in widths if c > 1]
    return 1.0 - 1.0 / min(widths) if widths else 0.0
