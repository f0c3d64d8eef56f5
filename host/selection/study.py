"""``entropi study STUDY.toml --out DIR``: how well each selection criterion picks rungs, over
many ladders and many targets.

A study file names a base run config, the ladders (overrides of it) and the targets::

    name = "cpu"
    base = "quickstart"            # shipped config name or TOML path
    set = ["select.resamples=20"]  # overrides applied to every ladder and target
    [[ladder]]
    name = "smallnet-s1"
    set = ["seed=1"]
    [[target]]
    name = "cifar100-10pct"
    spec = "cifar100"
    train_per_class = 50
    test_per_class = 20
    holdout = false                # true: reported apart, never used to choose the default
    set = ["probe.folds=10"]       # overrides for this target only

Layout of DIR: ``ladders/NAME/`` (a run folder: pretrain + prune only, resumable; a folder
holding a different ladder is refused), ``scores/LADDER/TARGET/`` (the ladder scored on the
target by ``entropi probe``'s path: every criterion, the probe over ``[probe] repeats`` seeds,
the selection confidence), then ``study.json``, ``study.md`` and ``study.png``.

Per criterion, over the (ladder, target) pairs that are not held out: mean and spread of Kendall's
tau, the weighted tau (hyperbolic weights), the regret (probe points), the share of pairs whose
regret exceeds one test-set standard error of a probe accuracy, and the top-1 hit rate;
and, for the paper's Figure 3 claim, the distance in log10 alpha between the criterion's peak and
the probe's peak. The recommended default follows the issue's rule: the entropy-type criterion
with the lowest mean regret, unless a non-entropy criterion's mean regret is lower by more than
the probe's mean spread.

Under ``torchrun`` (``entropi study STUDY --out DIR --nproc N``, or ``torchrun
--nproc-per-node N -m entropi.host.cli study STUDY --out DIR``; :mod:`.distributed`) every
process runs :func:`run_study`: the ladders are built by all of them together (``stage_pretrain``
and ``stage_prune`` train in DDP), and each (ladder, target) pair's rungs are split over the
processes by ``stage_score`` and their scores gathered to rank 0. Rank 0 alone locks DIR, opens
and writes every run folder (the others get a
:class:`~entropi.host.run.distributed.FollowerRunDir`), decides what is already done (a complete
ladder, a scored pair) and broadcasts it, so every process takes the same branch; it selects,
summarizes and writes study.json, study.md and study.png, and every process returns study.json's
content. Scoring is exact (each rung scored by one process exactly as one process scores it), so
the scores, picks and summary of a study do not depend on N once its ladders exist. An error on
any process fails all of them with its message.
"""

from __future__ import annotations

import math
import os
import platform
import time
import tomllib
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropi.common.files import atomic_write_json, atomic_write_text
from entropi.common.lock import lock_folder
from entropi.common.provenance import package_version

from ..errors import ConfigError
from ..ladder.prune import geometric_alphas
from ..run import distributed
from ..run.config import load_config
from ..run.pipeline import open_on_main
from ..run.plot import pyplot, write_png
from ..run.records import RunResults, load_results
from ..run.rundata import check_data, load_source, load_target
from ..run.rundir import RunDir, RunExistsError, open_run
from ..run.stages import (
    confidence_from_cache,
    reuse_ladder,
    stage_pretrain,
    stage_prune,
    stage_score,
    stage_select,
)
from ..run.torch_device import pick_device
from .criteria import CRITERIA
from .rules import seconds_or_none

__all__ = ["ENTROPY_CRITERIA", "StudyConfig", "load_study", "run_study", "summarize_study"]

ENTROPY_CRITERIA = ("entropy", "entropy_bound", "subset_entropy", "von_neumann")
"""The entropy-type criteria the default is chosen among (issue: the default is an entropy)."""

LADDER_KEYS = ("seed", "pretrain", "prune")
"""Config parts that make a ladder (with data.source and data.source_per_class)."""


@dataclass(frozen=True)
class LadderSpec:
    name: str
    set: tuple[str, ...] = ()


@dataclass(frozen=True)
class TargetSpec:
    name: str
    spec: str
    train_per_class: int = 0
    test_per_class: int = 0
    holdout: bool = False
    set: tuple[str, ...] = ()
    """overrides for this target only (e.g. ``probe.folds`` where its test split is small)."""

    def overrides(self) -> list[str]:
        return [
            f"data.target={self.spec}",
            f"data.target_train_per_class={self.train_per_class}",
            f"data.target_test_per_class={self.test_per_class}",
            *self.set,
        ]


@dataclass(frozen=True)
class StudyConfig:
    name: str
    base: str
    ladders: tuple[LadderSpec, ...]
    targets: tuple[TargetSpec, ...]
    set: tuple[str, ...] = field(default=())


def _names_ok(kind: str, names: list[str]) -> None:
    for n in names:
        if not n or "/" in n or n.startswith(".") or os.sep in n:
            raise ConfigError(f"{kind} name {n!r} must be a plain folder name")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{kind} names must be unique; repeated: {', '.join(sorted(dup))}")


def load_study(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study file; every ladder's and target's config is validated too."""
    p = Path(path)
    if not p.is_file():
        shipped = resources.files("entropi.host") / "studies" / f"{path}.toml"
        if not shipped.is_file():
            raise ConfigError(f"study file {path} does not exist")
        p = Path(str(shipped))
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{p}: not a study file ({type(e).__name__}: {e})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    unknown = set(raw) - {"name", "base", "set", "ladder", "target"}
    if unknown:
        raise ConfigError(f"{p}: unknown study keys: {', '.join(sorted(unknown))}")
    try:
        ladders = tuple(
            LadderSpec(d["name"], tuple(d.get("set", ()))) for d in raw.get("ladder", [])
        )
        targets = tuple(
            TargetSpec(**{**d, "set": tuple(d.get("set", ()))}) for d in raw.get("target", [])
        )
    except (KeyError, TypeError) as e:
        raise ConfigError(
            f"{p}: each [[ladder]] needs name (+ set), each [[target]] name and "
            f"spec (+ train_per_class, test_per_class, holdout, set): {e}"
        ) from e
    if not ladders or not targets:
        raise ConfigError(f"{p}: a study needs at least one [[ladder]] and one [[target]]")
    _names_ok("ladder", [ld.name for ld in ladders])
    _names_ok("target", [t.name for t in targets])
    study = StudyConfig(
        raw.get("name", p.stem),
        raw.get("base", "quickstart"),
        ladders,
        targets,
        tuple(raw.get("set", ())),
    )
    for ld in ladders:
        for t in targets:
            _target_config(study, ld, t)  # raises ConfigError naming the bad key
    return study


def _ladder_config(study: StudyConfig, ladder: LadderSpec):
    return load_config(study.base, [*study.set, *ladder.set, "export.enabled=false"])


def _target_config(study: StudyConfig, ladder: LadderSpec, target: TargetSpec):
    return load_config(
        study.base, [*study.set, *ladder.set, "export.enabled=false", *target.overrides()]
    )


def _ladder_identity(cfg) -> dict[str, Any]:
    d = cfg.to_dict()
    ident = {k: d[k] for k in LADDER_KEYS}
    ident["source"] = (d["data"]["source"], d["data"]["source_per_class"])
    return ident


def _open_ladder(study: StudyConfig, ladder: LadderSpec, root: Path):
    """Rank 0: open (or reopen) the ladder's run folder, refusing one that holds another
    ladder."""

    cfg = _ladder_config(study, ladder)
    if (root / "config.toml").is_file():
        saved = load_config(root / "config.toml")
        if _ladder_identity(saved) != _ladder_identity(cfg):
            raise RunExistsError(
                f"{root} holds another ladder (its seed, source, [pretrain] or [prune] differ "
                f"from ladder {ladder.name!r}); remove it or use another --out"
            )
        return open_run(None, root, resume=True)
    return open_run(cfg, root)


def _build_ladder(study: StudyConfig, ladder: LadderSpec, root: Path, log):
    """Pretrain + prune the ladder in ``root`` (resumed; reused when it is already complete).

    Under ``torchrun`` rank 0 opens the folder and decides whether the ladder is complete; if
    not, every process loads the source and trains (DDP), rank 0 writes the rungs."""

    cfg, run = open_on_main(partial(_open_ladder, study, ladder, root), root)
    want = len(geometric_alphas(cfg.prune.keep_per_round, cfg.prune.alpha_min))
    if distributed.from_main(lambda: not all(run.rung(i).is_file() for i in range(want))):
        device = distributed.local_device(pick_device(cfg.device))
        t0 = time.perf_counter()
        src = distributed.main_first(partial(load_source, cfg, device))
        stage_pretrain(cfg, run, src, device)
        stage_prune(cfg, run, src, device)
        run.add_time("ladder", time.perf_counter() - t0)  # rank 0 (a follower's does nothing)
        log(f"study: ladder {ladder.name} built in {time.perf_counter() - t0:.0f}s")
    return cfg, run


def run_study(study: StudyConfig, out: str | os.PathLike, *, log=print) -> dict[str, Any]:
    """Build (or reuse) every ladder, score it on every target, summarize; returns study.json.

    Under ``torchrun`` every process calls this (see the module docstring): rank 0 alone locks
    ``out`` and writes, every process returns the same study.json content."""
    distributed.init()  # under torchrun: join the job; otherwise one process, as always
    out = Path(out)
    # one study writes DIR at a time; under torchrun rank 0 is its one writer
    lock = distributed.from_main(partial(lock_folder, out, what="study folder"), share=False)
    try:
        return _run_study(study, out, log if distributed.is_main() else _quiet)
    finally:
        if lock is not None:
            lock.release()


def _quiet(message: str) -> None:
    """The log of processes other than rank 0 (rank 0 logs)."""


def _check_study_data(study: StudyConfig) -> None:
    """Every data spec of every ladder x target pair checked (listed, not loaded; each distinct
    one once) before the first ladder is built: a bad target fails now, not after the ladders."""

    seen = set()
    for ladder in study.ladders:
        for target in study.targets:
            cfg = _target_config(study, ladder, target)
            d = cfg.data
            key = (d.source, d.target, tuple(d.roots), d.download, d.test_fraction, cfg.seed)
            if (key, cfg.pretrain.input_size) not in seen:
                seen.add((key, cfg.pretrain.input_size))
                distributed.main_first(partial(check_data, cfg))


def _run_study(study: StudyConfig, out: Path, log) -> dict[str, Any]:
    t_start = time.perf_counter()
    _check_study_data(study)
    pairs, runs = [], []  # filled on rank 0
    for ladder in study.ladders:
        cfg, run = _build_ladder(study, ladder, out / "ladders" / ladder.name, log)
        device = distributed.local_device(pick_device(cfg.device))
        for target in study.targets:
            folder = out / "scores" / ladder.name / target.name
            # the study's and ladder's settings again (a reused ladder folder may predate them;
            # those of the ladder itself are checked unchanged), then the target's
            overrides = [*study.set, *ladder.set, "export.enabled=false", *target.overrides()]
            tcfg, trun = open_on_main(
                partial(reuse_ladder, cfg, run, folder, overrides, resume=True), folder
            )
            if not distributed.from_main(trun.results.is_file):
                t0 = time.perf_counter()
                tgt = distributed.main_first(partial(load_target, tcfg))
                stage_score(tcfg, trun, tgt, device)  # the rungs split over the processes
                del tgt
                trun.add_time("score", time.perf_counter() - t0)
                distributed.from_main(partial(stage_select, tcfg, trun), share=False)
                log(
                    f"study: {ladder.name} x {target.name} scored in "
                    f"{time.perf_counter() - t0:.0f}s"
                )

            def collect(ladder=ladder, target=target, tcfg=tcfg, trun=trun) -> None:
                results = load_results(trun.results)
                pairs.append(_pair(ladder, target, results, trun.stage_seconds()))
                runs.append((tcfg, trun, len(results.rungs)))

            distributed.from_main(collect, share=False)
    return distributed.from_main(partial(_write_study, study, out, pairs, runs, t_start))


def _write_study(study: StudyConfig, out: Path, pairs: list, runs: list, t_start: float) -> dict:
    """Rank 0: the summary over every pair -> study.json, study.md, study.png."""
    ladder_seconds = {
        ld.name: float(RunDir(out / "ladders" / ld.name).stage_seconds().get("ladder", 0.0))
        for ld in study.ladders
    }
    summary = summarize_study(pairs)
    rec = summary["recommended"]
    if rec:  # how sure the recommended criterion is of its pick, pair by pair (cached features)
        for pair, (tcfg, trun, n_rungs) in zip(pairs, runs, strict=True):
            if pair["criterion"] == rec:
                pair["recommended_confidence"] = pair["selection_confidence"]
                continue
            conf = confidence_from_cache(tcfg, trun, n_rungs, rec)
            pick = pair["criteria"][rec]["selected_index"]
            pair["recommended_confidence"] = (
                conf["wins"][pick] / conf["resamples"] if conf and conf["resamples"] else None
            )
        summary["recommended_confidence"] = _stats(
            [p["recommended_confidence"] for p in pairs if not p["holdout"]]
        )
    doc = {
        "name": study.name,
        "base": study.base,
        "ladders": [ld.name for ld in study.ladders],
        "targets": [t.__dict__ for t in study.targets],
        "pairs": pairs,
        "resamples": runs[0][0].select.resamples if runs else 0,
        "summary": summary,
        "seconds": {
            "ladders": ladder_seconds,
            "scoring": float(sum(p["score_seconds"] for p in pairs)),
            "this_invocation": time.perf_counter() - t_start,
        },
        "machine": _machine(),
    }
    doc["seconds"]["total_compute"] = float(
        sum(ladder_seconds.values()) + doc["seconds"]["scoring"]
    )
    atomic_write_json(out / "study.json", doc)
    atomic_write_text(out / "study.md", render_study(doc))
    plot_study(doc, out / "study.png")
    return doc


def _machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "entropi": package_version(),
        "processes": distributed.world_size(),
    }


def _pair(ladder: LadderSpec, target: TargetSpec, results: RunResults, seconds: dict) -> dict:
    rungs = results.rungs
    log_alpha = np.log10([r.alpha for r in rungs])
    best = results.best_probe_index
    crit = {}
    for name, s in results.criteria_summary.items():
        crit[name] = {
            "selected_index": s.selected_index,
            "regret": s.regret,
            "kendall_tau": s.kendall_tau,
            "weighted_tau": s.weighted_tau,
            "seconds": seconds_or_none(s.seconds),
            "hit": s.selected_index == best,
            "peak_distance_log10_alpha": float(abs(log_alpha[s.selected_index] - log_alpha[best])),
        }
    return {
        "ladder": ladder.name,
        "target": target.name,
        "holdout": target.holdout,
        "n": rungs[0].n,
        "alphas": [r.alpha for r in rungs],
        "probe": [r.probe_accuracy for r in rungs],
        "probe_std": [r.probe_accuracy_std for r in rungs],
        "probe_spread": results.probe_spread,
        "probe_se": results.probe_se,
        "probe_test_n": rungs[0].probe_test_n,
        "best_probe_index": best,
        "criterion": results.criterion,
        "selection_confidence": results.selection_confidence,
        "saturated_rungs": results.saturated_rungs,
        "criteria": crit,
        "score_seconds": float(seconds.get("score", 0.0)),
    }


def _stats(values: list[float]) -> dict[str, float]:
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": None, "sd": None, "n": 0}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "n": int(len(v)),
    }


def _share(flags: list[bool | None]) -> float | None:
    """The share of true among the known flags (None: none known)."""
    known = [f for f in flags if f is not None]
    return float(np.mean(known)) if known else None


def _aggregate(pairs: list[dict]) -> dict[str, Any]:
    names = [n for n in CRITERIA if pairs and all(n in p["criteria"] for p in pairs)]
    per = {}
    for name in names:
        rows = [p["criteria"][name] for p in pairs]
        per[name] = {
            "kendall_tau": _stats([r["kendall_tau"] for r in rows]),
            "weighted_tau": _stats([r["weighted_tau"] for r in rows]),
            "regret_points": _stats([100 * r["regret"] for r in rows]),
            "max_regret_points": float(max(100 * r["regret"] for r in rows)),
            # a regret beyond one test-set SE of a probe accuracy is more than test noise
            "share_above_se": _share(
                [
                    None if p.get("probe_se") is None else r["regret"] > p["probe_se"]
                    for p, r in zip(pairs, rows, strict=True)
                ]
            ),
            "seconds": _stats([r.get("seconds") for r in rows]),
            "top1": float(np.mean([r["hit"] for r in rows])),
            "peak_distance_log10_alpha": _stats([r["peak_distance_log10_alpha"] for r in rows]),
            "higher_is_better": CRITERIA[name].higher_is_better,
            "needs_labels": CRITERIA[name].needs_labels,
        }
    return per


def summarize_study(pairs: list[dict]) -> dict[str, Any]:
    """Per-criterion statistics over the study pairs and over the held-out pairs, and the
    default the issue's rule recommends (from the study pairs only)."""
    study = [p for p in pairs if not p["holdout"]]
    held = [p for p in pairs if p["holdout"]]
    per = _aggregate(study)
    spread = _stats([100 * p["probe_spread"] for p in study])["mean"]
    se = _stats([100 * p["probe_se"] for p in study if p.get("probe_se") is not None])["mean"]
    entropies = [n for n in ENTROPY_CRITERIA if n in per]
    rec = None
    if entropies:

        def key(n):
            wtau = per[n]["weighted_tau"]["mean"]
            return (per[n]["regret_points"]["mean"], -(wtau if wtau is not None else -2.0))

        rec = min(entropies, key=key)
        others = [n for n in per if n not in ENTROPY_CRITERIA]
        better = [
            n
            for n in others
            if per[rec]["regret_points"]["mean"] - per[n]["regret_points"]["mean"] > spread
        ]
        reason = (
            f"{rec}: the lowest mean regret among the entropies "
            f"({per[rec]['regret_points']['mean']:.2f} points)"
        )
        if better:
            best_other = min(better, key=key)
            reason += (
                f"; but {best_other}'s mean regret "
                f"({per[best_other]['regret_points']['mean']:.2f}) is lower by more than the "
                f"probe's mean spread ({spread:.2f} points), so it is recommended instead"
            )
            rec = best_other
        else:
            reason += (
                f"; no other criterion's mean regret is lower by more than the probe's mean "
                f"spread ({spread:.2f} points)"
            )
    return {
        "pairs": len(study),
        "holdout_pairs": len(held),
        "probe_spread_points": spread,
        "probe_se_points": se,
        "criteria": per,
        "holdout": _aggregate(held) if held else {},
        "recommended": rec,
        "reason": reason if rec else "no entropy criterion was scored",
    }


def _fmt(s: dict[str, float], digits: int = 2) -> str:
    if not s.get("n"):
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def _table(per: dict[str, Any], rec: str | None) -> list[str]:
    lines = [
        "| criterion | labels | Kendall tau | weighted tau | regret (points) | max regret | "
        "regret > 1 SE | top-1 | peak distance (log10 alpha) | seconds per pair |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(per, key=lambda n: per[n]["regret_points"]["mean"])
    for n in order:
        s = per[n]
        name = f"**{n}** (recommended)" if n == rec else n
        lines.append(
            f"| {name} | {'yes' if s['needs_labels'] else 'no'} | {_fmt(s['kendall_tau'])} | "
            f"{_fmt(s['weighted_tau'])} | {_fmt(s['regret_points'])} | "
            f"{s['max_regret_points']:.2f} | {_share_pct(s.get('share_above_se'))} | "
            f"{100 * s['top1']:.0f}% | "
            f"{_fmt(s['peak_distance_log10_alpha'])} | {_fmt(s.get('seconds') or {})} |"
        )
    return lines


def _share_pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f}%"


def _se(pair: dict) -> str:
    if pair.get("probe_se") is None:
        return "-"
    return f"{100 * pair['probe_se']:.2f} ({pair['probe_test_n']})"


def render_study(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    secs = doc["seconds"]
    m = doc["machine"]
    lines = [
        f"# Selection study `{doc['name']}`",
        "",
        f"{len(doc['ladders'])} ladders x {len(doc['targets'])} targets: {s['pairs']} study "
        f"pairs and {s['holdout_pairs']} held-out pairs. Compute: "
        f"{sum(secs['ladders'].values()) / 60:.1f} min building ladders, "
        f"{secs['scoring'] / 60:.1f} min scoring ({secs['total_compute'] / 60:.1f} min in all) "
        f"on `{m['host']}` ({m['cpus']} CPUs, python {m['python']}, torch {m['torch']}, "
        f"numpy {m['numpy']}, entropi {m['entropi']}).",
        "",
        f"Ground truth: linear-probe accuracy, mean over seeds; its mean spread (sd over seeds, "
        f"averaged over rungs and pairs) is **{s['probe_spread_points']:.2f} points**: a regret "
        "below that is noise. "
        + (
            f"The test sampling adds more: the binomial standard error of a probe accuracy, "
            f"averaged the same way, is **{s['probe_se_points']:.2f} points**. "
            if s.get("probe_se_points") is not None
            else ""
        )
        + "Mean ± sd over pairs:",
        "",
        *_table(s["criteria"], s["recommended"]),
        "",
        f"Recommended default: **{s['recommended']}**. {s['reason']}.",
    ]
    rc = s.get("recommended_confidence")
    if rc and rc.get("n"):
        lines += [
            "",
            f"Selection confidence of {s['recommended']} (share of {doc['resamples']} bootstrap "
            f"resamples of the target on which it picks the same rung), mean over study pairs: "
            f"{_fmt(rc)}.",
        ]
    if s["holdout"]:
        lines += ["", "## Held-out targets (never used for the recommendation)", ""]
        lines += _table(s["holdout"], s["recommended"])
    lines += [
        "",
        "## Pairs",
        "",
        "Regret and probe spread in probe points.",
        "",
        "| ladder | target | n | best rung | probe sd | probe se (test n) | "
        + " | ".join(f"{n} pick / regret" for n in ("entropy", s["recommended"] or "entropy"))
        + f" | {s['recommended']} confidence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in doc["pairs"]:
        cells = []
        for n in ("entropy", s["recommended"] or "entropy"):
            c = p["criteria"].get(n)
            cells.append(f"{c['selected_index']} / {100 * c['regret']:.2f}" if c else "-")
        conf = p.get("recommended_confidence")
        held = " (held out)" if p["holdout"] else ""
        lines.append(
            f"| {p['ladder']} | {p['target']}{held} | {p['n']} | {p['best_probe_index']} | "
            f"{100 * p['probe_spread']:.2f} | {_se(p)} | {' | '.join(cells)} | "
            + (f"{conf:.2f} |" if conf is not None else "- |")
        )
    lines += ["", "![study](study.png)"]
    return "\n".join(lines) + "\n"


def plot_study(doc: dict[str, Any], path: Path) -> Path:
    plt = pyplot()

    per = doc["summary"]["criteria"]
    names = sorted(per, key=lambda n: per[n]["regret_points"]["mean"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    x = np.arange(len(names))
    colors = ["tab:blue" if n in ENTROPY_CRITERIA else "tab:gray" for n in names]

    def col(key, stat):
        return [np.nan if per[n][key][stat] is None else per[n][key][stat] for n in names]

    a1.bar(
        x, col("regret_points", "mean"), yerr=col("regret_points", "sd"), color=colors, capsize=3
    )
    a1.axhline(
        doc["summary"]["probe_spread_points"], color="tab:red", ls=":", label="probe spread (noise)"
    )
    if doc["summary"].get("probe_se_points") is not None:
        a1.axhline(
            doc["summary"]["probe_se_points"], color="tab:orange", ls="--", label="probe se (test)"
        )
    a1.set_ylabel("regret (probe points), mean ± sd")
    a1.legend(fontsize=8)
    a2.bar(x, col("weighted_tau", "mean"), yerr=col("weighted_tau", "sd"), color=colors, capsize=3)
    a2.set_ylabel("weighted Kendall tau vs probe, mean ± sd")
    for a in (a1, a2):
        a.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    fig.suptitle(
        f"study {doc['name']}: {doc['summary']['pairs']} (ladder, target) pairs; blue = entropies",
        fontsize=10,
    )
    return write_png(fig, path)
