"""The selection-rule study (issue 26, docs/studies.md "Selection rule study"): every rule x
criterion on (ladder, target) pairs that are already scored, what each pick costs in regret,
what it saves in size, how stable it is, and the default the pre-stated decision rule gives.

A pair is a scored run folder (``entropi run`` or ``entropi probe --target --out``: score files,
cached target-training features). :func:`pair_picks` applies every rule variant
(:data:`RULE_VARIANTS`: argmax and ``smallest_tied`` at each ``tie_se``) to every criterion, the
paired bootstrap (:func:`~.rules.bootstrap_values`) computed once per criterion and shared by
the variants; :func:`summarize_rules` aggregates the picks over pairs (regret in probe points,
its share above the pair's test-set SE, size ratio dense / pick in non-zero weights and in
TFLite Micro int8 flash, confidence, stability under threads and seeds), and
:func:`decide_default` applies the decision rule fixed before the study ran, word for word as
docs/studies.md states it. ``scripts/rule_study.py`` runs it on the shipped pairs and writes
``benchmarks/results/rule_study.{json,md,png}``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..run.plot import pyplot, write_png
from .criteria import CriterionError, CriterionOptions, compute_criteria
from .rules import bootstrap_values, choose_rung, one_blas_thread
from .study import _share, _stats

__all__ = [
    "RULE_VARIANTS",
    "STUDY_CRITERIA",
    "decide_default",
    "pair_picks",
    "plot_rules",
    "recomputed_values",
    "render_rules",
    "summarize_rules",
    "variant_name",
]

STUDY_CRITERIA = ("subset_entropy", "cv_probe", "logme", "von_neumann")
"""The criteria the decision rule names (docs/studies.md)."""

RULE_VARIANTS = (("argmax", 1.0), ("smallest_tied", 1.0), ("smallest_tied", 2.0))
"""(rule, tie_se) pairs the study compares; argmax ignores tie_se."""

BASE_CRITERION = "subset_entropy"
"""The default criterion when the study's decision rule was stated (before it ran): another
replaces it only by that rule's margin. The study's decision made ``logme`` the default since."""

MIN_SIZE_RATIO = 2.0
"""The decision rule's (b): smallest_tied's median size ratio must be at least this."""

MAX_EXTRA_SECONDS = 180.0
"""The decision rule's cost clause: a new default criterion's bootstrap may add at most this to
the quickstart."""


def variant_name(rule: str, tie_se: float) -> str:
    """``argmax`` or ``smallest_tied@T``."""
    return rule if rule == "argmax" else f"{rule}@{tie_se:g}"


def recomputed_values(
    load_features: Callable[[int], np.ndarray],
    labels: np.ndarray,
    n_rungs: int,
    criterion: str,
    opts: CriterionOptions,
) -> list[float | None]:
    """``criterion`` on every rung's features with ``opts`` (another seed, features computed
    with other threads), as :func:`~.rules.score_rung` computes it (one BLAS thread; None
    where undefined)."""
    out: list[float | None] = []
    for i in range(n_rungs):
        x = load_features(i)
        with one_blas_thread():
            try:
                out.append(float(compute_criteria(x, labels, [criterion], opts)[criterion]))
            except CriterionError:
                out.append(None)
    return out


def pair_picks(
    rungs: Sequence[dict],
    load_features: Callable[[int], np.ndarray],
    labels: np.ndarray,
    *,
    criteria: Sequence[str] = STUDY_CRITERIA,
    levels: int,
    seed: int,
    resamples: int,
    recompute: bool = False,
) -> dict[str, Any]:
    """Every rule variant's pick by every criterion on one pair.

    ``rungs``: the pair's score dicts (``criteria``, ``nnz``); ``load_features(i)``: rung i's
    target-training features. The criteria and the bootstrap use ``seed``; with ``recompute``
    the full-data values are computed from the features with it (a second seed, features from
    another thread count) instead of read from the score files. Returns per criterion
    ``{variant: {selected_index, confidence, tied}}`` and the criterion's ``seconds``
    (recomputation + bootstrap)."""
    opts = CriterionOptions(levels=levels, seed=seed)
    out: dict[str, Any] = {"seed": seed, "resamples": resamples, "criteria": {}, "seconds": {}}
    for c in criteria:
        t0 = time.perf_counter()
        use = list(rungs)
        if recompute:
            values = recomputed_values(load_features, labels, len(rungs), c, opts)
            use = [
                {**r, "criteria": {**r.get("criteria", {}), c: v}}
                for r, v in zip(rungs, values, strict=True)
            ]
        boot = bootstrap_values(
            load_features, labels, len(rungs), c, opts, resamples=resamples, seed=seed
        )
        picks = {}
        for rule, tie_se in RULE_VARIANTS:
            ch = choose_rung(use, c, rule, boot, tie_se=tie_se)
            picks[variant_name(rule, tie_se)] = {
                k: ch[k] for k in ("selected_index", "confidence", "tied")
            }
        out["criteria"][c] = picks
        out["seconds"][c] = time.perf_counter() - t0
    return out


def _pick(pair: dict, replicate: str, c: str, v: str) -> int | None:
    rep = pair.get("replicates", {}).get(replicate)
    if rep is None or c not in rep["criteria"]:
        return None
    return rep["criteria"][c][v]["selected_index"]


def _same(pair: dict, a: str, b: str, c: str, v: str) -> bool | None:
    pa, pb = _pick(pair, a, c, v), _pick(pair, b, c, v)
    return None if pa is None or pb is None else pa == pb


def _two(pair: dict) -> str:
    """The 2-thread replicate: recomputed, else the cached features (``entropi run`` / ``probe``
    computed them with torch's default threads, 2 on the study's machine)."""
    return "threads2" if "threads2" in pair.get("replicates", {}) else "seed0"


def _median(values: list[float]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.median(v)) if v else None


def _aggregate(pairs: list[dict], c: str, v: str) -> dict[str, Any]:
    regret, above, nnz, flash, conf = [], [], [], [], []
    for p in pairs:
        pick = _pick(p, "seed0", c, v)
        probe = np.asarray(p["probe"])
        r = float(probe.max() - probe[pick])
        regret.append(100 * r)
        above.append(None if p.get("probe_se") is None else r > p["probe_se"])
        nnz.append(p["nnz"][0] / p["nnz"][pick])
        fl = p.get("flash_int8")
        flash.append(fl[0] / fl[pick] if fl else None)
        conf.append(p["replicates"]["seed0"]["criteria"][c][v]["confidence"])
    return {
        "regret_points": _stats(regret),
        "max_regret_points": max(regret) if regret else None,
        "share_above_se": _share(above),
        "size_ratio_nnz": {"median": _median(nnz), "min": min(nnz) if nnz else None},
        "size_ratio_flash_int8": {
            "median": _median(flash),
            "min": min((f for f in flash if f is not None), default=None),
        },
        "confidence": _stats(conf),
        "same_pick_threads": _share(
            threads := [_same(p, "threads1", _two(p), c, v) for p in pairs]
        ),
        "same_pick_threads_pairs": sum(t is not None for t in threads),
        "same_pick_seeds": _share(seeds := [_same(p, "seed0", "seed1", c, v) for p in pairs]),
        "same_pick_seeds_pairs": sum(t is not None for t in seeds),
    }


def summarize_rules(pairs: list[dict], criteria: Sequence[str] = STUDY_CRITERIA) -> dict:
    """Per criterion and rule variant, over the study pairs and apart over the held-out pairs
    (and the study pairs by ladder kind): regret (mean, sd, max, share above the pair's SE),
    size ratio, confidence, stability. ``SE`` is the mean test-set SE of a probe accuracy over
    the study pairs, in points."""
    study = [p for p in pairs if not p["holdout"]]
    held = [p for p in pairs if p["holdout"]]
    variants = [variant_name(r, t) for r, t in RULE_VARIANTS]

    def table(group: list[dict]) -> dict:
        return (
            {c: {v: _aggregate(group, c, v) for v in variants} for c in criteria} if group else {}
        )

    kinds = sorted({p["ladder"] for p in study})
    return {
        "pairs": len(study),
        "holdout_pairs": len(held),
        "se_points": _stats([100 * p["probe_se"] for p in study if p.get("probe_se") is not None])[
            "mean"
        ],
        "study": table(study),
        "holdout": table(held),
        "by_ladder": {k: table([p for p in study if p["ladder"] == k]) for k in kinds},
    }


def decide_default(
    summary: dict, extra_seconds: dict[str, float | None] | None = None
) -> dict[str, Any]:
    """The decision rule fixed before the study ran (docs/studies.md), on the study pairs.

    Per criterion, ``smallest_tied`` at a tie_se is admissible if (a) its mean regret <= argmax's
    + SE and (b) its median size ratio (non-zero weights) >= 2; the criterion's rule is the
    admissible tie_se with the larger median ratio (smaller tie_se on equal), else argmax. The
    default criterion stays ``subset_entropy`` unless another, under its rule, has a mean regret
    lower by more than SE; then the lowest, if its bootstrap adds at most
    :data:`MAX_EXTRA_SECONDS` to the quickstart (``extra_seconds``: per criterion, measured;
    None: not measured, refused)."""
    se = summary["se_points"]
    per = summary["study"]
    rules: dict[str, dict] = {}
    lines = [f"SE (mean test-set SE of a probe accuracy, study pairs) = {se:.2f} points"]
    for c, vs in per.items():
        base = vs["argmax"]["regret_points"]["mean"]
        best, why = ("argmax", 1.0), []
        best_ratio = None
        for rule, tie_se in RULE_VARIANTS:
            if rule == "argmax":
                continue
            s = vs[variant_name(rule, tie_se)]
            reg, ratio = s["regret_points"]["mean"], s["size_ratio_nnz"]["median"]
            ok_a, ok_b = reg <= base + se, ratio is not None and ratio >= MIN_SIZE_RATIO
            why.append(
                f"tie_se {tie_se:g}: mean regret {reg:.2f} vs argmax {base:.2f} + SE "
                f"({'ok' if ok_a else 'fails (a)'}), median size ratio {ratio:.2f}x "
                f"({'ok' if ok_b else 'fails (b)'})"
            )
            if ok_a and ok_b and (best_ratio is None or ratio > best_ratio):
                best, best_ratio = (rule, tie_se), ratio
        name = variant_name(*best)
        rules[c] = {
            "rule": best[0],
            "tie_se": best[1],
            "variant": name,
            "regret_points": vs[name]["regret_points"]["mean"],
            "why": why,
        }
        lines.append(f"{c}: {name} ({'; '.join(why)})")
    base_reg = rules[BASE_CRITERION]["regret_points"]
    better = [c for c in rules if c != BASE_CRITERION and base_reg - rules[c]["regret_points"] > se]
    criterion = BASE_CRITERION
    if better:
        cand = min(better, key=lambda c: rules[c]["regret_points"])
        extra = (extra_seconds or {}).get(cand)
        if extra is not None and extra <= MAX_EXTRA_SECONDS:
            criterion = cand
            lines.append(
                f"{cand}'s mean regret {rules[cand]['regret_points']:.2f} is lower than "
                f"{BASE_CRITERION}'s {base_reg:.2f} by more than SE; its bootstrap adds "
                f"{extra:.0f} s to the quickstart (<= {MAX_EXTRA_SECONDS:.0f}): it becomes the "
                "default criterion"
            )
        else:
            lines.append(
                f"{cand}'s mean regret {rules[cand]['regret_points']:.2f} is lower than "
                f"{BASE_CRITERION}'s {base_reg:.2f} by more than SE, but its bootstrap would add "
                + ("an unmeasured time" if extra is None else f"{extra:.0f} s")
                + f" to the quickstart (> {MAX_EXTRA_SECONDS:.0f}): recommended, not default"
            )
    else:
        lines.append(
            f"no criterion's mean regret is lower than {BASE_CRITERION}'s ({base_reg:.2f}) by "
            "more than SE: the default criterion stays"
        )
    chosen = rules[criterion]
    return {
        "criterion": criterion,
        "rule": chosen["rule"],
        "tie_se": chosen["tie_se"],
        "rules": rules,
        "lines": lines,
    }


def _fmt(s: dict, digits: int = 2) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _of(s: dict, key: str) -> str:
    """``share`` of ``n`` pairs (the pairs that have both replicates)."""
    n = s.get(f"{key}_pairs")
    return _pct(s[key]) if n is None or s[key] is None else f"{_pct(s[key])} of {n}"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"


def rules_table(per: dict) -> list[str]:
    """Markdown rows, one per criterion x rule variant."""
    lines = [
        "| criterion | rule | regret (points) | max | > 1 SE | size ratio nnz (median, min) | "
        "size ratio TFLM int8 flash (median, min) | confidence | same pick 1 / 2 threads | "
        "same pick seeds 0 / 1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, vs in per.items():
        for v, s in vs.items():
            lines.append(
                f"| {c} | {v} | {_fmt(s['regret_points'])} | {s['max_regret_points']:.2f} | "
                f"{_pct(s['share_above_se'])} | {_ratio(s['size_ratio_nnz']['median'])}, "
                f"{_ratio(s['size_ratio_nnz']['min'])} | "
                f"{_ratio(s['size_ratio_flash_int8']['median'])}, "
                f"{_ratio(s['size_ratio_flash_int8']['min'])} | {_fmt(s['confidence'])} | "
                f"{_of(s, 'same_pick_threads')} | {_of(s, 'same_pick_seeds')} |"
            )
    return lines


def render_rules(doc: dict) -> str:
    """rule_study.md from the study document."""
    s, d = doc["summary"], doc["decision"]
    sec = doc["seconds"]
    lines = [
        "# Selection rule study (issue 26)",
        "",
        f"{s['pairs']} study pairs and {s['holdout_pairs']} held-out pairs; "
        f"{doc['resamples']} paired bootstrap resamples per pair; criteria x rules below. "
        f"Compute {sec['total'] / 60:.1f} min on `{doc['machine']['host']}` "
        f"({doc['machine']['cores']} cores, shared with other work): "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in sec.items() if k != "total")
        + ".",
        "",
        f"Regret: best probe accuracy minus the pick's, in points (ground truth as each pair's "
        f"run: cross-validated where folds are set). SE = {s['se_points']:.2f} points, the mean "
        "test-set SE of a probe accuracy over the study pairs; '> 1 SE' counts pairs whose regret "
        "exceeds their own SE. Size ratio: dense / pick. Stability: share of pairs with the same "
        "pick when the target features are recomputed with 1 and with 2 torch threads (2: "
        "recomputed, or the cached features, which `entropi run` / `probe` computed with torch's "
        "default 2 threads), and under selection seeds 0 and 1, 'of N': the pairs that have both.",
        "",
        "## Study pairs",
        "",
        *rules_table(s["study"]),
        "",
        "## Decision (the rule fixed before the study ran)",
        "",
        *[f"- {x}" for x in d["lines"]],
        "",
        f'**Default: `[select] criterion = "{d["criterion"]}"`, `rule = "{d["rule"]}"`'
        + (f", `tie_se = {d['tie_se']:g}`" if d["rule"] != "argmax" else "")
        + "**.",
    ]
    if s["holdout"]:
        lines += ["", "## Held-out pairs (never used to decide)", "", *rules_table(s["holdout"])]
    for kind, per in s["by_ladder"].items():
        lines += ["", f"## Study pairs, {kind} ladder only", "", *rules_table(per)]
    variants = [variant_name(r, t) for r, t in RULE_VARIANTS]
    lines += [
        "",
        "## Pairs",
        "",
        "Pick (regret in points) per criterion and rule; best = the best probe rung.",
        "",
        "| ladder | target | best | SE | "
        + " | ".join(f"{c} {v}" for c in doc["criteria"] for v in variants)
        + " |",
        "|---|---|---|---|" + "---|" * (len(doc["criteria"]) * len(variants)),
    ]
    for p in doc["pairs"]:
        probe = np.asarray(p["probe"])
        cells = []
        for c in doc["criteria"]:
            for v in variants:
                k = _pick(p, "seed0", c, v)
                cells.append(f"{k} ({100 * (probe.max() - probe[k]):.2f})")
        held = " (held out)" if p["holdout"] else ""
        lines.append(
            f"| {p['ladder']} | {p['target']}{held} | {p['best_probe_index']} | "
            f"{100 * p['probe_se']:.2f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "![rule study](rule_study.png)", "", f"Reproduce: `{doc['command']}`"]
    return "\n".join(lines) + "\n"


def plot_rules(doc: dict, path) -> Any:
    """Mean regret (with the SE line) and median size ratio per criterion x rule, study pairs."""

    plt = pyplot()
    per = doc["summary"]["study"]
    crits = list(per)
    variants = [variant_name(r, t) for r, t in RULE_VARIANTS]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    x = np.arange(len(crits))
    w = 0.8 / len(variants)
    for j, v in enumerate(variants):
        reg = [per[c][v]["regret_points"]["mean"] for c in crits]
        sd = [per[c][v]["regret_points"]["sd"] for c in crits]
        ratio = [per[c][v]["size_ratio_nnz"]["median"] for c in crits]
        a1.bar(x + (j - 1) * w, reg, w, yerr=sd, capsize=2, label=v)
        a2.bar(x + (j - 1) * w, ratio, w, label=v)
    a1.axhline(doc["summary"]["se_points"], color="tab:red", ls="--", label="SE (test)")
    a1.set_ylabel("regret (probe points), mean ± sd over pairs")
    a2.axhline(MIN_SIZE_RATIO, color="tab:red", ls="--", label="2x")
    a2.set_yscale("log")
    a2.set_ylabel("size ratio dense / pick (non-zero weights), median")
    for a in (a1, a2):
        a.set_xticks(x, crits, fontsize=8)
        a.legend(fontsize=7)
    fig.suptitle(
        f"rule study: {doc['summary']['pairs']} study pairs (magnitude and channel ladders)",
        fontsize=10,
    )
    return write_png(fig, path)
