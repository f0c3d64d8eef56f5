"""Configs: shipped files validate, bad values name the key and range, TOML round-trips."""

import pytest

from entropi.host.config import ConfigError, config_to_toml, load_config, shipped_configs


def test_every_shipped_config_validates():
    shipped = shipped_configs()
    assert {"quickstart", "paper", "paper_mobilenetv3"} <= set(shipped)
    for name in shipped:
        cfg = load_config(name)
        assert cfg.pretrain.arch in ("smallnet", "resnet18", "mobilenetv3_small")


def test_round_trip(tmp_path):
    cfg = load_config("quickstart")
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    again = load_config(path)
    assert again == cfg and again.digest() == cfg.digest()


@pytest.mark.parametrize(
    "text, match",
    [
        (
            '[pretrain]\narch = "vgg"',
            "known: mobilenetv3_small, resnet18, resnet18_imagenet, smallnet",
        ),
        ('[data]\nsource = "imagenet"', "known: cifar10, cifar100"),
        ("[prune]\nkeep_per_round = 1.5", r"prune.keep_per_round must be in \(0.0, 1.0\)"),
        ("[prune]\nalpha_min = 0", r"prune.alpha_min must be in \(0.0, 1.0\]"),
        ("[entropy]\nlevels = 1", r"entropy.levels must be an integer in \[2, 1024\]"),
        ("[pretrain]\nepochs = 0", "pretrain.epochs must be an integer >= 1"),
        ("[pretrain]\nepoch = 3", r"unknown key\(s\) \['epoch'\] in \[pretrain\]"),
        ("seed = -1", "seed must be an integer >= 0"),
        ("[pretrain", "not valid TOML"),
    ],
)
def test_bad_values(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_unknown_config_name_lists_shipped():
    with pytest.raises(ConfigError, match="shipped: .*quickstart"):
        load_config("no-such-config")


def test_run_and_device_cli_train_heads_the_same_way_by_default():
    """`entropi run quickstart` and `entropi-device train` with no overrides: same TrainConfig."""
    from entropi.device.cli import build_parser
    from entropi.device.cliargs import dataclass_from_args
    from entropi.device.config import TrainConfig

    args = build_parser().parse_args(["train", "--bundle", "b", "--data", "d", "--out", "o"])
    from_cli = dataclass_from_args(TrainConfig, args)
    assert from_cli == TrainConfig()
    for name in ("quickstart", "paper", "paper_mobilenetv3"):
        cfg = load_config(name)
        assert cfg.seed == 0 and cfg.head_training == from_cli, name


def test_device_train_section_is_the_device_dataclass(tmp_path):
    import dataclasses

    from entropi.device.config import TrainConfig
    from entropi.host.config import DeviceTrainConfig

    host = {f.name: f.default for f in dataclasses.fields(DeviceTrainConfig)}
    device = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert host == {**device, "enabled": True}
    bad = tmp_path / "bad.toml"
    bad.write_text("[device_train]\nseed = 3\n")
    with pytest.raises(ConfigError, match="top-level `seed`"):
        load_config(bad)
    bad.write_text('[device_train]\nbudget = "lots"\n')
    with pytest.raises(ConfigError, match=r"invalid \[device_train\]"):
        load_config(bad)
    seeded = tmp_path / "s.toml"
    seeded.write_text("seed = 7\n")
    assert load_config(seeded).head_training.seed == 7


@pytest.mark.parametrize(
    "sets, check",
    [
        (["pretrain.epochs=2"], lambda c: c.pretrain.epochs == 2),
        (
            ["prune.keep_per_round=0.25", "seed=3"],
            lambda c: (c.prune.keep_per_round, c.seed) == (0.25, 3),
        ),
        (['export.formats=["onnx"]'], lambda c: c.export.formats == ["onnx"]),
        (["device_train.budget=1MB"], lambda c: c.device_train.budget == "1MB"),
        (["export.enabled=false"], lambda c: c.export.enabled is False),
    ],
)
def test_overrides_apply_like_the_file(sets, check):
    cfg = load_config("quickstart", sets)
    assert check(cfg)
    assert load_config("quickstart") != cfg  # the shipped file is untouched


@pytest.mark.parametrize(
    "text, match",
    [
        ("pretrain.epochs=0", "pretrain.epochs must be an integer >= 1"),
        ("pretrain.epoch=3", r"unknown key\(s\) \['epoch'\] in \[pretrain\]"),
        ("nosuch.key=1", r"unknown section \[nosuch\]"),
        ("pretrain", "expects SECTION.KEY=VALUE"),
        ("a.b.c=1", "expects SECTION.KEY=VALUE"),
        ("pretrain=1", "is a section"),
        ("entropy.levels=1", r"entropy.levels must be an integer in \[2, 1024\]"),
    ],
)
def test_bad_overrides_name_the_key(text, match):
    with pytest.raises(ConfigError, match=match):
        load_config("quickstart", [text])
