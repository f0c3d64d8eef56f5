"""A small JSON Schema validator: the subset the bundle manifest's schema uses, stdlib only.

The device imports with numpy alone, so the manifest (``manifest.schema.json`` next to this
module) is checked by this validator rather than the ``jsonschema`` package; it gives the same
verdict on every device, whatever is installed. Supported keywords (draft 2020-12 meaning):
``type`` (a name or a list of names), ``required``, ``properties``, ``additionalProperties``
(a schema or a boolean), ``propertyNames``, ``minProperties`` / ``maxProperties``, ``items``,
``minItems`` / ``maxItems``, ``minimum`` / ``maximum`` / ``exclusiveMinimum`` /
``exclusiveMaximum``, ``minLength`` / ``maxLength``, ``enum`` and ``pattern``; annotations
(``$schema``, ``$id``, ``title``, ``description``) are ignored. Any other keyword is refused
when the schema is loaded, so that the schema can never ask for a check this code skips.

Differences from the standard, all stricter: ``true`` / ``false`` are never numbers;
``integer`` is a JSON integer (``1.0`` is not one); a non-finite float (``NaN``, ``Infinity``,
which Python's ``json`` accepts but JSON does not) is not a ``number``.
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["SchemaViolation", "check", "json_path", "load_schema"]

_ANNOTATIONS = {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
_KEYWORDS = _ANNOTATIONS | {
    "type",
    "required",
    "properties",
    "additionalProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "enum",
    "pattern",
}
_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}


class SchemaViolation(Exception):
    """One place where a document breaks its schema: ``path`` (``input.std[1]``) and what was
    expected there."""

    def __init__(self, path: str, expected: str) -> None:
        super().__init__(f"{path}: {expected}")
        self.path, self.expected = path, expected


def json_path(parts: tuple[str | int, ...]) -> str:
    """``("input", "std", 1)`` -> ``input.std[1]``; the document itself is ``(root)``."""
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p):
            out += f".{p}" if out else p
        else:
            out += f"[{json.dumps(p)}]"
    return out or "(root)"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema file ``name`` shipped in this package, checked for unsupported keywords."""
    schema = json.loads(resources.files(__package__).joinpath(name).read_text(encoding="utf-8"))
    _check_keywords(schema, name)
    return schema


def _check_keywords(schema: Any, where: str) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: a schema must be an object or a boolean")
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(f"{where}: unsupported schema keyword(s) {sorted(unknown)}")
    types = schema.get("type", [])
    if not set([types] if isinstance(types, str) else types) <= _TYPES:
        raise ValueError(f"{where}: unknown type in {types!r}")
    for key in ("properties",):
        for k, sub in schema.get(key, {}).items():
            _check_keywords(sub, f"{where}.{key}.{k}")
    for key in ("additionalProperties", "items", "propertyNames"):
        if key in schema:
            _check_keywords(schema[key], f"{where}.{key}")


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number" if math.isfinite(value) else "non-finite number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is(value: Any, t: str) -> bool:
    actual = _type_of(value)
    return actual == t or (t == "number" and actual == "integer")


def _describe(value: Any) -> str:
    text = json.dumps(value) if _type_of(value) in _TYPES else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(value: Any, schema: dict[str, Any] | bool, path: tuple[str | int, ...] = ()) -> None:
    """Raise :class:`SchemaViolation` at the first place ``value`` breaks ``schema``.

    Object members are checked in the order of the schema's ``required`` and ``properties``,
    then the document's other members, so the error reported is deterministic.
    """
    if schema is True:
        return
    if schema is False:
        raise SchemaViolation(json_path(path), "no such entry is allowed here")
    where = json_path(path)
    if "type" in schema:
        types = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_is(value, t) for t in types):
            raise SchemaViolation(
                where, f"expected {' or '.join(types)}, got {_type_of(value)} {_describe(value)}"
            )
    if "enum" in schema and not any(
        _type_of(value) == _type_of(v) and value == v for v in schema["enum"]
    ):
        allowed = ", ".join(json.dumps(v) for v in schema["enum"])
        raise SchemaViolation(where, f"expected one of {allowed}, got {_describe(value)}")
    if _type_of(value) in ("integer", "number"):
        _check_number(value, schema, where)
    elif isinstance(value, str):
        _check_string(value, schema, where)
    elif isinstance(value, list):
        _check_array(value, schema, path)
    elif isinstance(value, dict):
        _check_object(value, schema, path)


def _check_number(value: float, schema: dict[str, Any], where: str) -> None:
    bounds = (
        ("minimum", lambda v, b: v >= b, ">="),
        ("maximum", lambda v, b: v <= b, "<="),
        ("exclusiveMinimum", lambda v, b: v > b, ">"),
        ("exclusiveMaximum", lambda v, b: v < b, "<"),
    )
    for key, ok, op in bounds:
        if key in schema and not ok(value, schema[key]):
            raise SchemaViolation(where, f"expected a value {op} {schema[key]}, got {value!r}")


def _check_string(value: str, schema: dict[str, Any], where: str) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise SchemaViolation(where, f"expected at least {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SchemaViolation(where, f"expected at most {schema['maxLength']} characters")
    # JSON Schema's "$" is the end of the string; Python's also matches before a final "\n"
    pattern = re.sub(r"(?<!\\)\$$", r"\\Z", schema.get("pattern", ""))
    if "pattern" in schema and re.search(pattern, value) is None:
        raise SchemaViolation(
            where, f"expected a string matching {schema['pattern']}, got {_describe(value)}"
        )


def _check_array(value: list, schema: dict[str, Any], path: tuple[str | int, ...]) -> None:
    where = json_path(path)
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise SchemaViolation(
            where, f"expected at least {schema['minItems']} entries, got {len(value)}"
        )
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise SchemaViolation(
            where, f"expected at most {schema['maxItems']} entries, got {len(value)}"
        )
    if "items" in schema:
        for i, item in enumerate(value):
            check(item, schema["items"], (*path, i))


def _check_object(value: dict, schema: dict[str, Any], path: tuple[str | int, ...]) -> None:
    where = json_path(path)
    for key in schema.get("required", ()):
        if key not in value:
            raise SchemaViolation(json_path((*path, key)), "required entry is missing")
    if "minProperties" in schema and len(value) < schema["minProperties"]:
        raise SchemaViolation(
            where, f"expected at least {schema['minProperties']} entries, got {len(value)}"
        )
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        raise SchemaViolation(
            where, f"expected at most {schema['maxProperties']} entries, got {len(value)}"
        )
    props = schema.get("properties", {})
    for key, sub in props.items():
        if key in value:
            check(value[key], sub, (*path, key))
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if "propertyNames" in schema:
            try:
                check(key, schema["propertyNames"], path)
            except SchemaViolation as e:
                raise SchemaViolation(
                    json_path((*path, key)), f"bad entry name: {e.expected}"
                ) from None
        if key not in props:
            check(item, extra, (*path, key))
