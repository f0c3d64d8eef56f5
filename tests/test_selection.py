"""The selection rule over stored scores, the criteria summary (against hand-computed taus and
scipy), and the bootstrap selection confidence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from entropi.host.selection import rules as selection
from entropi.host.selection.criteria import CRITERIA, CriterionError, CriterionOptions


def _rungs(probe, **criteria):
    return [
        {"index": i, "probe_accuracy": p, "criteria": {k: v[i] for k, v in criteria.items()}}
        for i, p in enumerate(probe)
    ]


def _kendall_by_hand(x, y):
    """tau-a from concordant and discordant pairs (no ties in the data used here)."""
    c = d = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        c += s > 0
        d += s < 0
    return (c - d) / (c + d)


def test_lower_is_better_criteria_are_argmin():
    assert not CRITERIA["nc1"].higher_is_better
    rungs = _rungs([0.1, 0.3, 0.2], nc1=[5.0, 1.0, 3.0], entropy=[1.0, 2.0, 3.0])
    assert selection.select_rung(rungs, "nc1") == 1
    assert selection.select_rung(rungs, "entropy") == 2
    assert selection.selection_rule("nc1").startswith("argmin nc1")


def test_ties_go_to_the_denser_rung_and_nan_never_wins():
    rungs = _rungs([0.1, 0.2, 0.3, 0.4], entropy=[1.0, 3.0, 3.0, float("nan")])
    assert selection.select_rung(rungs, "entropy") == 1


def test_old_score_files_still_select_by_entropy():
    rungs = [{"index": 0, "entropy": 1.0}, {"index": 1, "entropy": 2.0}]
    assert selection.select_rung(rungs, "entropy") == 1
    with pytest.raises(CriterionError, match="no stored 'knn'"):
        selection.select_rung(rungs, "knn")
    with pytest.raises(CriterionError, match="unknown criterion"):
        selection.select_rung(rungs, "nope")


def test_criteria_summary_against_hand_computed_values():
    probe = [0.30, 0.34, 0.33, 0.25, 0.10]
    ent = [1.0, 2.0, 3.0, 4.0, 5.0]  # anti-correlated with the probe beyond rung 1
    nc1 = [3.0, 1.0, 2.0, 4.0, 9.0]  # lower is better: ranks the rungs exactly like the probe
    s = selection.criteria_summary(_rungs(probe, entropy=ent, nc1=nc1))
    assert s["entropy"]["selected_index"] == 4
    assert s["entropy"]["regret"] == pytest.approx(0.34 - 0.10)
    assert s["entropy"]["kendall_tau"] == pytest.approx(_kendall_by_hand(ent, probe))
    assert s["nc1"]["selected_index"] == 1 and s["nc1"]["regret"] == 0.0
    assert s["nc1"]["kendall_tau"] == pytest.approx(1.0)
    assert s["nc1"]["weighted_tau"] == pytest.approx(1.0)
    from scipy.stats import weightedtau

    assert s["entropy"]["weighted_tau"] == pytest.approx(weightedtau(ent, probe).statistic)
    assert s["nc1"]["higher_is_better"] is False and s["nc1"]["needs_labels"] is True


def test_constant_criterion_has_no_tau():
    s = selection.criteria_summary(_rungs([0.1, 0.2], entropy=[3.0, 3.0]))
    assert s["entropy"]["kendall_tau"] is None and s["entropy"]["selected_index"] == 0


def test_selection_confidence_is_one_when_a_rung_dominates_and_splits_on_equal_rungs():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 8))
    labels = rng.integers(0, 4, 200)
    # rung 1 is rung 0 with half its units constant: lower von Neumann entropy on any resample
    low = base.copy()
    low[:, 4:] = 1.0
    feats = [base, low]
    opts = CriterionOptions()
    out = selection.selection_confidence(
        lambda i: feats[i], labels, 2, "von_neumann", opts, resamples=30, seed=0
    )
    assert out["wins"] == [30, 0] and out["resamples"] == 30 and len(out["picks"]) == 30
    # two identical rungs: the tie rule gives every resample to the denser one
    same = selection.selection_confidence(
        lambda i: base, labels, 2, "von_neumann", opts, resamples=10, seed=0
    )
    assert same["wins"] == [10, 0]
    # a pick that depends on the sample: two rungs of independent noise split the resamples
    other = rng.normal(size=(200, 8))
    split = selection.selection_confidence(
        lambda i: [base, other][i], labels, 2, "von_neumann", opts, resamples=40, seed=1
    )
    assert 0 < split["wins"][0] < 40


def test_bootstrap_indices_are_seeded_and_shared():
    a = selection.bootstrap_indices(50, 5, seed=3)
    assert a.shape == (5, 50) and (a == selection.bootstrap_indices(50, 5, seed=3)).all()
    assert a.min() >= 0 and a.max() < 50
    assert not (a == selection.bootstrap_indices(50, 5, seed=4)).all()


def test_criteria_cli_prints_every_criterion_the_inputs_allow(tmp_path, capsys):
    import json

    from entropi.host import cli
    from entropi.host.selection.criteria import compute_criteria

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    x = rng.normal(size=(120, 16)) + 2.0 * np.eye(16)[y]
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    assert cli.main(["criteria", str(tmp_path / "f.npy")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 120 and out["dim"] == 16
    assert set(out["criteria"]) == {n for n, c in CRITERIA.items() if not c.needs_labels}
    assert cli.main(["criteria", str(tmp_path / "f.npy"), "--labels", str(tmp_path / "y.npy")]) == 0
    out = json.loads(capsys.readouterr().out)["criteria"]
    assert set(out) == set(CRITERIA)
    ref = compute_criteria(x.astype(np.float32), y)
    for name, v in out.items():
        assert v["value"] == pytest.approx(ref[name], rel=1e-12)
        assert v["higher_is_better"] == CRITERIA[name].higher_is_better
    args = ["criteria", str(tmp_path / "f.npy"), "--criterion", "nc1"]
    assert cli.main(args) == 2 and "needs --labels" in capsys.readouterr().err
    assert cli.main([*args, "--labels", str(tmp_path / "y.npy")]) == 0
    assert set(json.loads(capsys.readouterr().out)["criteria"]) == {"nc1"}
    np.save(tmp_path / "bad.npy", np.full((5, 3), np.nan))
    assert cli.main(["criteria", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("NaN" in err or "finite" in err)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    assert cli.main(["criteria", str(tmp_path / "junk.npy")]) == 2
    assert "not a .npy" in capsys.readouterr().err
    assert cli.main(["criteria", "--list"]) == 0
    assert "logme" in capsys.readouterr().out


def test_a_dead_rung_gets_no_score_and_never_wins():
    """All-zero features (a rung whose last layer was pruned away): criteria that are undefined
    there are stored as None with the reason; the rung ranks last for them."""
    from entropi.host.run.config import RunConfig

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    live = rng.normal(size=(60, 8)) + np.eye(8)[y] * 3
    dead = np.zeros((60, 8))
    cfg = RunConfig()
    s_live, s_dead = (selection.score_rung(f, y, cfg) for f in (live, dead))
    assert "criteria_undefined" not in s_live
    assert s_dead["criteria"]["von_neumann"] is None
    assert "zero norm" in s_dead["criteria_undefined"]["von_neumann"]
    rungs = [
        {"index": 0, "probe_accuracy": 0.9, **s_live},
        {"index": 1, "probe_accuracy": 0.3, **s_dead},
    ]
    assert selection.select_rung(rungs, "von_neumann") == 0
    assert selection.criteria_summary(rungs)["von_neumann"]["kendall_tau"] == pytest.approx(1.0)
    conf = selection.selection_confidence(
        lambda i: [live, dead][i], y, 2, "von_neumann", CriterionOptions(), resamples=5, seed=0
    )
    assert conf["wins"] == [5, 0] and conf["resamples_dropped"] == 0
    with pytest.raises(CriterionError, match="NaN|finite"):
        selection.score_rung(np.full((60, 8), np.nan), y, cfg)
