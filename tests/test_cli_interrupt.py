"""Ctrl-C in the host CLI: one line that names the user's own folder, exit 130."""

from __future__ import annotations

import pytest

from entropi.host import cli


@pytest.mark.parametrize(
    "argv, said",
    [
        (["run", "quickstart", "--out", "my-run"], "entropi run --out my-run --resume"),
        (["select", "some-run"], "run the command again"),
    ],
)
def test_an_interrupt_names_the_real_folder(monkeypatch, capsys, argv, said):
    def interrupted(a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"_cmd_{argv[0]}", interrupted)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0] and "RUNDIR" not in err[0]
