"""The selection-rule seam (issue 26): the paired bootstrap against a direct loop, the size-aware
``smallest_tied`` rule on constructed scores whose answer is known, its confidence, the edge
inputs (one rung, every rung tied, undefined scores), and ``entropi select --rule``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from entropi.host.run.config import ConfigError, SelectConfig
from entropi.host.selection import rules as selection
from entropi.host.selection.criteria import CriterionError, CriterionOptions, compute_criteria


def _rungs(values, nnz=None, criterion="subset_entropy"):
    nnz = nnz or [1000 >> i for i in range(len(values))]
    return [
        {"index": i, "nnz": nnz[i], "probe_accuracy": 0.5, "criteria": {criterion: v}}
        for i, v in enumerate(values)
    ]


def _boot(values, noise, resamples=200, seed=0):
    """Paired resamples: a shared shift per resample (what pairing cancels) plus per-rung noise."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(scale=10.0, size=(resamples, 1))
    return np.asarray(values) + shared + rng.normal(size=(resamples, len(values))) * noise


# --------------------------------------------------------------------- the paired bootstrap


def test_bootstrap_values_are_a_direct_loop_over_shared_resamples():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 20)
    feats = [rng.normal(size=(60, 5)) + k * np.eye(5)[y % 5] for k in range(3)]
    opts = CriterionOptions(knn_k=3)
    boot = selection.bootstrap_values(lambda i: feats[i], y, 3, "nc1", opts, resamples=12, seed=4)
    idx = selection.bootstrap_indices(60, 12, seed=4)  # the same rows for every rung
    for b, rows in enumerate(idx):
        for r in range(3):
            want = -compute_criteria(feats[r][rows], y[rows], ["nc1"], opts)["nc1"]  # lower
            assert boot[b, r] == pytest.approx(want, rel=1e-12)


def test_paired_se_against_a_hand_loop_and_pairing_cancels_the_shared_shift():
    boot = _boot([3.0, 2.9, 1.0], noise=[0.1, 0.1, 0.1])
    boot[5, 2] = np.nan  # undefined on one resample: that pair uses the other 199
    se = selection.paired_se(boot)
    for i in range(3):
        for j in range(3):
            d = boot[:, i] - boot[:, j]
            d = d[np.isfinite(d)]
            assert se[i, j] == pytest.approx(0.0 if i == j else np.std(d, ddof=1), rel=1e-12)
    assert se[1, 0] < 0.2 < np.std(boot[:, 0], ddof=1)  # ~0.14 paired vs ~10 unpaired


# ------------------------------------------------------------------------------- the rules


def test_smallest_tied_picks_the_sparsest_rung_within_one_se_of_the_best():
    values = [10.0, 9.97, 9.95, 9.0, 5.0]  # rungs 1 and 2 within noise of 0; 3 and 4 far below
    boot = _boot(values, noise=0.05)
    rungs = _rungs(values)
    got = selection.choose_rung(rungs, "subset_entropy", "smallest_tied", boot, tie_se=1.0)
    assert got["best_index"] == 0 and got["tied"] == [0, 1, 2]
    assert got["selected_index"] == 2  # the fewest non-zero weights among the tied
    assert selection.choose_rung(rungs, "subset_entropy", "argmax", boot)["selected_index"] == 0
    # confidence: the same rule, with the same SE matrix, on every resample
    se = selection.paired_se(boot)
    sizes = selection.rung_sizes(rungs)
    picks = [selection.RULES["smallest_tied"].pick(v, sizes, se, 1.0) for v in boot]
    assert got["confidence"] == pytest.approx(np.mean(np.array(picks) == 2))
    assert got["wins"] == np.bincount(picks, minlength=5).tolist()
    # a narrower band (tie_se 0) keeps only exact ties: the best
    assert (
        selection.choose_rung(rungs, "subset_entropy", "smallest_tied", boot, tie_se=0.0)[
            "selected_index"
        ]
        == 0
    )


def test_smallest_tied_is_the_best_when_the_others_are_clearly_worse():
    values = [8.0, 10.0, 6.0, 2.0]
    got = selection.choose_rung(
        _rungs(values), "subset_entropy", "smallest_tied", _boot(values, noise=0.05)
    )
    assert got["selected_index"] == 1 and got["tied"] == [1] and got["confidence"] == 1.0


def test_size_is_what_the_caller_says_and_lower_is_better_criteria_flip():
    values = [1.0, 1.01, 1.02]  # nc1: lower is better, so rung 0 is best; all within noise
    rungs = _rungs(values, criterion="nc1")
    boot = -_boot(values, noise=0.05)  # bootstrap_values signs it higher-is-better
    got = selection.choose_rung(rungs, "nc1", "smallest_tied", boot)
    assert got["best_index"] == 0 and got["selected_index"] == 2
    flash = np.array([10.0, 30.0, 20.0])  # e.g. deployment flash: rung 0 is the smallest
    assert (
        selection.choose_rung(rungs, "nc1", "smallest_tied", boot, sizes=flash)["selected_index"]
        == 0
    )


def test_edge_inputs_one_rung_all_tied_and_undefined_scores():
    one = selection.choose_rung(_rungs([3.0]), "subset_entropy", "smallest_tied", _boot([3.0], 1))
    assert one["selected_index"] == 0 and one["confidence"] == 1.0
    same = [5.0] * 4  # every rung tied: the smallest
    boot = np.tile(np.arange(50.0)[:, None], (1, 4))
    got = selection.choose_rung(_rungs(same), "subset_entropy", "smallest_tied", boot)
    assert got["tied"] == [0, 1, 2, 3] and got["selected_index"] == 3
    assert got["confidence"] == 1.0
    # an undefined (None) rung is never tied nor picked, even the smallest
    values = [5.0, 5.0, None]
    boot = _boot([5.0, 5.0, 5.0], noise=0.01)
    boot[:, 2] = np.nan
    got = selection.choose_rung(_rungs(values), "subset_entropy", "smallest_tied", boot)
    assert got["selected_index"] == 1 and got["paired_se"][2] is None
    # every rung undefined: the dense rung, as argmax does; every resample dropped
    got = selection.choose_rung(
        _rungs([None, None]), "subset_entropy", "smallest_tied", np.full((5, 2), np.nan)
    )
    assert got["selected_index"] == 0 and got["resamples"] == 0 and got["confidence"] is None


def test_bad_inputs_are_clear_errors():
    rungs = _rungs([1.0, 2.0])
    with pytest.raises(CriterionError, match="needs the paired bootstrap"):
        selection.choose_rung(rungs, "subset_entropy", "smallest_tied", None)
    with pytest.raises(CriterionError, match="unknown selection rule 'best'"):
        selection.choose_rung(rungs, "subset_entropy", "best", None)
    with pytest.raises(CriterionError, match="no rungs"):
        selection.choose_rung([], "subset_entropy")
    with pytest.raises(CriterionError, match="bootstrap of 3 rungs for 2"):
        selection.choose_rung(rungs, "subset_entropy", "argmax", np.zeros((4, 3)))
    with pytest.raises(CriterionError, match="tie_se"):
        selection.choose_rung(rungs, "subset_entropy", "smallest_tied", np.zeros((4, 2)),
                              tie_se=float("nan"))  # fmt: skip
    # argmax without a bootstrap: today's pick, no confidence
    plain = selection.choose_rung(rungs, "subset_entropy")
    assert plain["selected_index"] == 1 and plain["confidence"] is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rule": "best"}, "not a known selection rule"),
        ({"rule": "smallest_tied", "resamples": 1}, "resamples must be >= 2"),
        ({"tie_se": -0.5}, "select.tie_se"),
    ],
)
def test_select_config_is_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        SelectConfig(**kw)
    default = SelectConfig()  # the rule study's decision (docs/studies.md)
    assert (default.criterion, default.rule, default.tie_se) == ("logme", "smallest_tied", 2.0)


def test_select_cli_reselects_by_rule_from_saved_scores(tmp_path, capsys):
    """A hand-made scored run folder (no training): `entropi select --rule` re-picks from the
    stored scores and cached features and records the rule, its ties and its confidence."""
    from entropi.host import cli
    from entropi.host.run.config import config_from_dict
    from entropi.host.run.rundir import open_run

    cfg = config_from_dict(
        {
            "name": "t",
            "device": "cpu",
            "data": {"source": "cifar10", "target": "cifar100"},
            "select": {"resamples": 30, "criterion": "subset_entropy", "rule": "argmax"},
        }
    )
    cfg, run = open_run(cfg, tmp_path / "r")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    base = rng.normal(size=(200, 16)) + 1.5 * np.eye(16)[y]
    feats = [base, base + 0.01 * rng.normal(size=base.shape), base * (np.arange(16) < 4)]
    run.write_array(run.feature_labels, y.astype(np.int64))
    for i, f in enumerate(feats):
        run.rung(i).parent.mkdir(parents=True, exist_ok=True)
        run.rung(i).write_bytes(b"")  # select counts the rung files only
        score = selection.score_rung(f, y, cfg) | {
            "index": i,
            "alpha": 0.5**i,
            "nnz": 1000 >> i,
            "source_accuracy": 0.5,
            "probe_accuracy": [0.40, 0.41, 0.30][i],
            "probe_accuracy_std": 0.01,
            "probe_accuracy_se": 0.03,
        }
        assert set(score["criterion_seconds"]) == set(score["criteria"])
        run.write_json(run.score(i), score)
        run.write_array(run.features(i), f.astype(np.float32))
    assert cli.main(["select", str(run.root)]) == 0
    first = json.loads(run.results.read_text())
    assert first["rule"] == "argmax" and first["selected_index"] == 0
    assert cli.main(["select", str(run.root), "--rule", "smallest_tied"]) == 0
    out = capsys.readouterr().out
    assert "by subset_entropy (smallest_tied)" in out and "test-set SE 3.00" in out
    again = json.loads(run.results.read_text())
    assert again["rule"] == "smallest_tied" and again["selection_ties"]["tied"] == [0, 1]
    assert again["selected_index"] == 1  # rung 1 ties rung 0 (0.01 noise) and is smaller
    assert again["selection_confidence"] == pytest.approx(
        again["selection_resamples"]["wins"][1] / again["selection_resamples"]["resamples"]
    )
    assert cli.main(["select", str(run.root), "--rule", "nope"]) == 2
    assert "not a known selection rule" in capsys.readouterr().err


def test_plot_draws_both_tie_bands_and_survives_an_unmeasured_se(tmp_path):
    from entropi.host.run.plot import plot_entropy_vs_alpha

    rungs = _rungs([10.0, 9.9, 7.0])
    for r, se in zip(rungs, [0.01, float("nan"), 0.01], strict=True):
        r |= {"alpha": 0.5 ** r["index"], "probe_accuracy_se": se, "n": 100}
    results = {
        "rungs": rungs,
        "criterion": "subset_entropy",
        "rule": "smallest_tied",
        "selection_ties": {
            "best_index": 0,
            "tied": [0, 1],
            "paired_se": [0, 0.2, 0.3],
            "tie_se": 1,
        },
        "selected_index": 1,
        "best_probe_index": 0,
        "regret": 0.0,
        "probe_se": float("nan"),
        "arch": "smallnet",
        "source": "a",
        "target": "b",
    }
    assert plot_entropy_vs_alpha(results, tmp_path / "p.png").stat().st_size > 1000


def test_costs_and_the_share_of_regrets_beyond_one_se_are_summarized():
    from entropi.host.selection.study import _aggregate

    rungs = _rungs([1.0, 2.0])
    for r, t in zip(rungs, [0.25, 0.5], strict=True):
        r["criterion_seconds"] = {"subset_entropy": t}
    assert selection.criteria_summary(rungs)["subset_entropy"]["seconds"] == 0.75
    del rungs[0]["criterion_seconds"]  # scored by an entropi that did not time it
    assert selection.criteria_summary(rungs)["subset_entropy"]["seconds"] is None
    for junk in ([], {"subset_entropy": "1"}, {"subset_entropy": -1.0}, {"subset_entropy": True}):
        rungs[0]["criterion_seconds"] = junk  # damaged: informational, read as not timed
        assert selection.criteria_summary(rungs)["subset_entropy"]["seconds"] is None
    crit = {"kendall_tau": 0.5, "weighted_tau": 0.5, "hit": False, "seconds": 1.0}
    crit |= {"peak_distance_log10_alpha": 0.3}
    pairs = [
        {"probe_se": 0.01, "criteria": {"knn": crit | {"regret": 0.02}}},  # 2 points > 1 SE
        {"probe_se": 0.01, "criteria": {"knn": crit | {"regret": 0.005}}},  # within it
        {"probe_se": None, "criteria": {"knn": crit | {"regret": 0.5}}},  # SE not measured
    ]
    per = _aggregate(pairs)["knn"]
    assert per["share_above_se"] == 0.5 and per["seconds"]["mean"] == 1.0


def test_nan_scores_are_undefined_as_none_is():
    """A stored NaN (a criterion that returned NaN) is undefined: never the best, never tied,
    never picked, whatever its size; a NaN resample column of a defined rung only drops those
    resamples from that rung's SE."""
    nan = float("nan")
    values = [5.0, nan, 4.99, nan]  # rung 3, the smallest, is undefined
    boot = _boot([5.0, 5.0, 4.99, 5.0], noise=0.01)
    boot[:, [1, 3]] = np.nan
    boot[:7, 2] = np.nan  # rung 2 undefined on 7 resamples: its SE from the other 193
    got = selection.choose_rung(_rungs(values), "subset_entropy", "smallest_tied", boot)
    assert got["best_index"] == 0 and got["tied"] == [0, 2] and got["selected_index"] == 2
    assert got["paired_se"][1] is None and got["paired_se"][3] is None
    assert np.isfinite(got["paired_se"][2])
    argmax = selection.choose_rung(_rungs([nan, 1.0, 2.0]), "subset_entropy", "argmax", None)
    assert argmax["selected_index"] == 2  # NaN first does not win


def test_rule_on_features_whose_answer_is_known():
    """End to end through the paired bootstrap of a real criterion (cv_probe): a rung whose
    features equal the best one's ties it exactly, so smallest_tied takes the smaller; a rung
    that lost the class signal is clearly worse and is never taken, even as the smallest."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 40)
    good = rng.normal(size=(160, 8)) + 2.0 * np.eye(8)[y]
    lost = rng.normal(size=(160, 8))  # no class signal left
    opts = CriterionOptions(seed=0)

    def pick(feats, rule):
        rungs = [
            {"index": i, "nnz": 1000 >> i, "criteria": compute_criteria(f, y, ["cv_probe"], opts)}
            for i, f in enumerate(feats)
        ]
        boot = selection.bootstrap_values(
            lambda i: feats[i], y, len(feats), "cv_probe", opts, resamples=10, seed=0
        )
        return selection.choose_rung(rungs, "cv_probe", rule, boot)

    tied = pick([good, good.copy(), lost], "smallest_tied")
    assert tied["best_index"] == 0 and tied["tied"] == [0, 1] and tied["selected_index"] == 1
    assert tied["confidence"] == 1.0  # equal on every resample: always tied
    assert pick([good, good.copy(), lost], "argmax")["selected_index"] == 0  # the denser
    worse = pick([lost, good, lost], "smallest_tied")
    assert worse["tied"] == [1] and worse["selected_index"] == 1
