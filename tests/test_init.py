"""``[pretrain] init``: state dicts in entropi's and torchvision's ResNet18 layout.

The torchvision layout is written here by hand from torchvision's published key names
(``torchvision.models.resnet18().state_dict()``: conv1, bn1, layer{1-4}.{0,1}.{conv,bn}{1,2},
layer{2-4}.0.downsample.{0,1}, fc), since torchvision does not import on this machine.
"""

from __future__ import annotations

import pytest
import torch

from entropi.export.rung import CheckpointError
from entropi.host.init import load_init
from entropi.host.models import build_encoder, build_model

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int, g: torch.Generator) -> dict:
    return {
        f"{prefix}.{k}": (
            torch.tensor(7) if k == "num_batches_tracked" else torch.rand(c, generator=g)
        )
        for k in BN
    }


def torchvision_resnet18_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=g), **_bn("bn1", 64, g)}
    cin = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for block in (0, 1):
            p = f"layer{layer}.{block}"
            i = cin if block == 0 else c
            s[f"{p}.conv1.weight"] = torch.randn(c, i, 3, 3, generator=g)
            s |= _bn(f"{p}.bn1", c, g)
            s[f"{p}.conv2.weight"] = torch.randn(c, c, 3, 3, generator=g)
            s |= _bn(f"{p}.bn2", c, g)
            if block == 0 and layer > 1:
                s[f"{p}.downsample.0.weight"] = torch.randn(c, cin, 1, 1, generator=g)
                s |= _bn(f"{p}.downsample.1", c, g)
        cin = c
    s["fc.weight"], s["fc.bias"] = torch.randn(1000, 512, generator=g), torch.zeros(1000)
    return s


def test_torchvision_resnet18_maps_exactly_onto_resnet18_imagenet(tmp_path):
    tv = torchvision_resnet18_state()
    path = tmp_path / "tv.pt"
    torch.save({"state_dict": tv}, path)
    enc = build_encoder("resnet18_imagenet")
    note = load_init(enc, "resnet18_imagenet", path)
    assert "torchvision ResNet18" in note and "stem" not in note
    # 4 stem modules (conv, bn, relu, max-pool), then the blocks in torchvision's order
    assert torch.equal(enc[0].weight, tv["conv1.weight"])
    assert torch.equal(enc[1].running_var, tv["bn1.running_var"])
    assert torch.equal(enc[4].conv1.weight, tv["layer1.0.conv1.weight"])
    assert torch.equal(enc[7].bn2.bias, tv["layer2.1.bn2.bias"])
    assert torch.equal(enc[8].shortcut[0].weight, tv["layer3.0.downsample.0.weight"])
    assert torch.equal(enc[11].conv2.weight, tv["layer4.1.conv2.weight"])
    n_tv = sum(v.numel() for k, v in tv.items() if not k.startswith("fc.") and "running" not in k
               and "num_batches" not in k)  # fmt: skip
    assert n_tv == sum(p.numel() for p in enc.parameters())  # every parameter came from tv


def test_torchvision_resnet18_onto_the_cifar_resnet18_keeps_only_the_stem(tmp_path):
    tv = torchvision_resnet18_state()
    torch.save(tv, tmp_path / "tv.pt")
    torch.manual_seed(0)
    enc = build_encoder("resnet18")
    stem = enc[0].weight.clone()
    note = load_init(enc, "resnet18", tmp_path / "tv.pt")
    assert "stem conv kept at random init" in note
    assert torch.equal(enc[0].weight, stem) and enc[0].weight.shape == (64, 3, 3, 3)
    assert torch.equal(enc[3].conv1.weight, tv["layer1.0.conv1.weight"])
    assert torch.equal(enc[1].weight, tv["bn1.weight"])


def test_entropi_layouts_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model("smallnet", 5)
    torch.save(model.state_dict(), tmp_path / "clf.pt")
    torch.save(model.encoder.state_dict(), tmp_path / "enc.pt")
    for name in ("clf.pt", "enc.pt"):
        enc = build_encoder("smallnet")
        assert "entropi layout" in load_init(enc, "smallnet", tmp_path / name)
        for a, b in zip(
            enc.state_dict().values(), model.encoder.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)


def test_bad_init_files_are_checkpoint_errors(tmp_path):
    torch.save(torchvision_resnet18_state(), tmp_path / "tv.pt")
    with pytest.raises(CheckpointError, match="torchvision-layout ResNet18; set pretrain.arch"):
        load_init(build_encoder("smallnet"), "smallnet", tmp_path / "tv.pt")
    torch.save(build_encoder("resnet18").state_dict(), tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match="does not fit pretrain.arch = 'smallnet'"):
        load_init(build_encoder("smallnet"), "smallnet", tmp_path / "r.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_init(build_encoder("smallnet"), "smallnet", tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_init(build_encoder("smallnet"), "smallnet", tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_init(build_encoder("smallnet"), "smallnet", tmp_path / "none.pt")


def test_config_epochs_zero_needs_init_and_input_size_range(tmp_path):
    from entropi.host.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="pretrain.epochs must be an integer >= 1"):
        load_config("quickstart", ["pretrain.epochs=0"])
    cfg = load_config("quickstart", ["pretrain.epochs=0", "pretrain.init=x.pt"])
    assert cfg.pretrain.epochs == 0
    for bad in ("pretrain.input_size=4", "pretrain.input_size=1000"):
        with pytest.raises(ConfigError, match="pretrain.input_size"):
            load_config("quickstart", [bad])
