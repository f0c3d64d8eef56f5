"""Iterative magnitude pruning (ENTROPI eq. 7): global, unstructured, nested masks.

A ladder keeps ``alpha_r = keep_per_round ** r`` of the prunable weights (conv + linear weights of
the encoder) at round ``r``. Each round keeps exactly ``round(alpha_r * n)`` weights: the largest
magnitudes among the weights the previous round kept, so masks are nested by construction.

Purely global magnitude pruning can empty a whole layer whose weights are small by
initialization (measured: MobileNetV3-small's 576 -> 1024 linear at alpha 0.125, after which
every feature is a constant and the rung is dead). ``layer_floor`` (``[prune] layer_floor``,
default 0 = the paper's rule) guards against this: every layer keeps at least
``ceil(layer_floor * alpha * size)`` of its largest weights, so no layer is pruned more than
``1 / layer_floor`` times harder than the average; the rest are chosen globally as before. The
floors sum to at most ``layer_floor * keep``, so any ``layer_floor`` in [0, 1] is feasible.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .alphas import geometric_alphas
from .models import prunable_parameters

__all__ = [
    "Masks",
    "apply_masks",
    "count_nonzero",
    "dense_masks",
    "geometric_alphas",
    "global_magnitude_masks",
]

Masks = dict[str, torch.Tensor]
"""Prunable weight name (as in :func:`prunable_parameters`) -> bool tensor of the same shape."""


def dense_masks(encoder: nn.Module) -> Masks:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in prunable_parameters(encoder)}


def global_magnitude_masks(
    encoder: nn.Module, masks: Masks, alpha: float, layer_floor: float = 0.0
) -> Masks:
    """New masks keeping exactly ``round(alpha * n)`` of the ``n`` prunable weights.

    The kept weights are those of largest ``|w|`` among those ``masks`` keeps (ties broken by
    position, deterministically), so the result is nested in ``masks``; with ``layer_floor`` > 0
    each layer first keeps its ``ceil(layer_floor * alpha * size)`` largest (or all it still
    has, if fewer). Raises if ``alpha`` asks for more weights than ``masks`` keeps.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if not 0.0 <= layer_floor <= 1.0:
        raise ValueError(f"layer_floor must be in [0, 1], got {layer_floor!r}")
    params = prunable_parameters(encoder)
    names = [n for n, _ in params]
    if set(names) != set(masks):
        raise ValueError(f"masks do not match the encoder's prunable weights: {sorted(masks)}")
    n = sum(p.numel() for _, p in params)
    keep = max(1, round(alpha * n))
    kept_now = sum(int(masks[name].sum()) for name in names)
    if keep > kept_now:
        raise ValueError(
            f"alpha={alpha} keeps {keep} weights but the current masks keep only {kept_now}: "
            "masks are nested, alpha must not increase"
        )
    with torch.no_grad():
        scores = torch.cat(
            [
                torch.where(
                    masks[name], p.detach().abs().float(), torch.tensor(-1.0, device=p.device)
                ).flatten()
                for name, p in params
            ]
        )
        if layer_floor > 0.0:
            offset = 0
            for name, p in params:
                floor = min(math.ceil(layer_floor * alpha * p.numel()), int(masks[name].sum()))
                seg = scores[offset : offset + p.numel()]
                top = torch.sort(seg, descending=True, stable=True).indices[:floor]
                seg[top] = float("inf")  # kept first; ties among them by position, as below
                offset += p.numel()
        # stable descending sort: equal magnitudes keep the earlier position
        order = torch.sort(scores, descending=True, stable=True).indices[:keep]
        flat = torch.zeros(n, dtype=torch.bool, device=scores.device)
        flat[order] = True
    out: Masks = {}
    offset = 0
    for name, p in params:
        out[name] = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    return out


@torch.no_grad()
def apply_masks(encoder: nn.Module, masks: Masks) -> None:
    """Zero every pruned weight in place (call after every optimizer step)."""
    for name, p in prunable_parameters(encoder):
        p.mul_(masks[name].to(device=p.device, dtype=p.dtype))


def count_nonzero(encoder: nn.Module) -> tuple[int, int]:
    """(non-zero prunable weights, total prunable weights)."""
    params = prunable_parameters(encoder)
    return (
        sum(int(torch.count_nonzero(p)) for _, p in params),
        sum(p.numel() for _, p in params),
    )
