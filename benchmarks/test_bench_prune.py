"""One pruning round's masking on ResNet18: global magnitude masks (eq. 7) + applying them."""

from __future__ import annotations

import torch

from entropi.host.ladder.models import build_encoder
from entropi.host.ladder.prune import (
    apply_masks,
    count_nonzero,
    dense_masks,
    global_magnitude_masks,
)

KEEP = 0.75


def test_prune_round_resnet18(benchmark):
    encoder = build_encoder("resnet18")
    masks = dense_masks(encoder)
    n = sum(int(m.numel()) for m in masks.values())

    def prune_round() -> dict[str, torch.Tensor]:
        new = global_magnitude_masks(encoder, masks, KEEP)
        apply_masks(encoder, new)
        return new

    new = benchmark(prune_round)
    kept = sum(int(m.sum()) for m in new.values())
    assert kept == round(KEEP * n)
    assert count_nonzero(encoder) == (kept, n)  # random init has no exact zeros
    # nested: nothing the previous masks pruned is kept
    assert all(
        not bool((nm & ~m).any()) for m, nm in zip(masks.values(), new.values(), strict=True)
    )
