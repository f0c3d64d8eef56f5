"""report.md and the selection, as a new user reads them (issues 22 D6, 23 #8, #11, #12): the
answer first, the target's sizes, a probe folder titled as one, regret in points everywhere,
criteria undefined on a rung shown as n/a and named, and a finished run that says it is
complete instead of redoing its last stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_hostile2_rundir import fake_run

from entropi.host.cli import main
from entropi.host.run.report import num
from entropi.host.run.stages import stage_select


def _set_undefined(run, name: str, rungs, reason="a class drawn once has no spread"):
    for i in rungs:
        score = json.loads(run.score(i).read_text())
        score["criteria"][name] = None
        score.setdefault("criteria_undefined", {})[name] = reason
        run.write_json(run.score(i), score)


# --- D6: a criterion undefined on a rung --------------------------------------------------------


def test_a_criterion_undefined_on_one_rung_is_na_and_named(tmp_path, capsys):
    cfg, run = fake_run(tmp_path / "run")
    _set_undefined(run, "nc1", [1])
    assert main(["select", str(run.root), "--criterion", "nc1"]) == 0
    err = capsys.readouterr().err
    assert "nc1, the selection criterion, is undefined on rungs [1] (a class drawn once" in err
    results = json.loads(run.results.read_text())
    assert results["criteria_undefined"] == {
        "nc1": {"rungs": [1], "reason": "a class drawn once has no spread"}
    }
    assert results["selected_index"] != 1
    report = run.report.read_text()
    row = next(line for line in report.splitlines() if line.startswith("| 1 "))
    assert "| n/a |" in row
    assert "Criteria it could not use everywhere:" in report


def test_a_criterion_undefined_everywhere_falls_back_to_the_dense_rung_and_says_so(tmp_path):
    cfg, run = fake_run(tmp_path / "run")
    _set_undefined(run, "von_neumann", [0, 1, 2], "every feature is zero")
    results = stage_select(cfg, run, "von_neumann")
    assert results["selected_index"] == 0
    assert results["criteria_summary"]["von_neumann"]["kendall_tau"] is None
    report = run.report.read_text()
    assert "von_neumann, the selection criterion, is undefined on every rung" in report
    assert "the pick is the dense rung 0" in report
    assert "undefined on every rung" in run.log_file.read_text()


# --- #11, #12: the answer first, in points; the target's sizes; a probe folder's title ---------


def test_the_report_gives_the_answer_first_in_points(tmp_path):
    cfg, run = fake_run(tmp_path / "run")
    results = stage_select(cfg, run)
    report = run.report.read_text()
    assert report.startswith("# entropi run `fake`\n")
    assert report.index("**Pick: rung") < report.index("## What ran") < report.index("## Rungs")
    sel = results["selected_index"]
    assert f"**Pick: rung {sel}** by `logme`" in report  # the default criterion
    assert f"regret **{100 * results['regret']:.2f} points**" in report
    assert "**Next:** `entropi bundle --run" in report
    assert "Target `npz:/no/tgt.npz`: 24 training images" in report
    # one unit for regret: no fraction such as "regret 0.1000" anywhere
    assert "points" in report and f"regret {results['regret']:.4f}" not in report
    log = run.log_file.read_text().splitlines()[-1]
    assert f"regret {100 * results['regret']:.2f} points" in log


def test_a_probe_folder_is_titled_as_a_probe(tmp_path):
    cfg, run = fake_run(tmp_path / "run")
    run.write_json(run.root / "ladder.json", {"from": "/runs/quickstart", "rungs": 3})
    stage_select(cfg, run)
    title = run.report.read_text().splitlines()[0]
    assert title == "# entropi probe: `npz:/no/tgt.npz` on the ladder of `/runs/quickstart`"


@pytest.mark.parametrize(
    "value, text",
    [(None, "n/a"), (0.0, "0"), (248.18484, "248.2"), (7.4247e-05, "7.42e-05"),
     (12345.6, "12,346"), (1.0003429, "1"), (-3.14159, "-3.142"), (2.5e9, "2.50e+09")],
)  # fmt: skip
def test_criterion_values_are_printed_with_sensible_precision(value, text):
    assert num(value) == text


def test_score_writes_the_target_class_names(tmp_path):
    """A probe folder had no target_classes.json, so its bundle had class_names null."""
    from entropi.host.run.rundata import TargetData
    from entropi.host.run.stages import stage_score

    cfg, run = fake_run(tmp_path / "run")
    labels = np.arange(24) % 3
    images = np.zeros((24, 32, 32, 3), np.uint8)
    tgt = TargetData(images, labels, images[:6], labels[:6], ["ant", "bee", "cat"])
    scores = stage_score(cfg, run, tgt, "cpu")  # everything cached: nothing rescored
    assert [s["index"] for s in scores] == [0, 1, 2]
    assert json.loads(run.target_classes.read_text()) == ["ant", "bee", "cat"]


# --- #8: a finished run says so on --resume ------------------------------------------------------


def test_resume_of_a_finished_run_says_it_is_complete(tmp_path):
    from entropi.host.run.pipeline import run_all

    cfg, run = fake_run(tmp_path / "run", export={"enabled": False})
    results = stage_select(cfg, run)
    # the data specs point nowhere: any stage that loads data would fail
    again = run_all(None, run.root, resume=True)
    assert again.to_dict() == json.loads(json.dumps(results.to_dict()))
    assert "is already complete" in run.log_file.read_text().splitlines()[-1]
    run.score(2).unlink()  # new work: a rung to rescore, so the run goes on (and needs data)
    with pytest.raises(Exception, match="npz does not exist"):
        run_all(None, run.root, resume=True)


def test_the_data_sizes_of_the_run_are_in_the_report_and_survive_a_reselect(tmp_path):
    cfg, run = fake_run(tmp_path / "run")
    sizes = {
        "spec": "npz:/no/tgt.npz", "classes": 3, "train_images": 24, "test_images": 6,
        "train_available": 3000, "test_available": 600, "train_per_class": 8,
        "test_per_class": 2,
    }  # fmt: skip
    run.write_json(run.results, {"data_sizes": {"target": sizes}})
    stage_select(cfg, run)
    report = run.report.read_text()
    assert "Data: target npz:/no/tgt.npz: 24 train / 6 test images, 3 classes" in report
    assert "of 3000 / 600" in report
    assert json.loads(run.results.read_text())["data_sizes"]["target"] == sizes


def test_the_selection_cost_line_skips_times_that_are_not_seconds(tmp_path):
    # found by the rundir fuzzer: a hand-edited score file's criterion_seconds value of None
    import dataclasses

    from entropi.host.run.report import _selection_cost
    from entropi.host.run.stages import _scored_rungs

    cfg, run = fake_run(tmp_path / "run")
    unprobed = _scored_rungs(run)  # the fake run records no probe seconds: no line
    assert _selection_cost(unprobed, {"seconds": 2.0, "cpu_seconds": 3.5}) == []
    rungs = [dataclasses.replace(r, probe_seconds=1.5 + r.index) for r in unprobed]
    res = {"seconds": 2.0, "cpu_seconds": 3.5}
    line = _selection_cost(rungs, res)
    crit = sum(sum(r.criterion_seconds.values()) for r in rungs)
    probe = sum(r.probe_seconds for r in rungs)
    assert line[-1].startswith(f"Selection cost: every criterion on every rung {crit:.1f} s")
    assert f"ratio {(crit + 2.0) / probe:.2f})" in line[-1] and "(3.5 s of CPU)" in line[-1]
    for bad in (None, "1", True, float("nan"), -1.0):
        broken = dataclasses.replace(rungs[1], criterion_seconds={"entropy": bad})
        assert _selection_cost([rungs[0], broken, *rungs[2:]], res) == []
        assert _selection_cost(rungs, {"seconds": bad, "cpu_seconds": 1.0}) == []
        assert _selection_cost(rungs, {"seconds": 1.0, "cpu_seconds": bad}) == []
