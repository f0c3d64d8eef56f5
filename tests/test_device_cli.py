"""entropi-device end to end on a tiny ONNX bundle made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_device_bundle import MEAN, STD, export_onnx

from entropi.device.bundle import write_bundle
from entropi.device.cli import COMMANDS, main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    export_onnx(d / "enc.onnx")
    bundle = write_bundle(
        d / "bundle",
        encoder_files={"encoder.onnx": d / "enc.onnx"},
        input_shape=[3, 32, 32],
        normalization={"mean": MEAN, "std": STD},
        feature_dim=256,
        class_names=["r", "g", "b"],
    )
    rng = np.random.default_rng(0)

    def images(n):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 100, (n, 32, 32, 3))
        x[np.arange(n), :, :, y] += 150  # colour = class
        return x.astype(np.uint8), y

    xtr, ytr = images(120)
    xte, yte = images(30)
    np.savez(d / "data.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
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
    assert main([*base, "--data", str(d / "small.npz"), "--budget", "1MB"]) == 2
    assert "images are 28x28x3" in capsys.readouterr().err
    assert main([*base, "--data", str(d / "data.npz"), "--budget", "12XB"]) == 2
    assert "invalid size '12XB'" in capsys.readouterr().err
    assert not (out / "head.npz").exists() and not (out / "train.json").exists()
