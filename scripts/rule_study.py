"""The selection-rule study of issue 26 (docs/studies.md "Selection rule study"): argmax against
smallest_tied (tie_se 1, 2) by subset_entropy, cv_probe, logme and von_neumann on the quickstart's
magnitude and channel ladders scored on 7 targets (5 study, 2 held out), and the default the
decision rule fixed before the study ran gives.

    python scripts/rule_study.py --out runs/rule_study --results benchmarks/results/rule_study

Every pair is a scored run folder that exists already (``entropi run quickstart``, its channel
ladder, ``entropi probe RUNDIR --target SPEC --out DIR``: the commands are in PAIRS). Per pair
and per criterion (host/selection/rule_study.py ``pair_picks``), four replicates:

- ``seed0``: the stored scores and cached features, selection seed 0 (the run's): the picks whose
  regret, size ratio and confidence the tables report;
- ``threads1`` / ``threads2``: the target-training features recomputed from the rung files in a
  subprocess with 1 / 2 threads (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
  ``OPENBLAS_NUM_THREADS`` and ``torch.set_num_threads``); where they are bit-identical to the
  cached ones the picks are ``seed0``'s, else every criterion and bootstrap is recomputed on them;
- ``seed1``: the criteria (subset_entropy's unit subsets, cv_probe's folds) and the bootstrap
  draws with seed 1.

Each pair's replicates are kept in ``OUT/pairs/`` (a rerun continues), phases in the order
seed0, seed1, threads1, threads2 (``--phases``), so the decision's numbers come first; a
pair whose folder is still being scored is waited for. The cached features were computed with
torch's default threads, 2 on this machine: where ``threads2`` is not computed (not yet, or
left out for time) the 1 / 2 thread comparison is against them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

PAIRS = [
    # (ladder, target, run folder, held out); the folders were made by
    #   entropi run quickstart --out runs/quickstart (magnitude ladder, its own CIFAR-100 target)
    #   runs/quickstart_channel: the same pair's channel ladder (docs/mcu.md)
    #   entropi probe runs/quickstart[_channel] --target pacs:photo --set probe.folds=10 --out ...
    #   (pacs:art_painting, pacs:sketch, pacs:cartoon the same; cifar100:coarse with
    #   --set data.target_train_per_class=250 --set data.target_test_per_class=50
    #   --set probe.folds=6; cifar100 with --set data.target_train_per_class=20
    #   --set data.target_test_per_class=30)
    *[
        (kind, target, f"runs/probe-{kind}-{target}", False)
        for kind in ("magnitude", "channel")
        for target in ("pacs-photo", "pacs-art", "pacs-sketch", "c100-coarse", "c100-10pct")
    ],
    ("magnitude", "c100-quickstart", "runs/quickstart", True),
    ("channel", "c100-quickstart", "runs/quickstart_channel", True),
    ("magnitude", "pacs-cartoon", "runs/probe-magnitude-pacs-cartoon", True),
    ("channel", "pacs-cartoon", "runs/probe-channel-pacs-cartoon", True),
]

MCU_LADDERS = ROOT / "benchmarks" / "results" / "mcu_ladders.json"
"""TFLite Micro int8 file bytes per rung of both ladders (scripts/mcu_ladders.py)."""


def _run(folder: str):
    from entropi.host.run.config import load_config
    from entropi.host.run.rundir import RunDir

    run = RunDir(ROOT / folder)
    return load_config(run.config), run


def _flash(kind: str, run) -> list[int] | None:
    """The MCU form's int8 file bytes per rung of the ladder the pair's run scored."""
    doc = json.loads(MCU_LADDERS.read_text())
    lad = doc["ladders"].get(kind)
    ladder_json = run.root / "ladder.json"
    source = json.loads(ladder_json.read_text())["from"] if ladder_json.is_file() else run.root
    if lad is None or Path(lad["run"]).name != Path(source).name:
        return None
    return [r["int8"]["file_bytes"] for r in lad["rungs"]]


def _base(kind: str, target: str, folder: str, holdout: bool) -> dict:
    from entropi.host.run.stages import cached_labels

    cfg, run = _run(folder)
    n = len(run.rung_files())
    rungs = [run.read_score(i) for i in range(n)]
    res = run.read_json(run.results)
    return {
        "ladder": kind,
        "target": target,
        "run": folder,
        "holdout": holdout,
        "spec": cfg.data.target,
        "n": len(cached_labels(run)),
        "probe_folds": cfg.probe.folds,
        "alphas": [r["alpha"] for r in rungs],
        "nnz": [r["nnz"] for r in rungs],
        "flash_int8": _flash(kind, run),
        "probe": [r["probe_accuracy"] for r in rungs],
        "probe_se": res["probe_se"],
        "best_probe_index": res["best_probe_index"],
        # what scoring the pair cost (`entropi run` / `probe`: every criterion + the probe)
        "score_seconds": _score_seconds(rungs),
        "replicates": {},
    }


def _score_seconds(rungs: list[dict]) -> float | None:
    t = [r.get("criteria_seconds", math.nan) + r.get("probe_seconds", math.nan) for r in rungs]
    return float(sum(t)) if all(math.isfinite(x) for x in t) else None


def _features(run, n: int, override: Path | None = None):
    """Rung i's cached features (float64), or the recomputed ones in ``override`` where saved."""
    from entropi.host.run.stages import cached_features

    def load(i: int) -> np.ndarray:
        p = None if override is None else override / f"rung_{i:03d}.npy"
        if p is not None and p.is_file():
            return np.load(p).astype(np.float64)
        return cached_features(run, i, n).astype(np.float64)

    return load


def _picks(folder: str, seed: int, resamples: int, recompute: bool, override=None) -> dict:
    from entropi.host.run.stages import cached_labels
    from entropi.host.selection.rule_study import pair_picks

    cfg, run = _run(folder)
    labels = cached_labels(run)
    rungs = [run.read_score(i) for i in range(len(run.rung_files()))]
    return pair_picks(
        rungs,
        _features(run, len(labels), override),
        labels,
        levels=cfg.entropy.levels,
        seed=seed,
        resamples=resamples,
        recompute=recompute,
    )


def features_worker(folder: str, threads: int, dump: Path) -> dict:
    """In a subprocess whose env sets the BLAS / OpenMP threads: every rung's target-training
    features with ``threads`` torch threads, compared with the cached ones; those that differ
    are saved in ``dump``."""
    import torch

    torch.set_num_threads(threads)
    from entropi.export.rung import load_rung_file
    from entropi.host.ladder.rungs import classifier_from_rung
    from entropi.host.ladder.train import extract_features
    from entropi.host.run.rundata import load_target
    from entropi.host.run.stages import cached_features, cached_labels

    t0 = time.perf_counter()
    cfg, run = _run(folder)
    tgt = load_target(cfg)
    labels = cached_labels(run)
    if not np.array_equal(tgt.y_train.astype(np.int64), labels):
        raise SystemExit(f"{folder}: the target's labels are not the cached ones")
    dump.mkdir(parents=True, exist_ok=True)
    info = {"threads": torch.get_num_threads(), "identical": [], "max_abs_diff": []}
    for i, path in enumerate(run.rung_files()):
        rung = load_rung_file(path, i)
        model = classifier_from_rung(rung).eval()
        norm = rung.info.normalization
        f = extract_features(
            model.encoder, torch.as_tensor(tgt.x_train), mean=tuple(norm["mean"]),
            std=tuple(norm["std"]),
        ).astype(np.float32)  # fmt: skip
        stored = cached_features(run, i, len(labels))
        same = bool(np.array_equal(f, stored))
        info["identical"].append(same)
        info["max_abs_diff"].append(float(np.abs(f.astype(np.float64) - stored).max()))
        if not same:
            np.save(dump / f"rung_{i:03d}.npy", f)
    info["seconds"] = time.perf_counter() - t0
    (dump / "info.json").write_text(json.dumps(info))
    return info


def _threads(pair: dict, threads: int, resamples: int, work: Path) -> dict:
    dump = work / "features" / f"{pair['ladder']}-{pair['target']}" / f"threads{threads}"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
    }
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--features-worker", pair["run"], "--threads", str(threads)]
    subprocess.run([*cmd, "--dump", str(dump)], env=env, check=True, cwd=ROOT)
    info = json.loads((dump / "info.json").read_text())
    if all(info["identical"]):
        rep = {**pair["replicates"]["seed0"], "seconds": {}}
    else:
        rep = _picks(pair["run"], 0, resamples, True, override=dump)
    rep["features"] = info
    rep["wall_seconds"] = time.perf_counter() - t0
    return rep


def run_pairs(out: Path, resamples: int, phases: list[str], pairs=PAIRS, log=print) -> list[dict]:
    """Every pair's replicates (cached in ``out/pairs``), phase by phase."""
    from entropi.common.files import atomic_write_json

    (out / "pairs").mkdir(parents=True, exist_ok=True)
    docs: dict[Path, dict] = {}

    def doc(kind, target, folder, holdout) -> dict | None:
        """The pair's document, or None while its run folder is still being scored."""
        path = out / "pairs" / f"{kind}-{target}.json"
        if path not in docs:
            if path.is_file():
                docs[path] = json.loads(path.read_text())
                if "score_seconds" not in docs[path]:  # cached by an earlier version
                    _, run = _run(folder)
                    rungs = [run.read_score(i) for i in range(len(run.rung_files()))]
                    docs[path]["score_seconds"] = _score_seconds(rungs)
            elif (ROOT / folder / "results.json").is_file():
                docs[path] = _base(kind, target, folder, holdout)
        return docs.get(path)

    for phase in phases:
        pending = list(pairs)
        while pending:  # a pair whose folder is still being scored waits, the others go on
            for spec in list(pending):
                pair = doc(*spec)
                if pair is None:
                    continue
                pending.remove(spec)
                if phase in pair["replicates"]:
                    continue
                t0 = time.perf_counter()
                if phase == "seed0":
                    rep = _picks(pair["run"], 0, resamples, False)
                elif phase == "seed1":
                    rep = _picks(pair["run"], 1, resamples, True)
                else:
                    rep = _threads(pair, int(phase.removeprefix("threads")), resamples, out)
                rep.setdefault("wall_seconds", time.perf_counter() - t0)
                pair["replicates"][phase] = rep
                atomic_write_json(out / "pairs" / f"{spec[0]}-{spec[1]}.json", pair)
                log(f"{phase} {pair['ladder']} x {pair['target']}: {rep['wall_seconds']:.0f}s")
            if pending:
                log(f"{phase}: waiting for {', '.join(f'{k} x {t}' for k, t, *_ in pending)}")
                time.sleep(60)
    return [doc(*spec) for spec in pairs]


def write_results(pairs: list[dict], results: Path, resamples: int, command: str) -> dict:
    from entropi.common.files import atomic_write_json, atomic_write_text
    from entropi.common.provenance import hardware, library_versions
    from entropi.host.selection.rule_study import (
        STUDY_CRITERIA,
        decide_default,
        plot_rules,
        render_rules,
        summarize_rules,
    )

    summary = summarize_rules(pairs)
    qs = next(p for p in pairs if p["run"] == "runs/quickstart")
    secs = qs["replicates"]["seed0"]["seconds"]  # bootstrap of `resamples`, quickstart pair
    scale = 100 / resamples  # the quickstart draws 100
    extra = {c: (secs[c] - secs["subset_entropy"]) * scale for c in secs}
    decision = decide_default(summary, extra)
    seconds = {}
    scored = [p.get("score_seconds") for p in pairs]
    if all(t is not None for t in scored):
        seconds["scoring the pairs (entropi run / probe)"] = float(sum(scored))
    for phase in ("seed0", "threads1", "threads2", "seed1"):
        s = [p["replicates"][phase]["wall_seconds"] for p in pairs if phase in p["replicates"]]
        if s:
            seconds[phase] = float(sum(s))
    seconds["total"] = float(sum(seconds.values()))
    doc = {
        "command": command,
        "resamples": resamples,
        "criteria": list(STUDY_CRITERIA),
        "summary": summary,
        "decision": decision,
        "quickstart_extra_bootstrap_seconds": extra,
        "seconds": seconds,
        "machine": {**hardware(), "host": os.uname().nodename, **library_versions()},
        "pairs": pairs,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results.with_suffix(".json"), doc)
    atomic_write_text(results.with_suffix(".md"), render_rules(doc))
    plot_rules(doc, results.with_suffix(".png"))
    return doc


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/rule_study", help="work folder (resumable)")
    ap.add_argument("--results", default="benchmarks/results/rule_study", help="results stem")
    ap.add_argument("--resamples", type=int, default=20, help="paired bootstrap resamples")
    ap.add_argument(
        "--phases", nargs="+", default=["seed0", "seed1", "threads1", "threads2"],
        help="replicates to compute, in order",
    )  # fmt: skip
    ap.add_argument("--features-worker", metavar="RUNDIR", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.features_worker:
        features_worker(a.features_worker, a.threads, Path(a.dump))
        return None
    pairs = run_pairs(ROOT / a.out, a.resamples, a.phases, log=lambda m: print(m, flush=True))
    cmd = (
        f"python scripts/rule_study.py --out {a.out} --results {a.results} "
        f"--resamples {a.resamples}"
    )
    doc = write_results(pairs, ROOT / a.results, a.resamples, cmd)
    print("\n".join(doc["decision"]["lines"]))
    return doc


if __name__ == "__main__":
    main()
