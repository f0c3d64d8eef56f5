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
    assert "levels must be an integer >= 1" in capsys.readouterr().err
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
