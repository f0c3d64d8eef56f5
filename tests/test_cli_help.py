"""Every `entropi` subcommand's `--help`: each argument says what it is (issue 23, item 14)."""

from __future__ import annotations

import argparse

import pytest

from entropi.host import cli


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """``(command, parser)`` of every subcommand, nested ones (``analyze cka``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _subparsers(sub, f"{prefix}{name} ")


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    parser, _ = cli._build_parser()
    return list(_subparsers(parser))


def test_the_walk_finds_every_subcommand():
    names = {name for name, _ in _commands()}
    assert {"run", "pretrain", "probe", "select", "export", "bundle", "bench"} <= names


@pytest.mark.parametrize("command", [name for name, _ in _commands()])
def test_every_argument_has_help(command, capsys):
    parser = dict(_commands())[command]
    assert parser.description, f"`entropi {command}` has no description"
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._SubParsersAction)
        and (not a.help or a.help == argparse.SUPPRESS or not a.help.strip())
    ]
    assert not missing, f"`entropi {command}`: arguments without help: {missing}"
    with pytest.raises(SystemExit) as e:  # and --help prints without an error
        cli.main([*command.split(), "--help"])
    assert e.value.code == 0 and "usage: entropi" in capsys.readouterr().out


def test_run_description_names_every_stage():
    text = dict(_commands())["run"].description
    for stage in ("pretrain", "prune", "score", "select", "export", "bundle", "device"):
        assert stage in text


def test_probe_set_example_is_one_probe_accepts(tmp_path):
    """The `--set` example in `entropi probe --help` is a key a ladder reuse may change."""
    import re

    from entropi.host.run.config import apply_overrides, config_from_dict
    from entropi.host.run.stages import LADDER_SECTIONS

    helps = [a.help for a in dict(_commands())["probe"]._actions if "--set" in a.option_strings]
    example = re.search(r"e\.g\. (\S+)", helps[0]).group(1)
    key = example.split("=", 1)[0]
    assert key.split(".")[0] not in (*LADDER_SECTIONS, "seed") and key != "data.source"
    config_from_dict(apply_overrides(config_from_dict({}).to_dict(), [example]))  # valid


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-5KB", "--flash: invalid size '-5KB': must be > 0 bytes"),
        ("1.5", "--flash: invalid size '1.5': bytes must be a whole number"),
        ("1.5B", "bytes must be a whole number"),
        ("lots", "--flash: invalid size 'lots'"),
    ],
)
def test_bad_sizes_are_one_clear_line(tmp_path, capsys, value, message):
    """`--flash -5KB` reaches the size check (not argparse's "expected one argument"), and a
    fractional number of bytes is refused, not rounded down to 1 B."""
    assert cli.main(["select", str(tmp_path), "--flash", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_dash_values_join_only_after_a_long_option():
    from entropi.common.cliargs import attach_dash_values

    assert attach_dash_values(["select", "R", "--flash", "-5KB", "--ram", "1MB"]) == [
        "select",
        "R",
        "--flash=-5KB",
        "--ram",
        "1MB",
    ]
    assert attach_dash_values(["--flash=1KB", "-5"]) == ["--flash=1KB", "-5"]
    assert attach_dash_values(["--", "-5KB"]) == ["--", "-5KB"]
    assert attach_dash_values(["--resume", "-h"]) == ["--resume", "-h"]


def test_device_budget_with_a_dash_is_one_clear_line(tmp_path, capsys):
    """The device CLI's sizes go through the same check: `--budget -5KB` names the size."""
    from entropi.device.cli import main as device_main

    argv = ["train", "--bundle", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path)]
    assert device_main([*argv, "--budget", "-5KB"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid size '-5KB': must be > 0 bytes" in err, err
