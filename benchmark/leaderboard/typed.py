"""Strict (de)serialization of frozen dataclasses: one rule for tracks, entries and their JSON Schema.

A dataclass's type hints are its schema. :func:`from_dict` builds an instance from plain data and
rejects unknown keys, missing keys and values of the wrong type (numbers written as strings
included), naming the offending path; :func:`to_dict` is its inverse; :func:`json_schema` writes the
same rules as a JSON Schema (draft 2020-12), so other tools can check files without dglbench.

Supported hints: ``str``, ``int``, ``float`` (an ``int`` is accepted and stored as float), ``bool``,
``None`` unions, ``Literal[...]``, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]`` (``T = Any`` for
free-form mappings) and nested dataclasses.

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
    dglbench.leaderboard.typed.SchemaError: x: expected a number, got str '1'
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from dglbench.errors import DglbenchError

__all__ = ["SchemaError", "from_dict", "json_schema", "to_dict"]


class SchemaError(DglbenchError, ValueError):
    """A value does not match its declared type; the message starts with the path of the value."""


def _where(path: str) -> str:
    return path or "(top level)"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def _parse(hint: Any, value: Any, path: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        _check_json(value, path)
        return value
    if hint is type(None):
        if value is not None:
            raise SchemaError(f"{_where(path)}: expected null, got {type(value).__name__} {_show(value)}")
        return None
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise SchemaError(f"{_where(path)}: must not be null")
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _parse(option, value, path)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(errors[0] if len(errors) == 1 else f"{_where(path)}: {_show(value)} matches no allowed type")
    if origin is Literal:
        allowed = get_args(hint)
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise SchemaError(f"{_where(path)}: must be one of {', '.join(map(repr, allowed))}, got {_show(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{_where(path)}: expected true/false, got {type(value).__name__} {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{_where(path)}: expected an integer, got {type(value).__name__} {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{_where(path)}: expected a number, got {type(value).__name__} {_show(value)}")
        if not math.isfinite(value):
            raise SchemaError(f"{_where(path)}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SchemaError(f"{_where(path)}: expected a string, got {type(value).__name__} {_show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"{_where(path)}: expected a list, got {type(value).__name__} {_show(value)}")
        (item,) = get_args(hint)[:1]
        items = [_parse(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{_where(path)}: expected a mapping, got {type(value).__name__} {_show(value)}")
        _, item = get_args(hint)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(f"{_where(path)}: keys must be strings, got {_show(k)}")
            out[k] = _parse(item, v, f"{path}.{k}" if path else k)
        return out
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    raise TypeError(f"unsupported type hint {hint!r} at {_where(path)}")


def _check_json(value: Any, path: str) -> None:
    """Free-form values must still be plain JSON data: no NaN, no objects."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError(f"{_where(path)}: expected a finite number, got {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(f"{_where(path)}: keys must be strings, got {_show(k)}")
            _check_json(v, f"{path}.{k}" if path else k)
        return
    raise SchemaError(f"{_where(path)}: {type(value).__name__} is not JSON data")


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, strictly: every field present, no unknown key, right types.

    Fields with a default may be omitted only when ``cls`` says so through ``__optional_keys__``
    (tracks use this for settings with defaults; entries list every field).
    """
    if not isinstance(data, dict):
        raise SchemaError(f"{_where(path)}: expected a mapping, got {type(data).__name__} {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    unknown = [k for k in data if k not in names]
    if unknown:
        prefix = f"{path}." if path else ""
        raise SchemaError(f"{prefix}{unknown[0]}: unknown key; allowed keys: {', '.join(names)}")
    optional = set(getattr(cls, "__optional_keys__", ()))
    kwargs = {}
    for f in fields:
        sub = f"{path}.{f.name}" if path else f.name
        if f.name not in data:
            if f.name in optional:
                continue
            raise SchemaError(
                f"{sub}: missing (required{'; null when not applicable' if _is_optional(hints[f.name]) else ''})"
            )
        kwargs[f.name] = _parse(hints[f.name], data[f.name], sub)
    try:
        return cls(**kwargs)
    except DglbenchError as exc:
        if isinstance(exc, SchemaError) or not path:
            raise
        raise SchemaError(f"{path}: {exc}") from None


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
            hints = typing.get_type_hints(hint)
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
