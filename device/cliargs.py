"""Command-line flags generated from a dataclass: one default and one description per setting.

A settings dataclass documents each field with a string literal right after it::

    @dataclass(frozen=True)
    class Settings:
        weight_decay: float = 1e-4
        '''L2 penalty coefficient, >= 0.'''

:func:`add_dataclass_arguments` adds ``--weight-decay`` (type from the field's annotation,
default from the field, help from that docstring), bool fields as ``--flag/--no-flag``;
:func:`dataclass_from_args` builds the dataclass back from the parsed namespace, so the dataclass
validates the values. Both CLIs (``entropi-device`` and ``entropi``) use this module; it needs
the standard library only.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Iterable
from typing import Any

__all__ = [
    "add_dataclass_arguments",
    "attach_dash_values",
    "dataclass_from_args",
    "field_docs",
    "flag_name",
]


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring (the string literal right after the field), for ``cls`` and its
    dataclass bases; whitespace collapsed to single spaces. Fields without one are left out."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef))
        body = node.body
        for stmt, nxt in itertools.pairwise(body):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def flag_name(field: str) -> str:
    """``weight_decay`` -> ``--weight-decay``."""
    return "--" + field.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _parse_type(annotation: Any) -> type:
    """The argparse ``type`` of an annotation: bool, int, float or str; a union that admits str
    (``str | int``) is read as str and left to the dataclass to interpret."""
    if annotation in (bool, int, float, str):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if str in args:
            return str
        if len(args) == 1:
            return _parse_type(args[0])
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    raise TypeError(f"no command-line type for annotation {annotation!r}")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Iterable[str] = (),
    required: Iterable[str] = (),
) -> list[argparse.Action]:
    """Add one flag per field of the dataclass ``cls`` (but ``skip``) to ``parser``.

    ``--a-b`` for field ``a_b`` (dest ``a_b``); type from the annotation (bool fields become
    ``--a-b/--no-a-b``); default from the field, unless listed in ``required`` (or the field has
    no default), which makes the flag required; help: the field's docstring and the default.
    Returns the added actions.
    """
    skip, required = set(skip), set(required)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = (skip | required) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    actions = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind = _parse_type(hints[f.name])
        default = _default(f)
        must = f.name in required or default is dataclasses.MISSING
        kw: dict[str, Any] = {"dest": f.name, "help": docs.get(f.name, "").replace("%", "%%")}
        if must:
            kw["required"] = True
        else:
            kw["default"] = default
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = kind
        action = parser.add_argument(flag_name(f.name), **kw)
        if not must and "%(default)" not in (action.help or ""):
            action.help = f"{action.help} (default: %(default)s)".lstrip()
        actions.append(action)
    return actions


def dataclass_from_args(cls: type, namespace: argparse.Namespace, **overrides: Any) -> Any:
    """``cls(...)`` from the attributes of ``namespace`` named like its fields (fields without
    one keep their defaults), with ``overrides`` on top; the dataclass validates them."""
    values = {
        f.name: getattr(namespace, f.name)
        for f in dataclasses.fields(cls)
        if f.init and hasattr(namespace, f.name)
    }
    return cls(**{**values, **overrides})


def attach_dash_values(argv: Iterable[str]) -> list[str]:
    """``argv`` with a value that starts with ``-`` and a digit or ``.`` joined to the long
    option before it (``--flash -5KB`` -> ``--flash=-5KB``): argparse takes ``-5KB`` for an
    option and says only "expected one argument", where the option's own check would name the
    bad value (e.g. "must be > 0 bytes")."""
    out: list[str] = []
    for token in argv:
        prev = out[-1] if out else ""
        joinable = prev.startswith("--") and "=" not in prev and prev != "--"
        if joinable and len(token) > 1 and token[0] == "-" and token[1] in "0123456789.":
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out
