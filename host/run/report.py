"""``RUNDIR/report.md``: the page a person reads first after ``entropi run`` (or ``probe``).

The answer first: the pick, its size against the dense encoder, its probe accuracy, how sure the
pick is and what to run next, and the target's sizes. Then what ran (config, versions, seed,
command lines, wall time per stage), the rung table with every selection criterion (undefined
ones shown as n/a) and the probe, the plot, the selected encoder's files (size of every form and
format against the dense size and the sparse floor), and the device result (accuracy, peak
memory against the budget). Regret is in probe points everywhere. Everything is read from the
run folder's own artifacts, so the report can be rebuilt from a finished run at any time
(:func:`write_report`).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..deployment.fit import table_markdown
from ..selection.criteria import CRITERIA
from ..selection.rules import seconds_or_none, undefined_notes
from .config import RunConfig
from .records import RungScores, RunResults
from .rundata import describe_sizes
from .rundir import RunDir

__all__ = ["num", "render_report", "write_report"]


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def num(v: float | None) -> str:
    """A criterion value for a person: 4 significant digits, thousands as integers, tiny or
    huge values in scientific notation, None (undefined on that rung) as ``n/a``."""
    if v is None:
        return "n/a"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e7 or a < 1e-3:
        return f"{v:.2e}"
    return f"{v:,.0f}" if a >= 1000 else f"{v:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _title(cfg: RunConfig, run: RunDir) -> str:
    """``entropi run NAME``, or for a folder that probes another run's ladder on a target
    (``entropi probe``, ladder.json), what it probed."""
    ladder = run.read_json(run.root / "ladder.json")
    if ladder is not None and isinstance(ladder.get("from"), str):
        return f"# entropi probe: `{cfg.data.target}` on the ladder of `{ladder['from']}`"
    return f"# entropi run `{cfg.name}`"


def _acc(x: float | None) -> str:
    """An accuracy to 4 decimals; not measured (None, NaN) as n/a."""
    return "n/a" if x is None or x != x else f"{x:.4f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.2f}"


def _probe_seconds(rungs: list[RungScores]) -> float | None:
    """The probe's seconds over every rung (None when a rung did not record them)."""
    times = [seconds_or_none(r.probe_seconds) for r in rungs]
    return None if any(t is None for t in times) else sum(times)


def _probe_cost(rungs: list[RungScores]) -> str:
    """The probe's seconds over every rung, beside the criteria's (empty when not recorded)."""
    probe_s = _probe_seconds(rungs)
    return "" if probe_s is None else f", against {probe_s:.2f} for the probe it predicts"


def _selection_cost(rungs: list[RungScores], res: dict) -> list[str]:
    """One paragraph: what the selection cost (every criterion on every rung, plus the
    bootstrap) against the probe it predicts; nothing when a time was not recorded (or a
    stored one is not a number of seconds)."""
    boot, cpu = seconds_or_none(res.get("seconds")), seconds_or_none(res.get("cpu_seconds"))
    probe_s = _probe_seconds(rungs)
    crit = []
    for r in rungs:
        t = r.criterion_seconds
        crit += [seconds_or_none(v) for v in t.values()] if isinstance(t, dict) and t else [None]
    if boot is None or cpu is None or probe_s is None or any(t is None for t in crit):
        return []
    criteria_s = sum(crit)
    total = criteria_s + boot
    return [
        "",
        f"Selection cost: every criterion on every rung {criteria_s:.1f} s, the bootstrap "
        f"{boot:.1f} s ({cpu:.1f} s of CPU), together {total:.1f} s against {probe_s:.1f} s "
        f"for the probe it predicts (ratio {total / max(probe_s, 1e-9):.2f}).",
    ]


def _regret_noise(results: RunResults) -> str:
    """The noise a regret is read against: the test-set standard error of one probe accuracy
    (binomial, mean over rungs), in points."""
    se = results.probe_se
    if se is None or not math.isfinite(se):
        return "test-set SE of a probe accuracy not recorded"
    return f"test-set SE of a probe accuracy {100 * se:.2f} points"


def _answer(cfg: RunConfig, run: RunDir, results: RunResults) -> list[str]:
    """The pick, its size against dense, its accuracy, its confidence and what to run next."""
    sel, dense = results.selected, results.rungs[0]
    crit = results.criterion
    size = (
        f"the dense encoder itself ({dense.nnz:,} weights)"
        if sel is dense
        else f"{sel.nnz:,} of the dense encoder's {dense.nnz:,} weights "
        f"({_pct(sel.nnz / dense.nnz) if dense.nnz else 'n/a'}, alpha {sel.alpha:.4g})"
    )
    export = run.read_json(run.export / "export.json") if results.export is not None else None
    if export and export.get("files"):
        name, f = min(export["files"].items(), key=lambda kv: kv[1]["bytes"])
        size += (
            f"; smallest file `{name}` {_kib(f['bytes'])} vs {_kib(export['dense_bytes'])} dense"
        )
    conf = results.selection_confidence
    res = results.selection_resamples or {}
    sure = (
        f"picked on {_pct(conf)} of {res.get('resamples')} bootstrap resamples of the target"
        if conf is not None
        else "confidence not measured"
    )
    lines = [
        "",
        f"**Pick: rung {sel.index}** by `{crit}`: {size}. Probe accuracy "
        f"**{_pct(sel.probe_accuracy)}**"
        + ("" if sel is dense else f" against {_pct(dense.probe_accuracy)} for the dense rung")
        + f"; the best in hindsight, rung {results.best_probe_index}, has "
        f"{_pct(results.best_probe_accuracy)} (regret **{100 * results.regret:.2f} "
        f"points**, {_regret_noise(results)}). Confidence: {sure}.",
    ]
    undefined = results.criteria_undefined
    if undefined:
        lines += ["", "Criteria it could not use everywhere:", ""]
        lines += [f"- {n}" for n in undefined_notes(undefined, crit, len(results.rungs))]
    lines += ["", "**Next:** " + " ".join(_next_steps(run, results))]
    target = _target_sizes(cfg, run, results)
    if target:
        lines += ["", target]
    return lines


def _next_steps(run: RunDir, results: RunResults) -> list[str]:
    steps = []
    conf = results.selection_confidence
    if conf is not None and conf < 0.5:
        steps.append("the pick is uncertain (under half of the resamples agree): more target "
                     "images would make it firmer.")  # fmt: skip
    if results.device:
        steps.append(
            "the device bundle is in [`bundle/`](bundle/) and its head in [`head/`](head/); on "
            "the device: `entropi-device train --bundle BUNDLE --data YOUR_IMAGES --out HEAD`."
        )
    else:
        steps.append(
            f"`entropi bundle --run {run.root} --out BUNDLE` bundles rung "
            f"{results.selected_index} for the device."
        )
    if not results.deployment:
        steps.append(
            f"To pick for a device's memory: `entropi select {run.root} --flash SIZE --ram SIZE`."
        )
    return steps


def _target_sizes(cfg: RunConfig, run: RunDir, results: RunResults) -> str:
    """The data's sizes: the images each spec held and those the run used (results.json
    ``data_sizes``, host/run/rundata.py), else the target's as the rungs were scored: training
    images (criteria and probe), test images (probe accuracy), classes."""
    sizes = results.data_sizes or {}
    if sizes.get("target"):
        lines = [describe_sizes(k, sizes[k]) for k in ("target", "source") if sizes.get(k)]
        return "Data: " + "; ".join(lines) + "."
    first = results.rungs[0]
    classes = run.read_json(run.target_classes)
    k = f", {len(classes)} classes" if isinstance(classes, list) else ""
    folds = first.probe_folds or 0
    test = first.probe_test_n
    test = (
        f"; the probe is {folds}-fold cross-validated over {test} images pooled"
        if folds and test
        else (f", {test:,} test images (probe accuracy)" if test else "")
    )
    return f"Target `{cfg.data.target}`: {first.n:,} training images (criteria and probe){test}{k}."


def _what_ran(cfg: RunConfig, run: RunDir, results: RunResults) -> list[str]:
    info = run.read_json(run.info, {})
    lines = [
        "",
        "## What ran",
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
    seconds = results.stage_seconds or run.stage_seconds()
    if seconds:
        rows = [[k, f"{v:.1f}"] for k, v in seconds.items()]
        rows.append(["**total**", f"**{sum(seconds.values()):.1f}**"])
        lines += ["", "Wall time per stage (seconds, summed over resumes):", ""]
        lines += _table(["stage", "s"], rows)
    return lines


def _rungs(results: RunResults) -> list[str]:
    rungs = results.rungs
    names = [n for n in CRITERIA if all(n in r.criteria for r in rungs)]
    if not names:  # scored by an older entropi: the paper's entropy only
        names = ["entropy"]
    crit = results.criterion
    header = [
        "rung", "alpha", "nnz", "source acc", *names, "states", "probe acc (sd)", "probe SE (pts)"
    ]  # fmt: skip
    rows = []
    for r in rungs:
        mark = " **selected**" if r.index == results.selected_index else ""
        mark += " (best probe)" if r.index == results.best_probe_index else ""
        vals = r.criteria if "criteria" in r else {"entropy": r.entropy}
        rows.append(
            [
                f"{r.index}{mark}",
                f"{r.alpha:.5f}",
                str(r.nnz),
                _acc(r.source_accuracy),
                *(num(vals.get(k)) for k in names),
                str(r.distinct_states),
                f"{r.probe_accuracy:.4f} ({r.probe_accuracy_std:.4f})",
                _points(r.probe_accuracy_se),
            ]
        )
    lines = ["", "## Rungs", "", f"Selection: {results.selection_rule} (criterion "]
    lines[-1] += f"`{crit}`, M = {results.levels} levels for the entropies)."
    lines += [""] + _table(header, rows)
    conf = results.selection_confidence
    res = results.selection_resamples or {}
    lines += [
        "",
        f"Selected rung {results.selected_index} (alpha {results.selected_alpha:.5f}): "
        f"probe accuracy {results.selected_probe_accuracy:.4f}; best in hindsight rung "
        f"{results.best_probe_index} ({results.best_probe_accuracy:.4f}); regret "
        f"{100 * results.regret:.2f} points ({_regret_noise(results)}; mean probe sd over "
        f"seeds {100 * results.probe_spread:.2f} points); dense "
        f"{results.dense_probe_accuracy:.4f}. Criteria undefined on a rung show n/a.",
    ]
    ties = results.selection_ties or {}
    if results.rule != "argmax" and ties:
        lines += [
            "",
            f"Rungs tied with the best by `{crit}` (rung {ties['best_index']}), within "
            f"{ties['tie_se']:g} paired-bootstrap SE: {ties['tied']}; the rule keeps the one "
            "with the fewest non-zero weights.",
        ]
    if conf is not None:
        lines += [
            "",
            f"Selection confidence: `{crit}` ({results.rule}) picks rung "
            f"{results.selected_index} on **{100 * conf:.0f}%** of {res['resamples']} "
            f"bootstrap resamples of the target training set (wins per rung: {res['wins']}).",
        ]
        lines += _selection_cost(rungs, res)
    summary = results.criteria_summary
    if summary:
        rows = [
            [
                f"`{k}`" + (" (used)" if k == crit else ""),
                str(v.selected_index),
                f"{100 * v.regret:.2f}",
                *("-" if t is None else f"{t:.2f}" for t in (v.kendall_tau, v.weighted_tau)),
                "higher" if v.higher_is_better else "lower",
                "-" if v.seconds is None else f"{v.seconds:.2f}",
            ]
            for k, v in summary.items()
        ]
        lines += [
            "",
            "Every criterion's argmax pick (regret in probe points, "
            f"{_regret_noise(results)}; tau against the probe; seconds over all rungs"
            f"{_probe_cost(rungs)}):",
        ]
        lines += [""] + _table(
            ["criterion", "pick", "regret", "Kendall tau", "weighted tau", "better", "seconds"],
            rows,
        )
    if results.saturated_rungs:
        n = max(r.n for r in rungs)
        lines += [
            "",
            f"**Note:** the paper's entropy saturated at log n (n = {n} target samples) on rungs "
            f"{results.saturated_rungs}: that estimator cannot rank them.",
        ]
    lines += ["", "![selection criterion and probe accuracy vs alpha](entropy_vs_alpha.png)"]
    return lines


def _tflm_cell(f: dict) -> str:
    """The export table's TFLite Micro column: the measured arena, or why TFLM refuses."""
    t = f.get("tflm")
    if not t:
        return "-"
    if "arena_bytes" in t:
        return f"arena {_kib(t['arena_bytes'])}"
    return f"refused (no {t['missing_op']})" if t.get("missing_op") else "refused"


def _export(run: RunDir) -> list[str]:
    info = run.read_json(run.export / "export.json")
    if not info:
        return []
    rows = [
        [
            f"`{name}`",
            f.get("dtype", "float32"),
            _kib(f["bytes"]),
            f"{f['max_abs_diff']:.1e}" if "max_abs_diff" in f else "-",
            f"{f['feature_error']['mean_cos']:.5f}" if "feature_error" in f else "-",
            f.get("runtime", ""),
            _tflm_cell(f),
        ]
        for name, f in info["files"].items()
    ]
    lines = [
        "",
        "## Selected encoder",
        "",
        f"{info['nnz']:,} non-zero weights of {info['n_weights']:,}; dense float32 "
        f"{_kib(info['dense_bytes'])}, sparse floor {_kib(info['floor_bytes'])} "
        f"({info['floor_convention']}). Every file was verified against PyTorch "
        f"({info['tolerance']['criterion']}, atol {info['tolerance']['atol']:g}, rtol "
        f"{info['tolerance']['rtol']:g}); `encoder_compact.*` has the dead channels removed.",
        "",
        *_table(
            ["file", "dtype", "size", "max abs diff", "int8 mean cos", "runtime", "TFLite Micro"],
            rows,
        ),
    ]
    if any("tflm" in f for f in info["files"].values()):
        lines += [
            "",
            "TFLite Micro: the arena its recording allocator used for the file (run on this host, "
            "compared with LiteRT); a sparse-stored file needs DENSIFY, which TFLM lacks. "
            "`entropi select RUNDIR --runtime tflm` fits a microcontroller with the MCU form.",
        ]
    q = info.get("quantization")
    if q:
        lines += [
            "",
            f"int8 files: {q['scheme']}; calibrated on {q['calibration_images']} target training "
            f"images, checked on {q['checked_images']} {q['checked_on']} against the float "
            f"encoder (refused below mean cosine {q['min_cosine']}).",
        ]
    down = info.get("downstream") or {}
    if down:
        lines += [
            "",
            *_table(
                ["int8 file", "probe acc, float features", "probe acc, int8 features", "delta"],
                [
                    [
                        f"`{name}`",
                        f"{100 * d['float_accuracy']:.2f}",
                        f"{100 * d['int8_accuracy']:.2f}",
                        f"{d['delta_points']:+.2f} points",
                    ]
                    for name, d in down.items()
                ],
            ),
        ]
    return lines


def _deployment(results: RunResults) -> list[str]:
    dep = results.deployment
    if not dep:
        return []
    p = dep["pick"]
    limits = ", ".join(
        f"{k} {_kib(dep[k + '_limit'])}" for k in ("flash", "ram") if dep.get(k + "_limit")
    )
    return [
        "",
        "## Deployment",
        "",
        f"Limits: {limits}. Rungs that fit: {dep['fitting_rungs']}; picked rung {p['rung']} as "
        f"{p['form']} {p['dtype']} (unconstrained pick: rung {dep['unconstrained_index']}). "
        f"{dep['conventions']}.",
        "",
        table_markdown(dep["table"], p).rstrip("\n"),
    ]


def _device(results: RunResults) -> list[str]:
    d = results.device
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


def render_report(cfg: RunConfig, run: RunDir, results: RunResults) -> str:
    lines = [_title(cfg, run), *_answer(cfg, run, results)]
    lines += [*_what_ran(cfg, run, results), *_rungs(results)]
    lines += _deployment(results)
    if results.export is not None:
        lines += _export(run)
    lines += _device(results)
    return "\n".join(lines) + "\n"


def write_report(cfg: RunConfig, run: RunDir, results: RunResults) -> Path:
    """Write RUNDIR/report.md (atomically) and return its path."""
    run.write_text(run.report, render_report(cfg, run, results))
    return run.report
