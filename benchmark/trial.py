"""A trial: one fully resolved configuration (data, model, defense, attack, estimator, case).

A trial's id is a hash of its resolved configuration and the dglbench version, so the same
configuration always maps to the same record file and a re-run can skip it.

Example:
    >>> from dglbench.trial import TrialConfig
    >>> cfg = TrialConfig.from_dict({"defense": "gaussian", "defense_params": {"sigma": 0.01}})
    >>> cfg.trial_id == TrialConfig.from_dict(cfg.to_dict()).trial_id
    True
    >>> cfg.with_overrides({"defense_params.sigma": 0.1}).defense_params["sigma"]
    0.1
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from dglbench.case import Case
from dglbench.errors import ConfigError

SCHEMA_VERSION = 1


def _freeze(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


@dataclass(frozen=True)
class TrialConfig:
    """Everything that determines a trial's records.

    Attributes:
        dataset: a registered victim dataset (``dglbench datasets``).
        dataset_params: its arguments (``num_victims``, ``images_per_victim``, ``image_size``, ``seed``, ...).
        model: a timm model name (``dglbench models``); created with the dataset's classes and channels.
        model_params: extra ``timm.create_model`` arguments.
        init: initialization scheme (``dglbench inits``); ``init_seed`` seeds it.
        defense / defense_params: a registered defense, ``module:Class`` path or entry point, and its parameters.
        attack / attack_params: a registered attack, or ``None`` for estimation only.
        estimate: whether to compute the I2F lower bound and exact I2F.
        eps: damping values of exact I2F (one value per entry).
        lower_bound_tol / cg_tol / cg_max_iter: solver tolerances.
        case: the threat model (see :class:`dglbench.case.Case`), as a dict.
        seed: seeds the defense's generator and the attack's initialization.
        victims_per_step: victims vectorized together in one step.
        lpips: whether to try LPIPS (recorded as unavailable when its weights are absent).
        dtype: ``"float32"`` or ``"float64"``.
    """

    dataset: str = "digits"
    dataset_params: dict[str, Any] = field(default_factory=dict)
    model: str = "convnet5"
    model_params: dict[str, Any] = field(default_factory=dict)
    init: str = "uniform"
    init_seed: int = 0
    defense: str = "none"
    defense_params: dict[str, Any] = field(default_factory=dict)
    attack: str | None = "inverting_gradients"
    attack_params: dict[str, Any] = field(default_factory=dict)
    estimate: bool = True
    eps: tuple[float, ...] = (0.1,)
    lower_bound_tol: float = 1e-3
    cg_tol: float = 1e-4
    cg_max_iter: int = 300
    case: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    victims_per_step: int = 4
    lpips: bool = True
    dtype: str = "float32"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(TrialConfig)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = hints[f.name]
            origin = typing.get_origin(expected) or expected
            if f.name == "eps":
                values = [value] if isinstance(value, (int, float)) else value
                if not (
                    isinstance(values, (list, tuple))
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values)
                ):
                    raise ConfigError(f"eps must be a number >= 0 or a list of such numbers, got {value!r}")
                object.__setattr__(self, "eps", tuple(float(v) for v in values))
                continue
            if origin is dict and not isinstance(value, dict):
                raise ConfigError(f"{f.name} must be a mapping, got {type(value).__name__} {value!r}")
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif expected in (int, float, bool, str) and not isinstance(value, expected):
                raise ConfigError(f"{f.name} must be {expected.__name__}, got {type(value).__name__} {value!r}")
            elif expected is int and isinstance(value, bool):
                raise ConfigError(f"{f.name} must be int, got bool {value!r}")
        if self.attack is not None and not isinstance(self.attack, str):
            raise ConfigError(f"attack must be a name or null, got {self.attack!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.attack is None and not self.estimate:
            raise ConfigError("a trial with attack: null and estimate: false measures nothing; enable one of them")
        case_keys = {f.name for f in dataclasses.fields(Case)}
        unknown = sorted(set(self.case) - case_keys)
        if unknown:
            raise ConfigError(f"unknown case key {unknown[0]!r}; known keys: {', '.join(sorted(case_keys))}")
        Case(**self.case)  # validates the case

    # ---------------------------------------------------------------------------------------- (de)serialization
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError` naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown trial key {unknown[0]!r}; known keys: {', '.join(sorted(names))}")
        return cls(**copy.deepcopy(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        return _freeze(dataclasses.asdict(self))

    def with_overrides(self, overrides: dict[str, Any]) -> TrialConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"defense_params.sigma": 0.1}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            head, *rest = dotted.split(".")
            if head not in data:
                raise ConfigError(f"unknown trial key {head!r} in {dotted!r}")
            if not rest:
                data[head] = value
                continue
            target = data[head]
            if not isinstance(target, dict):
                raise ConfigError(f"{head!r} is not a mapping, so {dotted!r} cannot set a field inside it")
            for part in rest[:-1]:
                target = target.setdefault(part, {})
            target[rest[-1]] = value
        return TrialConfig.from_dict(data)

    def validate(self) -> None:
        """Resolve every name and build every component (data module, model name, init, defense, attack).

        Loads no data and runs nothing; an unknown name or a bad parameter raises a one-line
        :class:`~dglbench.errors.DglbenchError` before any output is written.
        """
        import timm
        from dglbench import models  # noqa: F401  (registers the classic nets with timm)
        from dglbench.attacks import create_attack
        from dglbench.datamodules import DATAMODULES, create_datamodule
        from dglbench.defenses import create_defense
        from dglbench.models.init import INITIALIZATIONS

        DATAMODULES.get(self.dataset)
        create_datamodule(self.dataset, **self.dataset_params)  # checks the arguments; loads nothing
        INITIALIZATIONS.get(self.init)
        if not timm.is_model(self.model):
            raise ConfigError(f"unknown model {self.model!r}; list them with `dglbench models PATTERN`")
        create_defense(self.defense, **self.defense_params)
        if self.attack is not None:
            create_attack(self.attack, **self.attack_params)

    @property
    def case_obj(self) -> Case:
        return Case(**self.case)

    @property
    def trial_id(self) -> str:
        """Stable id: a hash of the resolved configuration and the dglbench version."""
        from dglbench import __version__

        blob = json.dumps({"config": self.to_dict(), "version": __version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
