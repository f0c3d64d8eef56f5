"""The ENTROPI pipeline as resumable stages over a run directory.

Stages: ``pretrain`` (dense source model = rung 0) -> ``prune`` (IMP ladder, one checkpoint per
rung) -> ``score`` (entropy of the target training features + linear probe, one JSON per rung)
-> ``select`` (results.json + plot). Each stage skips work whose artifact already exists, so a run
that was interrupted continues from its last completed rung with ``--resume``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropi.device.io import atomic_write_json, atomic_write_text
from .checkpoint import (
    CheckpointError,
    classifier_from_checkpoint,
    list_rungs,
    load_checkpoint,
    rung_path,
    save_checkpoint,
)
from .config import RunConfig, config_to_toml, load_config
from .data import channel_stats, load_dataset, stratified_subset
from .entropy import state_entropy
from .models import build_model
from .probe import linear_probe
from .prune import (
    apply_masks,
    count_nonzero,
    dense_masks,
    geometric_alphas,
    global_magnitude_masks,
)
from .train import evaluate, extract_features, pick_device, train

__all__ = [
    "RunExistsError",
    "TargetData",
    "open_run",
    "package_version",
    "run_all",
    "stage_pretrain",
    "stage_prune",
    "stage_score",
    "stage_select",
]

# split names of the test / held-out set of each dataset
_TEST_SPLIT = {"cifar10": "test", "cifar100": "test", "pacs": "val", "imagefolder": "test"}


class RunExistsError(FileExistsError):
    """The run directory already holds a run and --resume was not given."""


def package_version() -> str:
    try:
        return metadata.version("entropi")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def log(rundir: Path, message: str) -> None:
    """Append a timestamped line to RUNDIR/progress.log and echo it to stderr."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
    print(line, file=sys.stderr, flush=True)
    with open(rundir / "progress.log", "a") as f:
        f.write(line + "\n")


def open_run(
    cfg: RunConfig | None, rundir: str | os.PathLike, *, resume: bool = False, argv=None
) -> tuple[RunConfig, Path]:
    """Create (or, with ``resume``, reopen) a run directory and record provenance in it.

    A new run needs ``cfg``; a resumed run reads RUNDIR/config.toml and refuses a different
    ``cfg``, since mixing two configs in one ladder would make the results meaningless.
    """
    rundir = Path(rundir)
    saved = rundir / "config.toml"
    if saved.is_file():
        existing = load_config(saved)
        if not resume:
            raise RunExistsError(
                f"{rundir} already holds a run; pass --resume to continue it or choose another "
                "--out"
            )
        if cfg is not None and cfg.digest() != existing.digest():
            raise RunExistsError(
                f"{rundir} was started with a different config; resume it without a config "
                "(entropi run --resume uses the saved one) or choose another --out"
            )
        cfg = existing
    elif cfg is None:
        raise CheckpointError(f"{rundir} is not a run directory (no config.toml)")
    rundir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config_to_toml(cfg))
    info_path = rundir / "run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {"invocations": []}
    info.update(
        package_version=package_version(),
        seed=cfg.seed,
        config_sha256=cfg.digest(),
        python=platform.python_version(),
        torch=torch.__version__,
        host=platform.node(),
    )
    info["invocations"].append(
        {
            "argv": shlex.join(argv if argv is not None else sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resume": resume,
        }
    )
    atomic_write_json(info_path, info)
    return cfg, rundir


def _add_stage_time(rundir: Path, stage: str, seconds: float) -> None:
    path = rundir / "timings.json"
    t = json.loads(path.read_text()) if path.is_file() else {}
    t[stage] = t.get(stage, 0.0) + seconds
    atomic_write_json(path, t)


def _subset(ds, per_class: int, seed: int):
    if per_class <= 0:
        return ds.x, ds.y
    idx = stratified_subset(ds.y, per_class=per_class, seed=seed)
    return ds.x[idx], ds.y[idx]


def _load(cfg: RunConfig, which: str, split: str):
    name = getattr(cfg.data, which)
    domains = cfg.data.target_domains if (which == "target" and cfg.data.target_domains) else None
    return load_dataset(name, split, cfg.data.root, download=cfg.data.download, domains=domains)


@dataclass
class SourceData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def load_source(cfg: RunConfig, device: torch.device) -> SourceData:
    train_ds = _load(cfg, "source", "train")
    test_ds = _load(cfg, "source", _TEST_SPLIT[cfg.data.source])
    x, y = _subset(train_ds, cfg.data.source_per_class, cfg.seed)
    mean, std = channel_stats(x)
    to = lambda a, dt: torch.as_tensor(a, dtype=dt).to(device)  # noqa: E731
    return SourceData(
        to(x, torch.uint8),
        to(y, torch.int64),
        to(test_ds.x, torch.uint8),
        to(test_ds.y, torch.int64),
        list(train_ds.classes),
        mean,
        std,
    )


@dataclass
class TargetData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]


def load_target(cfg: RunConfig) -> TargetData:
    train_ds = _load(cfg, "target", "train")
    test_ds = _load(cfg, "target", _TEST_SPLIT[cfg.data.target])
    xtr, ytr = _subset(train_ds, cfg.data.target_train_per_class, cfg.seed)
    xte, yte = _subset(test_ds, cfg.data.target_test_per_class, cfg.seed)
    return TargetData(xtr, ytr, xte, yte, list(train_ds.classes))


def _rung_payload(cfg, model, masks, alpha, source_acc, src: SourceData, train_seconds) -> dict:
    nnz, n = count_nonzero(model.encoder)
    return {
        "format": 1,
        "arch": cfg.pretrain.arch,
        "feature_dim": model.feature_dim,
        "num_source_classes": len(src.classes),
        "source_classes": src.classes,
        "source_dataset": cfg.data.source,
        "alpha_target": alpha,
        "alpha": nnz / n,
        "nnz": nnz,
        "n_prunable": n,
        "source_accuracy": source_acc,
        "normalization": {"mean": list(src.mean), "std": list(src.std)},
        "input_shape": [int(src.x_train.shape[3]), *map(int, src.x_train.shape[1:3])],
        "train_seconds": train_seconds,
        "encoder": {k: v.detach().cpu() for k, v in model.encoder.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()},
        "masks": {k: v.cpu() for k, v in masks.items()},
    }


def _train_on_source(cfg: RunConfig, model, src: SourceData, *, epochs, lr, seed, desc, masks=None):
    """Source training (pre-training or a rung's retraining) with the [pretrain] optimizer."""
    p = cfg.pretrain
    return train(
        model,
        src.x_train,
        src.y_train,
        epochs=epochs,
        batch_size=p.batch_size,
        lr=lr,
        momentum=p.momentum,
        weight_decay=p.weight_decay,
        label_smoothing=p.label_smoothing,
        mean=src.mean,
        std=src.std,
        masks=masks,
        seed=seed,
        desc=desc,
    )


def stage_pretrain(cfg: RunConfig, rundir: Path, src: SourceData, device) -> dict:
    """Train the dense source model and save it as rung 0 (skipped if rung 0 exists)."""
    path = rung_path(rundir, 0)
    if path.is_file():
        ckpt = load_checkpoint(path, required=("encoder", "head", "masks"))
        log(rundir, f"pretrain: reusing {path} (source accuracy {ckpt['source_accuracy']:.4f})")
        return ckpt
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.pretrain.arch, len(src.classes)).to(device)
    p = cfg.pretrain
    log(
        rundir,
        f"pretrain: {p.arch} on {len(src.x_train)} {cfg.data.source} images, "
        f"{p.epochs} epochs, device {device}",
    )
    stats = _train_on_source(
        cfg, model, src, epochs=p.epochs, lr=p.lr, seed=cfg.seed, desc="pretrain"
    )
    acc = evaluate(model, src.x_test, src.y_test, mean=src.mean, std=src.std)
    payload = _rung_payload(cfg, model, dense_masks(model.encoder), 1.0, acc, src, stats.seconds)
    save_checkpoint(path, payload)
    log(rundir, f"pretrain: done in {stats.seconds:.1f}s, source test accuracy {acc:.4f}")
    return payload


def stage_prune(cfg: RunConfig, rundir: Path, src: SourceData, device) -> list[float]:
    """Build the IMP ladder: prune to each alpha, retrain, save; skip rungs already saved."""
    alphas = geometric_alphas(cfg.prune.keep_per_round, cfg.prune.alpha_min)
    prev = load_checkpoint(rung_path(rundir, 0), required=("encoder", "head", "masks"))
    for r in range(1, len(alphas)):
        path = rung_path(rundir, r)
        if path.is_file():
            prev = load_checkpoint(path, required=("encoder", "head", "masks"))
            continue
        model = classifier_from_checkpoint(prev, rung_path(rundir, r - 1)).to(device)
        masks = {k: v.to(device) for k, v in prev["masks"].items()}
        masks = global_magnitude_masks(model.encoder, masks, alphas[r])
        apply_masks(model.encoder, masks)
        torch.manual_seed(cfg.seed + r)
        seconds = 0.0
        if cfg.prune.retrain_epochs > 0:
            stats = _train_on_source(
                cfg,
                model,
                src,
                epochs=cfg.prune.retrain_epochs,
                lr=cfg.prune.lr,
                seed=cfg.seed + r,
                desc=f"rung {r} retrain",
                masks=masks,
            )
            seconds = stats.seconds
        acc = evaluate(model, src.x_test, src.y_test, mean=src.mean, std=src.std)
        prev = _rung_payload(cfg, model, masks, alphas[r], acc, src, seconds)
        save_checkpoint(path, prev)
        log(
            rundir,
            f"prune: rung {r}/{len(alphas) - 1} alpha {prev['alpha']:.5f} "
            f"nnz {prev['nnz']} source accuracy {acc:.4f} ({seconds:.1f}s)",
        )
    return alphas


def _score_path(rundir: Path, index: int) -> Path:
    return rundir / "scores" / f"rung_{index:03d}.json"


def stage_score(cfg: RunConfig, rundir: Path, tgt: TargetData, device) -> list[dict]:
    """Entropy of the target training features and a linear probe for every rung."""
    scores = []
    rungs = list_rungs(rundir)
    if not rungs:
        raise CheckpointError(f"{rundir} has no pruning ladder to score; run `entropi prune`")
    for index, path in enumerate(rungs):
        spath = _score_path(rundir, index)
        if spath.is_file():
            scores.append(json.loads(spath.read_text()))
            continue
        t0 = time.perf_counter()
        ckpt = load_checkpoint(path, required=("encoder", "normalization"))
        model = classifier_from_checkpoint(ckpt, path).to(device)
        mean, std = tuple(ckpt["normalization"]["mean"]), tuple(ckpt["normalization"]["std"])
        to = lambda a: torch.as_tensor(a).to(device)  # noqa: E731
        ftr = extract_features(model.encoder, to(tgt.x_train), mean=mean, std=std)
        fte = extract_features(model.encoder, to(tgt.x_test), mean=mean, std=std)
        ent = state_entropy(ftr, cfg.entropy.levels)
        t1 = time.perf_counter()
        pr = cfg.probe
        probe = linear_probe(
            ftr,
            tgt.y_train,
            fte,
            tgt.y_test,
            num_classes=len(tgt.classes),
            epochs=pr.epochs,
            batch_size=pr.batch_size,
            lr=pr.lr,
            weight_decay=pr.weight_decay,
            seed=cfg.seed,
            device=device,
        )
        score = {
            "index": index,
            "alpha": ckpt["alpha"],
            "nnz": ckpt["nnz"],
            "source_accuracy": ckpt["source_accuracy"],
            "entropy": ent.entropy,
            "per_unit_bound": ent.per_unit_bound,
            "distinct_states": ent.distinct_states,
            "n": ent.n,
            "delta": ent.delta,
            "probe_accuracy": probe.test_accuracy,
            "probe_train_accuracy": probe.train_accuracy,
            "entropy_seconds": t1 - t0,
            "probe_seconds": time.perf_counter() - t1,
        }
        atomic_write_json(spath, score)
        log(
            rundir,
            f"score: rung {index} alpha {score['alpha']:.5f} entropy "
            f"{ent.entropy:.4f} probe accuracy {probe.test_accuracy:.4f}",
        )
        scores.append(score)
    return scores


def select_rung(rungs: list[dict]) -> int:
    """Index of the highest-entropy rung (the paper's rule); ties go to the denser rung.

    When the entropy saturates at log n (every target sample in its own quantized state, common
    for wide features and small target sets) several rungs tie at the maximum and the estimator
    cannot rank them; the first rung to reach the plateau (the densest) is kept, and
    results.json lists the saturated rungs so the user can see it happened.
    """
    top = max(r["entropy"] for r in rungs)
    return next(i for i, r in enumerate(rungs) if r["entropy"] >= top - 1e-9)


def stage_select(cfg: RunConfig, rundir: Path) -> dict[str, Any]:
    """Pick the highest-entropy rung; write results.json and the entropy/probe plot."""
    from .plot import plot_entropy_vs_alpha

    rungs = [
        json.loads(_score_path(rundir, i).read_text())
        for i in range(len(list_rungs(rundir)))
        if _score_path(rundir, i).is_file()
    ]
    if not rungs:
        raise CheckpointError(f"{rundir} has no scored rungs; run `entropi probe` first")
    sel = select_rung(rungs)
    probes = [r["probe_accuracy"] for r in rungs]
    best = int(np.argmax(probes))
    n_target = max(r.get("n", 0) for r in rungs)
    timings_path = rundir / "timings.json"
    results = {
        "package_version": package_version(),
        "config_sha256": cfg.digest(),
        "seed": cfg.seed,
        "arch": cfg.pretrain.arch,
        "source": cfg.data.source,
        "target": cfg.data.target,
        "levels": cfg.entropy.levels,
        "entropy_units": "nats",
        "rungs": rungs,
        "selected_index": sel,
        "selection_rule": "argmax entropy; ties (within 1e-9 nats) go to the denser rung",
        "saturated_rungs": [
            r["index"] for r in rungs if n_target and r["entropy"] >= np.log(n_target) - 1e-9
        ],
        "selected_alpha": rungs[sel]["alpha"],
        "best_probe_index": best,
        "dense_probe_accuracy": rungs[0]["probe_accuracy"],
        "selected_probe_accuracy": rungs[sel]["probe_accuracy"],
        "best_probe_accuracy": rungs[best]["probe_accuracy"],
        "regret": rungs[best]["probe_accuracy"] - rungs[sel]["probe_accuracy"],
        "stage_seconds": json.loads(timings_path.read_text()) if timings_path.is_file() else {},
    }
    if results["saturated_rungs"]:
        log(
            rundir,
            f"select: warning: entropy saturated at log n = {np.log(n_target):.4f} on "
            f"rungs {results['saturated_rungs']}; the estimator cannot rank them (try fewer "
            "levels or more target samples)",
        )
    atomic_write_json(rundir / "results.json", results)
    plot_entropy_vs_alpha(results, rundir / "entropy_vs_alpha.png")
    log(
        rundir,
        f"select: rung {sel} (alpha {rungs[sel]['alpha']:.5f}, entropy "
        f"{rungs[sel]['entropy']:.4f}, probe {rungs[sel]['probe_accuracy']:.4f}); best probe rung "
        f"{best} ({rungs[best]['probe_accuracy']:.4f}); regret {results['regret']:.4f}",
    )
    return results


def write_target_npz(tgt: TargetData, path: Path) -> Path:
    """The target data in the device runtime's .npz format (uint8 NHWC + labels + names)."""
    import io

    from entropi.device.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=tgt.x_train,
        y_train=tgt.y_train.astype(np.int64),
        x_test=tgt.x_test,
        y_test=tgt.y_test.astype(np.int64),
        class_names=np.array(tgt.classes),
    )
    return atomic_write_bytes(path, buf.getvalue())


def stage_export(cfg: RunConfig, rundir: Path, tgt: TargetData) -> dict[str, Any]:
    """Export the selected rung (verified against PyTorch, also on real target images)."""
    from .bundle import ensure_export

    e = cfg.export
    images = tgt.x_test[: e.verify_images] if e.verify_images else None
    out, info = ensure_export(
        rundir,
        "selected",
        formats=tuple(e.formats),
        compact=e.form == "compact",
        verify_images=images,
    )
    worst = max(f["max_abs_diff"] for f in info["files"].values())
    sizes = ", ".join(f"{name} {f['bytes'] / 1024:.0f} KiB" for name, f in info["files"].items())
    log(rundir, f"export: {sizes}; max |diff| vs PyTorch {worst:.2e}")
    return info


def stage_device(cfg: RunConfig, rundir: Path, tgt: TargetData) -> dict[str, Any]:
    """Bundle the selected encoder and train the head with the numpy device runtime."""
    from entropi.device.cli import train as device_train

    from .bundle import bundle_rung

    bundle = bundle_rung(
        rundir,
        rundir / "bundle",
        form=cfg.export.form,
        formats=tuple(cfg.export.formats),
        class_names=tgt.classes,
        overwrite=True,
    )
    data = write_target_npz(tgt, rundir / "target_data.npz")
    d = cfg.device_train
    report = device_train(
        bundle,
        data,
        rundir / "head",
        budget=d.budget,
        epochs=d.epochs,
        lr=d.lr,
        momentum=d.momentum,
        weight_decay=d.weight_decay,
        batch_size=d.batch_size,
        seed=cfg.seed,
    )
    log(
        rundir,
        f"device: head trained in {d.budget} budget: {report['accuracy_split']} accuracy "
        f"{report['accuracy']:.4f}, peak {report['peak_bytes']} B (analytic "
        f"{report['analytic_bytes']} B), {report['samples_per_second']:.0f} samples/s",
    )
    return report


def _timed(rundir: Path, stage: str, fn, *args):
    t0 = time.perf_counter()
    try:
        return fn(*args)
    finally:
        _add_stage_time(rundir, stage, time.perf_counter() - t0)


def run_all(cfg: RunConfig | None, rundir, *, resume: bool = False, argv=None) -> dict[str, Any]:
    """Every stage in order; returns the results dict."""
    cfg, rundir = open_run(cfg, rundir, resume=resume, argv=argv)
    device = pick_device(cfg.device)
    log(rundir, f"run: {cfg.name} -> {rundir} (entropi {package_version()}, device {device})")
    src = _timed(rundir, "load_source", load_source, cfg, device)
    _timed(rundir, "pretrain", stage_pretrain, cfg, rundir, src, device)
    _timed(rundir, "prune", stage_prune, cfg, rundir, src, device)
    del src
    tgt = _timed(rundir, "load_target", load_target, cfg)
    atomic_write_json(rundir / "target_classes.json", tgt.classes)
    _timed(rundir, "score", stage_score, cfg, rundir, tgt, device)
    results = stage_select(cfg, rundir)
    if cfg.export.enabled:
        info = _timed(rundir, "export", stage_export, cfg, rundir, tgt)
        results["export"] = {
            "dir": "export",
            "files": {
                k: {kk: v[kk] for kk in ("bytes", "max_abs_diff", "max_rel_diff")}
                for k, v in info["files"].items()
            },
            "nnz": info["nnz"],
            "dense_bytes": info["dense_bytes"],
            "floor_bytes": info["floor_bytes"],
        }
        if cfg.device_train.enabled:
            report = _timed(rundir, "device", stage_device, cfg, rundir, tgt)
            from entropi.device.cli import train_summary

            results["device"] = train_summary(report)
        results["stage_seconds"] = json.loads((rundir / "timings.json").read_text())
        atomic_write_json(rundir / "results.json", results)
    return results
