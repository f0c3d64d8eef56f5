"""``[pretrain] init``: state dicts in entropi's layout and torchvision's ResNet18 and
MobileNetV3-small layouts.

The torchvision layouts are written here by hand from torchvision's published key names
(``torchvision.models.resnet18().state_dict()``: conv1, bn1, layer{1-4}.{0,1}.{conv,bn}{1,2},
layer{2-4}.0.downsample.{0,1}, fc; ``mobilenet_v3_small()``: features.0.{0,1},
features.{1-11}.block.{j}.{0,1} / .{fc1,fc2}, features.12.{0,1}, classifier.{0,3}), since
torchvision does not import on this machine.
"""

from __future__ import annotations

import pytest
import torch

from entropi.export.rung import CheckpointError
from entropi.host.ladder.init_state import load_init
from entropi.host.ladder.models import build_encoder, build_model

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
    from entropi.host.run.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="pretrain.epochs must be an integer >= 1"):
        load_config("quickstart", ["pretrain.epochs=0"])
    cfg = load_config("quickstart", ["pretrain.epochs=0", "pretrain.init=x.pt"])
    assert cfg.pretrain.epochs == 0
    for bad in ("pretrain.input_size=4", "pretrain.input_size=1000"):
        with pytest.raises(ConfigError, match="pretrain.input_size"):
            load_config("quickstart", [bad])


# torchvision's mobilenet_v3_small table (input channels, expanded channels, squeeze-excite),
# written out here, not read from entropi.host.ladder.models; strides change no shapes.
TV_MBV3_SMALL = [
    (16, 16, True), (16, 72, False), (24, 88, False), (24, 96, True), (40, 240, True),
    (40, 240, True), (40, 120, True), (48, 144, True), (48, 288, True), (96, 576, True),
    (96, 576, True),
]  # fmt: skip


def torchvision_mobilenetv3_small_names() -> dict[str, str]:
    """entropi ``mobilenetv3_small`` module names -> torchvision's, by hand.

    torchvision: ``features.0`` = Conv2dNormActivation (``.0`` conv, ``.1`` BN); each
    ``features.n.block`` is [expand CNA if exp != in] + depthwise CNA + [SqueezeExcitation
    (fc1, fc2)] + project CNA; ``features.12`` the last CNA; ``classifier.0`` the 576 -> 1024
    linear. entropi flattens each CNA into conv, BN(, activation): stem 0, 1 (+ hardswish 2),
    blocks 3-13 whose ``block`` is [conv, BN, act] (expand) + [conv, BN, act] (depthwise) +
    [SE] + [conv, BN] (project), then conv 14, BN 15, hardswish, pool, flatten, linear 19."""
    names = {"0": "features.0.0", "1": "features.0.1"}
    for n, (cin, exp, se) in enumerate(TV_MBV3_SMALL, start=1):
        own, tv = f"{n + 2}.block", f"features.{n}.block"
        units = (["expand"] if exp != cin else []) + ["dw"] + (["se"] if se else []) + ["project"]
        i = 0  # entropi's index inside ``block``
        for j, unit in enumerate(units):
            if unit == "se":
                names[f"{own}.{i}.fc1"], names[f"{own}.{i}.fc2"] = f"{tv}.{j}.fc1", f"{tv}.{j}.fc2"
                i += 1
            else:
                names[f"{own}.{i}"], names[f"{own}.{i + 1}"] = f"{tv}.{j}.0", f"{tv}.{j}.1"
                i += 2 if unit == "project" else 3  # the project CNA has no activation
    return names | {"14": "features.12.0", "15": "features.12.1", "19": "classifier.0"}


def torchvision_mobilenetv3_small_state(seed: int = 0):
    """A random ``mobilenetv3_small`` encoder and its state dict renamed to torchvision's keys,
    with torchvision's ``classifier.3`` (1024 -> 1000) head added."""
    torch.manual_seed(seed)
    src = build_encoder("mobilenetv3_small")
    g = torch.Generator().manual_seed(seed)
    for m in src.modules():  # non-trivial BN statistics, so a swapped buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
    names = torchvision_mobilenetv3_small_names()
    tv = {}
    for key, value in src.state_dict().items():
        module, tensor = key.rsplit(".", 1)
        tv[f"{names[module]}.{tensor}"] = value.clone()
    tv["classifier.3.weight"] = torch.randn(1000, 1024, generator=g)
    tv["classifier.3.bias"] = torch.randn(1000, generator=g)
    return src, tv


def test_torchvision_mobilenetv3_small_maps_exactly_onto_mobilenetv3_small(tmp_path):
    src, tv = torchvision_mobilenetv3_small_state()
    # torchvision's published parameter count of mobilenet_v3_small (1000 classes)
    params = [v for k, v in tv.items() if "running" not in k and "num_batches" not in k]
    assert sum(v.numel() for v in params) == 2_542_856
    assert {"features.1.block.1.fc1.weight", "features.4.block.2.fc2.bias",
            "features.2.block.2.1.running_var", "features.12.1.num_batches_tracked",
            "classifier.0.weight"} <= set(tv)  # fmt: skip
    torch.save({"model": tv}, tmp_path / "tv.pt")  # as a training checkpoint wraps it
    torch.manual_seed(123)  # a different random init from the source's
    enc = build_encoder("mobilenetv3_small")
    note = load_init(enc, "mobilenetv3_small", tmp_path / "tv.pt")
    assert "torchvision MobileNetV3-small layout, 242 tensors" in note
    assert "every parameter and buffer mapped exactly" in note
    own = enc.state_dict()
    assert own.keys() == src.state_dict().keys()
    for key, value in src.state_dict().items():
        assert torch.equal(own[key], value), key
    assert torch.equal(enc[0].weight, tv["features.0.0.weight"])
    assert torch.equal(enc[3].block[3].fc1.weight, tv["features.1.block.1.fc1.weight"])
    assert torch.equal(enc[4].block[7].running_var, tv["features.2.block.2.1.running_var"])
    assert torch.equal(enc[15].num_batches_tracked, tv["features.12.1.num_batches_tracked"])
    assert torch.equal(enc[19].weight, tv["classifier.0.weight"])
    src.eval(), enc.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(enc(x), src(x), atol=0, rtol=0)


def test_bad_torchvision_mobilenetv3_files_are_checkpoint_errors(tmp_path):
    _, tv = torchvision_mobilenetv3_small_state()
    torch.save(tv, tmp_path / "tv.pt")
    with pytest.raises(CheckpointError, match="torchvision-layout MobileNetV3.*mobilenetv3_small"):
        load_init(build_encoder("resnet18"), "resnet18", tmp_path / "tv.pt")
    cut = {k: v for k, v in tv.items() if not k.startswith("features.11.")}  # truncated
    torch.save(cut, tmp_path / "cut.pt")
    with pytest.raises(
        CheckpointError, match=r"missing keys \['features\.11\.block\.0\.0\.weight'"
    ):
        load_init(build_encoder("mobilenetv3_small"), "mobilenetv3_small", tmp_path / "cut.pt")
    extra = tv | {"features.13.0.weight": torch.zeros(1)}  # e.g. a MobileNetV3-large
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['features\.13\.0\.weight'\]"):
        load_init(build_encoder("mobilenetv3_small"), "mobilenetv3_small", tmp_path / "extra.pt")
    wide = tv | {"features.3.block.1.0.weight": torch.zeros(88, 1, 5, 5)}  # 3x3 there
    torch.save(wide, tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match=r"features\.3\.block\.1\.0\.weight.*\(88, 1, 3, 3\)"):
        load_init(build_encoder("mobilenetv3_small"), "mobilenetv3_small", tmp_path / "wide.pt")
