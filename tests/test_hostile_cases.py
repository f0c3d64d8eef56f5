"""Cases of the fault campaign not pinned elsewhere: the CLI paths of a device resume on other
data or a truncated checkpoint, test splits whose images do not fit, a real race of two fresh
runs, a resumed run racing another resume, and sizes in GB accepted by both parsers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_concurrency import _holder

from entropi.common.lock import LOCK_NAME


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from test_device_bundle import smallnet_bundle

    return smallnet_bundle(tmp_path_factory.mktemp("cases"), class_names=["r", "g", "b"])[0]


def _images(n, seed=0, shape=(32, 32, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % 3


def _device(capsys, *argv):
    from entropi.device.cli import main

    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap


def _one_line(cap) -> str:
    err = cap.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, cap.err
    return err


# --- entropi-device train --resume ----------------------------------------------------------------


def _train_argv(bundle, data, out):
    return [
        "train", "--bundle", str(bundle), "--data", str(data), "--out", str(out),
        "--epochs", "2", "--budget", "1MB", "--checkpoint-every", "2",
    ]  # fmt: skip


def test_cli_resume_with_an_npz_of_permuted_labels_is_refused(bundle, tmp_path, capsys):
    x, y = _images(30)
    data, out = tmp_path / "d.npz", tmp_path / "head"
    np.savez(data, x_train=x, y_train=y)
    argv = _train_argv(bundle, data, out)
    rc, cap = _device(capsys, *argv)
    assert rc == 0, cap.err
    assert (out / ".work" / "checkpoint.npz").is_file()
    head = (out / "head.npz").read_bytes()
    # another file of the same name and shape: the same images, the labels permuted
    np.savez(data, x_train=x, y_train=np.random.default_rng(1).permutation(y))
    rc, cap = _device(capsys, *argv, "--resume")
    assert rc == 2
    err = _one_line(cap)
    assert "checkpoint" in err and "different configuration or data" in err
    assert (out / "head.npz").read_bytes() == head  # nothing was trained on the other labels
    np.savez(data, x_train=x, y_train=y)  # the original data resumes
    rc, cap = _device(capsys, *argv, "--resume")
    assert rc == 0, cap.err


def test_cli_resume_from_a_truncated_work_checkpoint_is_one_line(bundle, tmp_path, capsys):
    x, y = _images(30)
    data, out = tmp_path / "d.npz", tmp_path / "head"
    np.savez(data, x_train=x, y_train=y)
    argv = _train_argv(bundle, data, out)
    assert _device(capsys, *argv)[0] == 0
    ck = out / ".work" / "checkpoint.npz"
    good = ck.read_bytes()
    for cut in (len(good) // 2, 100, 0):
        ck.write_bytes(good[:cut])
        rc, cap = _device(capsys, *argv, "--resume")
        assert rc == 2
        err = _one_line(cap)
        assert re.search(r"checkpoint .*checkpoint\.npz is unreadable.*delete it", err), err


# --- test splits that do not fit the training images ----------------------------------------------


@pytest.mark.parametrize(
    "x_test, match",
    [
        (_images(5, shape=(32, 32, 5))[0], r"x_test must be uint8 \(N, H, W\[, 1\|3\|4\]\)"),
        (_images(5, shape=(32,))[0], r"x_test must be uint8 \(N, H, W\[, 1\|3\|4\]\)"),
        (np.zeros((5, 32, 32, 3), np.float32), "x_test must be uint8"),
    ],
    ids=["5-channels", "rank-2", "float32"],
)
def test_a_test_split_of_other_images_is_refused_before_training(
    bundle, tmp_path, capsys, x_test, match
):
    x, y = _images(12)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x_test, y_test=np.arange(5) % 3)
    out = tmp_path / "head"
    rc, cap = _device(capsys, *_train_argv(bundle, tmp_path / "d.npz", out))
    assert rc == 2
    assert re.search(match, _one_line(cap))
    assert not (out / ".cache" / "train.npy").exists() and not (out / "head.npz").exists()


def test_a_test_split_of_another_size_is_converted_like_the_train_split(bundle, tmp_path, capsys):
    """Images of any size go through the bundle's preprocess: a 16 x 16 grey test split is
    scored, not refused."""
    x, y = _images(12)
    xt = _images(6, shape=(16, 16))[0]
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=np.arange(6) % 3)
    rc, cap = _device(capsys, *_train_argv(bundle, tmp_path / "d.npz", tmp_path / "head"))
    assert rc == 0, cap.err
    rep = json.loads((tmp_path / "head" / "train.json").read_text())
    assert rep["accuracy_split"] == "test" and 0 <= rep["test_accuracy"] <= 1


# --- run folders: two fresh runs at once, two resumes ---------------------------------------------

RACE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_pipeline import tiny_config
    from entropi.common.lock import LockError
    from entropi.host.run.rundir import open_run
    go = Path({go!r})
    cfg = tiny_config({root!r})
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.002)
    try:
        cfg, run = open_run(cfg, {folder!r})
    except LockError as e:
        print("refused", e, flush=True)
        sys.exit(3)
    print("opened", flush=True)
    sys.stdin.readline()  # hold the run until the test has seen both outcomes
    """
)


@pytest.mark.slow
def test_two_fresh_runs_started_together_one_wins(tmp_path):
    """Both processes pass their imports, then open the same new folder at the same moment: one
    opens it, the other is refused by the lock (not by a half-made run, not both)."""
    folder, go = tmp_path / "run", tmp_path / "go"
    code = RACE.format(
        tests=str(Path(__file__).parent), go=str(go), root=str(tmp_path / "imgs"),
        folder=str(folder),
    )  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    try:
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
        go.write_text("")
        said = sorted(p.stdout.readline().strip() for p in procs)
    finally:
        for p in procs:
            p.communicate("", timeout=120)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3] and said[0] == "opened", said
    assert "run folder" in said[1] and "is in use by pid" in said[1]
    assert (folder / "config.toml").is_file()
    info = json.loads((folder / "run.json").read_text())
    assert len(info["invocations"]) == 1  # one run opened it, not two


def test_a_second_resume_of_a_run_in_use_is_one_line_and_writes_nothing(tmp_path, capsys):
    from test_pipeline import tiny_config

    from entropi.host import cli
    from entropi.host.run.rundir import open_run

    folder = tmp_path / "run"
    _, run = open_run(tiny_config(tmp_path / "imgs"), folder)
    run.lock.release()
    p = _holder(
        "from entropi.host.run.rundir import open_run; "
        f"cfg, run = open_run(None, {str(folder)!r}, resume=True)"
    )
    try:
        before = (folder / "run.json").read_bytes()
        assert cli.main(["run", "--resume", "--out", str(folder)]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("entropi: error: ")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"is in use by pid {p.pid}" in lines[0]
        assert (folder / "run.json").read_bytes() == before
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == p.pid
    finally:
        p.communicate("")


# --- sizes in GB ----------------------------------------------------------------------------------


def test_budget_in_gb_is_accepted_by_the_device_cli_parser():
    from entropi.common.cliargs import dataclass_from_args
    from entropi.device.cli import build_parser
    from entropi.device.config import TrainConfig

    argv = ["train", "--bundle", "b", "--data", "d", "--out", "o", "--budget", "10GB"]
    cfg = dataclass_from_args(TrainConfig, build_parser().parse_args(argv))
    assert cfg.budget_bytes == 10 * 1024**3


@pytest.mark.parametrize("budget", ["1GB", "10GB", "1.5gb"])
def test_budget_in_gb_is_accepted_by_the_host_config(tmp_path, budget):
    from entropi.host.run.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(f'[device_train]\nbudget = "{budget}"\n')
    assert load_config(path).device_train.budget == budget
    assert load_config("quickstart", [f'device_train.budget="{budget}"']).device_train.budget == (
        budget
    )


# --- a bundle with an empty class list ------------------------------------------------------------


def test_a_bundle_with_fewer_than_two_class_names_is_refused(tmp_path, capsys):
    """Found by this audit: class_names [] passed the schema, train then wrote a head that
    eval/predict refused. A classifier needs at least two classes, so the manifest says so."""
    from test_bundle_hostile import make_bundle, manifest_of, put_manifest, tiny_onnx

    from entropi.device import BundleError, load_bundle

    enc = tiny_onnx(tmp_path / "e.onnx")
    with pytest.raises(BundleError, match=r"class_names: expected at least 2 entries"):
        make_bundle(tmp_path / "b0", enc, class_names=[])
    b = make_bundle(tmp_path / "b", enc, class_names=["a", "b"])
    m = manifest_of(b)
    m["class_names"] = ["only"]
    put_manifest(b, m)
    with pytest.raises(BundleError, match=r"class_names: expected at least 2 entries"):
        load_bundle(b)


@pytest.mark.parametrize("name", ["../../etc", "a/b", ".hidden", "back\\slash"])
def test_a_run_name_must_be_a_plain_folder_name(name):
    from entropi.host.run.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="name must be a plain folder name"):
        load_config("quickstart", [f'name="{name}"'])


def test_found_in_review(tmp_path):
    """A file name ending in a newline passed the schema's "$" (Python's matches before a final
    newline) and then raised a KeyError; a 10**400 TOML integer raised OverflowError."""
    from test_bundle_hostile import make_bundle, manifest_of, put_manifest, tiny_onnx

    from entropi.device import BundleError, load_bundle
    from entropi.host.run.config import ConfigError, config_from_dict

    b = make_bundle(tmp_path / "b", tiny_onnx(tmp_path / "e.onnx"), class_names=["a", "b"])
    m = manifest_of(b)
    m["encoders"] = {"encoder.onnx\n": m["encoders"]["encoder.onnx"]}
    put_manifest(b, m)
    with pytest.raises(BundleError, match="not a valid manifest"):
        load_bundle(b)
    with pytest.raises(ConfigError, match="prune.alpha_min must be a finite number"):
        config_from_dict({"prune": {"alpha_min": 10**400}})
