"""results.json and the score files as typed, versioned records (host/run/records.py): what
entropi writes reads back and re-serializes byte for byte, files of older entropi (no
format_version, fewer keys, other key orders) load and keep their keys, and a damaged or newer
file is one error naming the file and the key."""

from __future__ import annotations

import json

import pytest
from test_hostile2_rundir import fake_run

from entropi.common.errors import EntropiError
from entropi.host.run.records import (
    CriterionSummary,
    RecordError,
    RungScores,
    RunResults,
    load_results,
    load_scores,
    read_selection,
)
from entropi.host.run.stages import stage_select

_FIRST_RESULTS_KEYS = (
    "package_version", "config_sha256", "seed", "arch", "source", "target", "levels",
    "entropy_units", "rungs", "selected_index", "selected_alpha", "best_probe_index",
    "dense_probe_accuracy", "selected_probe_accuracy", "best_probe_accuracy", "regret",
    "stage_seconds",
)  # fmt: skip
"""The keys of results.json as the first entropi wrote it (commit 81d3307)."""
_FIRST_SCORE_KEYS = (
    "index", "alpha", "nnz", "source_accuracy", "entropy", "distinct_states", "n",
    "probe_accuracy", "probe_accuracy_std", "probe_accuracies",
)  # fmt: skip


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """A scored run folder, selected (results.json and report.md written)."""
    cfg, run = fake_run(tmp_path_factory.mktemp("records") / "run")
    results = stage_select(cfg, run)
    return cfg, run, results


def _dump(d) -> str:
    return json.dumps(d, indent=2) + "\n"  # as common.files.atomic_write_json writes


def test_written_files_read_back_and_reserialize_byte_for_byte(selected):
    _, run, results = selected
    assert isinstance(results, RunResults)
    again = load_results(run.results)
    assert _dump(again.to_dict()) == run.results.read_text()
    assert again.to_dict() == results.to_dict()
    for i in range(len(again.rungs)):
        score = load_scores(run.score(i))
        assert isinstance(score, RungScores) and score.index == i
        assert _dump(score.to_dict()) == run.score(i).read_text()
        assert score.to_dict() == again.rungs[i].to_dict()
    # today's files carry no format_version: format 1 is written as every older entropi wrote it
    assert "format_version" not in run.results.read_text()
    assert again.format_version == 1 and again.rungs[0].format_version == 1


def test_attribute_access_and_the_read_only_mapping_view_agree(selected):
    _, _, results = selected
    assert results.selected is results.rungs[results.selected_index]
    assert results["selected_index"] == results.selected_index
    assert results.get("export") is None and "export" not in results  # none in this run
    assert results.best.probe_accuracy == results.best_probe_accuracy
    assert dict(results.rungs[0].items()) == results.rungs[0].to_dict()
    summary = results.criteria_summary["subset_entropy"]
    assert isinstance(summary, CriterionSummary) and summary.higher_is_better
    assert results["criteria_summary"]["subset_entropy"]["selected_index"] == summary.selected_index


def test_an_oldest_format_file_loads_with_defaults_and_keeps_its_keys(selected, tmp_path):
    _, run, _ = selected
    today = json.loads(run.results.read_text())
    rungs = [{k: r[k] for k in _FIRST_SCORE_KEYS if k in r} for r in today["rungs"]]
    old = {k: today[k] for k in _FIRST_RESULTS_KEYS} | {"rungs": rungs}
    path = tmp_path / "results.json"
    path.write_text(_dump(old))
    res = load_results(path)
    assert res.criterion == "entropy" and res.rule == "argmax"  # what readers assumed
    assert res.criteria_summary == {} and res.selection_confidence is None
    assert res.probe_spread == 0.0 and res.rungs[0].criteria == {}
    assert "criterion" not in res and "criteria" not in res.rungs[0]
    assert _dump(res.to_dict()) == path.read_text()  # its own keys, nothing added


def test_key_order_and_unknown_keys_survive_a_round_trip(tmp_path):
    score = {"n": 5, "index": 0, "alpha": 1, "nnz": 3, "source_accuracy": None, "entropy": 1.0,
             "distinct_states": 2, "probe_accuracy": 0.5, "someday": [1, {"x": 2}]}  # fmt: skip
    path = tmp_path / "scores" / "rung_000.json"
    path.parent.mkdir()
    path.write_text(_dump(score))
    rec = load_scores(path)
    assert rec.extra == {"someday": [1, {"x": 2}]} and rec.alpha == 1  # an int stays an int
    assert _dump(rec.to_dict()) == path.read_text()


def test_a_record_built_by_entropi_leaves_out_what_it_does_not_have(selected):
    _, _, results = selected
    fresh = RunResults(**{f: getattr(results, f) for f in _FIRST_RESULTS_KEYS})
    d = fresh.to_dict()
    assert "export" not in d and "report" not in d and "format_version" not in d
    assert d["criterion"] == "entropy" and d["deployment"] is None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("regret"), "lacks 'regret'"),
        (lambda d: d.update(selected_index=99), "selected_index is 99, not a rung"),
        (lambda d: d.update(selected_index=True), "selected_index is True"),
        (lambda d: d.update(format_version=2), "results file of format 2; this entropi reads up"),
        (lambda d: d.update(format_version="1"), "format_version is '1'"),
        (lambda d: d.update(criterion=3), "criterion is 3, not a string"),
        (lambda d: d.update(deployment=[1]), "deployment is not a table or null"),
        (lambda d: d.update(rungs=[]), "rungs is not a list of rungs"),
        (lambda d: d["rungs"][1].pop("probe_accuracy"), r"rungs\[1\]: it lacks 'probe_accuracy'"),
        (lambda d: d["rungs"][1].update(index=0), r"rungs\[1\]: its index is 0, not 1"),
        (
            lambda d: d["criteria_summary"].update(x={"selected_index": -1, "regret": 0}),
            r"criteria_summary\['x'\]: selected_index is -1, not a rung",
        ),
        (lambda d: d["criteria_summary"].update(x=[]), r"criteria_summary\['x'\] is not a table"),
        (lambda d: d["criteria_summary"].update(x={"selected_index": 0}), "lacks 'regret'"),
    ],
)
def test_a_damaged_or_newer_results_file_is_one_error_naming_file_and_key(
    selected, tmp_path, edit, message
):
    _, run, _ = selected
    d = json.loads(run.results.read_text())
    edit(d)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(d))
    with pytest.raises(RecordError, match=message) as e:
        load_results(path)
    assert isinstance(e.value, EntropiError) and str(path) in str(e.value)


def test_a_score_file_of_a_newer_format_or_missing_is_refused(selected, tmp_path):
    _, run, _ = selected
    d = json.loads(run.score(1).read_text()) | {"format_version": 7}
    path = tmp_path / "scores" / "rung_001.json"
    path.parent.mkdir()
    path.write_text(json.dumps(d))
    with pytest.raises(RecordError, match="score file of format 7; this entropi reads up to 1"):
        load_scores(path)
    with pytest.raises(RecordError, match="does not exist"):
        load_scores(tmp_path / "scores" / "rung_002.json")
    path.write_text(json.dumps(d | {"format_version": 1, "index": 2}))
    with pytest.raises(EntropiError, match="its index is 2, not 1"):
        load_scores(path)


def test_read_selection_reads_a_partial_file(tmp_path):
    path = tmp_path / "results.json"
    assert read_selection(path) == (None, None)
    path.write_text(json.dumps({"selected_index": 2}))
    assert read_selection(path) == (2, None)


def test_probe_of_a_run_folder_prints_its_score_records_as_json(selected, monkeypatch, capsys):
    from entropi.host import cli
    from entropi.host.run import rundata, stages

    _, run, results = selected
    monkeypatch.setattr(rundata, "load_target", lambda cfg: None)
    monkeypatch.setattr(stages, "stage_score", lambda cfg, run, tgt, device: results.rungs)
    assert cli.main(["probe", str(run.root)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == [r.to_dict() for r in results.rungs]
