"""Flags generated from a dataclass (entropi.common.cliargs): names, types, defaults, help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from entropi.common.cliargs import add_dataclass_arguments, dataclass_from_args, field_docs


@dataclass(frozen=True)
class Base:
    weight_decay: float = 1e-4
    """L2 penalty,
    >= 0 (100% plain)."""
    size: str | int = "256KB"
    """A size."""
    name: str = "x"


@dataclass(frozen=True)
class Child(Base):
    enabled: bool = True
    """Switch it on."""
    count: int = 3
    """How many."""


def test_field_docs_follow_the_fields_through_the_bases():
    assert field_docs(Child) == {
        "weight_decay": "L2 penalty, >= 0 (100% plain).",
        "size": "A size.",
        "enabled": "Switch it on.",
        "count": "How many.",
    }


def test_flags_types_defaults_and_round_trip():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Child, skip=("name",), required=("count",))
    with pytest.raises(SystemExit):
        p.parse_args([])  # --count is required
    a = p.parse_args(["--count", "4", "--weight-decay", "0.5", "--no-enabled", "--size", "12"])
    assert (a.count, a.weight_decay, a.enabled, a.size) == (4, 0.5, False, "12")
    assert not hasattr(a, "name")
    assert dataclass_from_args(Child, a) == Child(0.5, "12", "x", False, 4)
    assert dataclass_from_args(Child, p.parse_args(["--count", "1"]), name="y") == Child(
        count=1, name="y"
    )
    text = p.format_help()
    assert "--weight-decay" in text and "--enabled, --no-enabled" in text
    helps = {a.dest: a.help % {"default": a.default} for a in p._actions}
    assert helps["weight_decay"] == "L2 penalty, >= 0 (100% plain). (default: 0.0001)"
    assert helps["enabled"].count("default") == 1
    with pytest.raises(ValueError, match="no field"):
        add_dataclass_arguments(argparse.ArgumentParser(), Child, skip=("nope",))
