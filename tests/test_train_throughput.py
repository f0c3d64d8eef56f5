"""Smoke test of ``scripts/train_throughput.py`` (the pattern of tests/test_scripts.py: its
measuring code on small inputs, the report's shape and invariants; the full run's output is
committed under ``benchmarks/results/``)."""

from __future__ import annotations

import json

from scripts_loader import load_script


def test_train_throughput_quick(tmp_path):
    doc = load_script("train_throughput").main(["--quick", "--out", str(tmp_path)])
    assert {"train_throughput.json", "train_throughput.md"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "train_throughput.json").read_text())["command"] == doc["command"]
    # the plain loops do what entropi does: the same weights and the same features, bit for bit
    assert doc["fidelity"]["train_entropi_vs_plain"] == 0.0
    assert doc["fidelity"]["extract_entropi_vs_plain"] == 0.0
    for name in ("train: entropi / plain", "extract: entropi / plain"):
        assert doc["comparisons"][name]["ratio"]["median"] > 0
    assert (
        doc["flops"]["train_step_per_image_conv_linear"]
        == doc["flops"]["train_step_per_image_flopcountermode"]
    )
    assert 0 < doc["achieved"]["train_fraction_of_peak"]
