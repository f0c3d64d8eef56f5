"""One writer per output folder, and a resume that finds other data: the lock file refuses a
second process (naming it), is taken over when its holder died, is re-entrant in one process;
run folders and device head folders take it before they check or write anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from entropi.common.lock import LOCK_NAME, LockError, lock_folder
from entropi.device import ResumeError, TrainConfig, train_head

HOLD = textwrap.dedent(
    """
    import sys, time
    {setup}
    print("locked", flush=True)
    sys.stdin.readline()
    """
)


def _holder(setup: str) -> subprocess.Popen:
    """A process that takes a lock (``setup``), says so, and keeps it until its stdin closes."""
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(setup=setup)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "out"
    p = _holder(f"from entropi.common.lock import lock_folder; l = lock_folder({str(folder)!r})")
    try:
        with pytest.raises(LockError, match=rf"folder {folder} is in use by pid {p.pid} on "):
            lock_folder(folder)
        info = json.loads((folder / LOCK_NAME).read_text())
        assert info["pid"] == p.pid and "started" in info and "command" in info
    finally:
        p.communicate("")
    with lock_folder(folder):  # released by its holder: free again
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    p = _holder(f"from entropi.common.lock import lock_folder; l = lock_folder({str(folder)!r})")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == p.pid  # stale file is there
    with lock_folder(folder):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_in_one_process_and_cleans_up_what_it_made(tmp_path):
    folder = tmp_path / "new"
    a = lock_folder(folder)
    b = lock_folder(folder)  # the study opens one ladder folder for many targets
    a.release()
    p = subprocess.run(
        [sys.executable, "-c", f"from entropi.common.lock import lock_folder; "
         f"lock_folder({str(folder)!r})"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 1 and "LockError" in p.stderr  # b still holds it
    b.release()
    assert not folder.exists()  # made by the lock and left empty: removed again
    kept = tmp_path / "kept"
    with lock_folder(kept):
        (kept / "result.json").write_text("{}")
    assert (kept / "result.json").is_file()


def test_a_run_folder_in_use_is_refused_before_anything_is_checked_or_written(tmp_path):
    from test_pipeline import tiny_config

    from entropi.host.run.rundir import open_run

    folder = tmp_path / "run"
    p = _holder(f"from entropi.common.lock import lock_folder; l = lock_folder({str(folder)!r})")
    try:
        cfg = tiny_config(tmp_path / "imgs")
        with pytest.raises(LockError, match="run folder .* is in use by pid"):
            open_run(cfg, folder)  # a fresh run racing another one into the same folder
        with pytest.raises(LockError, match="in use"):
            open_run(None, folder, resume=True)
        assert sorted(q.name for q in folder.iterdir()) == [LOCK_NAME]  # nothing written
    finally:
        p.communicate("")
    cfg2, run = open_run(cfg, folder)
    assert run.config.is_file()
    run.lock.release()


@pytest.fixture(scope="module")
def bundle_and_data(tmp_path_factory):
    from test_device_bundle import smallnet_bundle

    d = tmp_path_factory.mktemp("dev")
    bundle, _ = smallnet_bundle(d)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    x = rng.integers(0, 100, (60, 32, 32, 3))
    x[np.arange(60), :, :, y] += 150
    np.savez(d / "data.npz", x_train=x.astype(np.uint8), y_train=y)
    return bundle, d / "data.npz"


def test_two_device_trainings_into_one_head_folder(tmp_path, bundle_and_data):
    bundle, data = bundle_and_data
    out = tmp_path / "head"
    p = _holder(f"from entropi.common.lock import lock_folder; l = lock_folder({str(out)!r})")
    try:
        r = subprocess.run(
            [sys.executable, "-m", "entropi.device.cli", "train", "--bundle", str(bundle),
             "--data", str(data), "--out", str(out)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"head folder {out} is in use by pid {p.pid}" in r.stderr
        assert not (out / "head.npz").exists()
    finally:
        p.communicate("")


def _data(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 200)
    x = (rng.standard_normal((4, 12))[y] + rng.standard_normal((200, 12))).astype(np.float32)
    return x, y


def test_resume_with_other_data_of_the_same_shape_is_refused(tmp_path):
    x, y = _data()
    cfg = TrainConfig(epochs=2, checkpoint_every=5, batch_size=16)
    train_head(x, y, cfg, workdir=tmp_path)
    permuted = np.random.default_rng(1).permutation(y)
    with pytest.raises(ResumeError, match="different configuration or data"):
        train_head(x, permuted, cfg, workdir=tmp_path, resume=True)
    x2 = x.copy()
    x2[0, 0] += 1.0
    with pytest.raises(ResumeError, match="different configuration or data"):
        train_head(x2, y, cfg, workdir=tmp_path, resume=True)
    again = train_head(x, y, cfg, workdir=tmp_path, resume=True)  # the same data resumes
    assert np.isfinite(again.weights).all()


def test_a_bug_prints_its_traceback_and_asks_for_a_report(monkeypatch, capsys):
    from entropi.device import cli as device_cli
    from entropi.host import cli as host_cli

    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(device_cli.COMMANDS, "eval", (*device_cli.COMMANDS["eval"][:2], boom))
    assert device_cli.main(["eval", "--bundle", "b", "--data", "d", "--head", "h"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "internal error" in err and "please report it" in err
    monkeypatch.setattr(host_cli, "_cmd_entropy", boom)
    parser, table = host_cli._build_parser()
    monkeypatch.setattr(host_cli, "_build_parser", lambda: (parser, {**table, "entropy": boom}))
    assert host_cli.main(["entropy", "x.npy"]) == 1
    err = capsys.readouterr().err
    assert "ZeroDivisionError: a bug" in err and "entropi: internal error" in err


def test_only_entropi_temporaries_of_a_reused_folder_are_removed(tmp_path):
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    mine = folder / ".results.json.ab3_k9Zq.tmp"  # an atomic write a killed writer left
    users = folder / ".notes.txt.tmp"  # not one of entropi's names
    other = folder / "sub" / ".train.npy.4242.tmp"  # in a folder another writer locks
    for p in (mine, users, other):
        p.write_text("x")
    (folder / "sub" / LOCK_NAME).write_text("{}")
    with lock_folder(folder) as first:  # never locked before: nothing is touched
        assert first.removed == [] and mine.exists()
    with lock_folder(folder) as again:  # an entropi writer was here: its temporaries go
        assert again.removed == [mine]
    assert users.exists() and other.exists() and not mine.exists()
