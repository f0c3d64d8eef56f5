"""`entropi study` on a tiny image folder: ladders built once and reused, every pair scored,
the summary recomputed by hand from the pairs, bad study files refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_pipeline import tiny_config

from entropi.host import cli
from entropi.host.run.config import ConfigError, config_from_dict, config_to_toml
from entropi.host.run.rundir import RunExistsError
from entropi.host.selection import study


def _write_study(tmp_path, image_folder, extra_ladder=""):
    base = tmp_path / "base.toml"
    raw = tiny_config(image_folder, alpha_min=0.25).to_dict()
    raw["probe"].update(epochs=2, repeats=2)
    raw["select"].update(resamples=4)
    base.write_text(config_to_toml(config_from_dict(raw)))
    path = tmp_path / "study.toml"
    path.write_text(
        f"""
name = "tiny"
base = "{base}"
[[ladder]]
name = "s0"
set = ["seed=0"]
[[ladder]]
name = "s1"
set = ["seed=1"]
{extra_ladder}
[[target]]
name = "folder"
spec = "imagefolder:{image_folder}"
train_per_class = 12
[[target]]
name = "folder-small"
spec = "imagefolder:{image_folder}"
train_per_class = 6
holdout = true
set = ["probe.folds=3"]
"""
    )
    return path


@pytest.fixture(scope="module")
def finished_study(image_folder, tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("study")
    path = _write_study(tmp, image_folder)
    out = tmp / "out"
    assert cli.main(["study", str(path), "--out", str(out)]) == 0
    return path, out, json.loads((out / "study.json").read_text())


def test_every_pair_is_scored_and_summarized(finished_study):
    _, out, doc = finished_study
    assert [(p["ladder"], p["target"]) for p in doc["pairs"]] == [
        ("s0", "folder"),
        ("s0", "folder-small"),
        ("s1", "folder"),
        ("s1", "folder-small"),
    ]
    s = doc["summary"]
    assert s["pairs"] == 2 and s["holdout_pairs"] == 2
    study_pairs = [p for p in doc["pairs"] if not p["holdout"]]
    for name, agg in s["criteria"].items():
        regrets = [100 * p["criteria"][name]["regret"] for p in study_pairs]
        assert agg["regret_points"]["mean"] == pytest.approx(np.mean(regrets))
        hits = [p["criteria"][name]["selected_index"] == p["best_probe_index"] for p in study_pairs]
        assert agg["top1"] == pytest.approx(np.mean(hits))
    assert s["recommended"] in s["criteria"]
    for p in doc["pairs"]:
        assert p["n"] == (36 if p["target"] == "folder" else 18)
        # folder: the 18 test images; folder-small: 3-fold CV over its 18 + 18 images pooled
        assert p["probe_test_n"] == (18 if p["target"] == "folder" else 36)
        assert 0.0 <= p["probe_se"] <= 0.5 / np.sqrt(p["probe_test_n"]) + 1e-12
        assert len(p["probe"]) == 3  # alpha 1, 0.5, 0.25
        results = json.loads(
            (out / "scores" / p["ladder"] / p["target"] / "results.json").read_text()
        )
        assert results["selection_resamples"]["resamples"] <= 4
        assert set(results["criteria_summary"]) == set(p["criteria"])
        conf = p["recommended_confidence"]  # from the cached features, for the recommendation
        assert conf is None or 0.0 <= conf <= 1.0
    md = (out / "study.md").read_text()
    assert "Recommended default" in md and "Held-out targets" in md and "standard error" in md
    assert (out / "study.png").read_bytes()[:4] == b"\x89PNG"


def test_ladders_are_shared_by_targets_and_reused(finished_study):
    path, out, doc = finished_study
    rung = out / "ladders" / "s0" / "rungs" / "rung_001.pt"
    linked = out / "scores" / "s0" / "folder" / "rungs" / "rung_001.pt"
    assert rung.stat().st_ino == linked.stat().st_ino  # hard link: one ladder, many targets
    before = rung.stat().st_mtime_ns
    again = study.run_study(study.load_study(path), out, log=lambda m: None)
    assert rung.stat().st_mtime_ns == before
    assert json.loads(json.dumps(again["summary"])) == doc["summary"]


def test_a_folder_holding_another_ladder_is_refused(finished_study, tmp_path):
    path, out, _ = finished_study
    text = path.read_text().replace('set = ["seed=1"]', 'set = ["seed=5"]')
    other = tmp_path / "other.toml"
    other.write_text(text)
    with pytest.raises(RunExistsError, match="holds another ladder"):
        study.run_study(study.load_study(other), out, log=lambda m: None)


@pytest.mark.parametrize(
    "body, match",
    [
        ('name = "x"\n', "at least one"),
        ('[[ladder]]\nname = "a"\n[[target]]\nname = "t"\n', "spec"),
        (
            '[[ladder]]\nname = "a"\n[[ladder]]\nname = "a"\n'
            '[[target]]\nname = "t"\nspec = "cifar10"\n',
            "unique",
        ),
        ('[[ladder]]\nname = "../a"\n[[target]]\nname = "t"\nspec = "cifar10"\n', "plain folder"),
        (
            '[[ladder]]\nname = "a"\nset = ["pretrain.epoch=3"]\n[[target]]\nname = "t"\n'
            'spec = "cifar10"\n',
            "epoch",
        ),
        ("typo = 1\n", "unknown study keys"),
        (
            '[[ladder]]\nname = "a"\n[[target]]\nname = "t"\nspec = "cifar10"\n'
            'set = ["probe.folds=1"]\n',
            "probe.folds",
        ),
        ("[[ladder\n", "not valid TOML"),
    ],
)
def test_bad_study_files_are_refused(tmp_path, body, match):
    p = tmp_path / "s.toml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=match):
        study.load_study(p)


def test_shipped_study_loads():
    s = study.load_study("cpu")
    assert len(s.ladders) >= 4 and len([t for t in s.targets if not t.holdout]) >= 6


def test_study_cli_error_is_one_line(tmp_path, capsys):
    assert cli.main(["study", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
