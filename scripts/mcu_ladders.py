"""What each rung of a ladder costs on a microcontroller, for a magnitude and a channel ladder.

For every rung of every ``--ladder NAME=RUNDIR``: the rung's MCU form (compacted, dense weights,
NHWC: :mod:`entropi.export.mcu`) in int8 and float32, each run in TensorFlow Lite Micro on the
host for its arena (recording allocator) and checked against LiteRT (:mod:`entropi.export.tflm`);
MACs of the compacted network (``torch.utils.flop_counter``, 2 FLOPs per MAC); one-image LiteRT
latency of the int8 file on one thread; and the probe accuracy with its test-set standard error
from the ladder's own run and from every ``--probe NAME:TARGET=RUNDIR`` (an ``entropi probe``
folder scoring that ladder on another target). Writes JSON, a markdown table and a Pareto plot
(probe accuracy against TFLM int8 flash, and against the arena, SE bars).

    python scripts/mcu_ladders.py --ladder magnitude=runs/quickstart \
        --ladder channel=runs/quickstart_channel \
        --probe magnitude:pacs-photo=runs/probe-mag-pacs --probe channel:pacs-photo=... \
        --out benchmarks/results/mcu_ladders
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropi.common.provenance import cpu_model, versions
from entropi.export import images_to_inputs
from entropi.export.footprint import tflite_latency_ms
from entropi.export.mcu import mcu_module, mcu_tflite_bytes
from entropi.export.tflm import compare_tflm_litert, tflm_arena_bytes
from entropi.host.deployment.rung_export import run_calibration, run_target
from entropi.host.ladder.rungs import list_rungs, load_rung
from entropi.host.run.records import read_scores
from entropi.host.run.rundir import RunDir


def _macs(module: torch.nn.Module, shape) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def _probe(run: RunDir, index: int) -> dict[str, float | None]:
    score = read_scores(run, index)
    return {"probe_accuracy": score.probe_accuracy, "probe_se": score.probe_accuracy_se}


def measure_rung(run: RunDir, index: int, cal: np.ndarray, verify: np.ndarray) -> dict[str, Any]:
    encoder, info = load_rung(run, index)
    shape = tuple(info.input_shape)
    module = mcu_module(encoder, shape)
    row: dict[str, Any] = {
        "rung": index,
        "alpha": info.alpha,
        "nnz": info.nnz,
        "method": info.method,
        "macs": _macs(module, shape),
    }
    x = np.ascontiguousarray(images_to_inputs(verify, info.normalization).transpose(0, 2, 3, 1))
    for dtype in ("int8", "float32"):
        data = mcu_tflite_bytes(
            module,
            dtype,
            shape,
            images_to_inputs(cal, info.normalization) if dtype == "int8" else None,
        )
        vs = compare_tflm_litert(data, x)
        row[dtype] = {
            "file_bytes": len(data),
            "tflm_arena_bytes": tflm_arena_bytes(data),
            "litert_latency_ms": tflite_latency_ms(data, num_threads=1),
            "tflm_vs_litert": vs,
        }
    return row | _probe(run, index)


def _table(result: dict[str, Any]) -> str:
    lines = [
        "| ladder | rung | alpha | MMACs | int8 flash | int8 arena | f32 flash | f32 arena | "
        "LiteRT int8 ms | TFLM=LiteRT (int8, within 1 step) | "
        + " | ".join(f"probe {t} %" for t in result["targets"])
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(result["targets"]),
    ]
    for name, ladder in result["ladders"].items():
        for r in ladder["rungs"]:
            probes = []
            for t in result["targets"]:
                p = r["probe"].get(t)
                probes.append(
                    "-"
                    if p is None or p["probe_accuracy"] is None
                    else f"{100 * p['probe_accuracy']:.2f} ± {100 * (p['probe_se'] or 0):.2f}"
                )
            i8, f32 = r["int8"], r["float32"]
            agree = 100 * i8["tflm_vs_litert"]["within_one_step"]
            lines.append(
                f"| {name} | {r['rung']} | {r['alpha']:.4f} | {r['macs'] / 1e6:.1f} | "
                f"{i8['file_bytes'] / 1024:.0f} KB | {i8['tflm_arena_bytes'] / 1024:.1f} KB | "
                f"{f32['file_bytes'] / 1024:.0f} KB | {f32['tflm_arena_bytes'] / 1024:.1f} KB | "
                f"{i8['litert_latency_ms']:.2f} | {agree:.1f}% | " + " | ".join(probes) + " |"
            )
    return "\n".join(lines) + "\n"


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    targets = result["targets"]
    fig, axes = plt.subplots(len(targets), 2, figsize=(10, 3.6 * len(targets)), squeeze=False)
    for row, target in enumerate(targets):
        for col, (key, label) in enumerate(
            (
                ("file_bytes", "TFLM int8 flash (KB, encoder file)"),
                ("tflm_arena_bytes", "TFLM int8 arena (KB, measured)"),
            )
        ):
            ax = axes[row][col]
            for name, ladder in result["ladders"].items():
                pts = [
                    (r["int8"][key] / 1024, r["probe"][target])
                    for r in ladder["rungs"]
                    if r["probe"].get(target) and r["probe"][target]["probe_accuracy"] is not None
                ]
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ys = [100 * p[1]["probe_accuracy"] for p in pts]
                es = [100 * (p[1]["probe_se"] or 0) for p in pts]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=name)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel(label)
            ax.set_ylabel(f"probe accuracy % ({target})")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle("Probe accuracy (± test-set SE) against what the MCU stores and runs in")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--ladder",
        action="append",
        required=True,
        metavar="NAME=RUNDIR",
        help="a ladder's run folder (its own target is the first probe target)",
    )
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="NAME:TARGET=RUNDIR",
        help="an `entropi probe` folder scoring ladder NAME on TARGET",
    )
    p.add_argument(
        "--verify-images",
        type=int,
        default=16,
        help="target test images for the TFLM-LiteRT check (default 16)",
    )
    p.add_argument("--out", required=True, metavar="STEM", help="writes STEM.json/.md/.png")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    ladders = dict(item.split("=", 1) for item in a.ladder)
    result: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model(),
            **versions(
                ["torch", "torch-pruning", "tflite-micro", "ai-edge-litert", "litert-torch"]
            ),
        },
        "targets": ["own"],
        "ladders": {},
    }
    probes: dict[str, dict[str, RunDir]] = {n: {} for n in ladders}
    for item in a.probe:
        key, folder = item.split("=", 1)
        name, target = key.split(":", 1)
        probes[name][target] = RunDir(folder)
        if target not in result["targets"]:
            result["targets"].append(target)
    start = time.perf_counter()
    for name, folder in ladders.items():
        run = RunDir(folder)
        target = run_target(run)
        cal, verify = run_calibration(run, target=target), target.x_test[: a.verify_images]
        rows = []
        for index in range(len(list_rungs(run))):
            row = measure_rung(run, index, cal, verify)
            row["probe"] = {"own": {k: row.pop(k) for k in ("probe_accuracy", "probe_se")}}
            for t, prun in probes[name].items():
                row["probe"][t] = _probe(prun, index)
            rows.append(row)
            print(
                f"{name} rung {index}: int8 {row['int8']['file_bytes']} B, arena "
                f"{row['int8']['tflm_arena_bytes']} B",
                file=sys.stderr,
            )
        result["ladders"][name] = {"run": str(folder), "rungs": rows}
    result["seconds"] = time.perf_counter() - start
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(_table(result))
    _plot(result, out.with_suffix(".png"))
    print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
