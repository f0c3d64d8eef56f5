"""entropi-device end to end on a tiny ONNX bundle made here."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_device_bundle import smallnet_bundle

from entropi.common.cliargs import field_docs
from entropi.device import TrainConfig, TrainReport
from entropi.device.cli import COMMANDS, build_parser, main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    bundle, _ = smallnet_bundle(d, class_names=["r", "g", "b"])
    rng = np.random.default_rng(0)

    def images(n):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 100, (n, 32, 32, 3))
        x[np.arange(n), :, :, y] += 150  # colour = class
        return x.astype(np.uint8), y

    xtr, ytr = images(120)
    xte, yte = images(30)
    names = np.array(["r", "g", "b"])  # the head takes the data's class names, never the bundle's
    np.savez(d / "data.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, class_names=names)
    np.savez(d / "small.npz", x_train=np.zeros((4, 28, 28, 3), np.uint8), y_train=[0, 1, 2, 0])
    return d, bundle


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "--bundle" in capsys.readouterr().out


def test_train_eval_predict_end_to_end(setup, capsys):
    d, bundle = setup
    out = d / "head"
    argv = [
        "train",
        "--bundle",
        str(bundle),
        "--data",
        str(d / "data.npz"),
        "--budget",
        "64KB",
        "--epochs",
        "40",
        "--lr",
        "20",
        "--momentum",
        "0",
        "--weight-decay",
        "0",
        "--patience",
        "40",
        "--out",
        str(out),
        "--checkpoint-every",
        "5",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    rep = json.loads((out / "train.json").read_text())
    for key in (
        "accuracy",
        "peak_bytes",
        "analytic_bytes",
        "budget_bytes",
        "steps_per_second",
        "samples",
        "plan",
    ):
        assert key in rep
    assert rep["accuracy_split"] == "test" and rep["accuracy"] >= 0.9
    assert rep["analytic_bytes"] <= rep["peak_bytes"] <= rep["budget_bytes"] == 65536
    assert summary["accuracy"] == rep["accuracy"]
    assert rep["config"]["momentum"] == 0.0 and rep["config"]["budget"] == "64KB"
    assert TrainReport.read(out).to_dict() == rep
    assert TrainReport.read(out / "train.json").summary() == {
        k: v for k, v in summary.items() if k != "peak"
    }
    assert (
        main(["eval", "--bundle", str(bundle), "--head", str(out), "--data", str(d / "data.npz")])
        == 0
    )
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(rep["test_accuracy"])
    assert (
        main(
            ["predict", "--bundle", str(bundle), "--head", str(out), "--data", str(d / "data.npz")]
        )
        == 0
    )
    preds = json.loads(capsys.readouterr().out)
    assert len(preds) == 30 and preds[0]["name"] in {"r", "g", "b"}


def test_train_bad_input_exits_2_and_writes_nothing(setup, capsys):
    d, bundle = setup
    out = d / "nohead"
    base = ["train", "--bundle", str(bundle), "--out", str(out)]
    assert main([*base, "--data", str(d / "data.npz"), "--budget", "8KB"]) == 2
    assert "minimum is" in capsys.readouterr().err
    from PIL import Image

    (d / "one" / "cat").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(d / "one" / "cat" / "a.png")
    assert main([*base, "--data", str(d / "one"), "--budget", "1MB"]) == 2
    assert "single class ('cat')" in capsys.readouterr().err
    assert main([*base, "--data", str(d / "data.npz"), "--budget", "12XB"]) == 2
    assert "invalid size '12XB'" in capsys.readouterr().err
    assert not (out / "head.npz").exists() and not (out / "train.json").exists()


def _train_parser():
    return build_parser()._subparsers._group_actions[0].choices["train"]


def test_train_flags_are_the_train_config_fields_with_their_defaults():
    actions = {a.dest: a for a in _train_parser()._actions}
    docs = field_docs(TrainConfig)
    defaults = build_parser().parse_args(["train", "--bundle", "b", "--data", "d", "--out", "o"])
    for f in dataclasses.fields(TrainConfig):
        assert f.name in actions, f"no flag for TrainConfig.{f.name}"
        assert docs.get(f.name), f"TrainConfig.{f.name} has no docstring"
        assert actions[f.name].option_strings == ["--" + f.name.replace("_", "-")]
        assert actions[f.name].default == f.default, f.name
        assert getattr(defaults, f.name) == f.default, f.name
        assert docs[f.name] in " ".join(actions[f.name].help.split())
    # one default per parameter: the CLI builds exactly TrainConfig()'s settings
    from entropi.common.cliargs import dataclass_from_args

    assert dataclass_from_args(TrainConfig, defaults) == TrainConfig()
    assert TrainConfig().budget == "256KB" and TrainConfig().budget_bytes == 262144


def test_errors_are_one_line_and_exit_2(setup, tmp_path, capsys):
    d, bundle = setup
    base = ["train", "--bundle", str(bundle), "--data", str(d / "data.npz")]
    # a bad budget: a TrainConfigError (an EntropiError)
    assert main([*base, "--out", str(tmp_path / "h"), "--budget", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entropi-device train: error: budget must be a size")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # a bad path: the head folder cannot be made under a regular file (an OSError)
    (tmp_path / "file").write_text("x")
    assert main([*base, "--out", str(tmp_path / "file" / "head")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("entropi-device train: error: ") and str(tmp_path / "file") in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # a missing head folder for eval
    argv = ["eval", "--bundle", str(bundle), "--head", str(tmp_path / "none")]
    assert main([*argv, "--data", str(d / "data.npz")]) == 2
    assert "error: no head at" in capsys.readouterr().err
