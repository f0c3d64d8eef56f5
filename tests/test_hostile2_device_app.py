"""Hostile input, round two (issue 22) and a new user's trips (issue 23), the device application
and its CLI: folders it writes never followed through planted links (D2), Ctrl-C and SIGTERM as
one line (D10), non-finite checkpoints refused (D16), budget remedies that fit, a head folder
not overwritten without ``--overwrite`` and a failed train that leaves nothing (#9), predict's
output (#10), ``--version`` and help texts (#14)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from entropi.device.budget import plan_memory
from entropi.device.cli import main
from entropi.device.errors import BudgetError, DeviceError

# --- the budget error names only remedies that fit --------------------------------------------


def test_huge_epochs_suggest_fewer_epochs_not_dropping_momentum():
    d, c, budget = 256, 10, 256 * 1024
    with pytest.raises(BudgetError) as e:
        plan_memory(d, c, budget, momentum=True, epochs=10**7)
    msg = str(e.value)
    assert "momentum" not in msg.split("). ")[-1]  # dropping momentum would not fit
    most = int(re.search(r"train at most (\d+) epochs", msg).group(1))
    plan_memory(d, c, budget, momentum=True, epochs=most)  # the suggestion fits ...
    with pytest.raises(BudgetError):
        plan_memory(d, c, budget, momentum=True, epochs=most + 1)  # ... and is the largest


def test_dropping_momentum_is_suggested_only_when_it_fits():
    with pytest.raises(BudgetError, match=r"or train without momentum \(momentum 0: minimum"):
        plan_memory(512, 100, 256 * 1024, momentum=True)
    plan_memory(512, 100, 256 * 1024, momentum=False)
    with pytest.raises(BudgetError) as e:  # too small either way: only a larger budget helps
        plan_memory(512, 100, 100 * 1024, momentum=True)
    assert "without momentum" not in str(e.value) and "epochs" not in str(e.value).split(". ")[-1]


# --- the device application: a bundle and a small npz -----------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_device_bundle import smallnet_bundle

    d = tmp_path_factory.mktemp("app")
    bundle, _ = smallnet_bundle(d, class_names=["r", "g", "b"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(d / "d.npz", x_train=x, y_train=y, class_names=np.array(["r", "g", "b"]))
    return d, bundle


def _device(capsys, *argv):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def _one_line(cap) -> str:
    err = cap.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, cap.err
    return err


def _train_argv(setup, out, *more):
    d, bundle = setup
    return ["train", "--bundle", bundle, "--data", d / "d.npz", "--out", out, "--epochs", "2",
            "--budget", "1MB", *more]  # fmt: skip


# --- D2: folders the device writes are never planted links ------------------------------------


@pytest.mark.parametrize("sub", [".cache", ".work"])
def test_train_refuses_a_planted_link_in_its_folder(setup, tmp_path, capsys, sub):
    outside, out = tmp_path / "outside", tmp_path / "H"
    outside.mkdir()
    out.mkdir()
    (out / sub).symlink_to(outside, target_is_directory=True)
    rc, cap = _device(capsys, *_train_argv(setup, out, "--checkpoint-every", "1"))
    assert rc == 2
    assert f"{sub} is a symbolic link" in _one_line(cap)
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert (out / sub).is_symlink()  # and the link itself left alone


def test_train_refuses_an_out_that_is_a_link(setup, tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "H").symlink_to(elsewhere, target_is_directory=True)
    rc, cap = _device(capsys, *_train_argv(setup, tmp_path / "H"))
    assert rc == 2 and "is a symbolic link" in _one_line(cap)
    assert list(elsewhere.iterdir()) == []


def test_the_feature_store_temporary_is_never_followed(setup, tmp_path):
    """A link planted at the store's temporary name is replaced, not written through."""
    from entropi.device.features import extract_features

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    store = tmp_path / "cache" / "train.npy"
    store.parent.mkdir()
    (store.parent / f".train.npy.{os.getpid()}.tmp").symlink_to(victim)
    x = np.zeros((3, 2, 2, 3), np.uint8)
    feats, _ = extract_features(
        lambda a: np.ones((len(a), 4), np.float32), x, None, input_shape=(3, 2, 2),
        mean=[0, 0, 0], std=[1, 1, 1], feature_dim=4, out_path=store,
    )  # fmt: skip
    assert victim.read_text() == "keep" and feats.shape == (3, 4)


# --- #9: an existing head is not overwritten; resume says where it starts; a failure leaves none


def test_train_refuses_to_overwrite_a_head_unless_asked(setup, tmp_path, capsys):
    out = tmp_path / "H"
    assert _device(capsys, *_train_argv(setup, out))[0] == 0
    head = (out / "head.npz").read_bytes()
    rc, cap = _device(capsys, *_train_argv(setup, out, "--seed", "3"))
    assert rc == 2
    err = _one_line(cap)
    assert "already holds head.npz and train.json" in err and "--overwrite" in err
    assert (out / "head.npz").read_bytes() == head
    rc, cap = _device(capsys, *_train_argv(setup, out, "--seed", "3", "--overwrite"))
    assert rc == 0, cap.err
    assert (out / "head.npz").read_bytes() != head


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(setup, tmp_path, capsys):
    out = tmp_path / "H"
    rc, cap = _device(capsys, *_train_argv(setup, out, "--resume"))
    assert rc == 0, cap.err
    err = _one_line(cap)
    assert "warning: no checkpoint at" in err and "training starts from scratch" in err
    assert "--checkpoint-every N" in err  # the default saves none: say how to get one


def test_a_failed_train_leaves_no_cache_and_no_lock(setup, tmp_path, capsys):
    out = tmp_path / "new" / "H"
    # refused by the planner after the feature store was written
    rc, cap = _device(capsys, *_train_argv(setup, out)[:-1], "4KB")
    assert rc == 2 and "minimum is" in _one_line(cap)
    assert not out.exists()  # nor .cache, nor .entropi.lock
    out.mkdir()
    rc, cap = _device(capsys, *_train_argv(setup, out)[:-1], "4KB")
    assert rc == 2
    assert sorted(p.name for p in out.iterdir()) in ([], [".entropi.lock"])


# --- D16: a checkpoint with NaN weights is refused; no NaN ever reaches train.json -----------


def test_resume_refuses_a_checkpoint_with_nan_weights(setup, tmp_path, capsys):
    from entropi.device._npz import load_npz, save_npz

    out = tmp_path / "H"
    argv = _train_argv(setup, out, "--checkpoint-every", "1")
    assert _device(capsys, *argv)[0] == 0
    ck = out / ".work" / "checkpoint.npz"
    arrays = load_npz(ck)
    arrays["weights"][0, 0] = np.nan
    save_npz(ck, arrays)
    head, report = (out / "head.npz").read_bytes(), (out / "train.json").read_text()
    rc, cap = _device(capsys, *argv, "--resume")
    assert rc == 2
    err = _one_line(cap)
    assert "checkpoint" in err and "impossible state" in err and "weights" in err
    assert (out / "head.npz").read_bytes() == head and (out / "train.json").read_text() == report


def test_a_diverged_head_is_an_error_never_written():
    from entropi.device import TrainConfig, train_head

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((40, 8)) * 3e37).astype(np.float32)  # logits overflow float32
    with pytest.raises(DeviceError, match="training diverged"):
        train_head(x, np.arange(40) % 2, TrainConfig(epochs=3, lr=100, momentum=0, patience=0))


# --- D10: Ctrl-C and SIGTERM are one line --------------------------------------------------------


def _wait_for(path, proc, seconds=120):
    t = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t < seconds, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_device_train_is_one_line(setup, tmp_path, sig, status):
    out = tmp_path / "H"
    # patience 0: no early stop, so the signal always lands mid-training (with early stopping a
    # fast machine finished first and the signal hit the interpreter's shutdown: status -2)
    argv = _train_argv(setup, out, "--checkpoint-every", "1", "--patience", "0")
    argv[argv.index("--epochs") + 1] = "10000"  # never reached: killed once a checkpoint exists
    # SIGINT at its default in the child: a shell that starts the suite as a background job
    # ignores SIGINT, the child inherits that, and Python then installs no Ctrl-C handler
    proc = subprocess.Popen(
        [sys.executable, "-m", "entropi.device.cli", *map(str, argv)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    _wait_for(out / ".work" / "checkpoint.npz", proc)
    assert proc.poll() is None, "training ended before the signal could interrupt it"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, err
    assert f"continue from {out / '.work' / 'checkpoint.npz'}" in line and "--resume" in line
    assert not (out / ".cache").exists()


def test_sigterm_on_the_host_cli_is_one_line(monkeypatch, capsys):
    import entropi.host.cli as host_cli

    def killed(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at once
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(host_cli, "_cmd_criteria", killed)
    before = signal.getsignal(signal.SIGTERM)
    assert host_cli.main(["criteria", "--list"]) == 143
    assert _one_line(capsys.readouterr()) == "entropi criteria: terminated (SIGTERM)"
    assert signal.getsignal(signal.SIGTERM) is before  # restored


# --- #10 predict, #14 the CLI -------------------------------------------------------------------


def test_predict_a_flat_folder_names_files_and_ranked_classes(setup, tmp_path, capsys):
    from PIL import Image

    d, bundle = setup
    out = tmp_path / "H"
    assert _device(capsys, *_train_argv(setup, out))[0] == 0
    flat = tmp_path / "flat"
    flat.mkdir()
    rng = np.random.default_rng(1)
    for name in ("b.png", "a.jpg"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(flat / name)
    rc, cap = _device(capsys, "predict", "--bundle", bundle, "--head", out, "--data", flat,
                      "--top", "3")  # fmt: skip
    assert rc == 0, cap.err
    preds = json.loads(cap.out)
    assert [p["file"] for p in preds] == [str(flat / "a.jpg"), str(flat / "b.png")]
    for p in preds:
        top = p["top"]
        assert [t["name"] for t in top] and {t["name"] for t in top} == {"r", "g", "b"}
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
        assert (p["class"], p["name"], p["probability"]) == tuple(top[0].values())


def test_device_version_and_help_without_markup(capsys):
    from entropi.common.provenance import package_version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == (
        f"entropi-device {package_version()}"
    )
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_a_train_json_with_a_bare_nan_is_refused(tmp_path):
    from entropi.device import TrainReport

    (tmp_path / "train.json").write_text('{"accuracy": NaN}')
    with pytest.raises(DeviceError, match="NaN is not a JSON number"):
        TrainReport.read(tmp_path)
