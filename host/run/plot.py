"""The selection criterion and the probe accuracy against alpha (log x axis), like the paper's
Figure 3 (which plots the entropy), each with its noise: the probe's test-set standard error as
error bars and as a tie band around the best probe, and, for a rule that decides ties
(``smallest_tied``), the criterion values within its paired-bootstrap band of the best rung."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from entropi.common.files import atomic_write_bytes

from ..selection.criteria import CRITERIA
from ..selection.rules import stored_value

__all__ = ["plot_entropy_vs_alpha", "pyplot", "write_png"]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    # lazy: matplotlib loads only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib loads only when a plot is drawn
    import matplotlib.pyplot as plt

    return plt


def write_png(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG atomically, close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    fig.clf()
    pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_entropy_vs_alpha(results: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()

    rungs = results["rungs"]
    alphas = [r["alpha"] for r in rungs]
    crit = results.get("criterion", "entropy")
    values = [stored_value(r, crit) for r in rungs]
    values = [float("nan") if v is None else v for v in values]
    fig, ax1 = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax1.plot(alphas, values, "o-", color="tab:blue", label=f"{crit} (selection criterion)")
    n = max(r.get("n", 0) for r in rungs)
    if n and crit == "entropy":
        ax1.axhline(math.log(n), color="tab:blue", ls=":", lw=1, label=f"log n (n = {n})")
    ax1.set_xscale("log")
    ax1.invert_xaxis()
    ax1.set_xlabel("alpha (fraction of encoder weights kept, log scale)")
    ax1.set_ylabel(f"{crit} of target-train features", color="tab:blue")
    _criterion_band(ax1, results, alphas, values)
    ax2 = ax1.twinx()
    se = [r.get("probe_accuracy_se") for r in rungs]
    has_se = all(v is not None and math.isfinite(v) for v in se)
    ax2.errorbar(
        alphas,
        [100 * r["probe_accuracy"] for r in rungs],
        yerr=[
            100 * (v if has_se else r.get("probe_accuracy_std", 0.0))
            for v, r in zip(se, rungs, strict=True)
        ],
        fmt="s--",
        color="tab:red",
        capsize=3,
        label="probe accuracy (mean +- test-set SE)" if has_se else "probe accuracy (+- sd)",
    )
    best_rung = rungs[results["best_probe_index"]]
    if has_se:
        top, band = 100 * best_rung["probe_accuracy"], 100 * best_rung["probe_accuracy_se"]
        ax2.axhspan(
            top - band, top + band, color="tab:red", alpha=0.1, label="best probe +- SE (tie band)"
        )
    ax2.set_ylabel("target test accuracy, linear probe (%)", color="tab:red")
    sel, best = results["selected_index"], results["best_probe_index"]
    ax1.axvline(alphas[sel], color="tab:blue", alpha=0.3, lw=6, label=f"selected (rung {sel})")
    ax2.axvline(
        alphas[best], color="tab:red", alpha=0.3, lw=2, ls=":", label=f"best probe (rung {best})"
    )
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=8)
    conf = results.get("selection_confidence")
    se_all = results.get("probe_se")
    ax1.set_title(
        f"{results['arch']}: {results['source']} -> {results['target']}\nby {crit} "
        f"({results.get('rule', 'argmax')}): regret {100 * results['regret']:.2f} pts"
        + (f" (SE {100 * se_all:.2f})" if se_all is not None else "")
        + (f", confidence {conf:.2f}" if conf is not None else ""),
        fontsize=10,
    )
    return write_png(fig, path)


def _criterion_band(ax, results: dict[str, Any], alphas: list, values: list) -> None:
    """The rule's tie band on the criterion: per rung, from the best rung's value down (up, for
    a lower-is-better criterion) by tie_se x that rung's paired-bootstrap SE of the difference."""

    ties = results.get("selection_ties") or {}
    se = ties.get("paired_se")
    if results.get("rule", "argmax") == "argmax" or not se or any(v is None for v in se):
        return
    crit = results.get("criterion", "entropy")
    best = values[ties["best_index"]]
    sign = -1.0 if CRITERIA[crit].higher_is_better else 1.0
    edge = [best + sign * ties["tie_se"] * v for v in se]
    ax.fill_between(
        alphas,
        edge,
        [best] * len(alphas),
        color="tab:blue",
        alpha=0.12,
        label=f"tie band ({ties['tie_se']:g} paired-bootstrap SE of the best)",
    )
    tied = ties.get("tied") or []
    ax.plot(
        [alphas[i] for i in tied],
        [values[i] for i in tied],
        "o",
        mfc="none",
        ms=11,
        color="tab:blue",
        label="tied with the best (the rule keeps the smallest)",
    )
