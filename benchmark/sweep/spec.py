"""Sweep specs in the W&B sweep format, expanded into trials.

The same YAML file runs locally (``dglbench sweep run SPEC``) and as a W&B sweep whose agents call
``dglbench run --key=value ...``::

    name: gaussian-noise
    program: dglbench
    command: [dglbench, run, "${args}"]
    method: grid                 # grid | random (random needs run_cap)
    parameters:
      model: {values: [convnet5, mlp_2x256]}
      defense: {value: gaussian}
      defense_params.sigma: {values: [0.001, 0.01, 0.1]}
      dataset_params: {value: {num_victims: 4, image_size: 16}}

Keys are trial keys (:class:`~dglbench.trial.TrialConfig`), dotted for nested arguments. Every
trial is built and its names are resolved before anything runs; swept values are typed by the same
rules as a config file (:mod:`dglbench.params`: ``'0.01'`` in quotes is not a number), and an unknown
key or a bad value is a :class:`~dglbench.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dglbench.errors import ConfigError
from dglbench.io import load_yaml_mapping
from dglbench.params import Count, ParamError, Probability, coerce
from dglbench.trial import TrialConfig

__all__ = ["SweepSpec", "load_spec", "resolve_spec_path"]

_TOP_KEYS = {
    "name",
    "description",
    "program",
    "command",
    "method",
    "parameters",
    "metric",
    "run_cap",
    "early_terminate",
}
_PARAM_KEYS = {"value", "values", "distribution", "min", "max", "probabilities"}
_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: its name, method and parameter axes."""

    name: str
    method: str
    parameters: dict[str, dict[str, Any]]
    run_cap: int | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def trials(self, seed: int = 0) -> list[TrialConfig]:
        """The sweep's trials, in a stable order (grid: row-major over the keys as written)."""
        fixed = {k: p["value"] for k, p in self.parameters.items() if "value" in p}
        axes = {k: p for k, p in self.parameters.items() if "value" not in p}
        if self.method == "grid":
            combos = [dict(zip(axes, vs)) for vs in itertools.product(*(p["values"] for p in axes.values()))]
        else:
            rng = random.Random(seed)
            combos = [{k: _sample(k, p, rng) for k, p in axes.items()} for _ in range(int(self.run_cap or 0))]
        out, seen = [], set()
        for combo in combos:
            cfg = _build({**fixed, **combo})
            if cfg.trial_id not in seen:  # a random sweep may draw the same trial twice
                seen.add(cfg.trial_id)
                out.append(cfg)
        return out


def _sample(key: str, p: dict[str, Any], rng: random.Random) -> Any:
    if "values" in p and "probabilities" in p:
        return rng.choices(p["values"], weights=p["probabilities"])[0]
    if "values" in p:
        return rng.choice(p["values"])
    dist = p.get("distribution", "uniform")
    lo, hi = p["min"], p["max"]
    if dist == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if dist == "uniform":
        return rng.uniform(lo, hi)
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    raise ConfigError(
        f"parameter {key!r}: distribution {dist!r} is not supported (uniform, int_uniform, log_uniform_values)"
    )


def _build(flat: dict[str, Any]) -> TrialConfig:
    plain = {k: v for k, v in flat.items() if "." not in k}
    dotted = {k: v for k, v in flat.items() if "." in k}
    return TrialConfig.from_dict(plain).with_overrides(dotted)


def resolve_spec_path(spec: str | Path) -> Path:
    """A spec path, or the name of a shipped spec (``benchmark/configs/<name>.yaml``)."""
    path = Path(spec)
    if path.exists():
        return path
    shipped = _CONFIG_DIR / f"{spec}.yaml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in _CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"no sweep spec {str(spec)!r}: not a file and not a shipped spec ({', '.join(names)})")


def _typed(where: str, value: Any, hint: Any, key: str) -> Any:
    """``value`` checked by :func:`dglbench.params.coerce`; an error names the spec and the key."""
    try:
        return coerce(value, hint, key)
    except ParamError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_parameter(where: str, key: str, p: Any) -> None:
    """One parameter's fields (W&B sweep format), each error naming the parameter."""
    extra = sorted(set(p) - _PARAM_KEYS) if isinstance(p, dict) else []
    if extra:
        raise ConfigError(
            f"{where}: parameter {key!r}: unknown field {extra[0]!r} (allowed: {', '.join(sorted(_PARAM_KEYS))})"
        )
    if not isinstance(p, dict) or not ({"value", "values"} & set(p) or {"min", "max"} <= set(p)):
        raise ConfigError(f"{where}: parameter {key!r} needs 'value', 'values' or 'min' and 'max' (W&B sweep format)")
    if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
        raise ConfigError(f"{where}: parameter {key!r}: 'values' must be a non-empty list")
    if "probabilities" in p:
        probs = _typed(where, p["probabilities"], list[Probability], f"parameters.{key}.probabilities")
        if not ("values" in p and len(probs) == len(p["values"]) and math.isclose(sum(probs), 1.0, abs_tol=1e-6)):
            raise ConfigError(
                f"{where}: parameter {key!r}: 'probabilities' must be one weight >= 0 per value, summing to 1"
            )
    if "value" not in p and "values" not in p:
        lo = _typed(where, p["min"], float, f"parameters.{key}.min")
        hi = _typed(where, p["max"], float, f"parameters.{key}.max")
        if lo > hi:
            raise ConfigError(f"{where}: parameter {key!r}: 'min' and 'max' must be numbers with min <= max")
        if p.get("distribution") == "log_uniform_values" and lo <= 0:
            raise ConfigError(f"{where}: parameter {key!r}: log_uniform_values needs min > 0, got {lo!r}")


def load_spec(spec: str | Path | dict[str, Any], *, validate: bool = True) -> SweepSpec:
    """Parse and check a sweep spec (a path, a shipped spec name, or a dict)."""
    if isinstance(spec, dict):
        data, where = spec, "spec"
    else:
        path = resolve_spec_path(spec)
        where = str(path)
        data = load_yaml_mapping(path, "sweep spec")
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a sweep spec is a mapping with 'method' and 'parameters'")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key {unknown[0]!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    method = data.get("method", "grid")
    if method not in ("grid", "random"):
        raise ConfigError(f"{where}: method must be 'grid' or 'random', got {method!r}")
    params = data.get("parameters") or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: 'parameters' must be a non-empty mapping of trial keys")
    trial_keys = set(TrialConfig.__dataclass_fields__)
    for key, p in params.items():
        if key.split(".")[0] not in trial_keys:
            raise ConfigError(f"{where}: unknown parameter key {key!r}; trial keys: {', '.join(sorted(trial_keys))}")
        _check_parameter(where, key, p)
        if method == "grid" and "value" not in p and "values" not in p:
            raise ConfigError(f"{where}: parameter {key!r}: a grid sweep needs 'value' or 'values'")
    run_cap = data.get("run_cap")
    if method == "random" and run_cap is None:
        raise ConfigError(f"{where}: a random sweep needs run_cap: N (the number of trials)")
    if run_cap is not None:
        run_cap = _typed(where, run_cap, Count, "run_cap")
    sweep = SweepSpec(str(data.get("name", Path(where).stem)), method, params, run_cap, data)
    if validate:
        for cfg in sweep.trials():
            cfg.validate()  # every name resolved and every parameter typed before anything runs
    return sweep
