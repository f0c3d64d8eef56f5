"""Command-line flags generated from a dataclass: one default and one description per setting.

A settings dataclass documents each field with a string literal right after it::

    @dataclass(frozen=True)
    class Settings:
        weight_decay: float = 1e-4
        '''L2 penalty coefficient, >= 0.'''

:func:`add_dataclass_arguments` adds ``--weight-decay`` (type from the field's annotation,
default from the field, help from that docstring), bool fields as ``--flag/--no-flag``, list and
tuple fields as a repeatable flag (``action="append"``); :func:`add_field_argument` adds one
field's flag under another name, with choices, or *unset* (argparse default None: "not given",
the run's config or the command decides, which the help says). :func:`dataclass_from_args` builds
the dataclass back from the parsed namespace, so the dataclass validates the values.

Every generated action carries its origin (:class:`FieldFlag`), and :func:`flag_problems`
checks a whole parser against it: each flag's default is its field's default, or None for an
unset flag. Both CLIs (``entropi-device`` and ``entropi``) use this module; it needs the
standard library only (the device imports it, and ``entropi --help`` must not load torch).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import functools
import inspect
import itertools
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = [
    "FieldFlag",
    "LazyChoices",
    "add_dataclass_arguments",
    "add_field_argument",
    "attach_dash_values",
    "dataclass_from_args",
    "field_default",
    "field_docs",
    "field_flags",
    "flag_name",
    "flag_problems",
    "keep_choices_lazy",
    "rung_arg",
]

_ROLE = re.compile(r":[a-z]+:`[~.]*([^`]+)`")
"""A Sphinx cross-reference (``:data:`~pkg.NAME```): in a terminal its target is enough."""


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring (the string literal right after the field), for ``cls`` and its
    dataclass bases; whitespace collapsed to single spaces, Sphinx roles reduced to their target
    (``:data:`.NAME``` -> ``NAME``). Fields without one are left out."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs |= _class_docs(klass.__module__).get(klass.__qualname__, {})
    return docs


@functools.cache
def _class_docs(module: str) -> dict[str, dict[str, str]]:
    """Qualified class name -> its field docstrings, for every class of ``module`` (its source
    parsed once: a parser reads the docs of many fields)."""
    try:
        tree = ast.parse(inspect.getsource(sys.modules[module]))
    except (KeyError, OSError, TypeError):
        return {}
    out: dict[str, dict[str, str]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                out[prefix + child.name] = {
                    stmt.target.id: _ROLE.sub(r"\1", " ".join(nxt.value.value.split()))
                    for stmt, nxt in itertools.pairwise(child.body)
                    if isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)
                }
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, f"{prefix}{child.name}.<locals>.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def flag_name(field: str) -> str:
    """``weight_decay`` -> ``--weight-decay``."""
    return "--" + field.replace("_", "-")


def field_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (its factory called), or
    ``dataclasses.MISSING``."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _parse_type(annotation: Any) -> tuple[type, bool]:
    """The argparse ``type`` of an annotation (bool, int, float or str) and whether the field is
    a list (``list[X]`` or ``tuple[X, ...]``: a repeatable flag of X). A union that admits str
    (``str | int``) is read as str and left to the dataclass to interpret."""
    if annotation in (bool, int, float, str):
        return annotation, False
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        args = tuple(a for a in args if a is not type(None))
        if str in args:
            return str, False
        if len(args) == 1:
            return _parse_type(args[0])
    if origin is typing.Literal:
        return type(args[0]), False
    if origin is list and len(args) == 1 or origin is tuple and args[1:] == (Ellipsis,):
        item, many = _parse_type(args[0])
        if not many:
            return item, True
    raise TypeError(f"no command-line type for annotation {annotation!r}")


@dataclasses.dataclass(frozen=True)
class FieldFlag:
    """Where a generated flag comes from, attached to its action as ``action.field``."""

    cls: type
    """the settings dataclass."""
    name: str
    """its field."""
    unset: bool = False
    """the flag's default is None ("not given"): the run's config or the command decides,
    as its help says; otherwise the flag's default is the field's."""

    @property
    def label(self) -> str:
        return f"{self.cls.__name__}.{self.name}"


class LazyChoices:
    """argparse ``choices`` read from a registry on first use (the registries live in modules
    that import torch, and building a parser must not: `entropi --help` stays fast). Give the
    flag a ``metavar``: argparse lists the choices in the usage line otherwise."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        self._names = names

    def __contains__(self, item: object) -> bool:
        return item in list(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names()))


class _LazyHelp:
    """A help formatter mixin that leaves :class:`LazyChoices` unread (argparse lists every
    action's choices while formatting its help, even when the help does not show them)."""

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.choices, LazyChoices):
            action = copy.copy(action)
            action.choices = None
        return super()._expand_help(action)  # type: ignore[misc]


def keep_choices_lazy(parser: argparse.ArgumentParser) -> None:
    """Format the help of ``parser`` and of every subcommand below it without reading a
    :class:`LazyChoices` (each parser keeps its own formatter class, with the mixin added)."""
    for _, p in _parsers(parser):
        if not issubclass(p.formatter_class, _LazyHelp):
            base = p.formatter_class
            p.formatter_class = type(f"Lazy{base.__name__}", (_LazyHelp, base), {})


def _show(value: Any) -> str:
    """A default as the help shows it: lists and tuples as ``a, b``, empty text as ``''``."""
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return "''" if value == "" else str(value)


def add_field_argument(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    name: str,
    *,
    flag: str | None = None,
    unset: bool | str = False,
    required: bool = False,
    help: str | None = None,
    also: str = "",
    **kwargs: Any,
) -> argparse.Action:
    """Add the flag of field ``name`` of the dataclass ``cls`` to ``parser``; return its action.

    ``flag``: the option string (default ``--a-b`` for field ``a_b``); the dest is the field's
    name either way. Type from the annotation (bool: ``--a-b/--no-a-b``; a list or tuple of X:
    a repeatable flag of X, which must be unset or required). Default: the field's; or None
    with ``unset``, a string saying what decides then (``"the run's [select] criterion"``), or
    True: the caller applies the field's default, which the help shows; or none with
    ``required``. Help: the field's docstring (or ``help``), then ``also``, then the default.
    ``kwargs`` go to ``add_argument`` (``choices``, ``metavar``, ``action="store_true"`` for a
    bool flag without ``--no-``, ...)."""
    if name not in {f.name for f in dataclasses.fields(cls)}:
        raise ValueError(f"{cls.__name__} has no field {name!r}")
    kind, many = _parse_type(typing.get_type_hints(cls)[name])
    default = field_default(cls, name)
    required = required or (default is dataclasses.MISSING and not unset)
    text = f"{field_docs(cls).get(name, '') if help is None else help} {also}".strip()
    kw: dict[str, Any] = {"dest": name, "help": text.replace("%", "%%")}
    if required:
        kw["required"], shown = True, None
    elif unset:
        kw["default"], shown = None, unset if isinstance(unset, str) else _show(default)
    else:
        kw["default"], shown = default, _show(default) if default == "" else "%(default)s"
    if kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif many:  # argparse's append adds to a list default: a list flag starts at None
        if not (unset or required):
            raise ValueError(f"{cls.__name__}.{name} is a list: its flag must be unset")
        kw.update(action="append", type=kind)
    else:
        kw["type"] = kind
    kw.update(kwargs)
    if isinstance(kw.get("choices"), LazyChoices) and "metavar" not in kw:
        raise ValueError(f"{cls.__name__}.{name}: lazy choices need a metavar")
    if kw.get("action") in ("store_true", "store_false"):
        kw.pop("type", None)
    action = parser.add_argument(flag or flag_name(name), **kw)
    help_ = action.help or ""
    if shown is not None and "%(default)" not in help_ and "(default:" not in help_:
        action.help = f"{help_} (default: {shown})".lstrip()
    action.field = FieldFlag(cls, name, bool(unset))  # type: ignore[attr-defined]
    return action


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    required: Iterable[str] = (),
    unset: bool | str = False,
    options: dict[str, dict[str, Any]] | None = None,
) -> list[argparse.Action]:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (:func:`add_field_argument`):
    the fields in ``only`` (in that order) or else all but ``skip`` and those with
    ``init=False``. ``required``: fields whose flag must be given (as is one without a default);
    ``unset``: every flag defaults to None (see :func:`add_field_argument`); ``options``: field
    -> further keywords of :func:`add_field_argument` (``flag``, ``help``, ``choices``, ...).
    Returns the added actions."""
    skip, required, options = set(skip), set(required), dict(options or {})
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    chosen = list(only) if only is not None else [n for n in names if n not in skip]
    unknown = (skip | required | set(chosen) | set(options)) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return [
        add_field_argument(
            parser,
            cls,
            name,
            **{"unset": unset, "required": name in required, **options.get(name, {})},
        )
        for name in chosen
    ]


def dataclass_from_args(cls: type, namespace: argparse.Namespace, **overrides: Any) -> Any:
    """``cls(...)`` from the attributes of ``namespace`` named like its fields (fields without
    one keep their defaults), with ``overrides`` on top; the dataclass validates them."""
    values = {
        f.name: getattr(namespace, f.name)
        for f in dataclasses.fields(cls)
        if f.init and hasattr(namespace, f.name)
    }
    return cls(**{**values, **overrides})


def _parsers(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``(command, parser)`` of ``parser`` and of every subcommand below it."""
    yield prefix.strip(), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prefix}{name} ")


def field_flags(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, argparse.Action, FieldFlag | None]]:
    """``(command, action, origin)`` of every flag of ``parser`` and its subcommands; origin is
    None for a hand-written flag."""
    for command, p in _parsers(parser):
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield command, action, getattr(action, "field", None)


def flag_problems(parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with the generated flags of ``parser`` and its subcommands, one line each:
    a default other than its field's (or, for an unset flag, other than None), a field the
    dataclass does not have, a default its own ``type`` or ``choices`` would refuse."""
    problems = []
    for command, action, origin in field_flags(parser):
        if origin is None or action.required:
            continue
        where = f"{command} {'/'.join(action.option_strings)} ({origin.label})".lstrip()
        if origin.name not in {f.name for f in dataclasses.fields(origin.cls)}:
            problems.append(f"{where}: no such field")
            continue
        if origin.unset:
            if action.default is not None:
                problems.append(f"{where}: default {action.default!r}, but it is unset (None)")
            continue
        want = field_default(origin.cls, origin.name)
        if action.default != want or type(action.default) is not type(want):
            problems.append(f"{where}: default {action.default!r}, the field's is {want!r}")
        elif isinstance(want, list | tuple) or not callable(action.type):
            pass
        elif _reads_back(action.type, want) != want:
            problems.append(f"{where}: its type reads the default {want!r} back differently")
        elif action.choices is not None and want not in action.choices:
            problems.append(f"{where}: default {want!r} is not one of its choices")
    return problems


def _reads_back(kind: Callable[[str], Any], value: Any) -> Any:
    """``kind(str(value))``, or the error it raises (which equals no value)."""
    try:
        return kind(str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        return e


def rung_arg(value: str) -> str | int:
    """argparse type of a ``--rung`` option (``entropi export``, ``bundle``, ``finetune``,
    ``bench``): ``selected`` or a rung index."""
    return value if value == "selected" else int(value)


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
