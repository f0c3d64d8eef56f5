"""Pruning: exact kept counts, nested masks, schedule golden values, zeros kept by retraining."""

import math

import pytest
import torch

from entropi.host.ladder.models import build_encoder, build_model, prunable_parameters
from entropi.host.ladder.prune import (
    apply_masks,
    count_nonzero,
    dense_masks,
    geometric_alphas,
    global_magnitude_masks,
)


def test_geometric_alphas_golden():
    assert geometric_alphas(0.5, 0.2) == [1.0, 0.5, 0.25]
    assert geometric_alphas(0.5, 0.25) == [1.0, 0.5, 0.25]
    a = geometric_alphas(0.75, 0.01)
    assert len(a) == 17 and a[-1] == pytest.approx(0.75**16) and a[-1] >= 0.01


@pytest.mark.parametrize("k, amin", [(0.0, 0.1), (1.0, 0.1), (0.5, 0.0), (0.5, 1.5)])
def test_geometric_alphas_rejects(k, amin):
    with pytest.raises(ValueError, match="must be in"):
        geometric_alphas(k, amin)


@pytest.mark.parametrize("arch", ["smallnet", "mobilenetv3_small"])
def test_ladder_exact_counts_and_nested(arch):
    torch.manual_seed(0)
    enc = build_encoder(arch)
    n = sum(p.numel() for _, p in prunable_parameters(enc))
    masks = dense_masks(enc)
    for alpha in geometric_alphas(0.5, 0.01)[1:]:
        new = global_magnitude_masks(enc, masks, alpha)
        kept = sum(int(m.sum()) for m in new.values())
        assert kept == round(alpha * n)
        for name in masks:  # nested: nothing pruned comes back
            assert not (new[name] & ~masks[name]).any()
        apply_masks(enc, new)
        assert count_nonzero(enc)[0] == kept  # random init has no exact zeros
        masks = new


@pytest.mark.parametrize("floor", [0.0, 0.1, 0.5])
def test_layer_floor_keeps_every_layer_alive_and_counts_exact(floor):
    """MobileNetV3-small's 576 -> 1024 linear is emptied by global pruning; a floor keeps
    ceil(floor * alpha * size) of each layer's largest weights, exact totals, nested masks."""
    torch.manual_seed(0)
    enc = build_encoder("mobilenetv3_small")
    params = prunable_parameters(enc)
    n = sum(p.numel() for _, p in params)
    masks = dense_masks(enc)
    for alpha in geometric_alphas(0.5, 0.007)[1:]:
        new = global_magnitude_masks(enc, masks, alpha, layer_floor=floor)
        assert sum(int(m.sum()) for m in new.values()) == round(alpha * n)
        for name, p in params:
            assert not (new[name] & ~masks[name]).any()
            need = min(math.ceil(floor * alpha * p.numel()), int(masks[name].sum()))
            assert int(new[name].sum()) >= need
            if floor:  # the floor is the layer's largest magnitudes among those it kept
                kept = p.detach().abs()[new[name]]
                dropped = p.detach().abs()[masks[name] & ~new[name]]
                if len(dropped) and int(new[name].sum()) == need:
                    assert kept.min() >= dropped.max()
        masks = new
    last = dict(params)
    assert (int(masks["19.weight"].sum()) == 0) == (floor == 0.0)  # the linear: empty w/o floor
    assert last["19.weight"].shape == (1024, 576)
    with pytest.raises(ValueError, match="layer_floor"):
        global_magnitude_masks(enc, dense_masks(enc), 0.5, layer_floor=1.5)


def test_zero_floor_is_the_global_rule():
    torch.manual_seed(1)
    enc = build_encoder("smallnet")
    a = global_magnitude_masks(enc, dense_masks(enc), 0.1)
    b = global_magnitude_masks(enc, dense_masks(enc), 0.1, layer_floor=0.0)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keeps_largest_magnitudes():
    enc = torch.nn.Sequential(torch.nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        enc[0].weight.copy_(torch.tensor([[0.1, -3.0, 2.0, -0.5]]))
    m = global_magnitude_masks(enc, dense_masks(enc), 0.5)
    assert m["0.weight"].tolist() == [[False, True, True, False]]


def test_alpha_must_not_increase():
    enc = build_encoder("smallnet")
    m = global_magnitude_masks(enc, dense_masks(enc), 0.25)
    with pytest.raises(ValueError, match="nested"):
        global_magnitude_masks(enc, m, 0.5)
    with pytest.raises(ValueError, match="alpha must be in"):
        global_magnitude_masks(enc, m, 0.0)


def test_zeros_survive_retraining():
    from entropi.host.ladder.train import train
    from entropi.host.run.config import PretrainConfig

    torch.manual_seed(0)
    model = build_model("smallnet", 3)
    masks = global_magnitude_masks(model.encoder, dense_masks(model.encoder), 0.1)
    apply_masks(model.encoder, masks)
    x = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    y = torch.randint(0, 3, (64,))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    train(
        model,
        x,
        y,
        PretrainConfig(arch="smallnet", epochs=2, batch_size=16, lr=0.1, weight_decay=1e-3),
        masks=masks,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    for name, p in prunable_parameters(model.encoder):
        assert torch.all(p[~masks[name]] == 0.0), name  # exactly zero, not just small
        assert torch.any(p[masks[name]] != before[name][masks[name]])  # kept weights trained
