"""Hostile input, round two (issue 22), on the host's run folder: a resolved config that reads
back, a seed that fits torch, training that diverges, and a run folder whose files were damaged
or planted (a gap in the ladder, an edited config, corrupt scores and features, rung records of
the wrong shape, links to folders elsewhere). Each is one clear line, never a traceback or a
wrong rung."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropi.host.run.config import (
    ConfigError,
    RunConfig,
    _toml_string,
    config_from_dict,
    config_to_toml,
    load_config,
)

# --- D3: the resolved config.toml reads back, whatever the strings hold -----------------------


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_toml_string_round_trips_any_text(s):
    assert tomllib.loads("v = " + _toml_string(s))["v"] == s


def test_a_name_with_a_newline_reads_back_from_the_resolved_config(tmp_path):
    cfg = config_from_dict({"name": "mini\nline", "data": {"roots": ['/a"\\\x00\x7fb']}})
    path = tmp_path / "config.toml"
    path.write_text(config_to_toml(cfg))
    back = load_config(path)
    assert back == cfg and back.digest() == cfg.digest()


def test_a_string_with_a_lone_surrogate_is_refused_at_load():
    with pytest.raises(ConfigError, match="name must be a string"):
        config_from_dict({"name": "a\udc80"})


# --- D4: a seed torch cannot take is refused at load, before any folder exists --------------------


@pytest.mark.parametrize("seed", [2**63, 2**64, 18446744073709551616])
def test_a_seed_beyond_64_bits_is_refused_at_load(seed):
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 9223372036854775807\]"):
        config_from_dict({"seed": seed})


def test_the_largest_seed_seeds_torch_for_every_rung():
    import torch

    cfg = RunConfig(seed=2**63 - 1)
    torch.Generator().manual_seed(cfg.seed + 64)  # a rung's seed


# --- D7: a diverging training is an EntropiError; an init file must be finite ----------------


def _smallnet_with_nan():
    import torch

    from entropi.host.ladder.models import build_model

    torch.manual_seed(0)
    model = build_model("smallnet", 3)
    with torch.no_grad():
        next(iter(model.encoder.parameters())).view(-1)[0] = float("nan")
    return model


def test_a_nan_weight_makes_training_fail_with_an_entropi_error():
    import torch

    from entropi.common.errors import EntropiError
    from entropi.host.ladder.train import TrainingDivergedError, train
    from entropi.host.run.config import PretrainConfig

    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    y = torch.arange(16) % 3
    cfg = PretrainConfig(arch="smallnet", epochs=1, batch_size=8)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan .*lower the learning rate"):
        train(_smallnet_with_nan(), x, y, cfg, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert issubclass(TrainingDivergedError, EntropiError)


def test_an_init_file_with_nan_weights_is_refused(tmp_path):
    import torch

    from entropi.host.ladder.init_state import load_init
    from entropi.host.ladder.models import build_encoder
    from entropi.host.ladder.rungs import CheckpointError

    path = tmp_path / "init.pt"
    torch.save(_smallnet_with_nan().encoder.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"init.pt: 0.weight holds NaN or infinite values"):
        load_init(build_encoder("smallnet"), "smallnet", path)


# --- a run folder made without training: rung files, scores, features, as stage_score writes --


def fake_run(root, n_rungs: int = 3, **kwargs):
    """A scored run folder made without training (:func:`fuzz.scored_run`: random features of
    24 samples, rungs of an untrained smallnet); ``(cfg, run)``, the lock released."""
    from entropi.benchmarks.fuzz import scored_run

    return scored_run(root, n_rungs, **kwargs)


def _select(capsys, root, *extra) -> tuple[int, str]:
    from entropi.host.cli import main

    rc = main(["select", str(root), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.fixture(scope="module")
def _scored(tmp_path_factory):
    return fake_run(tmp_path_factory.mktemp("scored") / "run")


@pytest.fixture
def run_folder(_scored, tmp_path):
    """A copy of the module's scored run folder: ``(cfg, run)``."""
    import shutil

    from entropi.host.run.rundir import RunDir

    cfg, run = _scored
    shutil.copytree(run.root, tmp_path / "run")
    return cfg, RunDir(tmp_path / "run")


def test_the_fake_run_selects(run_folder, capsys):
    cfg, run = run_folder
    rc, last = _select(capsys, run.root)
    assert rc == 0 and "select: rung" in last and "points" in last


# --- D12: rungs are identified by their index; a gap is named, never the wrong rung ----------


def test_select_with_a_missing_score_file_names_the_rung(run_folder, capsys):
    import json

    _, run = run_folder
    run.score(1).unlink()
    rc, line = _select(capsys, run.root, "--criterion", "nc1")
    assert rc == 2 and line.startswith("entropi: error: rung 1 has no scores")
    assert "rescores it" in line and not run.results.exists()
    assert not (run.root / "export").exists()
    # the rung is rescored on --resume: with its scores back, the pick is by index
    run.write_json(run.score(1), json.loads(json.dumps({**_score_of(run, 2), "index": 1})))
    assert _select(capsys, run.root)[0] == 0


def _score_of(run, i):
    import json

    return json.loads(run.score(i).read_text())


def test_a_gap_in_the_ladder_is_named_by_select_export_and_probe(run_folder, capsys):
    from entropi.host.ladder.rungs import CheckpointError, resolve_rung

    cfg, run = run_folder
    run.rung(1).unlink()
    rc, line = _select(capsys, run.root)
    assert rc == 2 and "ladder has a gap: rung file(s) rungs/rung_001.pt are missing" in line
    assert "present: rungs 0, 2" in line
    with pytest.raises(CheckpointError, match="rung_001.pt are missing"):
        resolve_rung(run.root, 2)


def test_a_score_file_of_another_rung_is_refused(run_folder, capsys):
    _, run = run_folder
    run.score(2).write_text(run.score(1).read_text())  # rung 1's scores under rung 2's name
    rc, line = _select(capsys, run.root)
    assert rc == 2 and "rung_002.json: its index is 1, not 2" in line


# --- D13: a hand-edited config.toml is refused on --resume ------------------------------------


def test_a_hand_edited_config_is_refused_on_resume(run_folder):
    from entropi.host.run.rundir import open_run

    _, run = run_folder
    text = run.config.read_text()
    run.config.write_text(text.replace("keep_per_round = 0.5", "keep_per_round = 0.49"))
    with pytest.raises(ConfigError, match="config.toml is not the config this run was made with"):
        open_run(None, run.root, resume=True)
    run.config.write_text(text)  # undone: resumes
    open_run(None, run.root, resume=True)[1].lock.release()


def test_a_config_with_no_run_json_resumes_only_before_any_rung(tmp_path):
    from entropi.host.run.rundir import open_run

    cfg, run = fake_run(tmp_path / "run", 1)
    run.info.unlink()
    with pytest.raises(ConfigError, match="run.json records no config_sha256"):
        open_run(None, run.root, resume=True)
    run.rung(0).unlink()
    open_run(None, run.root, resume=True)[1].lock.release()


# --- D11: every damaged file of a run folder is one line from `entropi select` ----------------


def _npy_bytes(array, allow_pickle=False) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _damage(run, case: str) -> str:
    """Damage one file of ``run`` as ``case`` says; return what the error line must say."""
    import json
    import os

    import numpy as np

    feats = run.features(1)
    table = {
        "score not json": (run.score(1), b"{", "rung_001.json is not valid JSON"),
        "score a list": (run.score(1), b"[]", "rung_001.json holds a JSON list"),
        "score probe a string": (
            run.score(1),
            json.dumps({**_score_of(run, 1), "probe_accuracy": "high"}).encode(),
            "probe_accuracy is 'high', not a finite number",
        ),
        "score accuracy 7": (
            run.score(1),
            json.dumps({**_score_of(run, 1), "probe_accuracy": 7}).encode(),
            "probe_accuracy is 7, outside [0, 1]",
        ),
        "score criteria a list": (
            run.score(1),
            json.dumps({**_score_of(run, 1), "criteria": [1]}).encode(),
            "criteria are not a table",
        ),
        "score n differs": (
            run.score(1),
            json.dumps({**_score_of(run, 1), "n": 5}).encode(),
            "computed on different targets (n = 5, 24 samples)",
        ),
        "features garbage": (feats, b"\x93NUMPY garbage", "rung_001.npy is not a readable .npy"),
        "features empty": (feats, b"", "rung_001.npy is not a readable .npy"),
        "features 1-D": (feats, _npy_bytes(np.zeros(24, np.float32)), "has shape (24,)"),
        "features wrong rows": (feats, _npy_bytes(np.zeros((5, 8), np.float32)), "(5, 8)"),
        "features object": (
            feats,
            _npy_bytes(np.array([{"a": 1}] * 24, dtype=object), allow_pickle=True),
            "rung_001.npy is not a readable .npy",
        ),
        "features strings": (feats, _npy_bytes(np.array(["x"] * 24)), "not float numbers"),
        "features nan": (
            feats,
            _npy_bytes(np.full((24, 8), np.nan, np.float32)),
            "holds NaN or infinite values",
        ),
        "features truncated": (
            feats,
            _npy_bytes(np.zeros((24, 8), np.float32))[:200],
            "rung_001.npy is not a readable .npy",
        ),
        "labels too short": (
            run.feature_labels,
            _npy_bytes(np.arange(20) % 3),
            "labels.npy has shape (20,), expected (24,)",
        ),
        "labels float": (run.feature_labels, _npy_bytes(np.zeros(24)), "not integer numbers"),
        "labels negative": (
            run.feature_labels,
            _npy_bytes(-np.ones(24, np.int64)),
            "holds a negative label",
        ),
        "timings a list": (run.timings, b"[1]", "timings.json holds a JSON list"),
        "timings a string": (
            run.timings,
            b'{"score": "x"}',
            "stage 'score' has 'x', not a number of seconds",
        ),
        "run.json not json": (run.info, b"\xff{", "run.json is not valid JSON"),
        "run.json no invocations": (
            run.info,
            json.dumps({**json.loads(run.info.read_text()), "invocations": 3}).encode(),
            "no list of invocations",
        ),
        "config garbage": (run.config, b"[[[", "config.toml does not validate"),
    }
    if case == "features fifo":
        feats.unlink()
        os.mkfifo(feats)
        return "rung_001.npy is not a regular file"
    path, data, message = table[case]
    path.write_bytes(data)
    return message


DAMAGE = [
    "score not json", "score a list", "score probe a string", "score accuracy 7",
    "score criteria a list", "score n differs", "features garbage", "features empty",
    "features 1-D", "features wrong rows", "features object", "features strings",
    "features nan", "features truncated", "features fifo", "labels too short", "labels float",
    "labels negative", "timings a list", "timings a string", "run.json not json",
    "run.json no invocations", "config garbage",
]  # fmt: skip


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_run_folder_file_is_one_line_from_select(run_folder, capsys, case):
    _, run = run_folder
    (run.root / "timings.json").write_text('{"score": 1.0}')
    message = _damage(run, case)
    rc, line = _select(capsys, run.root)
    assert rc == 2 and line.startswith("entropi: error: ") and message in line, line
    assert not run.results.exists()


def test_labels_of_the_wrong_length_never_give_a_confidence(run_folder):
    """The case of the campaign: a shorter labels.npy gave confidence 1.0 with no error."""
    import numpy as np

    from entropi.device.errors import DataError
    from entropi.host.run.stages import select

    cfg, run = run_folder
    run.write_array(run.feature_labels, np.arange(23) % 3)
    with pytest.raises(DataError, match="labels.npy has shape"):
        select(cfg, run)


# --- D5: rung records are checked against their architecture before anything is built ---------


def _payload(run, i=0):
    import torch

    return torch.load(run.rung(i), weights_only=True)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_source_classes": 10**9}, "num_source_classes is 1000000000 for 2 source_classes"),
        ({"num_source_classes": 10**9, "source_classes": []}, "the source head is"),
        ({"feature_dim": 10**12}, "feature_dim is 1000000000000, not in"),
        ({"input_shape": [3, 8192, 8192]}, "input_shape is [3, 8192, 8192]"),
        ({"nnz": 10**6}, "nnz is 1000000, not a count of at most n_prunable = 100"),
        ({"alpha": float("nan")}, "alpha is nan"),
        ({"normalization": {"mean": [0.5], "std": [0.2]}}, "normalization must hold 3"),
        ({"normalization": {"mean": [0.5] * 3, "std": [0.0] * 3}}, "positive stds"),
        ({"arch": 7}, "arch is 7"),
        ({"source_accuracy": 2.0}, "source_accuracy is 2.0"),
    ],
)
def test_a_rung_record_out_of_range_is_refused(run_folder, change, message):
    import torch

    from entropi.export.rung import CheckpointError, load_rung_file

    _, run = run_folder
    torch.save({**_payload(run), **change}, run.rung(0))
    with pytest.raises(CheckpointError) as e:
        load_rung_file(run.rung(0), 0)
    assert "rung_000.pt: " in str(e.value) and message in str(e.value)


def test_rung_tensors_of_the_wrong_shape_or_nan_are_refused(run_folder):
    import torch

    from entropi.export.rung import CheckpointError, load_rung_file
    from entropi.host.ladder.rungs import classifier_from_rung

    _, run = run_folder
    good = _payload(run)
    name = next(iter(good["masks"]))
    cases = [
        ({"masks": {**good["masks"], name: torch.ones(3, dtype=torch.bool)}}, "mask '0.weight' is"),
        ({"masks": {**good["masks"], name: good["masks"][name].float()}}, "torch.float32"),
        ({"encoder": {**good["encoder"], name: good["encoder"][name] * float("nan")}}, "NaN"),
        ({"head": {"weight": torch.zeros(2, 256)}}, "the source head is"),
        ({"masks": {**good["masks"], name: "x"}}, "masks holds '0.weight', which is not a"),
    ]
    for change, message in cases:
        torch.save({**good, **change}, run.rung(0))
        with pytest.raises(CheckpointError, match=message):
            load_rung_file(run.rung(0), 0)
    bad = load_rung_file(run.rung(1), 1)
    bad.masks["head.weight"] = torch.ones(2, 256, dtype=torch.bool)
    bad.encoder["head.weight"] = torch.zeros(2, 256)
    with pytest.raises(CheckpointError, match="encoder does not match"):
        classifier_from_rung(bad)
    ok = load_rung_file(run.rung(1), 1)
    ok.masks["1.weight"] = torch.ones_like(ok.encoder["1.weight"], dtype=torch.bool)  # a BN
    with pytest.raises(CheckpointError, match="mask '1.weight' masks no weight"):
        classifier_from_rung(ok)


@pytest.mark.parametrize("value", [1.7, True, "1", None, [1]])
def test_a_selected_index_that_is_no_integer_names_no_rung(run_folder, value):
    from entropi.host.ladder.rungs import CheckpointError, resolve_rung

    _, run = run_folder
    run.write_json(run.results, {"selected_index": value})
    with pytest.raises(CheckpointError, match="names no selected rung"):
        resolve_rung(run.root, "selected")
    run.write_json(run.results, {"selected_index": 2})
    assert resolve_rung(run.root, "selected") == 2


@pytest.mark.parametrize(
    "raw, message",
    [({"select": {"resamples": 10**12}}, r"select.resamples must be in \[0, 10000\]"),
     ({"probe": {"repeats": 10**9}}, r"probe.repeats must be in \[1, 1000\]")],
)  # fmt: skip
def test_counts_that_would_exhaust_memory_or_time_are_refused_at_load(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
