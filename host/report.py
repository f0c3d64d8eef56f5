"""``RUNDIR/report.md``: the page a person reads first after ``entropi run``.

What ran (config, versions, seed, command lines, wall time per stage), the rung table with every
selection criterion and the probe, the plot, the selected encoder's files (size of every form and
format against the dense size and the sparse floor), and the device result (accuracy, peak memory
against the budget). Everything is read from the run folder's own artifacts, so the report can be
rebuilt from a finished run at any time (:func:`write_report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig
from .rundir import RunDir
from .selection import CRITERIA

__all__ = ["render_report", "write_report"]


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _what_ran(cfg: RunConfig, run: RunDir, results: dict[str, Any]) -> list[str]:
    info = run.read_json(run.info, {})
    lines = [
        f"# entropi run `{cfg.name}`",
        "",
        f"{cfg.data.source} -> {cfg.data.target}, {cfg.pretrain.arch}, seed {cfg.seed}; "
        f"entropi {info.get('package_version', '?')}, python {info.get('python', '?')}, "
        f"torch {info.get('torch', '?')}, host `{info.get('host', '?')}`. Resolved config: "
        f"[`config.toml`](config.toml) (sha256 `{cfg.digest()[:12]}`).",
        "",
    ]
    for inv in info.get("invocations", []):
        lines.append(
            f"- {inv['started']}: `{inv['argv']}`" + (" (resume)" if inv["resume"] else "")
        )
    seconds = results.get("stage_seconds") or run.stage_seconds()
    if seconds:
        rows = [[k, f"{v:.1f}"] for k, v in seconds.items()]
        rows.append(["**total**", f"**{sum(seconds.values()):.1f}**"])
        lines += ["", "Wall time per stage (seconds, summed over resumes):", ""]
        lines += _table(["stage", "s"], rows)
    return lines


def _rungs(results: dict[str, Any]) -> list[str]:
    rungs = results["rungs"]
    keys = [c.key for c in CRITERIA.values() if all(c.key in r for r in rungs)]
    header = ["rung", "alpha", "nnz", "source acc", *keys, "per-unit bound", "states", "probe acc"]
    rows = []
    for r in rungs:
        mark = " **selected**" if r["index"] == results["selected_index"] else ""
        mark += " (best probe)" if r["index"] == results["best_probe_index"] else ""
        rows.append(
            [
                f"{r['index']}{mark}",
                f"{r['alpha']:.5f}",
                str(r["nnz"]),
                f"{r['source_accuracy']:.4f}",
                *(f"{r[k]:.4f}" for k in keys),
                f"{r['per_unit_bound']:.2f}",
                str(r["distinct_states"]),
                f"{r['probe_accuracy']:.4f}",
            ]
        )
    lines = ["", "## Rungs", "", f"Selection: {results['selection_rule']} (criterion "]
    lines[-1] += f"`{results.get('criterion', 'entropy')}`, M = {results['levels']} levels)."
    lines += [""] + _table(header, rows)
    lines += [
        "",
        f"Selected rung {results['selected_index']} (alpha {results['selected_alpha']:.5f}): "
        f"probe accuracy {results['selected_probe_accuracy']:.4f}; best in hindsight rung "
        f"{results['best_probe_index']} ({results['best_probe_accuracy']:.4f}); regret "
        f"{results['regret']:.4f}; dense {results['dense_probe_accuracy']:.4f}.",
    ]
    if results.get("saturated_rungs"):
        n = max(r.get("n", 0) for r in rungs)
        lines += [
            "",
            f"**Warning:** the entropy saturated at log n (n = {n} target samples) on rungs "
            f"{results['saturated_rungs']}: the estimator cannot rank them, so the pick among "
            "them is the densest by rule, not by evidence.",
        ]
    lines += ["", "![entropy and probe accuracy vs alpha](entropy_vs_alpha.png)"]
    return lines


def _export(run: RunDir) -> list[str]:
    info = run.read_json(run.export / "export.json")
    if not info:
        return []
    rows = [
        [f"`{name}`", _kib(f["bytes"]), f"{f['max_abs_diff']:.1e}", f.get("runtime", "")]
        for name, f in info["files"].items()
    ]
    return [
        "",
        "## Selected encoder",
        "",
        f"{info['nnz']:,} non-zero weights of {info['n_weights']:,}; dense float32 "
        f"{_kib(info['dense_bytes'])}, sparse floor {_kib(info['floor_bytes'])} "
        f"({info['floor_convention']}). Every file was verified against PyTorch "
        f"({info['tolerance']['criterion']}, atol {info['tolerance']['atol']:g}, rtol "
        f"{info['tolerance']['rtol']:g}); `encoder_compact.*` has the dead channels removed.",
        "",
        *_table(["file", "size", "max abs diff", "runtime"], rows),
    ]


def _device(results: dict[str, Any]) -> list[str]:
    d = results.get("device")
    if not d:
        return []
    return [
        "",
        "## Device",
        "",
        f"Head trained with the numpy runtime: {d['accuracy_split']} accuracy "
        f"**{d['accuracy']:.4f}**; peak memory {d['peak_bytes']:,} B measured (tracemalloc) vs "
        f"{d['analytic_bytes']:,} B planned, budget {d['budget_bytes']:,} B "
        f"({100 * d['peak_bytes'] / d['budget_bytes']:.0f}% used); {d['epochs_run']} epochs, "
        f"{d['samples_per_second']:,.0f} samples/s. Details: [`head/train.json`](head/train.json).",
    ]


def render_report(cfg: RunConfig, run: RunDir, results: dict[str, Any]) -> str:
    lines = [*_what_ran(cfg, run, results), *_rungs(results)]
    if "export" in results:
        lines += _export(run)
    lines += _device(results)
    return "\n".join(lines) + "\n"


def write_report(cfg: RunConfig, run: RunDir, results: dict[str, Any]) -> Path:
    """Write RUNDIR/report.md (atomically) and return its path."""
    run.write_text(run.report, render_report(cfg, run, results))
    return run.report
