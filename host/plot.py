"""Entropy and probe accuracy against alpha (log x axis), like the paper's Figure 3."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from entropi.device.io import atomic_write_bytes

__all__ = ["plot_entropy_vs_alpha"]


def plot_entropy_vs_alpha(results: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rungs = results["rungs"]
    alphas = [r["alpha"] for r in rungs]
    fig, ax1 = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax1.plot(alphas, [r["entropy"] for r in rungs], "o-", color="tab:blue", label="entropy H(D)")
    n = max(r.get("n", 0) for r in rungs)
    if n:
        ax1.axhline(math.log(n), color="tab:blue", ls=":", lw=1, label=f"log n (n = {n})")
    ax1.set_xscale("log")
    ax1.invert_xaxis()
    ax1.set_xlabel("alpha (fraction of encoder weights kept, log scale)")
    ax1.set_ylabel("entropy of target-train features (nats)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(
        alphas,
        [100 * r["probe_accuracy"] for r in rungs],
        "s--",
        color="tab:red",
        label="probe accuracy",
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
    ax1.set_title(
        f"{results['arch']}: {results['source']} -> {results['target']}, M={results['levels']}, "
        f"regret {100 * results['regret']:.2f} pts",
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
