"""Gradient defenses: one module per family, one registry, third-party defenses by path or entry point.

Registered names: ``none``, ``gaussian``, ``laplace``, ``dp_sgd``, ``pruning``, ``topk``,
``quantization``, ``soteria``, ``eigen_noise``. :func:`create_defense` also loads a class by
``"package.module:Class"`` path, or by the name of an entry point in group ``dglbench.defenses``
(see ``benchmark/defenses/README.md``).

Example:
    >>> from dglbench.defenses import DEFENSES, create_defense
    >>> create_defense("pruning", ratio=0.5).describe()
    {'name': 'pruning', 'params': {'ratio': 0.5}, 'privacy': None}
    >>> "dp_sgd" in DEFENSES.list()
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import inspect
from typing import Any, get_type_hints

from dglbench.defenses.base import (
    DEFENSES,
    DefendedGradient,
    Defense,
    DefenseFn,
    NoDefense,
    adaptive_attacks_for,
    apply_defense,
    clean_gradients,
    coerce_param,
    defense_name,
    describe_defense,
    register_defense,
    run_defense,
)
from dglbench.defenses.dp_sgd import DPSGD, clip_per_example, per_example_gradients
from dglbench.defenses.eigen_noise import EigenNoise
from dglbench.defenses.noise import GaussianNoise, LaplaceNoise
from dglbench.defenses.quantization import Quantization
from dglbench.defenses.soteria import Soteria
from dglbench.defenses.sparsification import GradientPruning, TopK
from dglbench.errors import ConfigError, UnknownNameError

ENTRY_POINT_GROUP = "dglbench.defenses"

__all__ = [
    "DEFENSES",
    "DPSGD",
    "ENTRY_POINT_GROUP",
    "DefendedGradient",
    "Defense",
    "DefenseFn",
    "EigenNoise",
    "GaussianNoise",
    "GradientPruning",
    "LaplaceNoise",
    "NoDefense",
    "Quantization",
    "Soteria",
    "TopK",
    "adaptive_attacks_for",
    "apply_defense",
    "clean_gradients",
    "clip_per_example",
    "create_defense",
    "defense_name",
    "describe_defense",
    "list_defenses",
    "per_example_gradients",
    "register_defense",
    "run_defense",
]


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_defenses(pattern: str = "*") -> list[str]:
    """Registered defense names and installed entry-point names matching ``pattern``."""
    import fnmatch

    return sorted(set(DEFENSES.list(pattern)) | {n for n in _entry_points() if fnmatch.fnmatchcase(n, pattern)})


def _resolve(spec: str) -> type:
    if spec in DEFENSES:
        return DEFENSES.get(spec)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownNameError(
                f"cannot import module {module_name!r} for defense {spec!r} ({exc}); put it on PYTHONPATH or install it"
            ) from None
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise UnknownNameError(f"module {module_name!r} has no {attr!r} (defense {spec!r})")
            obj = getattr(obj, part)
        return obj
    entry_points = _entry_points()
    if spec in entry_points:
        try:
            return entry_points[spec].load()
        except Exception as exc:
            raise UnknownNameError(
                f"entry point {spec!r} in group {ENTRY_POINT_GROUP!r} failed to load: {type(exc).__name__}: {exc}"
            ) from None
    names = sorted(set(DEFENSES.list()) | set(entry_points))
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownNameError(
        f"unknown defense {spec!r}; {hint}available: {', '.join(names)}; or give a 'package.module:Class' path, "
        f"or register an entry point in group {ENTRY_POINT_GROUP!r}"
    )


def _parameter_hints(factory: Any) -> tuple[dict[str, Any], bool]:
    """Parameter name → type hint (``Any`` when untyped), and whether ``**kwargs`` is accepted."""
    if dataclasses.is_dataclass(factory):
        hints = get_type_hints(factory, include_extras=True)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(factory) if f.init}, False
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, True
    try:
        hints = get_type_hints(factory.__init__ if isinstance(factory, type) else factory, include_extras=True)
    except Exception:
        hints = {}
    params, var_kw = {}, False
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = hints.get(p.name, Any)
    return params, var_kw


def create_defense(spec: str, **params: Any) -> Any:
    """Build a defense from a registered name, a ``module:Class`` path, or an entry-point name.

    Parameters are checked by name and against the class's type hints before construction
    (:mod:`dglbench.params`: an int passes as a float, a string is not a number).

    Args:
        spec: ``"gaussian"``, ``"mypkg.defenses:MyDefense"``, or an entry point in group ``dglbench.defenses``.
        **params: the defense's parameters.

    Raises:
        UnknownNameError: ``spec`` names no defense (the message lists the available ones).
        ConfigError: an unknown parameter name or a value of the wrong type (the message names it).

    Example:
        >>> create_defense("gaussian", sigma=0.1).sigma
        0.1
    """
    factory = _resolve(spec)
    hints, var_kw = _parameter_hints(factory)
    for key in params:
        if key not in hints and not var_kw:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"defense {spec!r} has no parameter {key!r}; {hint}its parameters are: {', '.join(hints) or 'none'}"
            )
    checked = {k: coerce_param(spec, k, v, hints.get(k, Any)) for k, v in params.items()}
    try:
        defense = factory(**checked)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for defense {spec!r}: {exc}") from None
    if not callable(defense):
        raise ConfigError(
            f"defense {spec!r} built a {type(defense).__name__}, which is not callable as (gradients, context)"
        )
    return defense
