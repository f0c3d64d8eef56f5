"""Configs: shipped files validate, bad values name the key and range, TOML round-trips."""

import pytest

from entropi.host.run.config import ConfigError, config_to_toml, load_config, shipped_configs


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
    from entropi.common.cliargs import dataclass_from_args
    from entropi.device.cli import build_parser
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
    from entropi.host.run.config import DeviceTrainConfig

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


def _write(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, match",
    [
        ('[device_train]\nbudget = "abc"', "invalid size 'abc'"),
        ('[device_train]\nbudget = "1B"', r"budget = '1B' \(1 B\) cannot hold any head"),
        ('[device_train]\nbudget = "10KB"', "even 1 feature x 2 classes over 30 epochs needs"),
        ("[device_train]\nbudget = 100", r"\(100 B\) cannot hold any head"),
        ("[device_train]\nbudget = 1.5", "device_train.budget must be a string or an integer"),
    ],
)
def test_budget_is_parsed_and_checked_at_load(tmp_path, text, match):
    """A budget no head training loop fits fails at load, not in the device stage at the end."""
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    "text, budget", [('"256KB"', "256KB"), ('"unlimited"', "unlimited"), ("262144", 262144)]
)
def test_budgets_that_fit_some_head_load(tmp_path, text, budget):
    cfg = load_config(_write(tmp_path, f"[device_train]\nbudget = {text}"))
    assert cfg.device_train.budget == budget


def test_invalid_budget_fails_before_a_run_folder_exists(tmp_path, capsys):
    """An invalid config can never be saved, so no run is left that neither the saved nor a
    corrected config could resume."""
    from entropi.host import cli

    out = tmp_path / "r"
    assert (
        cli.main(["run", "quickstart", "--set", "device_train.budget=1B", "--out", str(out)]) == 2
    )
    assert "cannot hold any head training loop" in capsys.readouterr().err
    assert not out.exists()


def test_a_saved_config_that_no_longer_validates_says_so(tmp_path):
    from entropi.host.run.rundir import open_run

    run = tmp_path / "r"
    run.mkdir()
    text = config_to_toml(load_config("quickstart")).replace('budget = "256KB"', 'budget = "1B"')
    (run / "config.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"the saved config .*config.toml does not validate"):
        open_run(None, run, resume=True)


@pytest.mark.parametrize(
    "sets, match",
    [
        (["data.root=5"], "data.root must be a string, got 5"),
        (["data.download=no"], r"data.download must be a boolean \(true/false\), got 'no'"),
        (['data.download="no"'], r"data.download must be a boolean \(true/false\), got 'no'"),
        (["data.download=1"], r"data.download must be a boolean \(true/false\), got 1"),
        (["export.enabled=yes"], r"export.enabled must be a boolean \(true/false\), got 'yes'"),
        (["device_train.enabled=0"], r"device_train.enabled must be a boolean"),
        (["name=5"], "name must be a string, got 5"),
        (['data.target_domains="photo"'], "data.target_domains must be a list of strings"),
        (["data.target_domains=[1]"], "data.target_domains must be a list of strings"),
        (["seed=true"], "seed must be an integer, got True"),
        (["pretrain.lr=true"], "pretrain.lr must be a finite number, got True"),
    ],
)
def test_wrong_types_are_refused(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config("quickstart", sets)


def test_cuda_without_a_gpu_fails_before_a_run_folder_exists(tmp_path, monkeypatch):
    import torch

    from entropi.host.run.rundir import open_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config("quickstart", ["device=cuda"])
    with pytest.raises(ConfigError, match="device = 'cuda' but no CUDA device is visible"):
        open_run(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_data_root_of_wrong_type_leaves_no_run_folder(tmp_path, capsys):
    from entropi.host import cli

    out = tmp_path / "r"
    assert cli.main(["run", "quickstart", "--set", "data.root=5", "--out", str(out)]) == 2
    assert "data.root must be a string, got 5" in capsys.readouterr().err
    assert not out.exists()


def test_a_ladder_of_too_many_rungs_is_refused():
    from entropi.host.run.config import MAX_RUNGS

    with pytest.raises(
        ConfigError, match=r"plans 49,616 rungs \(about [0-9.]+ GB of smallnet"
    ) as e:
        load_config("quickstart", ["prune.keep_per_round=0.9999"])
    assert f"more than {MAX_RUNGS}" in str(e.value) and "prune.alpha_min" in str(e.value)
    # the keep_per_round the message suggests fits
    fit = float(str(e.value).split("at most ")[1].split()[0])
    assert load_config("quickstart", [f"prune.keep_per_round={fit}"]).prune.keep_per_round == fit


def test_planned_rungs_is_the_length_of_the_ladder():
    from entropi.host.ladder.alphas import geometric_alphas, planned_rungs

    for keep in (0.1, 0.25, 0.5, 0.75, 0.9, 0.95):
        for alpha_min in (1.0, 0.5, 0.25, 0.1, 0.007, 0.005, 1e-3):
            assert planned_rungs(keep, alpha_min) == len(geometric_alphas(keep, alpha_min))
