"""The README's quickstart results table is the rendering of the committed results file
(``benchmarks/results/quickstart.json``, made by ``scripts/quickstart_table.py`` from a finished
quickstart run; issue 23, item 15)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from scripts_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "quickstart.json"


@pytest.fixture(scope="module")
def table():
    return load_script("quickstart_table")


def test_readme_table_equals_the_committed_results(table):
    data = json.loads(RESULTS.read_text())
    block = table.readme_block((ROOT / "README.md").read_text())
    assert block == table.render(data)
    # independent of the renderer: every table row's cells are the file's numbers
    rows = [line for line in block.splitlines() if re.match(r"\| \**\d", line)]
    assert len(rows) == len(data["rungs"])
    for line, r in zip(rows, data["rungs"], strict=True):
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(r["alpha"], abs=5e-6)
        assert int(cells[2].replace(",", "")) == r["nnz"]
        assert float(cells[4]) == pytest.approx(r["entropy"], abs=5e-5)
        mean, sd = re.match(r"([\d.]+)\** ± \**([\d.]+)", cells[7]).groups()
        assert float(mean) == pytest.approx(100 * r["probe_accuracy"], abs=5e-3)
        assert float(sd) == pytest.approx(100 * r["probe_accuracy_std"], abs=5e-3)
    assert [("selected" in line) for line in rows].index(True) == data["selected_index"]
    assert f"{data['device']['accuracy']:.4f} test accuracy" in block


def _results(tmp_path: Path) -> Path:
    """A results.json (every key a results record needs; values made up, two rungs)."""
    rungs = [
        {
            "index": i,
            "alpha": a,
            "nnz": n,
            "source_accuracy": 0.5,
            "entropy": 3.0,
            "distinct_states": 9,
            "n": 10,
            "criteria": {"subset_entropy": s, "von_neumann": 1.5},
            "probe_accuracy": p,
            "probe_accuracy_std": 0.01,
            "probe_accuracies": [p],
        }
        for i, (a, n, s, p) in enumerate(((1.0, 100, 10.0, 0.4), (0.5, 50, 12.0, 0.3)))
    ]
    res = {
        "package_version": "0",
        "config_sha256": "x",
        "seed": 0,
        "arch": "smallnet",
        "source": "cifar10",
        "target": "pacs",
        "levels": 4,
        "entropy_units": "nats",
        "rungs": rungs,
        "criterion": "subset_entropy",
        "selected_index": 1,
        "selected_alpha": 0.5,
        "best_probe_index": 0,
        "dense_probe_accuracy": 0.4,
        "selected_probe_accuracy": 0.3,
        "best_probe_accuracy": 0.4,
        "regret": 0.1,
        "stage_seconds": {},
        "criteria_summary": {
            "subset_entropy": {"selected_index": 1, "regret": 0.1, "kendall_tau": -1.0}
        },
        "selection_confidence": 0.75,
        "selection_resamples": {"resamples": 4},
        "device": {"accuracy": 0.3, "peak_bytes": 9, "analytic_bytes": 8, "budget_bytes": 10},
    }
    (tmp_path / "results.json").write_text(json.dumps(res))
    return tmp_path


def test_script_extracts_renders_and_rewrites_a_readme(table, tmp_path, capsys):
    run = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{table.BEGIN}\nold\n{table.END}\n\nafter\n")
    out = tmp_path / "q.json"
    assert table.main([str(run), "--out", str(out), "--markdown", "--readme", str(readme)]) == 0
    printed = capsys.readouterr().out
    assert "| **1** | **0.50000** | **50** |" in printed and "(selected)" in printed
    assert "| 40.00 ± 1.00 (best) |" in printed and "probe acc % (pacs)" in printed
    assert "regret 10.00 points" in printed and "(3 of 4 bootstrap" in printed
    text = readme.read_text()
    assert text.startswith("# x\n\n") and text.endswith(f"{table.END}\n\nafter\n")
    assert table.readme_block(text) == printed.rstrip("\n")
    assert json.loads(out.read_text())["rungs"][1]["subset_entropy"] == 12.0


def test_script_refuses_a_readme_without_its_markers(table, tmp_path):
    _results(tmp_path)
    (tmp_path / "README.md").write_text("no markers\n")
    with pytest.raises(SystemExit) as e:
        table.main(["--json", str(RESULTS), "--readme", str(tmp_path / "README.md")])
    assert e.value.code == 2
    assert (tmp_path / "README.md").read_text() == "no markers\n"
