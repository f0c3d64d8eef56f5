"""scripts/quickstart_profile.py: the ratios and the report from recorded cases (the real run is
three quickstarts back to back, minutes each; its output is committed under benchmarks/results/),
and a failing case stops with the child's error, not a traceback from a missing file."""

from __future__ import annotations

import pytest
from scripts_loader import load_script

qp = load_script("quickstart_profile")


def _case(scale: float, commit: str) -> dict:
    stages = {s: scale * (i + 1) for i, s in enumerate(qp.STAGES)}
    return {
        "tree": {"commit": commit, "clean": True, "path": "/x"},
        "overrides": [],
        "stages": stages,
        "stages_total_s": sum(stages.values()),
        "wall_s": scale * 40,
        "cpu_s": scale * 70,
        "load_average_before": [1.0, 1.0, 1.0],
        "load_average_after": [1.5, 1.0, 1.0],
        "pick": {"selected_index": 3, "criterion": "logme", "rule": "smallest_tied",
                 "confidence": 0.94, "regret": 0.93, "regret_units": "points", "probe_se": 1.0,
                 "size_ratio_nnz": 8.0, "probe_accuracy": [], "target_train_images": 10000},
    }  # fmt: skip


def test_ratios_and_report(tmp_path):
    result = {
        "command": "python scripts/quickstart_profile.py --before B",
        "machine": {"cpu": "cpu", "cpus_usable": 2, "python": "3.11", "versions": {"torch": "2"}},
        "order": ["after", "before"],
        "cases": {"before": _case(2.0, "a" * 40), "after": _case(1.0, "b" * 40)},
    }
    result["ratios"] = qp.ratios(result)
    after = result["ratios"]["after"]
    assert set(after) == {*qp.STAGES, "stages_total_s", "wall_s", "cpu_s"}
    assert all(v == pytest.approx(0.5) for v in after.values())
    md = qp.markdown(result)
    assert "| pretrain | 4.0 | 2.0 | 0.50 |" in md
    assert "| after | bbbbbbb | - | 1.0 -> 1.5 | rung 3 by logme (smallest_tied)" in md
    qp.plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_a_failing_case_stops_with_the_childs_error(tmp_path):
    with pytest.raises(SystemExit, match="after: exit 2: .*pretrain.epochs"):
        qp.run_case("after", qp.ROOT, tmp_path, ["pretrain.epochs=-1"])
    (tmp_path / "before").mkdir()  # a case never runs into an earlier run's folder
    with pytest.raises(SystemExit, match="exists"):
        qp.run_case("before", qp.ROOT, tmp_path, [])
