"""Smoke tests of the experiment scripts in ``scripts/``: each runs its measuring code on small
inputs and the result has the shape and invariants its report relies on (the full runs are
minutes to hours; their outputs are committed under ``benchmarks/results/``).

``table2.py`` and ``summarize.py`` are covered in test_bench.py, ``levels_ablation.py`` on a
finished run in test_pipeline.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from scripts_loader import SCRIPTS, load_script


@pytest.mark.parametrize("name", sorted(p.stem for p in SCRIPTS.glob("*.py")))
def test_every_script_has_help(name):
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_device_head_bench_memory_and_speed():
    bench = load_script("device_head_bench")
    mem = bench.memory_256kb(600, 1)
    assert mem["within_budget"] and mem["budget_bytes"] == 256 * 1024
    assert mem["peak_bytes"] >= 0.8 * mem["analytic_bytes"]  # the plan accounts for the loop
    speed = bench.speed(20, 1)
    assert speed["samples_per_second_wall"] > 0 and speed["sgemm_gflops"] > 0


@pytest.mark.slow
@pytest.mark.tflite
def test_export_bench_quick(tmp_path):
    res = load_script("export_bench").main(
        ["--quick", "--repeats", "2", "--out", str(tmp_path), "--quickstart", str(tmp_path / "no")]
    )
    assert {"export.json", "export.md"} <= {p.name for p in tmp_path.iterdir()}
    assert len(res["cases"]) == 1 and res["command"].startswith("python scripts/export_bench.py")
