"""`entropi bench --run RUNDIR [--rung N]` and the frozen encoder's forward in head-only rows
(issue 23, item 13).

Reference: PyTorch's own ``FlopCounterMode`` on the rung's encoder (dense forward FLOPs, and
per-module counts scaled by each weight's measured non-zero fraction for the sparse ones).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_export_rung import write_run
from torch.utils.flop_counter import FlopCounterMode

from entropi.benchmarks.bench import BenchError, run_bench
from entropi.host.cli import main
from entropi.host.ladder.rungs import load_rung
from entropi.host.run.rundir import RunDir

BATCH = 4


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    torch.set_num_threads(1)
    rundir = write_run(tmp_path_factory.mktemp("run") / "r")
    RunDir(rundir).write_json(RunDir(rundir).target_classes, ["a", "b", "c"])
    out = tmp_path_factory.mktemp("bench")
    return rundir, out, run_bench(run=rundir, classes=None, batch=BATCH, out_dir=out)


def _reference(rundir, rung: int) -> tuple[int, float]:
    """Dense and effective-sparse forward FLOPs of the rung's encoder on a batch, counted by
    FlopCounterMode (sparse: each conv / linear module's count times its weight's density)."""
    encoder, _ = load_rung(rundir, rung)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        encoder(torch.zeros(BATCH, 3, 32, 32))
    modules = dict(encoder.named_modules())
    sparse = 0.0
    for name, counts in counter.get_flop_counts().items():
        module = modules.get(name.split(".", 1)[1] if "." in name else None)
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            w = module.weight
            sparse += sum(counts.values()) * int(torch.count_nonzero(w)) / w.numel()
    return counter.get_total_flops(), sparse


def test_rows_of_the_selected_rung(bench_run):
    rundir, out, result = bench_run
    assert result["run"]["rung"] == 1 and result["run"]["arch"] == "smallnet"
    assert result["classes"] == [3]  # the run's target classes
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"head", "full"} and all(r["rung"] == 1 for r in rows.values())
    dense, sparse = _reference(rundir, 1)
    head, full = rows["head"], rows["full"]
    assert head["flops_encoder_forward_dense"] == dense
    assert head["flops_encoder_forward_sparse"] == pytest.approx(sparse, rel=1e-3)
    assert sparse < 0.5 * dense  # rung 1 keeps 10 % of the weights
    for k in ("dense", "sparse"):
        assert (
            head[f"flops_with_encoder_{k}"]
            == head[f"flops_{k}"] + head[f"flops_encoder_forward_{k}"]
        )
        assert full[f"flops_encoder_forward_{k}"] == 0  # the full step holds the forward
        assert full[f"flops_with_encoder_{k}"] == full[f"flops_{k}"]
    assert head["flops_dense"] == 2 * 2 * BATCH * 256 * 3  # head forward + weight gradient
    md = (out / "bench.md").read_text()
    assert "step + encoder fwd MFLOPs dense" in md and "rung 1 of" in md
    line = next(s for s in md.splitlines() if s.startswith("| smallnet | 3 | head |"))
    assert f"| {head['flops_with_encoder_dense'] / 1e6:,.2f} |" in line
    assert json.loads((out / "bench.json").read_text())["run"]["rung"] == 1


def test_cli_bench_run(bench_run, tmp_path, capsys):
    rundir, _, _ = bench_run
    argv = ["bench", "--run", str(rundir), "--rung", "0", "--batch", str(BATCH)]
    assert main([*argv, "--classes", "5", "--out", str(tmp_path / "b")]) == 0
    assert f"rung 0 of {rundir}" in capsys.readouterr().out
    result = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert result["run"]["alpha"] == 1.0 and result["classes"] == [5]
    head = next(r for r in result["rows"] if r["mode"] == "head")
    dense, sparse = _reference(rundir, 0)  # rung 0 of write_run has dead channels
    assert head["flops_encoder_forward_dense"] == dense
    assert head["flops_encoder_forward_sparse"] == pytest.approx(sparse, rel=1e-3)
    for bad, message in (
        (["--run", str(rundir), "--arch", "smallnet"], "--arch describe a randomly"),
        (["--rung", "1"], "--rung needs --run RUNDIR"),
    ):
        assert main(["bench", *bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    with pytest.raises(BenchError, match="needs a run"):
        run_bench(classes=None, out_dir=tmp_path / "y")
