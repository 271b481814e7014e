"""One type engine for every configuration value: the type hint is the schema.

Trial configs, sweep specs, tracks, leaderboard entries, defense and attack parameters all turn
plain data into typed values here, by the same rules:

* **Strings.** A value keeps the type its source gave it. In a config file, a sweep spec, a track or
  a Python call, a string where a number or a bool is declared is an error that names the key and
  the fix (``sigma: '0.01'`` is refused, never converted into a second trial with another id).
  Text typed on a command line (``dglbench run --defense_params.sigma=0.01``,
  ``--param sigma=0.01``) is parsed exactly once, at the command-line boundary, by
  :func:`parse_cli_value`: as a YAML scalar, with YAML 1.2 numbers (``1e-3`` is a number). Config
  files are read with the same resolver (:data:`YamlLoader`), so ``cg_tol: 1e-4`` is a number too.
* **Numbers.** ``bool`` is not an ``int``; an ``int`` is accepted where a ``float`` is declared (and
  stored as float), a ``float`` is never accepted as an ``int`` (``3.0`` for an iteration count is an
  error). NaN is always refused; ``±inf`` is refused unless the parameter declares
  ``Range(allow_inf=True)``.
* **Ranges** are declared next to the parameter, ``sigma: Annotated[float, Range(ge=0)]``, and
  checked with the type (the aliases below cover the common cases).

Every problem is one line, ``KEY: expected WHAT, got VALUE; FIX``, raised as :class:`ParamError`
(a :class:`~dglbench.errors.ConfigError`: the CLI prints it and exits with status 2).

Example:
    >>> from typing import Annotated
    >>> coerce(1, Annotated[float, Range(gt=0)], "cg_tol")
    1.0
    >>> coerce(float("inf"), Annotated[float, Range(ge=0)], "defense_params.sigma", example=0.01)
    Traceback (most recent call last):
    ...
    dglbench.params.ParamError: defense_params.sigma: expected a finite number >= 0, got inf; give a number like 0.01
    >>> coerce("0.01", float, "sigma")
    Traceback (most recent call last):
    ...
    dglbench.params.ParamError: sigma: expected a number, got str '0.01'; write 0.01 without quotes
    >>> parse_cli_value("1e-3"), parse_cli_value("true"), parse_cli_value("gaussian")
    (0.001, True, 'gaussian')
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from dglbench.errors import ConfigError, DglbenchError

__all__ = [
    "Count",
    "NoiseScale",
    "NonNegativeFloat",
    "ParamError",
    "PositiveFloat",
    "Probability",
    "Range",
    "Ratio",
    "Tolerance",
    "YamlDumper",
    "YamlLoader",
    "build",
    "check_fields",
    "coerce",
    "field_hints",
    "parse_cli_value",
    "strip_annotated",
]

_MISSING: Any = object()


class ParamError(ConfigError):
    """A configuration value of the wrong type or out of range; the message starts with its key.

    Attributes:
        key: where the value sits (``"cg_max_iter"``, ``"defense_params.sigma"``, ``"privacy[1].n"``).
        detail: the rest of the line: ``"expected ..., got ...; fix"``.
        owner: the object whose parameter it is (``"defense 'gaussian'"``), or ``""`` for a config key.
    """

    def __init__(self, key: str, detail: str, owner: str = "") -> None:
        self.key, self.detail, self.owner = key, detail, owner
        where = f"{owner} parameter {key!r}" if owner else (key or "(top level)")
        super().__init__(f"{where}: {detail}")

    def under(self, prefix: str) -> ParamError:
        """The same error as seen from a config: ``sigma`` of a defense becomes ``defense_params.sigma``."""
        return ParamError(f"{prefix}.{self.key}" if self.key else prefix, self.detail)


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric parameter, declared next to it: ``Annotated[float, Range(ge=0, le=1)]``.

    Attributes:
        ge / gt / le / lt: inclusive and exclusive lower and upper bounds (``None``: unbounded).
        allow_inf: accept ``inf`` / ``-inf`` (within the bounds); NaN is never accepted.
        note: why the bound is there, appended to the error message.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allow_inf: bool = False
    note: str = ""

    def contains(self, x: float) -> bool:
        return not (
            (self.ge is not None and x < self.ge)
            or (self.gt is not None and x <= self.gt)
            or (self.le is not None and x > self.le)
            or (self.lt is not None and x >= self.lt)
        )

    def describe(self) -> str:
        """``">= 0"``, ``"> 0"``, ``"in [0, 1)"``, or ``""`` when unbounded."""
        lo = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        hi = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if lo and hi:
            return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
        if hi:
            return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
        return ""


#: A number ``>= 0`` (noise scales, damping).
NonNegativeFloat = Annotated[float, Range(ge=0)]
#: A number ``> 0``.
PositiveFloat = Annotated[float, Range(gt=0)]
#: A solver tolerance: ``> 0`` (a tolerance of 0 or below never converges or always has).
Tolerance = Annotated[float, Range(gt=0)]
#: A probability in ``[0, 1]``.
Probability = Annotated[float, Range(ge=0, le=1)]
#: A ratio in ``[0, 1)`` (a share that must leave something).
Ratio = Annotated[float, Range(ge=0, lt=1)]
#: The scale of noise added to a gradient: ``>= 0`` and at most 1e6. A gradient's entries are far below
#: 1e6, so more noise hides nothing more, and norms of such noise overflow the float32 arithmetic of
#: I2F (on digits/convnet5, sigma 1e15 still gives finite I2F values, 1e25 overflows).
NoiseScale = Annotated[
    float, Range(ge=0, le=1e6, note="noise above 1e6 hides nothing more and overflows float32 norms")
]
#: A count of iterations, steps or items: an integer ``>= 1``.
Count = Annotated[int, Range(ge=1)]


# ------------------------------------------------------------------------------------ command-line text
class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 numbers: ``1e-3`` and ``1E5`` are floats, not strings."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class YamlDumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes the strings :class:`YamlLoader` would read as numbers (``'1e-3'``)."""


YamlDumper.yaml_implicit_resolvers = {first: list(rs) for first, rs in YamlLoader.yaml_implicit_resolvers.items()}


def parse_cli_value(text: str) -> Any:
    """A value typed on a command line, parsed once as a YAML scalar (YAML 1.2 numbers).

    ``"0.01"`` → ``0.01``, ``"1e-3"`` → ``0.001``, ``"true"`` → ``True``, ``"null"`` → ``None``,
    ``"[0.1, 0.01]"`` → a list, ``"gaussian"`` → ``"gaussian"``, ``""`` → ``""``. Text that YAML
    cannot parse stays a string (the typed check then names the key).
    """
    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=YamlLoader)  # noqa: S506  (a safe loader)
    except yaml.YAMLError:
        return text


# -------------------------------------------------------------------------------------------- hints
def strip_annotated(hint: Any) -> tuple[Any, Range | None]:
    """``Annotated[T, Range(...)]`` → ``(T, Range)``; any other hint → ``(hint, None)``."""
    if get_origin(hint) is Annotated:
        base, *meta = get_args(hint)
        return base, next((m for m in meta if isinstance(m, Range)), None)
    return hint, None


def field_hints(cls: type) -> dict[str, Any]:
    """The type hints of a dataclass (or class), ``Annotated`` ranges kept."""
    return typing.get_type_hints(cls, include_extras=True)


def _num(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    if not isinstance(x, float):
        return str(x)
    return f"{x:g}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _show(value: Any) -> str:
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(hint: Any) -> str:
    base, rng = strip_annotated(hint)
    origin = get_origin(base)
    bound = f" {rng.describe()}" if rng and rng.describe() else ""
    if base is int:
        return f"an integer{bound}"
    if base is float:
        return f"a number{bound}"
    if base is bool:
        return "true/false"
    if base is str:
        return "a string"
    if base is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(base))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(base))
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(base):
        return "a mapping"
    return getattr(base, "__name__", str(base))


def _example(base: Any, rng: Range | None, example: Any) -> Any:
    if _is_number(example) and math.isfinite(example) and (rng is None or rng.contains(example)):
        return example
    candidates = (1, 3, 0) if base is int else (0.01, 0.5, 1.0, 0.0, -1.0)
    return next((c for c in candidates if rng is None or rng.contains(c)), None)


def _number_fix(base: Any, rng: Range | None, value: Any, example: Any) -> str:
    if isinstance(value, str):
        try:
            parsed = parse_cli_value(value.strip())
        except Exception:  # pragma: no cover - parse_cli_value does not raise
            parsed = None
        if (
            _is_number(parsed)
            and math.isfinite(parsed)
            and (base is float or isinstance(parsed, int))
            and (rng is None or rng.contains(parsed))
        ):
            return f"write {value.strip()} without quotes"
    if base is int and isinstance(value, float) and value.is_integer() and (rng is None or rng.contains(value)):
        return f"write {int(value)}, without a decimal point"
    good = _example(base, rng, example)
    kind = "an integer" if base is int else "a number"
    fix = f"give {kind} like {_num(good)}" if good is not None else f"give {kind} {rng.describe() if rng else ''}"
    above = _is_number(value) and rng is not None and not rng.contains(value) and value > 0
    return f"{fix} ({rng.note})" if above and rng.note else fix


# ------------------------------------------------------------------------------------------- coercion
def coerce(value: Any, hint: Any, key: str = "", *, example: Any = _MISSING, json: bool = False) -> Any:
    """``value`` checked against ``hint`` and converted where the rules allow (int → float, list → tuple).

    Args:
        value: plain data (from YAML/JSON, a command line already parsed by :func:`parse_cli_value`, or Python).
        hint: a type hint: ``bool``, ``int``, ``float``, ``str``, ``None``, ``Any``, ``Literal[...]``, unions,
            ``list[T]``, ``tuple[T, ...]``, ``tuple[A, B]``, ``dict[str, T]``, ``Annotated[T, Range(...)]``.
        key: where the value sits, for the message.
        example: a good value to suggest in the fix (usually the parameter's default).
        json: ``Any`` must still be JSON data (no NaN, no objects), as in config files.

    Raises:
        ParamError: one line naming ``key``, the value, what was expected and the fix.
    """
    base, rng = strip_annotated(hint)
    origin = get_origin(base)
    if base is Any:
        if json:
            _check_json(value, key)
        return value
    if base is type(None):
        if value is not None:
            raise ParamError(key, f"expected null, got {_show(value)}")
        return None
    if origin in (Union, types.UnionType):
        options = get_args(base)
        if value is None:
            if type(None) in options:
                return None
            raise ParamError(key, f"expected {_describe(base)}, got null; give a value or leave the key out")
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(value, option, key, example=example, json=json)
            except ParamError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ParamError(key, f"expected {_describe(base)}, got {_show(value)}")
    if origin is Literal:
        allowed = get_args(base)
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise ParamError(key, f"expected {_describe(base)}, got {_show(value)}")
        return value
    if base is bool:
        if not isinstance(value, bool):
            fix = "; write true or false without quotes" if str(value).lower() in ("true", "false") else ""
            raise ParamError(key, f"expected true/false, got {_show(value)}{fix}")
        return value
    if base is int or base is float:
        return _coerce_number(value, base, rng, key, example)
    if base is str:
        if not isinstance(value, str):
            raise ParamError(key, f"expected a string, got {_show(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamError(key, f"expected a list, got {_show(value)}")
        args = get_args(base) or (Any, ...)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ParamError(key, f"expected a list of {len(args)} values, got {len(value)}: {_show(value)}")
            items = [coerce(v, a, f"{key}[{i}]", json=json) for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [coerce(v, args[0], f"{key}[{i}]", json=json) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamError(key, f"expected a mapping, got {_show(value)}")
        _, item = get_args(base) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ParamError(key, f"keys must be strings, got {_show(k)}")
            out[k] = coerce(v, item, f"{key}.{k}" if key else k, json=json)
        return out
    if dataclasses.is_dataclass(base):
        return build(base, value, key, json=json)
    if isinstance(base, type) and origin is None:
        if not isinstance(value, base):
            raise ParamError(key, f"expected {_describe(base)}, got {_show(value)}")
        return value
    return value  # hints the engine does not know (protocols, callables): the object's own code checks them


def _coerce_number(value: Any, base: type, rng: Range | None, key: str, example: Any) -> Any:
    expected = _describe(Annotated[base, rng] if rng else base)
    if isinstance(value, bool) or not (isinstance(value, int) or (base is float and isinstance(value, float))):
        raise ParamError(key, f"expected {expected}, got {_show(value)}; {_number_fix(base, rng, value, example)}")
    if base is float:
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not (rng and rng.allow_inf)):
            expected = expected.replace("a number", "a finite number", 1)
            raise ParamError(key, f"expected {expected}, got {value!r}; {_number_fix(base, rng, value, example)}")
    if rng is not None and not rng.contains(value):
        raise ParamError(key, f"expected {expected}, got {value!r}; {_number_fix(base, rng, value, example)}")
    return value


def _check_json(value: Any, key: str) -> None:
    """Free-form values must still be plain JSON data: no NaN or infinities, no objects."""
    if value is None or isinstance(value, (bool, int, str)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamError(key, f"expected a finite number, got {value!r}; JSON data has no NaN or infinity")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_json(v, f"{key}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ParamError(key, f"keys must be strings, got {_show(k)}")
            _check_json(v, f"{key}.{k}" if key else k)
        return
    raise ParamError(key, f"{type(value).__name__} is not JSON data")


def build(cls: type, data: Any, key: str = "", *, json: bool = False) -> Any:
    """Dataclass ``cls`` from a mapping, strictly: no unknown key, every field present, each value typed.

    Fields with a default may be left out only when ``cls`` lists them in ``__optional_keys__``
    (stored files name every field). Errors raised by ``cls`` itself for a nested value are prefixed
    with ``key``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Solver:
        ...     tol: Tolerance
        ...     max_iter: Count
        >>> build(Solver, {"tol": 1, "max_iter": 300})
        Solver(tol=1.0, max_iter=300)
        >>> build(Solver, {"tol": 1e-4, "max_iter": 0}, "estimate")
        Traceback (most recent call last):
        ...
        dglbench.params.ParamError: estimate.max_iter: expected an integer >= 1, got 0; give an integer like 1
    """
    if not isinstance(data, dict):
        raise ParamError(key, f"expected a mapping, got {_show(data)}")
    hints = field_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ParamError(
            f"{key}.{unknown[0]}" if key else str(unknown[0]), f"unknown key; allowed keys: {', '.join(names)}"
        )
    optional = set(getattr(cls, "__optional_keys__", ()))
    kwargs = {}
    for f in fields:
        sub = f"{key}.{f.name}" if key else f.name
        if f.name not in data:
            if f.name in optional:
                continue
            base = strip_annotated(hints[f.name])[0]
            nullable = get_origin(base) in (Union, types.UnionType) and type(None) in get_args(base)
            raise ParamError(sub, f"missing (required{'; null when not applicable' if nullable else ''})")
        default = f.default if f.default is not dataclasses.MISSING else _MISSING
        kwargs[f.name] = coerce(data[f.name], hints[f.name], sub, example=default, json=json)
    try:
        return cls(**kwargs)
    except DglbenchError as exc:
        if isinstance(exc, ParamError) or not key:
            raise
        raise ParamError(key, str(exc)) from None


def check_fields(obj: Any, owner: str = "", *, json: bool = False, skip: tuple[str, ...] = ()) -> None:
    """Check every field of a (frozen) dataclass instance against its hint, storing the converted values.

    Args:
        obj: the instance (call from ``__post_init__``).
        owner: who the parameters belong to, for messages (``"defense 'gaussian'"``); ``""`` names the
            fields as config keys.
        json: ``Any`` fields must hold JSON data.
        skip: fields the caller checks itself.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Cg:
        ...     tol: Tolerance = 1e-3
        ...     def __post_init__(self):
        ...         check_fields(self, "solver")
        >>> Cg(tol=1).tol
        1.0
        >>> Cg(tol=0)
        Traceback (most recent call last):
        ...
        dglbench.params.ParamError: solver parameter 'tol': expected a number > 0, got 0.0; give a number like 0.001
    """
    hints = field_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else _MISSING
        try:
            coerced = coerce(value, hints.get(f.name, Any), f.name, example=default, json=json)
        except ParamError as exc:
            raise ParamError(exc.key, exc.detail, owner) from None
        if coerced is not value:
            object.__setattr__(obj, f.name, coerced)
