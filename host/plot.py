"""The selection criterion and the probe accuracy against alpha (log x axis), like the paper's
Figure 3 (which plots the entropy)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from entropi.device.io import atomic_write_bytes

__all__ = ["plot_entropy_vs_alpha", "pyplot", "write_png"]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
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
    from .selection import stored_value

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
    ax2 = ax1.twinx()
    ax2.errorbar(
        alphas,
        [100 * r["probe_accuracy"] for r in rungs],
        yerr=[100 * r.get("probe_accuracy_std", 0.0) for r in rungs],
        fmt="s--",
        color="tab:red",
        capsize=3,
        label="probe accuracy (mean +- sd over seeds)",
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
    ax1.set_title(
        f"{results['arch']}: {results['source']} -> {results['target']}, by {crit}: regret "
        f"{100 * results['regret']:.2f} pts"
        + (f", confidence {conf:.2f}" if conf is not None else ""),
        fontsize=10,
    )
    return write_png(fig, path)
