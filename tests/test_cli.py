"""The `entropi` CLI: --help for every subcommand, the entropy command, clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from entropi.host import cli


def subcommands():
    _, table = cli._build_parser()
    return sorted(table)


@pytest.mark.parametrize("name", subcommands())
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    assert "usage: entropi" in capsys.readouterr().out


def test_entropy_command(tmp_path, capsys):
    feats = np.arange(8, dtype=np.float32).reshape(8, 1)
    np.save(tmp_path / "f.npy", feats)
    assert cli.main(["entropy", str(tmp_path / "f.npy"), "--levels", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["entropy"] == pytest.approx(math.log(8))
    assert (out["n"], out["dim"], out["levels"]) == (8, 1, 8)
    assert out["per_unit_bound"] >= out["entropy"]


@pytest.mark.parametrize(
    "array, match",
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.zeros((2, 3, 4)), "2-D"),
    ],
)
def test_entropy_command_bad_features(tmp_path, capsys, array, match):
    np.save(tmp_path / "f.npy", array)
    assert cli.main(["entropy", str(tmp_path / "f.npy")]) == 2
    assert match in capsys.readouterr().err


def test_entropy_command_bad_levels_and_file(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.zeros((3, 2)))
    assert cli.main(["entropy", str(tmp_path / "f.npy"), "--levels", "0"]) == 2
    assert "levels must be an integer in [2, 1024]" in capsys.readouterr().err
    (tmp_path / "g.npy").write_bytes(b"garbage")
    assert cli.main(["entropy", str(tmp_path / "g.npy")]) == 2
    assert "not a .npy" in capsys.readouterr().err
    assert cli.main(["entropy", str(tmp_path / "missing.npy")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_run_unknown_config(capsys):
    assert cli.main(["run", "no-such-config"]) == 2
    assert "shipped: " in capsys.readouterr().err


def test_select_on_non_run(tmp_path, capsys):
    assert cli.main(["select", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_run_needs_config_or_resume_out(capsys):
    assert cli.main(["run", "--resume"]) == 2
    assert "a CONFIG is needed" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("entropi: error: ")]
    assert len(errors) == 1, captured.err  # other lines are the run's timestamped progress log
    assert "Traceback" not in captured.err
    assert captured.err.strip().splitlines()[-1] == errors[0]
    return errors[0]


def test_unknown_or_absent_device_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'device = "cuda"\n[data]\nroot = "{tmp_path}"\n')
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "no CUDA device" in _one_line_error(capsys)
    cfg.write_text('device = "tpu"\n')
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r2")]) == 2
    assert "device must be 'auto', 'cpu' or 'cuda'" in _one_line_error(capsys)


def test_missing_dataset_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'device = "cpu"\n[data]\nroot = "{tmp_path / "nothing"}"\n')
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "cifar10" in _one_line_error(capsys)


def test_bad_paths_are_one_line(tmp_path, capsys):
    assert cli.main(["prune", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in _one_line_error(capsys)
    assert cli.main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    _one_line_error(capsys)


def test_cli_defaults_are_the_dataclass_defaults():
    """One default per parameter: the CLI's flags take theirs from the code they call."""
    import inspect

    from entropi.benchmarks.bench import run_bench
    from entropi.benchmarks.bench_defaults import DEFAULTS
    from entropi.host.run.config import EntropyConfig
    from entropi.host.selection.entropy import DEFAULT_LEVELS, state_entropy

    parser, _ = cli._build_parser()
    args = parser.parse_args(["entropy", "f.npy"])
    assert args.levels == EntropyConfig().levels == DEFAULT_LEVELS
    assert inspect.signature(state_entropy).parameters["levels"].default == DEFAULT_LEVELS
    # flags left out of `entropi bench` are not passed, so run_bench's own defaults apply
    bench = parser.parse_args(["bench", "--out", "o"])
    assert all(getattr(bench, k) is None for k in ("archs", "classes", "batch", "alpha", "device"))
    for name, default in DEFAULTS.items():
        assert inspect.signature(run_bench).parameters[name].default == default


def test_run_with_a_bad_override_is_one_line(tmp_path, capsys):
    args = ["run", "quickstart", "--out", str(tmp_path / "r"), "--set", "pretrain.epochs=0"]
    assert cli.main(args) == 2
    assert "pretrain.epochs must be an integer >= 1" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()  # refused before anything was written
    assert cli.main(["run", "--resume", "--out", str(tmp_path), "--set", "seed=1"]) == 2
    assert "need a CONFIG" in _one_line_error(capsys)
