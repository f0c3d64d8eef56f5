"""The stages of ``entropi run``, each resumable over a :class:`~entropi.host.run.rundir.RunDir`.

``pretrain`` (dense source model = rung 0) -> ``prune`` (IMP ladder, one rung record per rung)
-> ``score`` (selection criteria + linear probe of every rung on the target, one JSON per rung)
-> ``select`` (results.json + plot) -> ``export`` (verified encoder files) -> ``device`` (bundle
and head training with the numpy runtime). Each stage takes its config section from the whole
:class:`~entropi.host.run.config.RunConfig` and skips work whose artifact already exists, so a run
that was interrupted continues from its last completed rung.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch

from entropi.common.provenance import package_version
from entropi.device.app import train_on_bundle
from entropi.device.errors import DataError
from entropi.export.formats import ENCODER_FORMS, FORMATS
from entropi.export.rung import CheckpointError, Rung, RungInfo, load_rung_file, save_rung

from ..deployment.fit import deployment_table, fit_rule, fits_device
from ..deployment.rung_export import bundle_rung, calibration_images, ensure_export, int8_downstream
from ..ladder.channels import channel_prune, channel_widths
from ..ladder.init_state import load_init
from ..ladder.models import build_model
from ..ladder.prune import (
    apply_masks,
    count_nonzero,
    dense_masks,
    geometric_alphas,
    global_magnitude_masks,
)
from ..ladder.rungs import classifier_from_rung
from ..ladder.train import evaluate, extract_features, train
from ..selection.criteria import CRITERIA_VERSION, Criterion, as_criterion
from ..selection.probe import cross_validated_probe, linear_probe
from ..selection.rules import (
    CRITERIA,
    bootstrap_values,
    choose_rung,
    criteria_summary,
    criterion_options,
    criterion_values,
    resample_summary,
    saturated_rungs,
    score_rung,
    selection_rule,
    stored_value,
    undefined_notes,
)
from . import distributed
from .config import ConfigError, RunConfig, apply_overrides, config_from_dict
from .plot import plot_entropy_vs_alpha
from .records import (
    RungScores,
    RunResults,
    load_results,
    previous_data_sizes,
    read_scores,
    summaries,
)
from .report import write_report
from .rundata import SourceData, TargetData, write_target_npz
from .rundir import RunDir, open_run

__all__ = [
    "cached_features",
    "cached_labels",
    "completed_results",
    "confidence_from_cache",
    "stage_device",
    "stage_export",
    "stage_pretrain",
    "stage_prune",
    "stage_score",
    "stage_select",
    "select",
]


def _rung(
    cfg: RunConfig, model, masks, alpha, source_acc, src: SourceData, seconds, n_dense=None
) -> Rung:
    """The rung record of ``model``; a channel rung (``n_dense``: the dense network's prunable
    weights) measures alpha against the dense count and records its layer widths."""
    nnz, n = count_nonzero(model.encoder)
    channel = n_dense is not None
    info = RungInfo(
        arch=cfg.pretrain.arch,
        feature_dim=model.feature_dim,
        input_shape=src.input_shape,
        normalization={"mean": list(src.mean), "std": list(src.std)},
        alpha=nnz / (n_dense if channel else n),
        nnz=nnz,
        n_prunable=n_dense if channel else n,
        alpha_target=alpha,
        source_dataset=cfg.data.source,
        source_classes=src.classes,
        num_source_classes=len(src.classes),
        source_accuracy=source_acc,
        train_seconds=seconds,
        method="channel" if channel else "magnitude",
        widths=channel_widths(model.encoder) if channel else None,
    )

    def cpu(state):
        return {k: v.detach().cpu() for k, v in state.items()}

    return Rung(info, cpu(model.encoder.state_dict()), cpu(model.head.state_dict()), cpu(masks))


def stage_pretrain(cfg: RunConfig, run: RunDir, src: SourceData, device) -> Rung:
    """Train the dense source model and save it as rung 0 (skipped if rung 0 exists).

    Under ``torchrun`` every process trains (DDP, :mod:`.distributed`); rank 0 decides whether
    rung 0 exists, evaluates it and writes it."""
    path = run.rung(0)
    if distributed.from_main(path.is_file):
        rung = distributed.from_main(partial(load_rung_file, path, 0))
        run.log(f"pretrain: reusing {path} (source accuracy {rung.info.source_accuracy:.4f})")
        return rung
    torch.manual_seed(cfg.seed)
    p = cfg.pretrain
    model = build_model(p.arch, len(src.classes)).to(device)
    if p.init:
        run.log(f"pretrain: {load_init(model.encoder, p.arch, p.init)}")
    run.log(
        f"pretrain: {p.arch} on {len(src.x_train)} {cfg.data.source} images, "
        f"{p.epochs} epochs, device {device}" + _ranks()
    )
    seconds = 0.0
    if p.epochs > 0:
        seconds = train(
            model, src.x_train, src.y_train, p, mean=src.mean, std=src.std, seed=cfg.seed,
            desc="pretrain",
        ).seconds  # fmt: skip
    acc = distributed.from_main(
        lambda: evaluate(model, src.x_test, src.y_test, mean=src.mean, std=src.std)
    )
    rung = _rung(cfg, model, dense_masks(model.encoder), 1.0, acc, src, seconds)
    distributed.check_identical("pretrain: rung 0", rung.encoder, rung.head)
    if distributed.is_main():
        save_rung(path, rung)
    run.log(f"pretrain: done in {seconds:.1f}s, source test accuracy {acc:.4f}")
    return rung


def _ranks() -> str:
    world = distributed.world_size()
    return f", {world} processes (DDP)" if world > 1 else ""


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in tensors.items()}


def stage_prune(cfg: RunConfig, run: RunDir, src: SourceData, device) -> list[float]:
    """Build the IMP ladder: prune to each alpha, retrain, save; skip rungs already saved.

    Under ``torchrun`` rank 0 reads the ladder and computes each rung's masks (broadcast, so
    every process zeroes the same weights); every process starts the rung from rank 0's weights
    and retrains it (DDP); rank 0 evaluates and writes it. After each rung every process must
    hold the same weights and masks (checked by sha256).

    ``[prune] method = "channel"``: each rung is the previous one with whole channels removed
    (:func:`.channels.channel_prune`, alpha of the dense rung's prunable weights), retrained as
    a dense network (all-true masks); every process prunes the same shared weights alike."""
    alphas = geometric_alphas(cfg.prune.keep_per_round, cfg.prune.alpha_min)
    # a rung's retraining: the [pretrain] optimizer with the [prune] epochs and learning rate
    retrain = (
        dataclasses.replace(cfg.pretrain, epochs=cfg.prune.retrain_epochs, lr=cfg.prune.lr)
        if cfg.prune.retrain_epochs > 0
        else None
    )
    # prev: the rung before r (on rank 0; on the others only once `shared`)
    prev = distributed.from_main(partial(load_rung_file, run.rung(0), 0), share=False)
    shared = False
    channel = cfg.prune.method == "channel"
    n_dense = distributed.from_main(lambda: prev.info.n_prunable)  # the dense rung's count
    for r in range(1, len(alphas)):
        path = run.rung(r)
        if distributed.from_main(path.is_file):
            prev = distributed.from_main(partial(load_rung_file, path, r), share=False)
            shared = False
            continue
        if not shared:
            prev, shared = distributed.from_main(lambda p=prev: p), True
        if channel:  # deterministic on the shared weights: every process prunes alike
            model = channel_prune(
                classifier_from_rung(prev), round(alphas[r] * n_dense),
                torch.zeros(1, *src.input_shape),
            ).to(device)  # fmt: skip
            masks = {k: v.to(device) for k, v in dense_masks(model.encoder).items()}
        else:
            model = classifier_from_rung(prev).to(device)
            masks = {k: v.to(device) for k, v in prev.masks.items()}
            pruned = partial(
                global_magnitude_masks, model.encoder, masks, alphas[r], cfg.prune.layer_floor
            )
            masks = distributed.from_main(lambda f=pruned: _cpu(f()))
            masks = {k: v.to(device) for k, v in masks.items()}
            apply_masks(model.encoder, masks)
        torch.manual_seed(cfg.seed + r)
        seconds = 0.0
        if retrain is not None:
            stats = train(
                model, src.x_train, src.y_train, retrain, mean=src.mean, std=src.std,
                masks=masks, seed=cfg.seed + r, desc=f"rung {r} retrain",
            )  # fmt: skip
            seconds = stats.seconds
        acc = distributed.from_main(
            partial(evaluate, model, src.x_test, src.y_test, mean=src.mean, std=src.std)
        )
        prev = _rung(cfg, model, masks, alphas[r], acc, src, seconds, n_dense if channel else None)
        distributed.check_identical(f"prune: rung {r}", prev.encoder, prev.head, prev.masks)
        if distributed.is_main():
            save_rung(path, prev)
        run.log(
            f"prune: rung {r}/{len(alphas) - 1} alpha {prev.info.alpha:.5f} "
            f"nnz {prev.info.nnz} source accuracy {acc:.4f} ({seconds:.1f}s)"
        )
    return alphas


def _probe(cfg: RunConfig, ftr, ytr, fte, yte, num_classes: int, device) -> dict[str, Any]:
    """``[probe] repeats`` linear probes (seeds seed, seed + 1, ...): mean, spread, each, and the
    binomial standard error of the mean accuracy on the images it is tested on. With
    ``[probe] folds`` >= 2 each probe is cross-validated over train and test pooled."""
    if cfg.probe.folds:
        x, y = np.concatenate([ftr, fte]), np.concatenate([ytr, yte])
        results = [
            cross_validated_probe(
                x,
                y,
                cfg.probe,
                folds=cfg.probe.folds,
                num_classes=num_classes,
                seed=cfg.seed + k,
                device=device,
            )  # fmt: skip
            for k in range(cfg.probe.repeats)
        ]
    else:
        results = [
            linear_probe(
                ftr,
                ytr,
                fte,
                yte,
                cfg.probe,
                num_classes=num_classes,
                seed=cfg.seed + k,
                device=device,
            )  # fmt: skip
            for k in range(cfg.probe.repeats)
        ]
    test = np.array([p.test_accuracy for p in results])
    mean = float(test.mean())
    n_test = results[0].test_n
    return {
        "probe_accuracy": mean,
        "probe_accuracy_std": float(test.std(ddof=1)) if len(test) > 1 else 0.0,
        "probe_accuracies": test.tolist(),
        "probe_train_accuracy": float(np.mean([p.train_accuracy for p in results])),
        "probe_test_n": n_test,
        "probe_folds": cfg.probe.folds,
        "probe_accuracy_se": float(np.sqrt(mean * (1 - mean) / n_test)) if n_test else None,
    }


def _score_one(cfg: RunConfig, index: int, rung: Rung, tgt: TargetData, device):
    """Rung ``index``'s criteria and probe on the target, and its training features (float32);
    any process can compute it."""
    t0 = time.perf_counter()
    model = classifier_from_rung(rung).to(device)
    norm = rung.info.normalization
    mean, std = tuple(norm["mean"]), tuple(norm["std"])

    ftr, fte = (
        extract_features(model.encoder, torch.as_tensor(x).to(device), mean=mean, std=std)
        for x in (tgt.x_train, tgt.x_test)
    )
    extracted = time.perf_counter() - t0

    def timed(fn, *args):
        start = time.perf_counter()
        return fn(*args), time.perf_counter() - start

    # the criteria (numpy, one BLAS thread) run beside the probe (torch, one thread on the CPU):
    # neither reads what the other writes, so the numbers are those of running them in turn
    with ThreadPoolExecutor(1) as pool:
        criteria_job = pool.submit(timed, score_rung, ftr, tgt.y_train, cfg)
        probe, probe_s = timed(
            _probe, cfg, ftr, tgt.y_train, fte, tgt.y_test, len(tgt.classes), device
        )
        criteria, criteria_s = criteria_job.result()
    score = {
        "index": index,
        "alpha": rung.info.alpha,
        "nnz": rung.info.nnz,
        "source_accuracy": rung.info.source_accuracy,
        **criteria,
        **probe,
        "criteria_version": CRITERIA_VERSION,
        "criteria_seconds": extracted + criteria_s,
        "probe_seconds": probe_s,
    }
    return score, ftr.astype(np.float32)


def stage_score(cfg: RunConfig, run: RunDir, tgt: TargetData, device) -> list[RungScores]:
    """Every selection criterion on the target training features and the linear probe (the
    ground truth, ``[probe] repeats`` seeds) for every rung; the features are kept in
    RUNDIR/features/ for the selection confidence and for re-selection.

    Under ``torchrun`` with W processes the rungs still to score go out W at a time from rank 0,
    one to each process, and their scores and features come back to rank 0, which writes them;
    each rung is scored as one process scores it (same seeds), so the scores do not depend on W.
    Rank 0 returns every rung's scores, the other processes an empty list."""
    scores: dict[int, RungScores] = {}  # rank 0: rung index -> its scores
    rungs: list = []

    def plan() -> list[int]:
        """Rank 0: reuse (or re-criteria) what is cached; the rungs left to score."""
        rungs.extend(run.rung_files())  # indices 0..N-1, no gap
        if not rungs:
            raise CheckpointError(f"{run.root} has no pruning ladder to score; run `entropi prune`")
        # the class names the scores are of: a bundle made from this folder names its classes
        # (a probe folder, which run_all never writes, had none: class_names null)
        run.write_json(run.target_classes, list(tgt.classes))
        labels = tgt.y_train.astype(np.int64)
        if os.path.lexists(run.feature_labels):  # the rows the cached features belong to
            cached = cached_labels(run)
            if not np.array_equal(cached, labels):
                raise DataError(
                    f"{run.feature_labels} ({len(cached)} labels) are not the target's training "
                    f"labels ({len(labels)}): the cached scores and features belong to another "
                    f"target; delete {run.features_dir} and {run.score(0).parent} to rescore "
                    "every rung on this one"
                )
        else:
            run.write_array(run.feature_labels, labels)
        todo = []
        for index in range(len(rungs)):
            spath = run.score(index)
            if not (os.path.lexists(spath) and os.path.lexists(run.features(index))):
                todo.append(index)
                continue
            score = read_scores(run, index)
            if score.criteria_version != CRITERIA_VERSION or set(score.criteria) != set(CRITERIA):
                # criteria changed since these scores: recompute them from the cached features
                feats = cached_features(run, index, len(labels))
                new = {
                    k: v
                    for k, v in score.to_dict().items()
                    if k not in ("criteria", "criteria_undefined")
                }
                new |= score_rung(feats, labels, cfg)
                new["criteria_version"] = CRITERIA_VERSION
                score = RungScores.from_dict(new, spath, index)
                run.write_json(spath, score.to_dict())
                run.log(f"score: rung {index}: criteria recomputed from the cached features")
            scores[index] = score
        return todo

    todo = distributed.from_main(plan)
    world = distributed.world_size()
    for start in range(0, len(todo), world):
        group = todo[start : start + world]

        def load(group=group) -> list:
            items = [(i, load_rung_file(rungs[i], i)) for i in group]
            return items + [None] * (world - len(items))

        item = distributed.scatter_from_main(load)
        done = distributed.gather_to_main(
            lambda item=item: None if item is None else _score_one(cfg, *item, tgt, device)
        )
        for out in done or ():
            if out is None:
                continue
            computed, ftr = out
            index = computed["index"]
            score = RungScores.from_dict(computed, run.score(index), index)
            run.write_array(run.features(index), ftr)
            run.write_json(run.score(index), score.to_dict())
            for name, why in score.criteria_undefined.items():
                run.log(f"score: rung {index}: {name} is undefined ({why})")
            run.log(
                f"score: rung {index} alpha {score.alpha:.5f} entropy {score.entropy:.4f} "
                f"probe accuracy {score.probe_accuracy:.4f} +- {score.probe_accuracy_std:.4f}"
            )
            scores[index] = score
    return [scores[i] for i in sorted(scores)]


def cached_labels(run: RunDir, n: int | None = None) -> np.ndarray:
    """features/labels.npy, checked: integer labels >= 0, ``n`` of them when given (the
    target samples the rungs were scored on)."""
    labels = run.read_array(run.feature_labels, kind="i", ndim=1, rows=n)
    if len(labels) and int(labels.min()) < 0:
        raise DataError(
            f"{run.feature_labels} holds a negative label ({int(labels.min())}); delete it and "
            "run `entropi run --resume` to remake it"
        )
    return labels.astype(np.int64)


def cached_features(run: RunDir, index: int, rows: int) -> np.ndarray:
    """features/rung_NNN.npy, checked: finite float, one row per cached label."""
    return run.read_array(run.features(index), kind="f", ndim=2, rows=rows)


def confidence_from_cache(
    cfg: RunConfig, run: RunDir, n_rungs: int, criterion: Criterion | str, n: int | None = None
):
    """The argmax's wins over the bootstrap resamples (:func:`bootstrap_from_cache`), or None
    when the cached features are gone."""
    boot = bootstrap_from_cache(cfg, run, n_rungs, criterion, n)
    return None if boot is None else resample_summary(boot)


def bootstrap_from_cache(
    cfg: RunConfig, run: RunDir, n_rungs: int, criterion: Criterion | str, n: int | None = None
) -> np.ndarray | None:
    """:func:`bootstrap_values` (resamples x rungs) from the cached features, or None when they
    are gone or ``[select] resamples`` is 0.

    ``n``: the target samples the rungs were scored on (their ``n``); the cached labels must
    be as many."""
    if cfg.select.resamples == 0:
        return None
    paths = [run.features(i) for i in range(n_rungs)]
    if not os.path.lexists(run.feature_labels) or not all(os.path.lexists(p) for p in paths):
        run.log("select: no cached features (RUNDIR/features/); selection confidence skipped")
        return None
    labels = cached_labels(run, n)
    return bootstrap_values(
        lambda i: cached_features(run, i, len(labels)).astype(np.float64),
        labels,
        n_rungs,
        criterion,
        criterion_options(cfg),
        resamples=cfg.select.resamples,
        seed=cfg.seed,
    )


def _mean_or_none(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def select(
    cfg: RunConfig,
    run: RunDir,
    criterion: str | None = None,
    *,
    flash: int | None = None,
    ram: int | None = None,
    plot: bool = True,
) -> RunResults:
    """Pick the rung by ``criterion`` (default: the config's) from the stored scores, summarize
    every criterion's pick, measure the pick's confidence, write the plot (unless ``plot`` is
    false); return the results.

    With a ``flash`` / ``ram`` limit in bytes (default: ``[deploy]``), the pick is the best rung
    whose encoder file plus head fit (host/deployment/fit.py), and results.json gets
    ``deployment``."""

    rungs = _scored_rungs(run)
    crit = as_criterion(criterion) if criterion else cfg.select.chosen_criterion
    wall0, cpu0 = time.perf_counter(), time.process_time()
    boot = bootstrap_from_cache(cfg, run, len(rungs), crit, _scored_n(run, rungs))
    # what the confidence costs: wall, and the CPU of every thread of the process
    boot_cost = {"seconds": time.perf_counter() - wall0, "cpu_seconds": time.process_time() - cpu0}
    choice = choose_rung(rungs, crit, cfg.select.rule, boot, tie_se=cfg.select.tie_se)
    sel, deployment = _fitting_pick(
        cfg, run, rungs, crit, boot, choice["selected_index"], flash, ram
    )
    probes = [r.probe_accuracy for r in rungs]
    best = int(np.argmax(probes))
    saturated = saturated_rungs(rungs)
    summary = criteria_summary(rungs)
    keys = ("resamples", "resamples_dropped", "wins", "picks")  # the rule's, on every resample
    conf = None if boot is None else {k: choice[k] for k in keys} | boot_cost
    undefined = undefined_criteria(rungs)
    results = RunResults(
        package_version=package_version(),
        config_sha256=cfg.digest(),
        seed=cfg.seed,
        arch=cfg.pretrain.arch,
        source=cfg.data.source,
        target=cfg.data.target,
        levels=cfg.entropy.levels,
        entropy_units="nats",
        rungs=rungs,
        criterion=crit.name,
        selected_index=sel,
        selection_rule=selection_rule(crit, cfg.select.rule, cfg.select.tie_se),
        rule=cfg.select.rule,
        selection_ties={k: choice[k] for k in ("best_index", "tied", "paired_se", "tie_se")},
        selection_confidence=_selection_confidence(conf, sel, deployment),
        selection_resamples=conf,
        criteria_summary=summaries(summary, len(rungs)),
        criteria_undefined=undefined,
        saturated_rungs=saturated,
        selected_alpha=rungs[sel].alpha,
        best_probe_index=best,
        dense_probe_accuracy=rungs[0].probe_accuracy,
        selected_probe_accuracy=rungs[sel].probe_accuracy,
        best_probe_accuracy=rungs[best].probe_accuracy,
        probe_spread=float(np.mean([r.probe_accuracy_std for r in rungs])),
        probe_se=_mean_or_none([r.probe_accuracy_se for r in rungs]),
        regret=rungs[best].probe_accuracy - rungs[sel].probe_accuracy,
        regret_units="fraction of the test images (x 100 = probe points, as printed)",
        deployment=deployment,
        stage_seconds=run.stage_seconds(),
    )
    _log_select_notes(run, results)
    if plot:
        plot_entropy_vs_alpha(results, run.plot)
    _log_pick(run, results, crit)
    return results


def _scored_rungs(run: RunDir) -> list[RungScores]:
    """Every rung's stored scores, rung 0 first; refused when there is no ladder or no score."""
    n_rungs = len(run.rung_files())  # rungs 0..N-1: a gap is an error naming it
    if not n_rungs:
        raise CheckpointError(f"{run.root} has no pruning ladder; run `entropi run` first")
    if not any(os.path.lexists(run.score(i)) for i in range(n_rungs)):
        raise CheckpointError(f"{run.root} has no scored rungs; run `entropi probe` first")
    return [read_scores(run, i) for i in range(n_rungs)]  # a missing one: named, never skipped


def _fitting_pick(cfg, run, rungs, criterion: Criterion, boot, sel: int, flash, ram):
    """(the pick, the deployment record): the rule's pick ``sel`` and None without a flash or
    RAM limit (arguments, else ``[deploy]``), else the rule's pick among the rungs that fit."""
    limits = cfg.deploy.limits()
    flash = limits["flash"] if flash is None else flash
    ram = limits["ram"] if ram is None else ram
    deployment = None
    if flash is not None or ram is not None:
        deployment = _deployment(cfg, run, rungs, criterion, flash, ram, unconstrained=sel)
        if cfg.select.rule != "argmax":  # the rule decides among the rungs that fit
            deployment["pick"] = _rule_pick(cfg, rungs, criterion, boot, deployment)
        sel = deployment["pick"]["rung"]
    return sel, deployment


def _selection_confidence(conf: dict | None, sel: int, deployment: dict | None) -> float | None:
    """The share of bootstrap resamples on which the rule picks ``sel``; None without them."""
    return (
        conf["wins"][sel] / conf["resamples"]
        # the bootstrap ranks every rung; a pick restricted to what fits the device has no
        # such share (its wins count the resamples where it beats rungs that do not fit)
        if conf
        and conf["resamples"]
        and (deployment is None or sel == deployment["unconstrained_index"])
        else None
    )


def _log_select_notes(run: RunDir, results: RunResults) -> None:
    """Log what the reader of a pick should know: saturated entropy, a low confidence,
    criteria undefined on some rungs."""
    rungs, criterion, sel = results.rungs, results.criterion, results.selected_index
    saturated, conf = results.saturated_rungs, results.selection_resamples
    if saturated:
        n = max(r.n for r in rungs)
        run.log(
            f"select: note: the paper's entropy saturated at log n = {np.log(n):.4f} on "
            f"rungs {saturated}; it cannot rank them"
            + (" (and it is the selection criterion)" if criterion == "entropy" else "")
        )
    c = results.selection_confidence
    if c is not None and c < 0.5:
        run.log(
            f"select: warning: low confidence: {criterion} picks rung {sel} on only "
            f"{100 * c:.0f}% of {conf['resamples']} bootstrap resamples of the target (wins per "
            f"rung {conf['wins']}); more target data would make the pick firmer"
        )
    for line in undefined_notes(results.criteria_undefined, criterion, len(rungs)):
        run.log(f"select: note: {line}")


def _log_pick(run: RunDir, results: RunResults, criterion: Criterion) -> None:
    """Log the pick in one line: its alpha, criterion value, probe accuracy, regret."""
    sel, best = results.selected, results.best
    c = results.selection_confidence
    value = stored_value(sel, criterion)
    value = "undefined" if value is None else f"{value:.4g}"  # every rung undefined: rung 0
    run.log(
        f"select: rung {sel.index} (alpha {sel.alpha:.5f}, {criterion.name} {value}, probe "
        f"{sel.probe_accuracy:.4f}); best probe rung {best.index} "
        f"({best.probe_accuracy:.4f}); regret {100 * results.regret:.2f} points"
        + (f"; confidence {c:.2f}" if c is not None else "")
    )


def _scored_n(run: RunDir, rungs: list[RungScores]) -> int | None:
    """The number of target samples every rung was scored on (their ``n``); rungs that
    disagree were scored on different targets: a :class:`CheckpointError`."""
    ns = sorted({r.n for r in rungs})
    if len(ns) > 1:
        raise CheckpointError(
            f"the score files of {run.root} were computed on different targets (n = "
            f"{', '.join(map(str, ns))} samples); delete {run.score(0).parent} and "
            f"{run.features_dir} and run `entropi probe {run.root}` to rescore every rung"
        )
    return ns[0] if ns else None


def undefined_criteria(rungs: list[RungScores]) -> dict[str, dict[str, Any]]:
    """Per criterion undefined (None) on some rung: those rungs and the first reason stored."""
    out: dict[str, dict[str, Any]] = {}
    for r in rungs:
        for name, value in r.criteria.items():
            if value is None:
                entry = out.setdefault(name, {"rungs": [], "reason": None})
                entry["rungs"].append(r.index)
                entry["reason"] = entry["reason"] or r.criteria_undefined.get(name)
    return out


def completed_results(cfg: RunConfig, run: RunDir) -> RunResults | None:
    """The saved results of a run that has nothing left to do, else None: every planned rung
    scored with the current criteria (features cached), results.json, and the export and head
    the config asks for, with the report. ``entropi run --resume`` on such a
    run says so instead of redoing select, export and device."""
    n = len(geometric_alphas(cfg.prune.keep_per_round, cfg.prune.alpha_min))
    if len(run.rung_files()) != n or not run.results.is_file():
        return None
    for i in range(n):
        if not (run.score(i).is_file() and run.features(i).is_file()):
            return None
        if read_scores(run, i).criteria_version != CRITERIA_VERSION:
            return None
    if not run.report.is_file():  # (the config cannot have changed: open_run refuses that)
        return None
    results = load_results(run.results)
    wanted = [
        (cfg.export.enabled, results.export, run.export / "export.json"),
        (cfg.export.enabled and cfg.device_train.enabled, results.device, run.head / "train.json"),
    ]
    if any(want and (part is None or not path.is_file()) for want, part, path in wanted):
        return None
    return results


def _rule_pick(cfg, rungs, criterion: Criterion, boot, deployment: dict) -> dict:
    """The ``[select] rule``'s pick among the rungs that fit the device, "smallest" by the
    device's flash: rungs that do not fit are undefined to the rule (never tied, never picked),
    and each fitting rung's size is its smallest fitting row's flash; that row is the pick."""

    fits = set(deployment["fitting_rungs"])
    masked = [
        r if i in fits else dataclasses.replace(r, criteria={**r.criteria, criterion.name: None})
        for i, r in enumerate(rungs)
    ]
    if boot is not None:
        boot = np.where(np.isin(np.arange(len(rungs)), sorted(fits))[None, :], boot, np.nan)
    flash, ram = deployment["flash_limit"], deployment["ram_limit"]
    rows = [row for row in deployment["table"] if fits_device(row, flash, ram)]
    sizes = np.full(len(rungs), np.inf)
    for row in rows:
        sizes[row["rung"]] = min(sizes[row["rung"]], row["flash_bytes"])
    choice = choose_rung(masked, criterion, cfg.select.rule, boot, sizes=sizes,
                         tie_se=cfg.select.tie_se)  # fmt: skip
    best = min((r for r in rows if r["rung"] == choice["selected_index"]),
               key=lambda r: (r["flash_bytes"], r["ram_bytes"]))  # fmt: skip
    return {k: v for k, v in best.items() if k != "fits"}


def _deployment(cfg, run, rungs, criterion: Criterion, flash, ram, *, unconstrained: int) -> dict:
    """The deployment table of every rung and the fit rule's pick (host/deployment/fit.py)."""

    runtime = cfg.deploy.runtime
    rows = deployment_table(cfg, run, runtime=runtime)  # every dtype (int8 on demand) and form
    values = criterion_values(rungs, criterion)
    pick = fit_rule(rows, list(values), flash=flash, ram=ram)
    run.log(
        f"select: deploy ({runtime}): rung {pick['rung']} ({pick['form']} {pick['dtype']}: flash "
        f"{pick['flash_bytes']} B, RAM {pick['ram_bytes']} B) is the best by {criterion.name} "
        f"of the rungs {pick['fits']} that fit flash {flash} B / RAM {ram} B"
        + ("" if pick["rung"] == unconstrained else f" (unconstrained pick: rung {unconstrained})")
    )
    return {
        "flash_limit": flash,
        "ram_limit": ram,
        "pick": {k: v for k, v in pick.items() if k != "fits"},
        "fitting_rungs": pick["fits"],
        "unconstrained_index": unconstrained,
        "table": rows,
        "runtime": runtime,
        "conventions": (
            "flash = MCU-form TFLite file (dense weights, NHWC) + float32 head; RAM = TFLite "
            "Micro's measured arena (recording allocator, on the host) + head-training plan "
            "([device_train]); latency = median one-image LiteRT invoke on the host, 1 thread"
            if runtime == "tflm"
            else "flash = TFLite encoder file + float32 head; RAM = activation peak of the graph "
            "+ weights DENSIFY rebuilds at load + head-training plan ([device_train]); latency = "
            "median one-image LiteRT invoke on the host, 1 thread"
        ),
    }


def stage_select(
    cfg: RunConfig,
    run: RunDir,
    criterion: str | None = None,
    *,
    flash: int | None = None,
    ram: int | None = None,
) -> RunResults:
    """:func:`select`, then write results.json and report.md (``entropi select``)."""

    results = select(cfg, run, criterion, flash=flash, ram=ram)
    # what the run loaded: the same for any selection
    results.data_sizes = previous_data_sizes(run.results)
    results.report = write_report(cfg, run, results).name
    run.write_json(run.results, results.to_dict())
    return results


LADDER_SECTIONS = ("pretrain", "prune")
"""Config sections that made the ladder: a reused ladder keeps them."""


def reuse_ladder(
    cfg: RunConfig, run: RunDir, out, overrides, *, resume: bool = False
) -> tuple[RunConfig, RunDir]:
    """A new run folder ``out`` holding ``run``'s ladder as it is (rung files hard-linked, or
    copied across file systems) with ``overrides`` applied to the config (a new target, other
    scoring settings). Overrides that would change what made the ladder (its source, seed,
    [pretrain] or [prune]) are refused; setting one to the value it already has is allowed. With
    ``resume``, a folder made by an earlier call with the same overrides is continued."""

    if out is None:
        raise ConfigError("scoring a ladder on another target needs --out DIR (a new folder)")
    raw = cfg.to_dict()
    new_cfg = config_from_dict(apply_overrides(raw, list(overrides)))
    new_raw = new_cfg.to_dict()

    def at(d: dict, key: str):
        for part in key.split("."):
            d = d.get(part) if isinstance(d, dict) else None
        return d

    keys = [o.split("=", 1)[0].strip() for o in overrides]
    bad = [
        k
        for k in keys
        if (k.split(".")[0] in (*LADDER_SECTIONS, "seed") or k == "data.source")
        and at(new_raw, k) != at(raw, k)
    ]
    if bad:
        raise ConfigError(
            f"{', '.join(bad)}: the ladder of {run.root} is reused as it is; its source, seed, "
            "[pretrain] and [prune] cannot change (run `entropi run` for a new ladder)"
        )
    rungs = run.rung_files()
    if not rungs:
        raise CheckpointError(f"{run.root} has no pruning ladder to reuse; run `entropi prune`")
    new_cfg, new = open_run(new_cfg, out, resume=resume)
    new.folder(new.rungs_dir)  # a real folder, not a link planted there
    for path in rungs:
        dest = new.rungs_dir / path.name
        if not os.path.lexists(dest):
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)
    new.write_json(new.root / "ladder.json", {"from": str(run.root.resolve()), "rungs": len(rungs)})
    new.log(f"probe: reusing the {len(rungs)}-rung ladder of {run.root}")
    return new_cfg, new


def stage_export(
    cfg: RunConfig,
    run: RunDir,
    tgt: TargetData,
    rung: int,
    form: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Export rung ``rung`` in the sparse form and ``form`` (default ``[export] form``), verified
    against PyTorch, also on real target images; with ``[export] quantize = "int8"`` (or
    ``dtype`` int8: the deployment pick's) also its int8 files, calibrated on a seeded draw of
    the target training images, and what int8 costs the head (export.json ``downstream``)."""

    e = cfg.export
    form = form or e.form
    int8 = "int8" in (dtype, e.dtype)  # the pick's dtype or [export] quantize
    quantize = "int8" if int8 else e.quantize
    images = tgt.x_test[: e.checked_images] if e.verify_images or int8 else None
    export_dir, info = ensure_export(
        run.root,
        rung,
        formats=tuple(e.formats),
        forms=("sparse", form),
        verify_images=images,
        quantize=quantize,
        calibration=calibration_images(tgt.x_train, e, seed=cfg.seed) if int8 else None,
        min_cosine=e.min_cosine,
    )
    measured = info.get("downstream") if isinstance(info.get("downstream"), dict) else {}
    wanted = [FORMATS[f].filename(ENCODER_FORMS[form].stem, "int8") for f in e.formats]
    if int8 and not all(name in measured for name in wanted):
        info["downstream"] = int8_downstream(
            export_dir, info, tgt, cfg.probe, form=form, formats=e.formats, seed=cfg.seed
        )
        run.write_json(export_dir / "export.json", info)
    worst = max(f.get("max_abs_diff", 0.0) for f in info["files"].values())
    sizes = ", ".join(f"{name} {f['bytes'] / 1024:.0f} KiB" for name, f in info["files"].items())
    run.log(f"export: {sizes}; max |diff| vs PyTorch {worst:.2e}")
    for name, d in (info.get("downstream") or {}).items():
        run.log(
            f"export: {name}: probe accuracy {d['int8_accuracy']:.4f} on int8 features vs "
            f"{d['float_accuracy']:.4f} on float ({d['delta_points']:+.2f} points), mean cosine "
            f"{d['feature_error']['mean_cos']:.5f}"
        )
    return info


def export_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The part of export.json that results.json repeats."""
    keep = ("bytes", "dtype", "max_abs_diff", "max_rel_diff")
    files = {k: {kk: v[kk] for kk in keep if kk in v} for k, v in info["files"].items()}
    for k, v in info["files"].items():
        if "feature_error" in v:
            err = v["feature_error"]
            files[k].update(mean_cos=err["mean_cos"], max_rel=err["max_rel"])
    return {
        "dir": "export",
        "files": files,
        "downstream": info.get("downstream"),
        "nnz": info["nnz"],
        "dense_bytes": info["dense_bytes"],
        "floor_bytes": info["floor_bytes"],
    }


def stage_device(
    cfg: RunConfig,
    run: RunDir,
    tgt: TargetData,
    rung: int,
    form: str | None = None,
    dtype: str | None = None,
):
    """Bundle rung ``rung``'s encoder (``form`` / ``dtype``, default ``[export] form`` /
    ``quantize``) and train the head with the numpy device runtime."""

    bundle = bundle_rung(
        run.root,
        run.bundle,
        rung=rung,
        form=form or cfg.export.form,
        formats=tuple(cfg.export.formats),
        class_names=tgt.classes,
        overwrite=True,
        dtype=dtype or cfg.export.dtype,
    )
    data = write_target_npz(tgt, run.target_data)
    report = train_on_bundle(bundle, data, run.head, cfg.head_training)
    r = report.to_dict()
    run.log(
        f"device: head trained in {cfg.device_train.budget} budget: {r['accuracy_split']} "
        f"accuracy {r['accuracy']:.4f}, peak {r['peak_bytes']} B (analytic "
        f"{r['analytic_bytes']} B), {r['samples_per_second']:.0f} samples/s"
    )
    return report
