"""Models: feature widths, head shapes, parameter counts, unknown architectures."""

import pytest
import torch

from entropi.host.ladder.models import (
    ARCHITECTURES,
    build_encoder,
    build_model,
    prunable_parameters,
)


@pytest.mark.parametrize(
    "arch, dim, params",
    # CIFAR ResNet18 has 11,173,962 parameters with a 10-way head (the usual published count)
    [("resnet18", 512, 11_173_962), ("mobilenetv3_small", 1024, None), ("smallnet", 256, None)],
)
def test_shapes(arch, dim, params):
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.encoder(x)
        logits = model(x)
    assert feats.shape == (2, dim) and model.feature_dim == dim
    assert logits.shape == (2, 10)
    assert torch.equal(model.head(feats), logits)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_prunable_parameters_are_conv_and_linear_weights():
    enc = build_encoder("resnet18")
    names = [n for n, _ in prunable_parameters(enc)]
    assert len(names) == 20  # 17 3x3 convs + 3 1x1 shortcut convs
    assert all(n.endswith(".weight") for n in names)


def test_unknown_architecture_lists_known():
    with pytest.raises(
        ValueError, match="known architectures: " + ", ".join(sorted(ARCHITECTURES))
    ):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        build_model("smallnet", 1)


def test_host_facade_exports_resolve():
    import entropi.host as host

    for name in host.__all__:
        assert getattr(host, name) is not None
