"""`entropi study --nproc 2` (torchrun, gloo, 2 CPU processes) against one process.

A study of two ladders (``s0``, ``s1``: smallnet, seeds 0 and 1, 3 rungs each) x one target on
the session's tiny image folder (3 classes, 48 training and 18 test images):

1. Ladder ``s0`` is built by one process (this one) in ``two/ladders/s0``.
2. ``entropi study STUDY --out two --nproc 2`` (the CLI's own torchrun launch, the workers
   carrying test_distributed.py's audit hooks): rank 0 checks that ``s0`` is this study's ladder
   and reuses it, both ranks build ``s1`` (DDP), each pair's rungs are scored split over the two
   ranks (rungs 0 and 2 on rank 0, rung 1 on rank 1), rank 0 selects and summarizes.
3. The reference: ``entropi study STUDY --out one`` in one process on copies of ``two``'s two
   ladders (so the ladders are identical and nothing is trained; it only scores).

Scoring is exact: each rung is scored by one rank exactly as one process scores it (same seeds,
one BLAS thread on both sides), so the scores, features, picks and study.json's pairs and
summary of the two studies must be equal bit for bit (only timings and the machine differ).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed import TIMEOUT_S, _audit, _config, _launch

from entropi.host import cli
from entropi.host.run.config import config_from_dict, config_to_toml
from entropi.host.selection import study

STUDY = """
name = "tiny"
base = "{base}"
set = ["select.resamples=4"]
[[ladder]]
name = "s0"
set = ["seed=0"]
[[ladder]]
name = "s1"
set = ["seed=1"]
[[target]]
name = "folder"
spec = "imagefolder:{images}"
train_per_class = 12
"""


@pytest.fixture(scope="module")
def studies(image_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study_ddp")
    torch.set_num_threads(1)
    base = tmp / "base.toml"
    base.write_text(config_to_toml(config_from_dict(_config(image_folder, "smallnet", "base"))))
    path = tmp / "study.toml"
    path.write_text(STUDY.format(base=base, images=image_folder))
    spec = study.load_study(path)
    two, one = tmp / "two", tmp / "one"
    _, run = study._build_ladder(spec, spec.ladders[0], two / "ladders" / "s0", lambda m: None)
    run.lock.release()
    s0_mtimes = [p.stat().st_mtime_ns for p in run.rung_files()]
    cli_argv = [sys.executable, "-m", "entropi.host.cli", "study", str(path)]
    launch = _launch([*cli_argv, "--out", str(two), "--nproc", "2"], tmp, tmp / "audit")
    shutil.copytree(two / "ladders", one / "ladders")
    ref = _launch([*cli_argv, "--out", str(one)], tmp, tmp / "audit_ref")
    return {
        "tmp": tmp,
        "path": path,
        "two": two,
        "one": one,
        "launch": launch,
        "ref": ref,
        "s0_mtimes": s0_mtimes,
    }


def _doc(folder: Path) -> dict:
    return json.loads((folder / "study.json").read_text())


def _untimed(obj):
    """``obj`` without its timings (keys ending in ``seconds``)."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


@pytest.mark.slow
def test_two_process_study_equals_one_process_study(studies):
    """(a) Same ladders, scored by 2 ranks and by 1 process: every pair's scores, features,
    picks (every criterion's), confidences and the study summary are equal exactly (scoring is
    exact per rung; see the module docstring)."""
    two, one = _doc(studies["two"]), _doc(studies["one"])
    assert two["machine"]["processes"] == 2 and one["machine"]["processes"] == 1
    assert [(p["ladder"], p["target"]) for p in two["pairs"]] == [
        ("s0", "folder"),
        ("s1", "folder"),
    ]
    assert _untimed(two["pairs"]) == _untimed(one["pairs"])
    assert _untimed(two["summary"]) == _untimed(one["summary"])  # criteria carry their cost
    assert two["summary"]["recommended"] in two["summary"]["criteria"]
    assert two["summary"]["recommended_confidence"]["n"] == 2  # the cached features were read
    for pair in two["pairs"]:
        assert len(pair["alphas"]) == 3 and pair["n"] == 36
    for ladder in ("s0", "s1"):
        a, b = (root / "scores" / ladder / "folder" for root in (studies["two"], studies["one"]))
        results_a, results_b = (json.loads((r / "results.json").read_text()) for r in (a, b))
        assert results_a["selected_index"] == results_b["selected_index"]
        assert _untimed(results_a["rungs"]) == _untimed(results_b["rungs"])
        for i in range(3):
            fa, fb = (np.load(r / "features" / f"rung_{i:03d}.npy") for r in (a, b))
            assert fa.shape == (36, 256) and np.array_equal(fa, fb)
    assert (studies["two"] / "study.md").read_text().count("| s1 | folder |") == 1


@pytest.mark.slow
def test_ladders_are_reused_or_built_by_both_ranks(studies):
    """The 1-process ladder s0 is reused as it is (its rung files untouched); s1 is built in DDP
    by the two ranks, each of them holding the weights rank 0 wrote (sha256 per rung)."""
    from entropi.export.rung import load_rung_file
    from entropi.host.run import distributed

    two = studies["two"]
    s0 = sorted((two / "ladders" / "s0" / "rungs").glob("rung_*.pt"))
    assert [p.stat().st_mtime_ns for p in s0] == studies["s0_mtimes"]
    assert "2 processes (DDP)" in (two / "ladders" / "s1" / "progress.log").read_text()
    assert "DDP" not in (two / "ladders" / "s0" / "progress.log").read_text()
    audit = _audit(studies["tmp"] / "audit")
    r0, r1 = audit[0, 0]["rungs"], audit[1, 0]["rungs"]
    assert [r["digest"] for r in r0] == [r["digest"] for r in r1] and len(r0) == 3
    files = sorted((two / "ladders" / "s1" / "rungs").glob("rung_*.pt"))
    held = [load_rung_file(p, i) for i, p in enumerate(files)]
    assert [distributed.state_digest(f.encoder, f.head, f.masks) for f in held] == [
        r["digest"] for r in r0
    ]
    timings = json.loads((two / "ladders" / "s1" / "timings.json").read_text())
    assert timings["ladder"] > 0 and _doc(two)["seconds"]["ladders"]["s1"] == timings["ladder"]


@pytest.mark.slow
def test_only_rank_0_writes_and_prints(studies):
    """(b) The audit hook saw rank 0 write the study's files and the pairs' results, and rank 1
    write nothing in the test's folders (only torch's own temporaries); rank 0 alone printed."""
    audit = _audit(studies["tmp"] / "audit")
    rank0 = " ".join(audit[0, 0]["writes"])
    for name in ("two/.entropi.lock", "two/study.json", "two/study.md", "two/study.png",
                 "two/ladders/s1/rungs/rung_002", "two/ladders/s0/run.json",
                 "two/scores/s0/folder/scores/rung_001", "two/scores/s1/folder/results.json",
                 "two/scores/s1/folder/features/rung_002", "cache"):  # fmt: skip
        assert name in rank0, name
    system_tmp = Path(tempfile.gettempdir()).resolve()
    paths = [Path(w.split(" ")[-1]).resolve() for w in audit[1, 0]["writes"]]
    assert all(p.parent == system_tmp for p in paths), audit[1, 0]["writes"]
    assert not any(p.is_relative_to(studies["tmp"].resolve()) for p in paths)
    assert studies["launch"].stdout.count("study tiny: 2 pairs") == 1
    assert "study: s1 x folder scored in" in studies["launch"].stderr


@pytest.mark.slow
def test_an_error_on_rank_0_fails_both_ranks_with_its_message(studies, tmp_path):
    """A study whose ladder s0 now has another seed: rank 0 refuses the folder, rank 1 fails
    with rank 0's message instead of waiting; both exit 2 and nothing is written."""
    before = (studies["two"] / "study.json").stat().st_mtime_ns
    other = tmp_path / "other.toml"
    other.write_text(studies["path"].read_text().replace('["seed=0"]', '["seed=5"]'))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ENTROPI_DIST_TIMEOUT": "60"}
    env["ENTROPI_CACHE"] = str(studies["tmp"] / "cache")
    argv = [sys.executable, "-m", "entropi.host.cli", "study", str(other)]
    proc = subprocess.run(
        [*argv, "--out", str(studies["two"]), "--nproc", "2"],
        env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    assert proc.returncode != 0
    held = "holds another ladder (its seed, source, [pretrain] or [prune] differ"
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("entropi: error:")]
    assert len(lines) == 2, proc.stderr[-3000:]
    assert any(ln.startswith("entropi: error: rank 0 failed: RunExistsError: ") for ln in lines)
    assert all(held in ln for ln in lines)
    assert "Traceback" not in proc.stderr and "failed (exitcode" not in proc.stderr
    assert proc.returncode == 2
    assert (studies["two"] / "study.json").stat().st_mtime_ns == before


def test_nproc_is_checked_and_builds_the_torchrun_command(tmp_path, capsys, monkeypatch):
    """(c) --nproc 0, --max-restarts -1 and --nproc from inside torchrun: the one-line errors of
    `entropi run`; --nproc 2 starts torchrun with the same study arguments."""
    import argparse

    for flags in (["--nproc", "0"], ["--max-restarts", "-1"]):
        assert cli.main(["study", "cpu", "--out", str(tmp_path / "s"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith("entropi: error: --nproc must be >= 1 and --max-restarts >= 0")
        assert err.count("\n") == 1
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    assert cli.main(["study", "cpu", "--out", str(tmp_path / "s"), "--nproc", "2"]) == 2
    assert capsys.readouterr().err == (
        "entropi: error: --nproc / --max-restarts start torchrun: not from inside torchrun\n"
    )
    assert not (tmp_path / "s").exists()
    a = argparse.Namespace(nproc=2, max_restarts=1, study="cpu", out="studies/x")
    assert cli._torchrun_argv(a, "study")[1:] == [
        "-m", "entropi.host.launch", "--standalone", "--nproc-per-node", "2",
        "--max-restarts", "1", "-m", "entropi.host.cli", "study", "cpu", "--out", "studies/x",
    ]  # fmt: skip
