"""One CLI style (issue 24, item 5): the flags of `entropi` and `entropi-device` that set a
config field are generated from the config dataclasses (entropi.common.cliargs), so a default
is written once, in the dataclass.

A generated flag either has its field's default, or is *unset* (argparse default None): the
run's own config, or the command (e.g. `bundle --form`: the form `entropi select` picked), decides,
and its help says which. Every other flag is listed in HAND_WRITTEN with the reason it is not a
config field. ``flag_problems`` checks a parser against the dataclasses, and is itself tested on
deliberately wrong mappings.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from dataclasses import dataclass

import pytest

from entropi.common.cliargs import (
    FieldFlag,
    LazyChoices,
    add_dataclass_arguments,
    add_field_argument,
    dataclass_from_args,
    field_flags,
    flag_problems,
)
from entropi.device import cli as device_cli
from entropi.host import cli

HAND_WRITTEN = {
    # the run folder, the output folder and what to do with it: no config field
    **dict.fromkeys(("--out", "--resume", "--overwrite", "--run", "--mcu"), "a folder / a mode"),
    # TOML overrides of any key: the config's own syntax
    "--set": "an override of any config key",
    # torchrun, not the run: the same config runs on any number of processes
    **dict.fromkeys(("--nproc", "--max-restarts"), "torchrun's job size"),
    # which rung of a run folder a command reads
    "--rung": "a rung of the run folder",
    # export: extra forms besides the sparse one (the config's form is the bundle's one form)
    "--compact": "export's extra forms",
    "--form": "export's extra forms (bundle's --form is generated)",
    # criteria / entropy over any features file, not a run
    **dict.fromkeys(("--labels", "--list", "--criterion"), "criteria of a features file"),
    # finetune / bench / device options without a settings dataclass
    **dict.fromkeys(("--mode", "--seeds", "--no-models"), "finetune's modes, seeds, outputs"),
    "--device": "bench: where the full step is measured (cpu / cuda; no auto)",
    **dict.fromkeys(("--bundle", "--data", "--head", "--top", "--split"), "the device CLI's data"),
    "--version": "the program's",
}
"""Flags that set no config field, and why. A hand-written flag not listed here fails the test:
a new flag for a config field is generated, or it is added here with its reason."""

GENERATED_HERE_ONLY = {("finetune", "--device"), ("analyze cka", "--device")}
"""Generated in these commands (RunConfig.device), hand-written in ``bench`` (no "auto")."""


def _host_parser() -> argparse.ArgumentParser:
    return cli._build_parser()[0]


def _parsers():
    return {"entropi": _host_parser(), "entropi-device": device_cli.build_parser()}


def _all_commands():
    """``(program, command words)`` of every subcommand of both CLIs, nested ones included."""
    return [(prog, c) for prog, parser in _parsers().items() for c, _ in _walk(parser)]


def _walk(parser, prefix=""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub
                yield from _walk(sub, f"{prefix}{name} ")


@pytest.mark.parametrize(("prog", "command"), _all_commands())
def test_every_subcommand_prints_its_help(prog, command, capsys):
    main = cli.main if prog == "entropi" else device_cli.main
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    assert f"usage: {prog} {command}" in capsys.readouterr().out


def test_the_commands_are_all_there():
    commands = {(p, c) for p, c in _all_commands()}
    for name in ("run", "select", "export", "bundle", "criteria", "finetune", "analyze cka"):
        assert ("entropi", name) in commands
    assert ("entropi", "bench") in commands  # the benchmarks' plugin
    assert ("entropi-device", "train") in commands


@pytest.mark.parametrize("prog", ["entropi", "entropi-device"])
def test_every_generated_flag_has_its_fields_default(prog):
    assert flag_problems(_parsers()[prog]) == []


def test_every_flag_is_generated_or_hand_written_for_a_reason():
    generated, unlisted = set(), []  # every generated flag too, for the report below
    for prog, parser in _parsers().items():
        for command, action, origin in field_flags(parser):
            flag = action.option_strings[0]
            if origin is not None:
                generated.add(flag)
            elif flag not in HAND_WRITTEN:
                unlisted.append(f"{prog} {command} {flag}")
    assert not unlisted, f"hand-written flags not in HAND_WRITTEN: {unlisted}"
    for flag in HAND_WRITTEN:  # the list does not rot: each is still a hand-written flag
        assert any(
            flag in a.option_strings and o is None
            for p in _parsers().values()
            for _, a, o in field_flags(p)
        ), f"{flag} is listed in HAND_WRITTEN but no command has it hand-written"


def test_unset_flags_say_what_decides():
    """An unset flag's help names what decides when it is not given (not a value: the value
    lives in the config)."""
    for command, action, origin in field_flags(_host_parser()):
        if origin is not None and origin.unset:
            assert action.default is None
            assert "(default: " in action.help, f"{command} {action.option_strings}"


def test_the_criterion_default_is_written_once():
    """`select --criterion` used to default to "entropy" while [select] criterion defaulted to
    "subset_entropy": now the flag is unset and the config's field is the one default."""
    from entropi.host.run.config import SelectConfig

    actions = {a.dest: (a, o) for c, a, o in field_flags(_host_parser()) if c == "select"}
    action, origin = actions["criterion"]
    assert origin == FieldFlag(SelectConfig, "criterion", unset=True)
    assert _host_parser().parse_args(["select", "R"]).criterion is None
    assert "(default: the run's [select] criterion)" in action.help


def test_defaults_build_the_dataclass_defaults():
    from entropi.host.analysis.finetune_config import FinetuneConfig
    from entropi.host.run.config import EntropyConfig

    parse = _host_parser().parse_args
    a = parse(["finetune", "R", "--mode", "head", "--out", "o"])
    assert dataclass_from_args(FinetuneConfig, a) == FinetuneConfig()
    assert parse(["entropy", "f.npy"]).levels == EntropyConfig().levels
    assert parse(["criteria", "f.npy"]).levels == EntropyConfig().levels


def test_building_the_parser_imports_no_torch():
    """`entropi --help` stays fast: building every subcommand's parser (and formatting every
    help, which lists choices) loads neither torch nor the export package."""
    code = (
        "import sys\n"
        "from entropi.host import cli\n"
        "parser, _ = cli._build_parser()\n"
        "parser.format_help()\n"
        "from entropi.common.cliargs import field_flags\n"
        "for command, action, _ in field_flags(parser):\n"
        "    pass\n"
        "import argparse\n"
        "def walk(p):\n"
        "    for a in p._actions:\n"
        "        if isinstance(a, argparse._SubParsersAction):\n"
        "            for s in a.choices.values():\n"
        "                s.format_help(); walk(s)\n"
        "walk(parser)\n"
        "heavy = sorted(m for m in ('torch', 'entropi.export', 'onnx') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- the checker and the generator, on small dataclasses ------------------------------------


@dataclass(frozen=True)
class Section:
    criterion: str = "subset_entropy"
    """how the rung is picked."""
    levels: int = 4
    """quantization levels."""
    min_cosine: float = 0.99
    """cosine floor."""
    formats: list[str] = dataclasses.field(default_factory=lambda: ["onnx", "tflite"])
    """file formats."""
    archs: tuple[str, ...] = ("a", "b")
    """architectures."""
    augment: bool = False
    """crop + flip."""


def _parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x")
    sub = p.add_subparsers(dest="command")
    add_field_argument(sub.add_parser("select"), Section, "criterion", **kwargs)
    return p


def test_checker_passes_a_right_mapping():
    p = _parser()
    q = p._actions[-1].choices["select"]
    add_dataclass_arguments(q, Section, only=("levels", "min_cosine", "augment"))
    add_dataclass_arguments(q, Section, only=("formats", "archs"), unset=True)
    add_field_argument(q, Section, "augment", flag="--augment-too", action="store_true")
    assert flag_problems(p) == []
    a = p.parse_args(["select", "--archs", "c", "--archs", "d", "--formats", "onnx"])
    assert (a.archs, a.formats, a.levels) == (["c", "d"], ["onnx"], 4)
    assert a.criterion == "subset_entropy"


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        # the bug of issue 24: the CLI's own default, another than the field's
        (lambda a: setattr(a, "default", "entropy"), "default 'entropy', the field's is"),
        # an unset flag ("the config decides") that has a default after all
        (
            lambda a: setattr(a, "field", FieldFlag(Section, "criterion", unset=True)),
            "but it is unset",
        ),
        # a flag claiming a field the dataclass does not have
        (lambda a: setattr(a, "field", FieldFlag(Section, "criteria")), "no such field"),
        # a type that reads the default back as something else
        (lambda a: setattr(a, "type", lambda s: s.upper()), "reads the default"),
        # choices that refuse the default
        (lambda a: setattr(a, "choices", ["entropy"]), "not one of its choices"),
    ],
)
def test_checker_catches_a_wrong_mapping(break_it, message):
    p = _parser()
    action = p._actions[-1].choices["select"]._actions[-1]
    assert flag_problems(p) == []
    break_it(action)
    problems = flag_problems(p)
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith("select --criterion (Section.criteri")


def test_checker_catches_a_wrong_numeric_type():
    p = argparse.ArgumentParser()
    add_field_argument(p, Section, "min_cosine", type=int)  # int("0.99") fails
    assert "reads the default 0.99 back differently" in flag_problems(p)[0]
    p = argparse.ArgumentParser()
    add_field_argument(p, Section, "levels", default=5)
    assert "default 5, the field's is 4" in flag_problems(p)[0]


def test_generator_refusals():
    with pytest.raises(ValueError, match="no field"):
        add_field_argument(argparse.ArgumentParser(), Section, "nope")
    with pytest.raises(ValueError, match="must be unset"):  # append would add to the default
        add_field_argument(argparse.ArgumentParser(), Section, "formats")
    with pytest.raises(ValueError, match="need a metavar"):  # the usage line would list them
        add_field_argument(
            argparse.ArgumentParser(), Section, "criterion", choices=LazyChoices(lambda: ["x"])
        )


def test_help_texts():
    p = argparse.ArgumentParser()
    add_field_argument(p, Section, "criterion", unset="the run's [select] criterion")
    add_field_argument(p, Section, "archs", unset=True, flag="--arch", also="Repeat.")
    add_field_argument(p, Section, "levels", help="levels M")
    helps = {a.dest: a.help % {"default": a.default} for a in p._actions}
    assert helps["criterion"] == "how the rung is picked. (default: the run's [select] criterion)"
    assert helps["archs"] == "architectures. Repeat. (default: a, b)"
    assert helps["levels"] == "levels M (default: 4)"
    assert p.parse_args(["--arch", "z"]).archs == ["z"]
