"""`entropi bench` output, the paper-model reconstructions, and the RESULTS.md summarizer."""

from __future__ import annotations

import json

import pytest
import torch
from scripts_loader import load_script

from entropi.benchmarks.bench import run_bench
from entropi.benchmarks.paper_models import build_paper_model

_summarize = load_script("summarize")
BenchmarkJSONError, render_results, summarize = (
    _summarize.BenchmarkJSONError,
    _summarize.render_results,
    _summarize.summarize,
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> tuple[dict, object]:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    return run_bench(archs=["smallnet"], classes=[5, 10], batch=4, alpha=0.1, out_dir=out), out


def test_bench_writes_rows_for_every_combination(bench):
    result, out = bench
    assert {p.name for p in out.iterdir()} >= {"bench.json", "bench.md", "bench.png"}
    on_disk = json.loads((out / "bench.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(result["rows"]))
    keys = {(r["arch"], r["classes"], r["mode"]) for r in result["rows"]}
    assert keys == {("smallnet", c, m) for c in (5, 10) for m in ("head", "full")}
    for r in result["rows"]:
        for k in ("batch", "flops_dense", "flops_sparse", "memory_bytes", "memory_bytes_analytic"):
            assert r[k] > 0, k
        assert r["flops_sparse"] <= r["flops_dense"]
        assert set(r["memory_breakdown"]) >= {
            "weights",
            "gradients",
            "optimizer_state",
            "activations",
            "batch",
            "total",
        }
    assert result["alpha"] == 0.1 and "torch" in result["versions"]
    assert "FLOPs = 2 x MACs" in (out / "bench.md").read_text()


def test_bench_rows_are_consistent(bench):
    result, _ = bench
    rows = {(r["classes"], r["mode"]): r for r in result["rows"]}
    # head step on 256 features: forward + weight gradient = 2 GEMMs of 2 * B * F * C
    assert rows[(5, "head")]["flops_dense"] == 2 * 2 * 4 * 256 * 5
    # full fine-tuning: PyTorch measurement equals the analytic count
    full = rows[(5, "full")]
    assert full["memory_bytes"] == full["memory_bytes_analytic"]
    # head on the device: measured tracemalloc peak >= its buffers, and far below full FT
    head = rows[(5, "head")]
    assert head["memory_bytes"] >= head["memory_bytes_analytic"]
    assert head["memory_bytes"] < full["memory_bytes"] / 50
    # sparse at alpha 0.1 cuts the encoder's conv FLOPs, not the head's
    assert full["flops_sparse"] < 0.5 * full["flops_dense"]
    assert head["flops_sparse"] == head["flops_dense"]


def test_bench_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"unknown architecture\(s\) \['vgg'\]; known"):
        run_bench(archs=["vgg"], out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        run_bench(archs=["smallnet"], alpha=0.0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="classes must be integers >= 2"):
        run_bench(archs=["smallnet"], classes=[1], out_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("arch", "params"),
    # torchvision's published parameter counts (1000 classes)
    [
        ("resnet18_imagenet", 11_689_512),
        ("mobilenetv3_large", 5_483_032),
        ("mobilenetv3_small_imagenet", 2_542_856),
    ],
)
def test_paper_models_match_torchvision_parameter_counts(arch, params):
    model = build_paper_model(arch, 1000)
    assert sum(p.numel() for p in model.parameters()) == params


def _report() -> dict:
    stats = {
        "median": 0.0123,
        "iqr": 0.0004,
        "stddev": 0.0003,
        "min": 0.012,
        "max": 0.014,
        "rounds": 7,
        "iterations": 1,
    }
    return {
        "machine_info": {
            "entropi": {"cpu_model": "Test CPU", "logical_cores": 2, "versions": {"torch": "x"}}
        },
        "benchmarks": [
            {
                "name": "test_a",
                "fullname": "benchmarks/test_x.py::test_a",
                "group": None,
                "stats": stats,
                "extra_info": {"images_per_second": 81.3},
            }
        ],
    }


def test_summarize_writes_medians_and_spread(tmp_path):
    src = tmp_path / "pb.json"
    src.write_text(json.dumps(_report()))
    text = summarize(src, tmp_path / "RESULTS.md", note="noisy").read_text()
    assert "Test CPU, 2 logical cores" in text
    assert (
        "| `test_a` | 12.3 ms | 400 us | 300 us | 12 ms | 14 ms | 7 | images_per_second = 81.3 |"
        in text
    )
    assert "## benchmarks/test_x.py" in text and "noisy" in text


def test_summarize_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `pytest benchmarks --benchmark-json"):
        summarize(tmp_path / "missing.json", tmp_path / "R.md")
    with pytest.raises(BenchmarkJSONError, match="not a pytest-benchmark report"):
        render_results({"rows": []})


@pytest.mark.slow
def test_table2_reproduces_the_papers_head_numbers(tmp_path):
    run_table2 = load_script("table2").run_table2

    torch.set_num_threads(1)
    result = run_table2(tmp_path, classes=(5,), batch=2)
    assert {p.name for p in tmp_path.iterdir()} == {"table2.json", "table2.md", "table2.png"}
    fits = {(r["target"], r["reading"].split(":")[0]) for r in result["readings"] if r["fits"]}
    # golden: the head entries are one head GEMM (512 / 1280 features) and 3 float32 copies
    assert ("resnet18 head MFLOPs", "2 x B x 512 x C") in fits
    assert ("mobilenetv3 head MFLOPs", "2 x B x 1280 x C") in fits
    head_mb = {r["reading"] for r in result["readings"] if r["fits"] and "head MB" in r["target"]}
    assert any(t.startswith("3 x (512 x C") for t in head_mb)
    assert any(t.startswith("3 x (1280 x C") for t in head_mb)
    # no reading of the full fine-tuning entries rounds to the printed values
    assert not any(r["fits"] for r in result["readings"] if "full" in r["target"])
    assert "What explains each difference" in (tmp_path / "table2.md").read_text()
