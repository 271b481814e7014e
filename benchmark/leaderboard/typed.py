"""Strict (de)serialization of frozen dataclasses: one rule for tracks, entries and their JSON Schema.

A dataclass's type hints are its schema, read by the one type engine, :mod:`dglbench.params`.
:func:`from_dict` builds an instance from plain data and rejects unknown keys, missing keys and values
of the wrong type (numbers written as strings included), naming the offending path; :func:`to_dict` is
its inverse; :func:`json_schema` writes the same rules as a JSON Schema (draft 2020-12), so other tools
can check files without dglbench.

Supported hints: ``str``, ``int``, ``float`` (an ``int`` is accepted and stored as float; NaN and
infinities are refused), ``bool``, ``None`` unions, ``Literal[...]``, ``list[T]``, ``tuple[T, ...]``,
``dict[str, T]`` (``T = Any`` for free-form JSON data), ``Annotated[T, Range(...)]`` and nested dataclasses.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Point:
    ...     x: float
    ...     label: str | None
    >>> from_dict(Point, {"x": 1, "label": None})
    Point(x=1.0, label=None)
    >>> from_dict(Point, {"x": "1", "label": None})
    Traceback (most recent call last):
    ...
    dglbench.leaderboard.typed.SchemaError: x: expected a number, got str '1'; write 1 without quotes
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin

from dglbench.errors import DglbenchError
from dglbench.params import ParamError, build, field_hints, strip_annotated

__all__ = ["SchemaError", "from_dict", "json_schema", "to_dict"]


class SchemaError(DglbenchError, ValueError):
    """A value does not match its declared type; the message starts with the path of the value."""


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, strictly: every field present, no unknown key, right types.

    The rules are :mod:`dglbench.params`' (:func:`~dglbench.params.build`), with free-form values
    (``Any``) held to plain JSON data. Fields with a default may be omitted only when ``cls`` says so
    through ``__optional_keys__`` (tracks use this for settings with defaults; entries list every field).
    """
    try:
        return build(cls, data, path, json=True)
    except ParamError as exc:
        raise SchemaError(str(exc)) from None


def to_dict(obj: Any) -> Any:
    """Plain JSON data (dicts, lists, numbers, strings, null) from a dataclass instance, recursively."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------- JSON Schema
def _schema(hint: Any, defs: dict[str, Any]) -> dict[str, Any]:
    hint, rng = strip_annotated(hint)
    if rng is not None:
        bounds = {"minimum": rng.ge, "exclusiveMinimum": rng.gt, "maximum": rng.le, "exclusiveMaximum": rng.lt}
        return {**_schema(hint, defs), **{k: v for k, v in bounds.items() if v is not None}}
    origin = get_origin(hint)
    if hint is Any:
        return {}
    if hint is type(None):
        return {"type": "null"}
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema(o, defs) for o in get_args(hint)]}
    if origin is Literal:
        return {"enum": list(get_args(hint))}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return {"type": simple[hint]}
    if origin in (list, tuple):
        return {"type": "array", "items": _schema(get_args(hint)[0], defs)}
    if origin is dict:
        item = get_args(hint)[1]
        return {"type": "object"} if item is Any else {"type": "object", "additionalProperties": _schema(item, defs)}
    if dataclasses.is_dataclass(hint):
        name = hint.__name__
        if name not in defs:
            defs[name] = {}  # reserve (recursion guard)
            hints = field_hints(hint)
            fields = [f for f in dataclasses.fields(hint) if f.init]
            optional = set(getattr(hint, "__optional_keys__", ()))
            body: dict[str, Any] = {"type": "object"}
            doc = (hint.__doc__ or "").strip().splitlines()
            if doc:
                body["description"] = doc[0]
            body["properties"] = {f.name: _schema(hints[f.name], defs) for f in fields}
            body["required"] = [f.name for f in fields if f.name not in optional]
            body["additionalProperties"] = False
            defs[name] = body
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"unsupported type hint {hint!r}")


def json_schema(cls: type, *, title: str, schema_id: str | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that :func:`from_dict` enforces for dataclass ``cls``."""
    defs: dict[str, Any] = {}
    root = _schema(cls, defs)
    out: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title}
    if schema_id:
        out["$id"] = schema_id
    out.update(root)
    out["$defs"] = {k: defs[k] for k in sorted(defs)}
    return out
