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
from dataclasses import dataclass, field
from typing import Any, Literal

from dglbench.case import Case
from dglbench.errors import ConfigError
from dglbench.params import Count, NonNegativeFloat, ParamError, Tolerance, check_fields

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
    eps: tuple[NonNegativeFloat, ...] = (0.1,)
    lower_bound_tol: Tolerance = 1e-3
    cg_tol: Tolerance = 1e-4
    cg_max_iter: Count = 300
    case: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    victims_per_step: Count = 4
    lpips: bool = True
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool):
            object.__setattr__(self, "eps", (self.eps,))  # `eps: 0.1` is short for `eps: [0.1]`
        check_fields(self, json=True)  # types and ranges from the hints (dglbench.params)
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
        try:
            create_defense(self.defense, **self.defense_params)
        except ParamError as exc:
            raise exc.under("defense_params") from None
        if self.attack is not None:
            try:
                create_attack(self.attack, **self.attack_params)
            except ParamError as exc:
                raise exc.under("attack_params") from None

    @property
    def case_obj(self) -> Case:
        return Case(**self.case)

    @property
    def trial_id(self) -> str:
        """Stable id: a hash of the resolved configuration and the dglbench version."""
        from dglbench import __version__

        blob = json.dumps({"config": self.to_dict(), "version": __version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
