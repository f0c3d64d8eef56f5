"""End to end on a tiny image folder: results.json, the plot, resume after an interrupt."""

from __future__ import annotations

import json

import pytest
import torch

from entropi.host.data import DatasetNotFoundError
from entropi.host.ladder.rungs import CheckpointError, list_rungs, load_rung
from entropi.host.run import pipeline, rundata, stages
from entropi.host.run.config import config_from_dict
from entropi.host.selection import rules as selection


def tiny_config(root, **prune):
    return config_from_dict(
        {
            "name": "tiny",
            "seed": 0,
            "device": "cpu",
            "data": {"source": f"imagefolder:{root}", "target": f"imagefolder:{root}"},
            "pretrain": {"arch": "smallnet", "epochs": 2, "batch_size": 16, "lr": 0.05},
            "prune": {"keep_per_round": 0.5, "alpha_min": 0.1, "retrain_epochs": 1, **prune},
            "probe": {"epochs": 3, "batch_size": 16},
            "export": {"formats": ["onnx"], "verify_images": 4},
            "device_train": {"epochs": 2, "budget": "64KB", "batch_size": 8},
        }
    )


@pytest.fixture(scope="module")
def finished_run(image_folder, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run") / "r"
    results = pipeline.run_all(tiny_config(image_folder), out, argv=["entropi", "run"])
    return out, results


def test_results_and_artifacts(finished_run):
    out, results = finished_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results.to_dict()))
    alphas = [r["alpha"] for r in results["rungs"]]
    assert alphas == pytest.approx([1.0, 0.5, 0.25, 0.125], abs=1e-5)
    for r in results["rungs"]:
        for key in (
            "alpha",
            "nnz",
            "source_accuracy",
            "entropy",
            "per_unit_bound",
            "probe_accuracy",
        ):
            assert key in r
        assert r["entropy"] <= r["per_unit_bound"] + 1e-12
    # the default (the rule study's decision): LogME's smallest rung tied with its best
    crit = [r["criteria"][results["criterion"]] for r in results["rungs"]]
    assert (results["criterion"], results["rule"]) == ("logme", "smallest_tied")
    ties = results["selection_ties"]
    assert ties["best_index"] == crit.index(max(crit)) and ties["best_index"] in ties["tied"]
    nnz = [r["nnz"] for r in results["rungs"]]
    assert results["selected_index"] == min(ties["tied"], key=lambda i: nnz[i])
    probes = [r["probe_accuracy"] for r in results["rungs"]]
    assert results["best_probe_index"] == probes.index(max(probes))
    assert results["regret"] == pytest.approx(max(probes) - probes[results["selected_index"]])
    assert {"pretrain", "prune", "score", "export", "device"} <= set(results["stage_seconds"])
    # export + device stages: verified sparse + compact ONNX, then the numpy head in budget
    assert set(results["export"]["files"]) == {"encoder.onnx", "encoder_compact.onnx"}
    for f in results["export"]["files"].values():
        assert f["max_abs_diff"] < 1e-4
    dev = results["device"]
    assert dev["peak_bytes"] <= dev["budget_bytes"] == 64 * 1024
    assert 0.0 <= dev["accuracy"] <= 1.0 and dev["accuracy_split"] == "test"
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["feature_dim"] == 256
    png = (out / "entropy_vs_alpha.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("config.toml", "run.json", "progress.log", "head/train.json", "report.md"):
        assert (out / name).is_file()
    report = (out / "report.md").read_text()
    sel = results["selected_index"]
    assert results["report"] == "report.md"
    assert f"| {sel} **selected**" in report and "## Selected encoder" in report
    cost = results["selection_resamples"]  # the bootstrap's cost, against the probe's
    assert cost["seconds"] > 0 and cost["cpu_seconds"] > 0
    assert "Selection cost: every criterion on every rung" in report and "(ratio " in report
    assert f"accuracy **{dev['accuracy']:.4f}**" in report and "encoder_compact.onnx" in report
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and info["package_version"]


def test_rungs_load_with_exact_zeros(finished_run):
    out, _ = finished_run
    encoder, meta = load_rung(out, 2)
    zeros = sum(
        int((p == 0).sum())
        for n, p in encoder.named_parameters()
        if n.endswith("weight") and p.ndim > 1
    )
    assert meta.alpha == pytest.approx(0.25, abs=1e-5)
    assert zeros == meta.n_prunable - meta.nnz
    _, sel = load_rung(out, "selected")
    assert sel.index == json.loads((out / "results.json").read_text())["selected_index"]


def test_resume_after_interrupt_equals_uninterrupted(
    finished_run, image_folder, tmp_path, monkeypatch
):
    _, reference = finished_run
    out = tmp_path / "r"
    real_train = stages.train
    calls = {"n": 0}

    def flaky_train(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # pretrain, rung 1, then Ctrl-C during rung 2
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(stages, "train", flaky_train)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_all(tiny_config(image_folder), out)
    assert len(list_rungs(out)) == 2  # rungs 0 and 1 completed and saved
    with pytest.raises(pipeline.RunExistsError, match="--resume"):
        pipeline.run_all(tiny_config(image_folder), out)
    monkeypatch.setattr(stages, "train", real_train)
    resumed = pipeline.run_all(None, out, resume=True)
    for a, b in zip(resumed["rungs"], reference["rungs"], strict=True):
        assert a["nnz"] == b["nnz"]
        assert a["source_accuracy"] == b["source_accuracy"]
        assert a["entropy"] == pytest.approx(b["entropy"], abs=1e-9)
    assert (
        len(json.loads((out / "run.json").read_text())["invocations"]) == 2
    )  # refused one not logged


def test_resume_refuses_other_config(finished_run, image_folder):
    out, _ = finished_run
    other = tiny_config(image_folder, retrain_epochs=2)
    with pytest.raises(pipeline.RunExistsError, match="different config"):
        pipeline.open_run(other, out, resume=True)


def test_corrupt_rung_checkpoint(finished_run, tmp_path):
    import shutil

    out, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "rungs" / "rung_001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_rung(copy, 1)
    with pytest.raises(CheckpointError, match="rungs 0..3"):
        load_rung(copy, 9)


def test_missing_dataset_says_where(tmp_path):
    cfg = config_from_dict({"data": {"root": str(tmp_path), "source": "cifar10"}})
    with pytest.raises(DatasetNotFoundError, match="cifar"):
        rundata.load_source(cfg, torch.device("cpu"))


def test_select_rung_ties_go_to_the_denser_rung():
    rungs = [
        {"entropy": 2.0, "per_unit_bound": 9.0},
        {"entropy": 3.0, "per_unit_bound": 5.0},
        {"entropy": 3.0, "per_unit_bound": 7.0},
        {"entropy": 3.0, "per_unit_bound": 7.0},
        {"entropy": 2.5, "per_unit_bound": 8.0},
    ]
    assert selection.select_rung(rungs, "entropy") == 1  # first (densest) rung of the tied maximum
    assert selection.select_rung(rungs[:2], "entropy") == 1


def test_export_and_bundle_commands(finished_run, tmp_path, capsys):
    from entropi.host import cli

    out, results = finished_run
    rc = cli.main(
        [
            "export",
            "--run",
            str(out),
            "--rung",
            "1",
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "exp"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert info["provenance"]["rung_index"] == 1 and "encoder.onnx" in info["files"]
    rc = cli.main(["bundle", "--run", str(out), "--format", "onnx", "--out", str(tmp_path / "b")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "b" / "encoder_compact.onnx").is_file()
    assert cli.main(["bundle", "--run", str(out), "--rung", "7", "--out", str(tmp_path / "c")]) == 2
    assert "rung 7 does not exist" in capsys.readouterr().err


def test_artifacts_are_readable_by_others(finished_run):
    out, _ = finished_run
    for path in (out / "results.json", out / "rungs" / "rung_000.pt", out / "export"):
        assert path.stat().st_mode & 0o044, f"{path} is not group/world readable"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv3_small"])
def test_paper_architectures_run_end_to_end(image_folder, tmp_path, arch):
    """The `paper` configs' encoders through every stage (tiny data, one epoch, two rungs)."""
    raw = tiny_config(image_folder, alpha_min=0.5).to_dict()
    raw["pretrain"].update(arch=arch, epochs=1)
    raw["device_train"].update(epochs=1, budget="1MB")
    results = pipeline.run_all(config_from_dict(raw), tmp_path / "r")
    assert [r["alpha"] for r in results["rungs"]] == pytest.approx([1.0, 0.5], abs=1e-6)
    assert results["export"]["files"]["encoder.onnx"]["max_abs_diff"] < 1e-3
    assert results["device"]["peak_bytes"] <= results["device"]["budget_bytes"]


def test_levels_ablation_script_reproduces_the_selection(finished_run, tmp_path):
    """scripts/levels_ablation.py on a finished run: at the run's M it picks the rung the run's
    paper entropy picks."""
    from scripts_loader import load_script

    out, results = finished_run
    path = tmp_path / "levels.json"
    res = load_script("levels_ablation").main([str(out), "--levels", "2", "4", "--out", str(path)])
    assert json.loads(path.read_text()) == json.loads(json.dumps(res))
    assert results["levels"] == 4
    assert (
        res["selected"]["M4"]["index"] == results["criteria_summary"]["entropy"]["selected_index"]
    )
    for row, rung in zip(res["rows"], results["rungs"], strict=True):
        assert row["entropy_M4"] == pytest.approx(rung["entropy"], abs=1e-9)


def test_probe_reuses_a_ladder_on_another_target(finished_run, tmp_path, capsys):
    """`entropi probe RUNDIR --target SPEC --out DIR`: the same rung files, scored in DIR."""
    from entropi.host import cli

    out, results = finished_run
    new = tmp_path / "p"
    target = results["target"]
    args = ["probe", str(out), "--target", target, "--set", "probe.epochs=2", "--out", str(new)]
    assert cli.main(args) == 0, capsys.readouterr().err
    again = json.loads((new / "results.json").read_text())
    for a, b in zip(again["rungs"], results["rungs"], strict=True):
        assert a["entropy"] == b["entropy"] and a["nnz"] == b["nnz"]  # same ladder, same target
    for rung in (out / "rungs").iterdir():
        assert (new / "rungs" / rung.name).read_bytes() == rung.read_bytes()
    assert json.loads((new / "ladder.json").read_text())["rungs"] == len(results["rungs"])
    assert (new / "report.md").is_file()
    # the ladder's own settings cannot change, and the folder must be new
    assert cli.main(["probe", str(out), "--set", "prune.lr=1", "--out", str(tmp_path / "q")]) == 2
    assert "reused as it is" in capsys.readouterr().err
    # setting a ladder key to the value it already has changes nothing, so it is allowed
    same = ["probe", str(out), "--set", f"seed={results['seed']}", "--out", str(tmp_path / "s")]
    assert cli.main(same) == 0, capsys.readouterr().err
    assert cli.main(["probe", str(out), "--target", target, "--out", str(new)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_every_rung_has_every_criterion_and_the_summary_agrees(finished_run):
    from entropi.host.selection.criteria import CRITERIA

    out, results = finished_run
    for r in results["rungs"]:
        assert set(r["criteria"]) == set(CRITERIA)
        assert r["criteria"]["entropy"] == r["entropy"]
        assert len(r["probe_accuracies"]) == 3  # [probe] repeats default
        assert r["probe_accuracy"] == pytest.approx(sum(r["probe_accuracies"]) / 3)
        assert (out / "features" / f"rung_{r['index']:03d}.npy").is_file()
    summary = results["criteria_summary"]
    assert set(summary) == set(CRITERIA)
    for name, s in summary.items():
        assert s["selected_index"] == selection.select_rung(results["rungs"], name)
    assert results["criterion"] == "logme"  # the default
    conf = results["selection_resamples"]
    assert sum(conf["wins"]) == conf["resamples"] == 100 - conf["resamples_dropped"]
    assert results["selection_confidence"] == conf["wins"][results["selected_index"]] / 100


def test_scores_of_an_older_criteria_version_are_recomputed_from_cached_features(
    finished_run, image_folder, tmp_path
):
    import shutil

    from entropi.host.run.rundir import RunDir

    out, results = finished_run
    copy = tmp_path / "r"
    shutil.copytree(out, copy)
    run = RunDir(copy)
    stale = run.read_json(run.score(1))
    stale["criteria_version"] = 0
    del stale["criteria"]["knn"]
    stale["criteria"]["logme"] = 123.0
    run.write_json(run.score(1), stale)
    rung_mtime = run.rung(1).stat().st_mtime_ns
    cfg = tiny_config(image_folder)
    scores = stages.stage_score(cfg, run, rundata.load_target(cfg), torch.device("cpu"))
    assert scores[1]["criteria"] == results["rungs"][1]["criteria"]
    assert scores[1]["probe_accuracies"] == results["rungs"][1]["probe_accuracies"]  # kept
    assert run.rung(1).stat().st_mtime_ns == rung_mtime
    assert "recomputed from the cached features" in (copy / "progress.log").read_text()


def test_select_by_another_criterion_recomputes_no_features(finished_run, tmp_path, capsys):
    import shutil

    from entropi.host import cli

    out, results = finished_run
    copy = tmp_path / "r"
    shutil.copytree(out, copy)
    stamps = {p: p.stat().st_mtime_ns for p in (copy / "scores").iterdir()}
    stamps |= {p: p.stat().st_mtime_ns for p in (copy / "features").iterdir()}
    assert cli.main(["select", str(copy), "--criterion", "von_neumann"]) == 0
    printed = capsys.readouterr().out
    assert "selected rung" in printed and "by von_neumann" in printed
    again = json.loads((copy / "results.json").read_text())
    assert again["criterion"] == "von_neumann"
    assert again["selected_index"] == results["criteria_summary"]["von_neumann"]["selected_index"]
    assert again["selection_resamples"]["resamples"] == 100
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert "`von_neumann`" in (copy / "report.md").read_text()
    assert cli.main(["select", str(copy), "--criterion", "nope"]) == 2
    assert "unknown criterion 'nope'" in capsys.readouterr().err


def test_init_with_zero_epochs_starts_the_ladder_from_a_given_encoder(
    finished_run, image_folder, tmp_path
):
    """`[pretrain] init` + `epochs = 0`: rung 0 is the given encoder, not a trained one."""
    out, results = finished_run
    raw = tiny_config(image_folder, alpha_min=0.5).to_dict()
    raw["pretrain"].update(epochs=0, init=str(out / "rungs" / "rung_000.pt"))
    raw["export"]["enabled"] = False
    again = pipeline.run_all(config_from_dict(raw), tmp_path / "r")
    # the features (so the entropy and the probe) are the given encoder's; only the source head
    # is new (random: with epochs = 0 nothing trains it)
    for key in ("entropy", "per_unit_bound", "distinct_states", "nnz"):
        assert again["rungs"][0][key] == results["rungs"][0][key], key
    assert "init from" in (tmp_path / "r" / "progress.log").read_text()


def test_input_size_carries_through_export_bundle_and_device(image_folder, tmp_path):
    raw = tiny_config(image_folder, alpha_min=0.5).to_dict()
    raw["pretrain"].update(epochs=1, input_size=40)
    raw["device_train"].update(epochs=1)
    results = pipeline.run_all(config_from_dict(raw), tmp_path / "r")
    _, info = load_rung(tmp_path / "r", 0)
    assert tuple(info.input_shape) == (3, 40, 40)
    manifest = json.loads((tmp_path / "r" / "bundle" / "manifest.json").read_text())
    assert manifest["preprocess"]["size"] == [40, 40]
    assert results["export"]["files"]["encoder.onnx"]["max_abs_diff"] < 1e-4
    assert results["device"]["peak_bytes"] <= results["device"]["budget_bytes"]
