"""The README's quickstart results table, from a committed results file.

    python scripts/quickstart_table.py runs/quickstart --out benchmarks/results/quickstart.json
    python scripts/quickstart_table.py --markdown [--json benchmarks/results/quickstart.json]
    python scripts/quickstart_table.py --readme README.md [--json ...]

The first form extracts, from a finished quickstart run's ``results.json``, the numbers the
README's table and its pick line show (per rung: alpha, nnz, source accuracy, the paper's
entropy, ``subset_entropy``, S(C_auto), probe accuracy mean and sd over the probe seeds; the
pick, its criterion, regret, Kendall tau and selection confidence; the device head's test
accuracy and measured peak) into a small JSON file, which is committed. ``--markdown`` prints the
README block rendered from that file; ``--readme`` rewrites the block between the README's
``<!-- quickstart-table -->`` markers in place. ``tests/test_readme_quickstart.py`` checks that
the README's block equals the rendering of the committed file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from entropi.host.run.records import load_results

__all__ = ["BEGIN", "END", "extract", "readme_block", "render", "replace_block"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "quickstart.json"
BEGIN = "<!-- quickstart-table: scripts/quickstart_table.py --readme README.md -->"
END = "<!-- /quickstart-table -->"
_SHOWN = ("entropy", "subset_entropy", "von_neumann")
"""Criteria the table always shows; another selection criterion replaces the S(C_auto) column."""
_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "cifar100:coarse": "CIFAR-100 coarse"}


def extract(run: str | os.PathLike) -> dict[str, Any]:
    """The table's numbers from ``run/results.json`` (a finished run)."""
    res = load_results(Path(run) / "results.json")
    crit = res.criterion
    rungs = [
        {
            "alpha": r.alpha,
            "nnz": r.nnz,
            "source_accuracy": r.source_accuracy,
            "entropy": r.entropy,
            "subset_entropy": r.criteria["subset_entropy"],
            "von_neumann": r.criteria["von_neumann"],
            **({} if crit in _SHOWN else {crit: r.criteria[crit]}),
            "probe_accuracy": r.probe_accuracy,
            "probe_accuracy_std": r.probe_accuracy_std,
        }
        for r in res.rungs
    ]
    dev = res.device
    ties = res.selection_ties or {}
    rule = {  # the rule's pick (results written before the rule seam: argmax, not recorded)
        k: v
        for k, v in (
            ("rule", res.rule if "rule" in res else None),
            ("tie_se", ties.get("tie_se")),
            ("criterion_best_index", ties.get("best_index")),
            ("probe_se", res.probe_se),
        )
        if v is not None
    }
    return {
        **rule,
        "run": {
            "package_version": res.package_version,
            "config_sha256": res.config_sha256,
            "seed": res.seed,
            "arch": res.arch,
        },
        "source": res.source,
        "target": res.target,
        "rungs": rungs,
        "criterion": crit,
        "selected_index": res.selected_index,
        "best_probe_index": res.best_probe_index,
        "regret": res.regret,
        "kendall_tau": res.criteria_summary[crit].kendall_tau,
        "selection_confidence": res.selection_confidence,
        "resamples": res.selection_resamples["resamples"],
        "device": {k: dev[k] for k in ("accuracy", "peak_bytes", "analytic_bytes", "budget_bytes")},
    }


def _row(i: int, r: dict, data: dict) -> str:
    cells = [
        str(i),
        f"{r['alpha']:.5f}",
        f"{r['nnz']:,}",
        f"{r['source_accuracy']:.4f}",
        f"{r['entropy']:.4f}",
        f"{r['subset_entropy']:.1f}",
        f"{r['von_neumann']:.4f}" if data["criterion"] in _SHOWN else f"{r[data['criterion']]:.5f}",
        f"{100 * r['probe_accuracy']:.2f} ± {100 * r['probe_accuracy_std']:.2f}",
    ]
    selected, best = i == data["selected_index"], i == data["best_probe_index"]
    if selected:
        cells = [f"**{c}**" for c in cells]
    tags = [t for t, on in (("selected", selected), ("best", best)) if on]
    if tags:
        cells[-1] += f" ({', '.join(tags)})"
    return "| " + " | ".join(cells) + " |"


def render(data: dict[str, Any]) -> str:
    """The README block (table + pick line) for ``data`` (what :func:`extract` returns)."""
    src = _NAMES.get(data["source"], data["source"])
    tgt = _NAMES.get(data["target"], data["target"])
    crit = data["criterion"]
    col = "S(C_auto)" if crit in _SHOWN else crit
    lines = [
        f"| rung | alpha | nnz | {src} acc | paper entropy (nats) | subset_entropy | {col} "
        f"| probe acc % ({tgt}) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(_row(i, r, data) for i, r in enumerate(data["rungs"])),
    ]
    dev, n = data["device"], data["resamples"]
    wins = round(data["selection_confidence"] * n)
    k = data["selected_index"]
    how = ""
    if data.get("rule", "argmax") != "argmax":
        how = (
            f" and `{data['rule']}` (the fewest non-zero weights within {data['tie_se']:g} "
            f"paired-bootstrap SEs of the best `{crit}`, rung {data['criterion_best_index']})"
        )
    gain = ""
    if data.get("probe_se") is not None:
        ratio = data["rungs"][0]["nnz"] / data["rungs"][k]["nnz"]
        se = 100 * data["probe_se"]
        gain = f" Rung {k} is {ratio:.1f}x smaller than dense (non-zero weights) " + (
            f"at no significant loss: its regret is within one test-set SE ({se:.2f} points)."
            if 100 * data["regret"] <= se
            else f"at a regret above one test-set SE ({se:.2f} points)."
        )
    pick = (
        f"Pick: rung {k} by `{crit}`{how}, regret "
        f"{100 * data['regret']:.2f} points (Kendall tau {data['kendall_tau']:.2f} against the "
        f"probe), selection confidence {data['selection_confidence']:.2f} ({wins} of {n} "
        f"bootstrap resamples).{gain} Device head: {dev['accuracy']:.4f} test accuracy, measured "
        f"peak {dev['peak_bytes']:,} B of {dev['budget_bytes']:,} B (analytic "
        f"{dev['analytic_bytes']:,} B)."
    )
    lines += ["", textwrap.fill(pick, width=100, break_on_hyphens=False)]
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The text between the README's quickstart-table markers (without them)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise ValueError(f"README needs exactly one {BEGIN!r} and one {END!r}")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def replace_block(text: str, block: str) -> str:
    """``text`` with the block between the markers replaced by ``block``."""
    readme_block(text)  # checks the markers
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{rest.split(END, 1)[1]}"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", nargs="?", help="finished quickstart run folder to extract from")
    ap.add_argument("--out", help="write the extracted JSON here (with RUN)")
    ap.add_argument(
        "--json", default=str(DEFAULT_JSON), help="results file to render (%(default)s)"
    )
    ap.add_argument("--markdown", action="store_true", help="print the README block")
    ap.add_argument("--readme", help="rewrite the block between this README's markers")
    args = ap.parse_args(argv)
    if bool(args.run) != bool(args.out):
        ap.error("RUN and --out go together")
    if not (args.run or args.markdown or args.readme):
        ap.error("nothing to do: give RUN --out JSON, --markdown or --readme README")
    try:
        if args.run:
            data = extract(args.run)
            _write_text(Path(args.out), json.dumps(data, indent=1) + "\n")
            args.json = args.out
        data = json.loads(Path(args.json).read_text())
        block = render(data)
        if args.markdown:
            print(block)
        if args.readme:
            path = Path(args.readme)
            _write_text(path, replace_block(path.read_text(), block))
    except (OSError, KeyError, ValueError) as exc:
        ap.exit(2, f"error: {type(exc).__name__}: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
