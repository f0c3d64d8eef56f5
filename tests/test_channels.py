"""Channel pruning (entropi.host.ladder.channels) against independent counts.

References: parameter counts and MACs recomputed by hand from the pruned network's layer widths
(``k*k*Cin/groups*Cout`` weights and ``H*W`` times that many MACs per conv), torch's own
``torch.utils.flop_counter`` (2 FLOPs per MAC), and the unpruned network's outputs (a rebuilt
network must compute exactly what the pruned one does).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("torch_pruning")

from entropi.export.rung import CheckpointError  # noqa: E402
from entropi.host.ladder.channels import (
    TOLERANCE,
    ChannelPruneError,
    channel_prune,
    channel_widths,
    prunable_count,
    resize_to_widths,
)
from entropi.host.ladder.models import build_encoder, build_model  # noqa: E402

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def smallnet_rungs():
    torch.manual_seed(0)
    dense = build_model("smallnet", 10).eval()
    n = prunable_count(dense.encoder)
    half = channel_prune(dense, round(0.5 * n), X)
    eighth = channel_prune(half, round(0.125 * n), X)
    return dense, half, eighth


def hand_counts(widths: dict[str, list[int]]) -> tuple[int, int]:
    """(conv weights, conv MACs) of smallnet from its widths: 3x3 convs at 32, 16, 8, 4 px."""
    side = {"0": 32, "4": 16, "8": 8, "12": 4}
    params = macs = 0
    for name, (cin, cout, groups) in ((k, v) for k, v in widths.items() if len(v) == 3):
        w = 9 * cin // groups * cout
        params += w
        macs += side[name] ** 2 * w
    return params, macs


def test_a_round_keeps_the_asked_share_of_weights_and_the_feature_width(smallnet_rungs):
    dense, half, eighth = smallnet_rungs
    n = prunable_count(dense.encoder)
    for net, alpha in ((half, 0.5), (eighth, 0.125)):
        assert abs(prunable_count(net.encoder) - alpha * n) <= TOLERANCE * alpha * n
        assert net.encoder(X).shape == (1, 256)  # feature_dim kept
        assert net.head.weight.shape == dense.head.weight.shape
        # nested: every layer is at most as wide as in the previous rung
    for name, w in channel_widths(eighth.encoder).items():
        assert all(a <= b for a, b in zip(w, channel_widths(half.encoder)[name], strict=True))


def test_params_and_macs_match_a_hand_count_and_torchs_flop_counter(smallnet_rungs):
    for net in smallnet_rungs:
        widths = channel_widths(net.encoder)
        params, macs = hand_counts(widths)
        assert params == prunable_count(net.encoder)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net.encoder(X)
        assert counter.get_total_flops() == 2 * macs
    dense_macs = hand_counts(channel_widths(smallnet_rungs[0].encoder))[1]
    eighth_macs = hand_counts(channel_widths(smallnet_rungs[2].encoder))[1]
    assert eighth_macs < 0.2 * dense_macs


@pytest.mark.parametrize("arch", ["smallnet", "resnet18", "mobilenetv3_small"])
def test_a_rung_rebuilds_from_its_widths_and_computes_the_same(arch):
    torch.manual_seed(1)
    dense = build_model(arch, 5).eval()
    pruned = channel_prune(dense, round(0.3 * prunable_count(dense.encoder)), X)
    rebuilt = build_encoder(arch)
    resize_to_widths(rebuilt, channel_widths(pruned.encoder))
    rebuilt.load_state_dict(pruned.encoder.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(X), pruned.encoder(X))
    assert prunable_count(rebuilt) < 0.35 * prunable_count(dense.encoder)


def test_an_impossible_ratio_is_one_clear_error(smallnet_rungs):
    dense = smallnet_rungs[0]
    with pytest.raises(ChannelPruneError, match="one channel left per layer"):
        channel_prune(dense, 10, X)
    with pytest.raises(ChannelPruneError, match="between 1 and"):
        channel_prune(dense, 10**9, X)


def test_bad_widths_are_a_checkpoint_error():
    enc = build_encoder("smallnet")
    for bad in ({"nope": [1, 2, 1]}, {"0": [3, 0, 1]}, {"0": [3, 64, 1]}, {"0": "x"}, [1]):
        with pytest.raises(CheckpointError):
            resize_to_widths(build_encoder("smallnet"), bad)
    resize_to_widths(enc, {})  # no widths: the dense network
    assert isinstance(enc[0], nn.Conv2d) and enc[0].out_channels == 32
