"""Smoke test of scripts/export_profile.py: one case in a child process on the synthetic
smallnet; the result has the fields its report reads (the full before / after run on a rung is
minutes; its output is committed under benchmarks/results/)."""

from __future__ import annotations

import json

import pytest
from scripts_loader import load_script


@pytest.mark.tflite
def test_export_profile_synthetic_one_case(tmp_path):
    res = load_script("export_profile").main(
        ["--synthetic", "--case", "compact-dense", "--out", str(tmp_path)]
    )
    assert json.loads((tmp_path / "export_profile.json").read_text()) == res
    assert "| compact-dense |" in (tmp_path / "export_profile.md").read_text()
    case = res["cases"]["compact-dense"]["after"]
    assert case["wall_s"] > case["export_s"] > 0 and case["peak_rss_mb"] > 100
    phases = case["phases"]
    assert phases["tflite.convert"]["calls"] == phases["onnx.convert"]["calls"] == 1
    assert phases["tflite.quantize"]["calls"] == 1 and phases["tflite.store"]["calls"] == 1
    assert res["machine"]["cpu_count"] >= 1 and res["trees"]["after"]["commit"]
