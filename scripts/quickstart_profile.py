"""Quickstart profile: every stage's seconds of `entropi run quickstart`, before and after a
change, run back to back on one machine, each stage also as a ratio to before.

    .venv/bin/python scripts/quickstart_profile.py --before /work/base [--after DIR] \\
        [--runs runs/quickstart_profile] [--out benchmarks/results] [--order after,before,...]

writes ``quickstart_profile.json``, ``.md`` and ``.png`` into ``--out``.

Cases (each a fresh child process running the whole quickstart from scratch in its own folder):

- ``before``: the ``--before`` tree (a checkout of the commit before the change, e.g. a git
  worktree) with the quickstart config it shipped;
- ``after``: the ``--after`` tree (default: this checkout) with its quickstart config;
- ``after_before_data``: the ``after`` tree with the data sizes of the before tree's quickstart
  (``--same-data`` overrides, default 5,000 target training images and every source test image),
  which separates what the code's changes saved from what the config's changes cost or saved.

Both trees run with the same interpreter and libraries: each tree's layers are put first on the
import path through a folder of links ``entropi/<layer> -> DIR/<layer>`` (as
scripts/export_profile.py does). The child's working directory is its tree, so the shipped
config finds the datasets beside it. Recorded per case: ``timings.json`` (stage seconds as the
run measures them), the child's wall and CPU seconds (interpreter start and imports included),
the load average before and after, and the pick (rung, confidence, regret, size ratio). The
machine is shared: read the ratios of cases run back to back, and the load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_profile import _git, _machine, _tree_path  # noqa: E402  (a sibling script)

from entropi.common.files import atomic_write_json, atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CASES = ("before", "after", "after_before_data")
SAME_DATA = ("data.target_train_per_class=50", "data.source_test_per_class=0")
"""The before tree's quickstart data sizes (commit ab6b6e0): 50 target training images per class
and every source test image (that tree has no source_test_per_class: it used all 10,000)."""
STAGES = ("load_source", "pretrain", "prune", "load_target", "score", "export", "device")
_MAIN = "import sys; from entropi.host.cli import main; sys.exit(main())"


def _pick(results: dict) -> dict:
    rungs = results.get("rungs") or []
    sel = results.get("selected_index")
    nnz = [r.get("nnz") for r in rungs]
    return {
        "selected_index": sel,
        "criterion": results.get("criterion"),
        "rule": results.get("rule"),
        "confidence": results.get("selection_confidence"),
        "regret": results.get("regret"),
        "regret_units": results.get("regret_units"),
        "probe_se": results.get("probe_se"),
        "size_ratio_nnz": (nnz[0] / nnz[sel]) if sel is not None and nnz and nnz[sel] else None,
        "probe_accuracy": [r.get("probe_accuracy") for r in rungs],
        # older results have no data_sizes: the rungs' n is the target images they were scored on
        "target_train_images": ((results.get("data_sizes") or {}).get("target") or {}).get(
            "train_images", rungs[0].get("n") if rungs else None
        ),
    }


def run_case(case: str, tree: Path, runs: Path, overrides: list[str]) -> dict:
    out = runs / case
    if out.exists():
        raise SystemExit(
            f"{out} exists: give another --runs folder (each case starts from scratch)"
        )
    cmd = [sys.executable, "-c", _MAIN, "run", "quickstart", "--out", str(out.resolve())]
    for o in overrides:
        cmd += ["--set", o]
    load_before = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix=f"qs_profile_{case}_") as links:
        env = dict(os.environ, PYTHONPATH=_tree_path(tree, Path(links)), ENTROPI_QUIET="1")
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{case}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    timings = json.loads((out / "timings.json").read_text())
    results = json.loads((out / "results.json").read_text())
    return {
        "tree": _git(tree),
        "overrides": overrides,
        "stages": {k: timings.get(k) for k in STAGES},
        "stages_total_s": sum(v for v in timings.values() if v is not None),
        "wall_s": wall,
        "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()),
        "pick": _pick(results),
    }


def _ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def ratios(result: dict) -> dict:
    """Per case other than ``before``: each stage, the stage total, wall and CPU as after/before."""
    before = result["cases"].get("before")
    out = {}
    if before is None:
        return out
    for case, r in result["cases"].items():
        if case == "before":
            continue
        row = {k: _ratio(r["stages"].get(k), before["stages"].get(k)) for k in STAGES}
        for key in ("stages_total_s", "wall_s", "cpu_s"):
            row[key] = _ratio(r[key], before[key])
        out[case] = row
    return out


def _fmt(v, spec=".1f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict) -> str:
    cases = [c for c in CASES if c in result["cases"]]
    rat = result["ratios"]
    m = result["machine"]
    lines = [
        "# Quickstart profile: stage seconds before and after, back to back",
        "",
        f"`{result['command']}`",
        "",
        f"Machine: {m['cpu']}, {m['cpus_usable']} usable cores, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
        + f". Order run: {', '.join(result['order'])}.",
        "",
    ]
    head = "| stage | " + " | ".join(
        f"{c} s" + ("" if c == "before" else f" | {c} / before") for c in cases
    )
    lines += [head + " |", "|---" * (1 + 2 * len(cases) - ("before" in cases)) + "|"]
    for key in (*STAGES, "stages_total_s", "wall_s", "cpu_s"):
        name = {"stages_total_s": "**stages total**", "wall_s": "wall (whole process)",
                "cpu_s": "CPU (whole process)"}.get(key, key)  # fmt: skip
        cells = []
        for c in cases:
            r = result["cases"][c]
            v = r["stages"].get(key) if key in STAGES else r[key]
            cells.append(_fmt(v))
            if c != "before":
                cells.append(_fmt(rat.get(c, {}).get(key), ".2f"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| case | tree | overrides | load before -> after | pick |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        r = result["cases"][c]
        p = r["pick"]
        commit = (r["tree"].get("commit") or "?")[:7]
        regret = None if p["regret"] is None else 100 * p["regret"]  # a fraction in results
        se = None if p.get("probe_se") is None else 100 * p["probe_se"]
        pick = (
            f"rung {p['selected_index']} by {p['criterion']} ({p['rule'] or 'argmax'}), "
            f"{_fmt(p['size_ratio_nnz'])}x fewer non-zero weights, confidence "
            f"{_fmt(p['confidence'], '.2f')}, regret {_fmt(regret, '.2f')} points (SE "
            f"{_fmt(se, '.2f')}); {p['target_train_images'] or 'all'} target training images"
        )
        load = f"{r['load_average_before'][0]:.1f} -> {r['load_average_after'][0]:.1f}"
        lines.append(f"| {c} | {commit} | {' '.join(r['overrides']) or '-'} | {load} | {pick} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    # lazy: matplotlib only for the picture
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in CASES if c in result["cases"]]
    fig, ax = plt.subplots(figsize=(8, 0.7 + 0.6 * len(cases)))
    for i, c in enumerate(cases):
        left = 0.0
        for j, stage in enumerate(STAGES):
            v = result["cases"][c]["stages"].get(stage) or 0.0
            ax.barh(i, v, left=left, color=f"C{j}", label=stage if i == 0 else None)
            left += v
    ax.set_yticks(range(len(cases)), cases)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (stages of `entropi run quickstart`)")
    ax.legend(ncol=4, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="checkout of the commit before the change (required)")
    ap.add_argument("--after", default=str(ROOT), help="checkout after it (default: this one)")
    ap.add_argument("--runs", default="runs/quickstart_profile", help="run folders (new)")
    ap.add_argument("--out", default=str(RESULTS), help="where the results files go")
    ap.add_argument("--order", default="after,before,after_before_data", help="cases, in order")
    ap.add_argument("--same-data", nargs="*", default=list(SAME_DATA),
                    help="--set overrides of after_before_data")  # fmt: skip
    ap.add_argument("--render", help="only rewrite the .md and .png from this saved .json")
    args = ap.parse_args(argv)
    if args.render:
        result = json.loads(Path(args.render).read_text())
        out = Path(args.out)
        atomic_write_text(out / "quickstart_profile.md", markdown(result))
        plot(result, out / "quickstart_profile.png")
        return result
    if not args.before:
        ap.error("--before is required (unless --render)")
    order = [c.strip() for c in args.order.split(",") if c.strip()]
    unknown = sorted(set(order) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; known: {list(CASES)}")
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    result = {
        "command": "python scripts/quickstart_profile.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": _machine(),
        "order": order,
        "cases": {},
    }
    trees = {"before": Path(args.before), "after": Path(args.after)}
    for case in order:
        tree = trees["before" if case == "before" else "after"].resolve()
        overrides = list(args.same_data) if case == "after_before_data" else []
        print(f"{case}: {tree} {' '.join(overrides)}", flush=True)
        result["cases"][case] = run_case(case, tree, runs, overrides)
        print(f"  {result['cases'][case]['wall_s']:.0f} s wall", flush=True)
    result["ratios"] = ratios(result)
    out = Path(args.out)
    atomic_write_json(out / "quickstart_profile.json", result)
    atomic_write_text(out / "quickstart_profile.md", markdown(result))
    plot(result, out / "quickstart_profile.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
