"""Entropy of every rung of a finished run at several quantization levels M.

Shows where the joint-state entropy saturates at log n (every sample in its own state) and how
the selected rung would move with M. Writes benchmarks/results/<run name>_levels.json.

    .venv/bin/python scripts/levels_ablation.py runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from entropi.common.files import atomic_write_json
from entropi.host.ladder.rungs import list_rungs, load_rung
from entropi.host.ladder.train import extract_features
from entropi.host.run.config import load_config
from entropi.host.run.records import load_results
from entropi.host.run.rundata import load_target
from entropi.host.selection.entropy import state_entropy
from entropi.host.selection.rules import saturated_rungs, select_rung


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--levels", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    cfg = load_config(a.run / "config.toml")
    tgt = load_target(cfg)
    results = load_results(a.run / "results.json")
    x = torch.as_tensor(tgt.x_train)
    rows = []
    for i in range(len(list_rungs(a.run))):
        enc, meta = load_rung(a.run, i)
        norm = meta.normalization
        f = extract_features(enc, x, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
        row = {
            "rung": i,
            "alpha": meta.alpha,
            "probe_accuracy": results.rungs[i].probe_accuracy,
        }
        for m in a.levels:
            e = state_entropy(f, m)
            row[f"entropy_M{m}"] = e.entropy
            row[f"per_unit_bound_M{m}"] = e.per_unit_bound
            row[f"zero_state_fraction_M{m}"] = float(np.mean(np.floor(f / e.delta + 0.5) == 0))
        rows.append(row)
        print(json.dumps(row), flush=True)
    selected = {}
    for m in a.levels:
        # the pipeline's own selection rule, applied to the entropy at M levels
        at_m = [{"index": r["rung"], "entropy": r[f"entropy_M{m}"], "n": len(x)} for r in rows]
        idx = select_rung(at_m, "entropy")
        best = max(r["probe_accuracy"] for r in rows)
        selected[f"M{m}"] = {
            "index": idx,
            "regret": best - rows[idx]["probe_accuracy"],
            "saturated": saturated_rungs(at_m),
        }
    out = {
        "run": str(a.run),
        "n": len(x),
        "log_n": math.log(len(x)),
        "rows": rows,
        "selected": selected,
    }
    path = a.out or Path(__file__).parents[1] / "benchmarks" / "results" / f"{cfg.name}_levels.json"
    atomic_write_json(path, out)
    return out


if __name__ == "__main__":
    main()
