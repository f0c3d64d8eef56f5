"""Entropy-regularized pre-training and the low-data regime at CPU scale (seed paper 000, Table II),
with the ENTROPI ladder of every pre-trained model.

Protocol (the seed's, scaled down to a shared 2-core CPU; every size is a flag):

1. Pairs (``--pair``; host/data/specs.py spec strings): ``c100split``, the seed's 25/75 split
   (source ``cifar100:classes=0-24``, target ``cifar100:classes=25-99``), and ``c10c100``
   (source ``cifar10``, target ``cifar100``). From the source's training split a validation
   split is held out first (``--val-per-class``, seeded, stratified); the pre-training images
   are drawn from the rest (``--source-per-class``).
2. Pre-train ``smallnet`` with the quickstart optimizer (host/configs/quickstart.toml:
   SGD + Nesterov, lr 0.2 cosine, batch 256, wd 5e-4; ``--epochs``) with ``[pretrain]
   regularizer`` none / vne / nce (host/ladder/regularizers.py), through the pipeline's own
   ``stage_pretrain`` into a run folder per model (rung 0). gamma of vne and of nce is picked on
   the source validation split (top-1 of the pre-trained classifier, ties to the smaller gamma)
   over ``--gammas`` at the first seed; the target is never looked at. The other seeds train
   with the picked gamma.
3. The ladder: ``stage_prune`` (host/run/stages.py: global magnitude masks of host/ladder/prune.py,
nested,
   ``alpha_r = --keep-per-round ** r`` down to ``--alpha-min``, each rung retrained
   ``--retrain-epochs`` source epochs at ``--prune-lr`` with the [pretrain] optimizer, i.e. with
   the same regularizer and gamma as its pre-training).
4. Target: a pool of ``--target-pool-per-class`` training images per class ("100%") and
   ``--target-test-per-class`` test images per class (seeded, stratified). 10% and 1% are
   seeded stratified fractions of the pool (``stratified_subset(fraction=...)``, the function
   ``[data] target_fraction`` uses; seeded by the run's seed, so nested: 1% is part of 10%).
5. For each method x seed x fraction, on every rung: the selection criterion
(``--criterion``,
   default the project's ``[select] criterion``; host/selection/criteria.py) and the paper's
   entropy on
   the target training features of that fraction, and head-only accuracy
   (:func:`entropi.host.selection.probe.linear_probe` on the frozen encoder's features, at least
   ``--probe-steps`` AdamW steps, at least 20 epochs). The selected rung is
   :func:`entropi.host.selection.rules.select_rung` of the criterion (picked per fraction, on target
   training data only); "oracle" is the rung with the best head-only test accuracy (regret
   =
   oracle - selected). Full fine-tuning of the dense encoder
   (:func:`entropi.host.analysis.finetune.finetune` mode ``full``, at least ``--ft-steps`` SGD
   steps of
   batch ``--ft-batch`` and at least one epoch, augmentation on) at ``--ft-fractions``.
   Also recorded: the source validation / test accuracy of every rung and S(C_auto) (nats) of
   the target pool's dense features, the representation entropy the regularizer aims to raise.

``python scripts/pretrain_reg_study.py --pair c100split --out runs/pretrain_reg_study
--results benchmarks/results/pretrain_reg_cpu`` writes ``pretrain_reg_cpu.json`` (every number,
the settings, versions and timings), ``pretrain_reg_cpu.md`` (the Table II analog beside the
seed's numbers, the selected rungs, the per-rung curves) and ``pretrain_reg_cpu.png`` (criterion
and head-only accuracy against alpha per regularizer, ENTROPI's Figure 3). Results are rewritten
after every finished model (``"complete": false`` until the last). Run folders (pre-trained
models, ladders) and per-model transfer results are cached under ``--out`` (a rerun reuses them;
one with more ``--seeds`` computes only the new seeds). ``--render-only`` rewrites the md and png
from an existing ``--results`` json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

#: Seed paper 000, Table II, CIFAR-100 (pre-train on classes 0-24, full fine-tuning on 25-99).
PAPER_TABLE2 = {
    "none": {1.0: 70.21, 0.1: 42.80, 0.01: 19.72},
    "nce": {1.0: 71.56, 0.1: 45.91, 0.01: 23.87},
    "vne": {1.0: 73.40, 0.1: 46.60, 0.01: 24.03},
}
NAMES = {"none": "L_CrossEntropy", "nce": "L_Shannon (nce)", "vne": "L_vonNeumann (vne)"}
METHODS = ("none", "nce", "vne")
PAIRS = {
    "c100split": ("cifar100:classes=0-24", "cifar100:classes=25-99"),
    "c10c100": ("cifar10", "cifar100"),
}
PATHS = ("out", "results", "roots")
#: settings that decide a pre-trained model and its ladder (the run folders' cache key)
LADDER_KEYS = ("pair", "epochs", "source_per_class", "val_per_class", "source_test_per_class",
               "keep_per_round", "alpha_min", "retrain_epochs", "prune_lr")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", choices=sorted(PAIRS), default="c100split", help="source -> target")
    p.add_argument("--out", default="runs/pretrain_reg_study", help="cache of run folders")
    p.add_argument("--results", default="benchmarks/results/pretrain_reg_cpu", help="JSON/MD stem")
    p.add_argument("--roots", nargs="+", default=["../shared/datasets"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--gammas", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    p.add_argument("--epochs", type=int, default=3, help="pre-training epochs")
    p.add_argument("--source-per-class", type=int, default=160)
    p.add_argument("--val-per-class", type=int, default=40)
    p.add_argument("--source-test-per-class", type=int, default=40)
    p.add_argument("--keep-per-round", type=float, default=0.5, help="ladder: alpha ratio")
    p.add_argument("--alpha-min", type=float, default=0.1, help="ladder: last alpha >= this")
    p.add_argument("--retrain-epochs", type=int, default=1, help="source epochs per rung")
    p.add_argument("--prune-lr", type=float, default=0.05, help="peak lr of a rung's retraining")
    p.add_argument("--criterion", default=None, help="selection criterion ([select] default)")
    p.add_argument("--target-pool-per-class", type=int, default=200, help='the "100%%" pool')
    p.add_argument("--target-test-per-class", type=int, default=40)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    p.add_argument("--ft-fractions", type=float, nargs="*", default=[1.0, 0.1, 0.01])
    p.add_argument("--probe-steps", type=int, default=500)
    p.add_argument("--ft-steps", type=int, default=70, help="at least; and at least one epoch")
    p.add_argument("--ft-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--render-only", action="store_true", help="rewrite the md/png from the --results json"
    )
    args = p.parse_args(argv)
    if args.criterion is None:
        from entropi.host.run.config import SelectConfig

        args.criterion = SelectConfig().criterion
    return args


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_data(args):
    """Source train / val / test and the target pool / test (uint8 NHWC numpy, int64 labels)."""
    from entropi.host.data import load_spec, stratified_split, stratified_subset

    source, target = PAIRS[args.pair]

    def spec(s, split):
        return load_spec(s, split, args.roots, download=False, progress=False)

    src, src_test = spec(source, "train"), spec(source, "test")
    val, rest = stratified_split(src.y, per_class=args.val_per_class, seed=0)
    tr = rest[stratified_subset(src.y[rest], per_class=args.source_per_class, seed=0)]
    te = stratified_subset(src_test.y, per_class=args.source_test_per_class, seed=0)
    tgt, tgt_test = spec(target, "train"), spec(target, "test")
    pool = stratified_subset(tgt.y, per_class=args.target_pool_per_class, seed=0)
    tte = stratified_subset(tgt_test.y, per_class=args.target_test_per_class, seed=0)
    return SimpleNamespace(
        x_src=src.x[tr], y_src=src.y[tr], x_val=src.x[val], y_val=src.y[val],
        x_src_test=src_test.x[te], y_src_test=src_test.y[te], source_classes=list(src.classes),
        x_pool=tgt.x[pool], y_pool=tgt.y[pool], x_test=tgt_test.x[tte], y_test=tgt_test.y[tte],
        n_source_classes=len(src.classes), n_target_classes=len(tgt.classes),
    )  # fmt: skip


def _key(args, keys) -> str:
    keep = {k: getattr(args, k) for k in keys}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def _ladder_root(args) -> Path:
    """``--out/<pair>-<hash of the source and ladder settings>``."""
    return Path(args.out) / f"{args.pair}-{_key(args, LADDER_KEYS)}"


def _transfer_cache(args) -> Path:
    """Per-model transfer results, keyed by every setting that can change them (not the output
    paths, threads, or the seed list and gamma grid: the model's name holds its seed and gamma)."""
    skip = (*PATHS, "threads", "render_only", "seeds", "gammas")
    keys = sorted(k for k in vars(args) if k not in skip)
    return _ladder_root(args) / f"transfer-{_key(args, keys)}"


def _run_config(args, method: str, gamma: float, seed: int, name: str):
    """The RunConfig of one model's run folder: quickstart with this study's sizes."""
    from entropi.host.run.config import load_config

    source, target = PAIRS[args.pair]
    base = load_config("quickstart")
    return dataclasses.replace(
        base,
        name=name,
        seed=seed,
        device="cpu",
        data=dataclasses.replace(
            base.data, roots=list(args.roots), source=source, target=target, download=False,
            source_per_class=args.source_per_class,
            target_train_per_class=args.target_pool_per_class,
            target_test_per_class=args.target_test_per_class,
        ),
        pretrain=dataclasses.replace(
            base.pretrain, epochs=args.epochs, regularizer=method,
            gamma=gamma if method != "none" else 0.1,
        ),
        prune=dataclasses.replace(
            base.prune, keep_per_round=args.keep_per_round, alpha_min=args.alpha_min,
            retrain_epochs=args.retrain_epochs, lr=args.prune_lr,
        ),
    )  # fmt: skip


def _source_data(data):
    import torch

    from entropi.host.data import channel_stats
    from entropi.host.run.rundata import SourceData

    mean, std = channel_stats(data.x_src)
    return SourceData(
        torch.as_tensor(data.x_src), torch.as_tensor(data.y_src, dtype=torch.int64),
        torch.as_tensor(data.x_src_test), torch.as_tensor(data.y_src_test, dtype=torch.int64),
        data.source_classes, mean, std,
    )  # fmt: skip


def _accuracy(rung, x, y) -> float:
    import torch

    from entropi.host.ladder.rungs import classifier_from_rung
    from entropi.host.ladder.train import evaluate

    norm = rung.info.normalization
    model = classifier_from_rung(rung)
    return evaluate(
        model, torch.as_tensor(x), torch.as_tensor(y, dtype=torch.int64),
        mean=tuple(norm["mean"]), std=tuple(norm["std"]),
    )  # fmt: skip


def model_name(method: str, gamma: float, seed: int) -> str:
    return f"{method}_g{gamma:g}_s{seed}" if method != "none" else f"none_s{seed}"


def pretrain(args, data, method: str, gamma: float, seed: int, *, ladder: bool = False):
    """Open (or resume) the run folder of (method, gamma, seed), pre-train rung 0 with
    ``stage_pretrain`` and, with ``ladder``, build the ladder with ``stage_prune``.
    Returns (run, info): info has the source val / test accuracy of rung 0."""
    from entropi.export.rung import load_rung_file
    from entropi.host.run.rundir import open_run
    from entropi.host.run.stages import stage_pretrain, stage_prune

    name = model_name(method, gamma, seed)
    cfg = _run_config(args, method, gamma, seed, name)
    _, run = open_run(cfg, _ladder_root(args) / name, resume=True, argv=["pretrain_reg_study"])
    src = _source_data(data)
    t0 = time.perf_counter()
    rung0 = stage_pretrain(cfg, run, src, "cpu")
    info_path = run.root / "pretrain_info.json"
    info = run.read_json(info_path)
    if info is None:
        info = {
            "name": name,
            "method": method,
            "gamma": gamma if method != "none" else 0.0,
            "seed": seed,
            "val_accuracy": _accuracy(rung0, data.x_val, data.y_val),
            "source_test_accuracy": rung0.info.source_accuracy,
            "seconds": round(rung0.info.train_seconds, 1),
        }
        run.write_json(info_path, info)
        _log(f"pretrain {name}: val {info['val_accuracy']:.4f} in {time.perf_counter() - t0:.0f}s")
    if ladder:
        t0 = time.perf_counter()
        alphas = stage_prune(cfg, run, src, "cpu")
        info["ladder"] = []
        for r in range(len(alphas)):
            rung = load_rung_file(run.rung(r), r)
            info["ladder"].append({
                "index": r, "alpha": rung.info.alpha, "alpha_target": rung.info.alpha_target,
                "source_test_accuracy": rung.info.source_accuracy,
                "retrain_seconds": round(rung.info.train_seconds, 1),
            })  # fmt: skip
        _log(f"ladder {name}: {len(alphas)} rungs in {time.perf_counter() - t0:.0f}s")
    run.lock.release()
    return run, info


def _steps_epochs(n: int, batch: int, steps: int) -> int:
    """Epochs giving at least ``steps`` steps over ``n`` samples (batches of ``batch``)."""
    return max(1, math.ceil(steps / max(1, n // batch if n > batch else 1)))


def _probe(args, data, ftr, ytr, fte, seed: int) -> float:
    from entropi.host.run.config import ProbeConfig
    from entropi.host.selection.probe import linear_probe

    epochs = _steps_epochs(len(ytr), 128, args.probe_steps)
    probe = linear_probe(
        ftr, ytr, fte, data.y_test,
        dataclasses.replace(ProbeConfig(), epochs=max(20, epochs)),
        num_classes=data.n_target_classes, seed=seed,
    )  # fmt: skip
    return probe.test_accuracy


def evaluate_transfer(args, data, run, seed: int) -> dict:
    """Per fraction: every rung's criterion, paper entropy and head-only accuracy, the selected
    rung; full fine-tuning of the dense encoder at ``--ft-fractions``."""
    import torch

    from entropi.export.rung import load_rung_file
    from entropi.host.data import stratified_subset
    from entropi.host.ladder.regularizers import von_neumann_entropy
    from entropi.host.ladder.rungs import classifier_from_rung
    from entropi.host.ladder.train import extract_features
    from entropi.host.run.config import load_config
    from entropi.host.selection.criteria import compute_criteria
    from entropi.host.selection.rules import criterion_options, select_rung

    cfg = load_config(run.config)
    opts = criterion_options(cfg)
    crits = list(dict.fromkeys([args.criterion, "entropy"]))
    idx = {f"{f:g}": stratified_subset(data.y_pool, fraction=f, seed=seed) for f in args.fractions}
    out = {k: {"n_train": int(len(i)), "rungs": []} for k, i in idx.items()}
    dense = None
    for r, path in enumerate(run.rung_files()):
        rung = load_rung_file(path, r)
        model = classifier_from_rung(rung)
        norm = rung.info.normalization
        mean, std = tuple(norm["mean"]), tuple(norm["std"])
        fpool, ftest = (
            extract_features(model.encoder, torch.as_tensor(x), mean=mean, std=std)
            for x in (data.x_pool, data.x_test)
        )
        if r == 0:
            dense = SimpleNamespace(model=model, mean=mean, std=std)
            out["target_vne"] = float(
                von_neumann_entropy(torch.as_tensor(fpool, dtype=torch.float64))
            )
        for key, i in idx.items():
            values = compute_criteria(fpool[i], data.y_pool[i], crits, opts)
            acc = _probe(args, data, fpool[i], data.y_pool[i], ftest, seed)
            out[key]["rungs"].append(
                {"index": r, "alpha": rung.info.alpha, "criteria": values, "head_accuracy": acc}
            )
    for key, row in out.items():
        if key == "target_vne":
            continue
        rungs = row["rungs"]
        pick = select_rung(rungs, args.criterion)
        best = int(np.argmax([x["head_accuracy"] for x in rungs]))
        row |= {
            "head_accuracy": rungs[0]["head_accuracy"],
            "selected_index": pick,
            "selected_alpha": rungs[pick]["alpha"],
            "selected_head_accuracy": rungs[pick]["head_accuracy"],
            "oracle_index": best,
            "oracle_alpha": rungs[best]["alpha"],
            "regret": rungs[best]["head_accuracy"] - rungs[pick]["head_accuracy"],
        }
    for frac in args.ft_fractions:
        from entropi.host.analysis.finetune import FinetuneConfig, finetune

        key, i = f"{frac:g}", stratified_subset(data.y_pool, fraction=frac, seed=seed)
        ftcfg = FinetuneConfig(
            epochs=_steps_epochs(len(i), args.ft_batch, args.ft_steps),
            batch_size=args.ft_batch,
            augment=True,
        )
        part = SimpleNamespace(
            x_train=data.x_pool[i], y_train=data.y_pool[i], x_test=data.x_test, y_test=data.y_test,
        )  # fmt: skip
        t0 = time.perf_counter()
        ft = finetune(
            dense.model.encoder, None, "full", part, ftcfg, mean=dense.mean, std=dense.std,
            seed=seed, num_classes=data.n_target_classes, measure_nc1=False,
        )  # fmt: skip
        out.setdefault(key, {"n_train": int(len(i))})
        out[key] |= {
            "full_ft_accuracy": ft.test_accuracy,
            "full_ft_steps": ft.steps,
            "full_ft_epochs": ftcfg.epochs,
            "full_ft_seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def summarize(runs: list[dict], key: str, method: str, frac: float, scale=100.0) -> dict | None:
    vals = [r["transfer"].get(f"{frac:g}", {}).get(key) for r in runs if r["method"] == method]
    vals = [scale * v for v in vals if v is not None]
    if not vals:
        return None
    return {
        "mean": float(np.mean(vals)),
        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        "values": vals,
    }


SUMMARY_KEYS = ("head_accuracy", "selected_head_accuracy", "full_ft_accuracy", "regret")


def curves(runs: list[dict], criterion: str, fractions) -> dict:
    """Per method and fraction, per rung: mean and sd over seeds of alpha, the criterion, the
    paper's entropy and the head-only accuracy (the entropy curve of ENTROPI's Figure 3)."""
    out = {}
    for m in METHODS:
        mine = [r for r in runs if r["method"] == m]
        if not mine:
            continue
        out[m] = {}
        for f in fractions:
            per = [r["transfer"][f"{f:g}"]["rungs"] for r in mine]
            n = min(len(p) for p in per)
            rows = []
            for i in range(n):
                cell = {}
                for name, get in (
                    ("alpha", lambda x: x["alpha"]),
                    ("criterion", lambda x: x["criteria"][criterion]),
                    ("entropy", lambda x: x["criteria"]["entropy"]),
                    ("head_accuracy", lambda x: 100 * x["head_accuracy"]),
                ):
                    v = [get(p[i]) for p in per if get(p[i]) is not None]
                    cell[name] = float(np.mean(v)) if v else None
                    cell[name + "_sd"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                rows.append(cell)
            out[m][f"{f:g}"] = rows
    return out


def _ms(v: dict | None, digits: int = 2) -> str:
    return f"{v['mean']:.{digits}f} ± {v['sd']:.{digits}f}" if v else "-"


def findings(result: dict) -> list[str]:
    """Per-seed (paired) differences to the cross-entropy baseline, in points: mean ± sd over
    the seeds both have, and whether the mean exceeds twice that sd (computed, not judged: the
    README discusses them). Pairing by seed removes what a seed does to every method alike."""
    s = result["settings"]
    lines = []
    for m in ("nce", "vne"):
        for key, what in (("head_accuracy", "head-only dense"),
                          ("selected_head_accuracy", "head-only selected"),
                          ("full_ft_accuracy", "full FT")):  # fmt: skip
            parts = []
            for f in s["fractions"]:
                k = f"{f:g}"

                def by_seed(method, k=k, key=key):
                    rows = [r for r in result["runs"] if r["method"] == method]
                    vals = {r["seed"]: r["transfer"][k].get(key) for r in rows}
                    return {seed: v for seed, v in vals.items() if v is not None}

                a, b = by_seed(m), by_seed("none")
                d = [100 * (a[x] - b[x]) for x in sorted(set(a) & set(b))]
                if not d:
                    continue
                if len(d) < 2:
                    parts.append(f"{100 * f:g}% {d[0]:+.2f} (one seed: no spread)")
                    continue
                mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
                tag = "beyond" if abs(mean) > 2 * sd else "within"
                parts.append(f"{100 * f:g}% {mean:+.2f} ± {sd:.2f} ({tag} 2 sd)")
            if parts:
                lines.append(f"- {m} - none, {what}: " + "; ".join(parts))
    return lines


def render_md(result: dict) -> str:
    s = result["settings"]
    fr = s["fractions"]
    source, target = result["source"], result["target"]
    done = (
        ""
        if result["complete"]
        else (f" **Partial: {len(result['runs'])} of {result['planned_runs']} models finished.**")
    )
    paper_note = (
        "the seed's numbers (its CIFAR-100 25/75 split, ResNet-18, full fine-tuning)"
        if s["pair"] == "c100split"
        else "the seed's CIFAR-100 25/75 numbers, for reference only (the seed has no "
        "CIFAR-10 -> CIFAR-100 pair)"
    )
    n_rungs = max((len(r.get("ladder", [])) for r in result["runs"]), default=0)
    lines = [
        f"# Entropy-regularized pre-training, low-data transfer, ENTROPI ladder ({s['pair']}, "
        "CPU scale)",
        "",
        f"Source `{source}` ({s['source_per_class']}/class, {s['epochs']} epochs, smallnet), "
        f"target `{target}` (pool {s['target_pool_per_class']}/class = 100%, test "
        f"{s['target_test_per_class']}/class); seeds {s['seeds']}; mean ± sd over seeds, "
        f"top-1 %.{done}",
        f"gamma picked on the source validation split ({s['val_per_class']}/class, never the "
        f"target): vne {result['gamma'].get('vne', '-')}, nce {result['gamma'].get('nce', '-')} "
        f"(grid {s['gammas']}). Ladder: {n_rungs} rungs, alpha = {s['keep_per_round']}^r >= "
        f"{s['alpha_min']}, global magnitude pruning, {s['retrain_epochs']} source epoch(s) of "
        f"retraining per rung at lr {s['prune_lr']} with the model's own pre-training loss. "
        f"Selection: `{s['criterion']}` on the target training images of each fraction. "
        f"Head-only: linear probe (>= {s['probe_steps']} AdamW steps, >= 20 epochs). Full FT: "
        f"dense encoder + new head, SGD, batch {s['ft_batch']}, >= {s['ft_steps']} steps and "
        f">= 1 epoch (steps below), augmentation. Machine: {result['machine']}; "
        f"{result['seconds'] / 60:.1f} min.",
        "",
        f"## Table II analog (beside it: {paper_note})",
        "",
    ]
    cols = [("head_accuracy", "head dense"), ("selected_head_accuracy", "head selected"),
            ("full_ft_accuracy", "full FT")]  # fmt: skip
    hdr = [f"{100 * f:g}% {c}" for f in fr for _, c in cols]
    hdr += [f"paper FT {100 * f:g}%" for f in fr]
    lines += ["| pre-train loss | " + " | ".join(hdr) + " |", "|---" * (1 + len(hdr)) + "|"]
    for m in METHODS:
        cells = [_ms(result["summary"][m][k].get(f"{f:g}")) for f in fr for k, _ in cols]
        cells += [f"{PAPER_TABLE2[m][f]:.2f}" if f in PAPER_TABLE2[m] else "-" for f in fr]
        lines.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    steps = {}
    for r in result["runs"]:
        for f in s["ft_fractions"]:
            t = r["transfer"].get(f"{f:g}", {})
            if "full_ft_steps" in t:
                steps[f"{100 * f:g}%"] = (t["n_train"], t["full_ft_steps"], t["full_ft_epochs"])
    lines += ["", "Target training images and full-FT steps: " + "; ".join(
        f"{k}: {n} images, {st} steps ({ep} epochs)" for k, (n, st, ep) in steps.items()
    ) + ".", ""]  # fmt: skip
    lines += ["Paired differences to L_CrossEntropy (points, mean ± sd over seeds of the per-seed "
              "difference; 'beyond' = |mean| > 2 sd):", "", *findings(result), ""]  # fmt: skip
    lines += [
        "## Selected rung (per seed)",
        "",
        f"alpha of the rung `{s['criterion']}` selects, of the head-only best (oracle), and the "
        "regret (oracle - selected head-only accuracy, points).",
        "",
        "| pre-train loss | fraction | selected alpha | oracle alpha | regret (mean ± sd) |",
        "|---|---|---|---|---|",
    ]
    for m in METHODS:
        mine = [r for r in result["runs"] if r["method"] == m]
        for f in fr:
            t = [r["transfer"][f"{f:g}"] for r in mine]
            if not t:
                continue
            sel = ", ".join(f"{x['selected_alpha']:.3f}" for x in t)
            ora = ", ".join(f"{x['oracle_alpha']:.3f}" for x in t)
            reg = _ms(result["summary"][m]["regret"].get(f"{f:g}"))
            lines.append(f"| {NAMES[m]} | {100 * f:g}% | {sel} | {ora} | {reg} |")
    lines += [
        "",
        f"## Curves across the ladder (mean over seeds; `{s['criterion']}` / paper entropy "
        "(nats) / head-only %)",
        "",
        "Figure: " + Path(result["png"]).name + " (criterion, paper entropy and head-only "
        "accuracy against alpha, one line per pre-training loss, one column per fraction).",
        "",
    ]
    hdr = ["pre-train loss", "alpha", "source test %"] + [f"{100 * f:g}%" for f in fr]
    lines += ["| " + " | ".join(hdr) + " |", "|---" * len(hdr) + "|"]
    for m, per in result["curves"].items():
        mine = [r for r in result["runs"] if r["method"] == m]
        for i, row in enumerate(per[f"{fr[0]:g}"]):
            src = [r["ladder"][i]["source_test_accuracy"] for r in mine if len(r["ladder"]) > i]
            cells = [NAMES[m], f"{row['alpha']:.3f}", f"{100 * np.mean(src):.2f}"]
            for f in fr:
                c = per[f"{f:g}"][i]
                crit, ent, acc = c["criterion"], c["entropy"], c["head_accuracy"]
                cells.append(f"{crit:.2f} / {ent:.3f} / {acc:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Pre-training", "", "| run | gamma | source val % | source test % | "
              "S(C_auto) of target features (nats) |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["runs"]:
        lines.append(
            f"| {r['name']} | {r['gamma']:g} | {100 * r['val_accuracy']:.2f} | "
            f"{100 * r['source_test_accuracy']:.2f} | {r['transfer']['target_vne']:.3f} |"
        )
    lines += ["", "Grid (seed 0, source validation top-1 %): " + ", ".join(
        f"{g['method']} gamma {g['gamma']:g}: {100 * g['val_accuracy']:.2f}" for g in result["grid"]
    ), ""]  # fmt: skip
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from entropi.host.run.plot import pyplot, write_png

    plt = pyplot()
    fr = result["settings"]["fractions"]
    rows = [("criterion", result["settings"]["criterion"]), ("entropy", "paper entropy (nats)"),
            ("head_accuracy", "head-only accuracy %")]  # fmt: skip
    fig, axes = plt.subplots(len(rows), len(fr), figsize=(4 * len(fr), 3 * len(rows)), dpi=100,
                             squeeze=False)  # fmt: skip
    colors = {"none": "tab:gray", "nce": "tab:orange", "vne": "tab:blue"}
    for j, f in enumerate(fr):
        for i, (key, label) in enumerate(rows):
            ax = axes[i][j]
            for m, per in result["curves"].items():
                pts = per[f"{f:g}"]
                ax.errorbar([p["alpha"] for p in pts], [p[key] for p in pts],
                            yerr=[p[key + "_sd"] for p in pts], fmt="o-", color=colors[m],
                            label=m, capsize=2)  # fmt: skip
            ax.set_xscale("log")
            ticks = sorted({round(p["alpha"], 4) for per in result["curves"].values()
                            for p in per[f"{f:g}"]})  # fmt: skip
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
            ax.invert_xaxis()
            ax.set_title(f"{label}, {100 * f:g}% of the target", fontsize=9)
            if i == len(rows) - 1:
                ax.set_xlabel("alpha (weights kept)")
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"{result['source']} -> {result['target']}: per-rung curves by pre-training loss")
    write_png(fig, path)


def build_result(args, argv, t0, grid, gamma, runs, planned) -> dict:
    import torch

    from entropi.common.provenance import package_version

    source, target = PAIRS[args.pair]
    summary = {
        m: {k: {f"{f:g}": summarize(runs, k, m, f) for f in args.fractions} for k in SUMMARY_KEYS}
        for m in METHODS
    }
    stem = Path(args.results)
    return {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "settings": {k: v for k, v in vars(args).items() if k not in (*PATHS, "render_only")},
        "source": source,
        "target": target,
        "complete": len(runs) == planned,
        "planned_runs": planned,
        "gamma": gamma,
        "grid": grid,
        "runs": runs,
        "summary": summary,
        "curves": curves(runs, args.criterion, args.fractions),
        "png": str(stem.with_suffix(".png")),
        "paper_table2": {m: {f"{f:g}": v for f, v in d.items()} for m, d in PAPER_TABLE2.items()},
        "versions": {"entropi": package_version(), "torch": torch.__version__},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def write_results(result: dict, stem: Path) -> None:
    from entropi.common.files import atomic_write_json, atomic_write_text

    atomic_write_json(stem.with_suffix(".json"), result)
    atomic_write_text(stem.with_suffix(".md"), render_md(result))
    if result["runs"]:
        plot(result, stem.with_suffix(".png"))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.render_only:
        stem = Path(args.results)
        result = json.loads(stem.with_suffix(".json").read_text())
        write_results(result, stem)
        return result
    import torch

    from entropi.common.files import atomic_write_json

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(args)
    _log(f"{args.pair}: source {len(data.y_src)} train / {len(data.y_val)} val, target pool "
         f"{len(data.y_pool)} / test {len(data.y_test)}")  # fmt: skip
    first, grid, gamma = args.seeds[0], [], {}
    for method in ("vne", "nce"):
        for g in args.gammas:
            _, info = pretrain(args, data, method, g, first)
            grid.append(info)
        best = max((i for i in grid if i["method"] == method), key=lambda i: i["val_accuracy"])
        gamma[method] = best["gamma"]  # max keeps the first (smallest) gamma on a tie
    _log(f"gamma picked on the source validation split: {gamma}")
    runs, planned = [], len(args.seeds) * len(METHODS)
    stem = Path(args.results)
    for seed in args.seeds:
        for method in METHODS:
            run, info = pretrain(args, data, method, gamma.get(method, 0.0), seed, ladder=True)
            cache = _transfer_cache(args) / f"{info['name']}.json"
            if cache.is_file():
                transfer = json.loads(cache.read_text())
            else:
                t1 = time.perf_counter()
                transfer = evaluate_transfer(args, data, run, seed)
                transfer["seconds"] = round(time.perf_counter() - t1, 1)
                atomic_write_json(cache, transfer)
            runs.append({**info, "transfer": transfer})
            brief = {
                k: {x: v[x] for x in v if x != "rungs"}
                for k, v in transfer.items()
                if isinstance(v, dict)
            }
            _log(f"transfer {info['name']}: {json.dumps(brief)}")
            write_results(build_result(args, argv, t0, grid, gamma, runs, planned), stem)
    result = build_result(args, argv, t0, grid, gamma, runs, planned)
    write_results(result, stem)
    _log(f"wrote {stem}.json/.md/.png in {result['seconds'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
