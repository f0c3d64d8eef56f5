"""Entropy-regularized pre-training and the low-data regime at CPU scale (seed paper 000, Table II).

Protocol (the seed's, scaled down to a shared 2-core CPU; every size is a flag):

1. Source ``cifar100:classes=0-24``, target ``cifar100:classes=25-99`` (host/data/specs.py).
   From the source's training split a validation split is held out first (``--val-per-class``,
   seeded, stratified); the pre-training images are drawn from the rest (``--source-per-class``).
2. Pre-train ``smallnet`` with the quickstart optimizer (host/configs/quickstart.toml:
   SGD + Nesterov, lr 0.2 cosine, batch 256, wd 5e-4; ``--epochs``) with ``[pretrain]
   regularizer`` none / vne / nce (host/regularizers.py). gamma of vne and of nce is picked on
   the source validation split (top-1 of the pre-trained classifier, ties to the smaller gamma)
   over ``--gammas`` at the first seed; the target is never looked at. The other seeds train
   with the picked gamma.
3. Target: a pool of ``--target-pool-per-class`` training images per class ("100%") and
   ``--target-test-per-class`` test images per class (seeded, stratified). 10% and 1% are
   seeded stratified fractions of the pool (``stratified_subset(fraction=...)``, the function
   ``[data] target_fraction`` uses; seeded by the run's seed, so nested: 1% is part of 10%).
4. For each method x seed x fraction: head-only accuracy (:func:`entropi.host.probe.linear_probe`
   on the frozen dense encoder's features, at least ``--probe-steps`` AdamW steps) and full
   fine-tuning accuracy (:func:`entropi.host.finetune.finetune` mode ``full``, at least
   ``--ft-steps`` SGD steps with augmentation) at the fractions in ``--ft-fractions``.
   Also recorded: the source validation / test accuracy and S(C_auto) (nats) of the target
   pool's features, the representation entropy the regularizer aims to raise.

``python scripts/pretrain_reg_study.py --out runs/pretrain_reg_study
--results benchmarks/results/pretrain_reg_cpu`` writes ``pretrain_reg_cpu.json`` (every number,
the settings, versions and timings) and ``pretrain_reg_cpu.md`` (the Table II analog beside the
seed's numbers). Pre-trained models are cached under ``--out`` (a rerun reuses them).
"""

from __future__ import annotations

import argparse
import dataclasses
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
SOURCE, TARGET = "cifar100:classes=0-24", "cifar100:classes=25-99"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/pretrain_reg_study", help="cache of pre-trained models")
    p.add_argument("--results", default="benchmarks/results/pretrain_reg_cpu", help="JSON/MD stem")
    p.add_argument("--roots", nargs="+", default=["../shared/datasets"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--gammas", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--epochs", type=int, default=3, help="pre-training epochs")
    p.add_argument("--source-per-class", type=int, default=160)
    p.add_argument("--val-per-class", type=int, default=40)
    p.add_argument("--source-test-per-class", type=int, default=40)
    p.add_argument("--target-pool-per-class", type=int, default=200, help='the "100%%" pool')
    p.add_argument("--target-test-per-class", type=int, default=40)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1, 0.01])
    p.add_argument("--ft-fractions", type=float, nargs="*", default=[0.1, 0.01])
    p.add_argument("--probe-steps", type=int, default=500)
    p.add_argument("--ft-steps", type=int, default=70)
    p.add_argument("--ft-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_data(args):
    """Source train / val / test and the target pool / test (uint8 NHWC numpy, int64 labels)."""
    from entropi.host.data import load_spec, stratified_split, stratified_subset

    def spec(s, split):
        return load_spec(s, split, args.roots, download=False, progress=False)

    src, src_test = spec(SOURCE, "train"), spec(SOURCE, "test")
    val, rest = stratified_split(src.y, per_class=args.val_per_class, seed=0)
    tr = rest[stratified_subset(src.y[rest], per_class=args.source_per_class, seed=0)]
    te = stratified_subset(src_test.y, per_class=args.source_test_per_class, seed=0)
    tgt, tgt_test = spec(TARGET, "train"), spec(TARGET, "test")
    pool = stratified_subset(tgt.y, per_class=args.target_pool_per_class, seed=0)
    tte = stratified_subset(tgt_test.y, per_class=args.target_test_per_class, seed=0)
    return SimpleNamespace(
        x_src=src.x[tr], y_src=src.y[tr], x_val=src.x[val], y_val=src.y[val],
        x_src_test=src_test.x[te], y_src_test=src_test.y[te],
        x_pool=tgt.x[pool], y_pool=tgt.y[pool], x_test=tgt_test.x[tte], y_test=tgt_test.y[tte],
        n_source_classes=len(src.classes), n_target_classes=len(tgt.classes),
    )  # fmt: skip


def pretrain(args, data, method: str, gamma: float, seed: int):
    """The pre-trained classifier of (method, gamma, seed), cached under ``--out``."""
    import torch

    from entropi.device.io import atomic_write
    from entropi.host.config import load_config
    from entropi.host.data import channel_stats
    from entropi.host.models import build_model
    from entropi.host.train import evaluate, train

    name = f"{method}_g{gamma:g}_s{seed}" if method != "none" else f"none_s{seed}"
    path = _cache(args) / "pretrain" / f"{name}.pt"
    mean, std = channel_stats(data.x_src)
    model = build_model("smallnet", data.n_source_classes)
    if path.is_file():
        blob = torch.load(path, weights_only=False)
        model.load_state_dict(blob["state"])
        return model, blob["info"], (mean, std)
    base = load_config("quickstart").pretrain
    cfg = dataclasses.replace(
        base, epochs=args.epochs, regularizer=method, gamma=gamma if method != "none" else 0.1
    )
    torch.manual_seed(seed)
    model = build_model("smallnet", data.n_source_classes)
    x, y = torch.as_tensor(data.x_src), torch.as_tensor(data.y_src)
    t0 = time.perf_counter()
    stats = train(model, x, y, cfg, mean=mean, std=std, seed=seed, desc=name)
    seconds = time.perf_counter() - t0

    def acc(xs, ys):
        return evaluate(model, torch.as_tensor(xs), torch.as_tensor(ys), mean=mean, std=std)

    info = {
        "name": name,
        "method": method,
        "gamma": gamma if method != "none" else 0.0,
        "seed": seed,
        "val_accuracy": acc(data.x_val, data.y_val),
        "source_test_accuracy": acc(data.x_src_test, data.y_src_test),
        "final_loss": stats.final_loss,
        "seconds": round(seconds, 1),
    }
    atomic_write(path, lambda f: torch.save({"state": model.state_dict(), "info": info}, f))
    _log(f"pretrain {name}: val {info['val_accuracy']:.4f} in {seconds:.0f}s")
    return model, info, (mean, std)


def _cache(args) -> Path:
    """``--out/<hash of the settings>``: a rerun with other settings trains anew."""
    import hashlib

    keep = {k: v for k, v in vars(args).items() if k not in ("out", "results", "threads")}
    return (
        Path(args.out) / hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]
    )


def _steps_epochs(n: int, batch: int, steps: int) -> int:
    """Epochs giving at least ``steps`` steps over ``n`` samples (batches of ``batch``)."""
    return max(1, math.ceil(steps / max(1, n // batch if n > batch else 1)))


def evaluate_transfer(args, data, model, norm, seed: int) -> dict:
    """Head-only (every fraction) and full fine-tuning (``--ft-fractions``) on the target."""
    import torch

    from entropi.host.config import ProbeConfig
    from entropi.host.data import stratified_subset
    from entropi.host.probe import linear_probe
    from entropi.host.regularizers import von_neumann_entropy
    from entropi.host.train import extract_features

    mean, std = norm
    fpool = extract_features(model.encoder, torch.as_tensor(data.x_pool), mean=mean, std=std)
    ftest = extract_features(model.encoder, torch.as_tensor(data.x_test), mean=mean, std=std)
    out = {"target_vne": float(von_neumann_entropy(torch.as_tensor(fpool, dtype=torch.float64)))}
    for frac in args.fractions:
        idx = stratified_subset(data.y_pool, fraction=frac, seed=seed)
        key = f"{frac:g}"
        epochs = _steps_epochs(len(idx), 128, args.probe_steps)
        probe = linear_probe(
            fpool[idx], data.y_pool[idx], ftest, data.y_test,
            dataclasses.replace(ProbeConfig(), epochs=max(20, epochs)),
            num_classes=data.n_target_classes, seed=seed,
        )  # fmt: skip
        row = {"n_train": int(len(idx)), "head_accuracy": probe.test_accuracy}
        if frac in args.ft_fractions:
            from entropi.host.finetune import FinetuneConfig, finetune

            cfg = FinetuneConfig(
                epochs=_steps_epochs(len(idx), args.ft_batch, args.ft_steps),
                batch_size=args.ft_batch,
                augment=True,
            )
            part = SimpleNamespace(
                x_train=data.x_pool[idx], y_train=data.y_pool[idx],
                x_test=data.x_test, y_test=data.y_test,
            )  # fmt: skip
            run = finetune(
                model.encoder, None, "full", part, cfg, mean=mean, std=std, seed=seed,
                num_classes=data.n_target_classes, measure_nc1=False,
            )  # fmt: skip
            row |= {"full_ft_accuracy": run.test_accuracy, "full_ft_steps": run.steps}
        out[key] = row
    return out


def summarize(runs: list[dict], key: str, method: str, frac: float) -> dict | None:
    vals = [r["transfer"][f"{frac:g}"].get(key) for r in runs if r["method"] == method]
    vals = [100 * v for v in vals if v is not None]
    if not vals:
        return None
    return {
        "mean": float(np.mean(vals)),
        "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
        "values": vals,
    }


def render_md(result: dict) -> str:
    s = result["settings"]
    fr = s["fractions"]
    lines = [
        "# Entropy-regularized pre-training, low-data transfer (CPU scale)",
        "",
        f"Source `{SOURCE}` ({s['source_per_class']}/class, {s['epochs']} epochs, smallnet), "
        f"target `{TARGET}` (pool {s['target_pool_per_class']}/class = 100%, test "
        f"{s['target_test_per_class']}/class); seeds {s['seeds']}; mean ± sd over seeds, top-1 %.",
        f"gamma picked on the source validation split: vne {result['gamma']['vne']:g}, nce "
        f"{result['gamma']['nce']:g} (grid {s['gammas']}). Machine: {result['machine']}; "
        f"{result['seconds'] / 60:.1f} min.",
        "",
    ]
    hdr = " | ".join(f"{100 * f:g}%" for f in fr)
    paper_hdr = " | ".join(f"paper FT {100 * f:g}%" for f in fr)
    for key, title in (("head_accuracy", "Head-only (dense encoder, linear probe)"),
                       ("full_ft_accuracy", "Full fine-tuning")):  # fmt: skip
        lines += [f"## {title}", "", f"| pre-train loss | {hdr} | {paper_hdr} |"]
        lines.append("|---" * (1 + 2 * len(fr)) + "|")
        for m in ("none", "nce", "vne"):
            cells = []
            for f in fr:
                v = result["summary"][m][key].get(f"{f:g}")
                cells.append(f"{v['mean']:.2f} ± {v['sd']:.2f}" if v else "-")
            paper = [f"{PAPER_TABLE2[m][f]:.2f}" if f in PAPER_TABLE2[m] else "-" for f in fr]
            lines.append(f"| {NAMES[m]} | " + " | ".join(cells + paper) + " |")
        lines.append("")
    lines += ["## Pre-training", "", "| run | gamma | source val % | source test % | "
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    from entropi.device.io import atomic_write_json, atomic_write_text, package_version

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(args)
    _log(f"data: source {len(data.y_src)} train / {len(data.y_val)} val, target pool "
         f"{len(data.y_pool)} / test {len(data.y_test)}")  # fmt: skip
    first, grid, gamma = args.seeds[0], [], {}
    for method in ("vne", "nce"):
        for g in args.gammas:
            _, info, _ = pretrain(args, data, method, g, first)
            grid.append(info)
        best = max((i for i in grid if i["method"] == method), key=lambda i: i["val_accuracy"])
        gamma[method] = best["gamma"]  # max keeps the first (smallest) gamma on a tie
    runs = []
    for seed in args.seeds:
        for method in ("none", "nce", "vne"):
            model, info, norm = pretrain(args, data, method, gamma.get(method, 0.0), seed)
            cache = _cache(args) / "transfer" / f"{info['name']}.json"
            if cache.is_file():
                transfer = json.loads(cache.read_text())
            else:
                transfer = evaluate_transfer(args, data, model, norm, seed)
                atomic_write_json(cache, transfer)
            runs.append({**info, "transfer": transfer})
            _log(f"transfer {info['name']}: {json.dumps(transfer)}")
    summary = {
        m: {
            k: {f"{f:g}": summarize(runs, k, m, f) for f in args.fractions}
            for k in ("head_accuracy", "full_ft_accuracy")
        }
        for m in ("none", "nce", "vne")
    }
    result = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "results", "roots")},
        "source": SOURCE,
        "target": TARGET,
        "gamma": gamma,
        "grid": grid,
        "runs": runs,
        "summary": summary,
        "paper_table2": {m: {f"{f:g}": v for f, v in d.items()} for m, d in PAPER_TABLE2.items()},
        "versions": {"entropi": package_version(), "torch": torch.__version__},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    stem = Path(args.results)
    atomic_write_json(stem.with_suffix(".json"), result)
    atomic_write_text(stem.with_suffix(".md"), render_md(result))
    _log(f"wrote {stem}.json/.md in {result['seconds'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
