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
from dglbench.model_state import parse_model_state
from dglbench.params import Count, NonNegativeFloat, ParamError, Tolerance, check_fields


def _freeze(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def _normalize_attacks(config: TrialConfig) -> None:
    """Make ``attacks`` the suite (``({"name", "params"}, ...)``) and ``attack`` / ``attack_params`` its first."""
    suite = config.attacks
    if not suite:
        suite = () if config.attack is None else ({"name": config.attack, "params": config.attack_params},)
    if not isinstance(suite, (list, tuple)):
        raise ConfigError(f"attacks must be a list of {{name, params}} mappings, got {suite!r}")
    specs = []
    for i, spec in enumerate(suite):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or set(spec) - {"name", "params"}:
            raise ConfigError(f"attacks[{i}] must be a mapping with a name and optional params, got {spec!r}")
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError(f"attacks[{i}].params must be a mapping, got {params!r}")
        specs.append({"name": spec["name"], "params": _freeze(params)})
    object.__setattr__(config, "attacks", tuple(specs))
    object.__setattr__(config, "attack", specs[0]["name"] if specs else None)
    object.__setattr__(config, "attack_params", dict(specs[0]["params"]) if specs else {})


#: relative damping of trials that name no damping: exact I2F at ε = 10⁻³ λ_max, beside ε = 0.
DEFAULT_EPS_RELATIVE = (1e-3,)


def _resolve_damping(config: TrialConfig) -> None:
    """Scalars as one-element tuples; absent damping keys resolved (see ``eps`` / ``eps_relative``)."""
    for name in ("eps", "eps_relative"):
        value = getattr(config, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            object.__setattr__(config, name, (value,))  # `eps: 0.1` is short for `eps: [0.1]`
    if config.eps is None and config.eps_relative is None:
        object.__setattr__(config, "eps", (0.0,))
        object.__setattr__(config, "eps_relative", DEFAULT_EPS_RELATIVE)
    elif config.eps is None:
        object.__setattr__(config, "eps", ())
    elif config.eps_relative is None:
        object.__setattr__(config, "eps_relative", ())


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
        attack / attack_params: a registered attack, or ``None`` for estimation only: the one-attack
            shorthand of ``attacks``.
        attacks: the attack suite, ``[{"name": ..., "params": {...}}, ...]``; when given it wins over
            ``attack`` (which then names its first attack). Each victim's privacy is the worst case over it.
        adaptive: also run the adaptive attacks the defense declares (attacks that know the defense).
        estimate: whether to compute the I2F lower bound and exact I2F.
        eps: absolute damping values ε of exact I2F (one term per entry).
        eps_relative: damping values as fractions of each victim's ``λ_max`` (ε = r · λ_max: the same place in
            every victim's spectrum). Neither given: ``eps: [0.0]`` (the minimum-norm solution) and
            ``eps_relative: [0.001]`` (:data:`DEFAULT_EPS_RELATIVE`); ``eps`` alone: absolute damping only, as
            before this key existed (so such trials keep their ids); both: both.
        lower_bound_tol / cg_tol / cg_max_iter: solver tolerances.
        case: the threat model (see :class:`dglbench.case.Case`), as a dict.
        model_state: the victim model's training state: ``"init"`` (as initialized; left out of the trial's
            dict so ids made before the key existed stay) or ``{trained_steps: k, lr, batch_size, seed}``, trained
            for ``k`` SGD steps on the split the victims are not drawn from (:mod:`dglbench.model_state`); the
            recipe's key (data, model, initialization, recipe and its source) enters the trial id, the trained
            weights' SHA-256 the records.
        seed: seeds the defense's generator and the attack's initialization.
        victims_per_step: victims vectorized together in one step.
        lpips: whether to try LPIPS (recorded as unavailable when its weights are absent).
        dtype: ``"float32"`` or ``"float64"``.
        save_images: save each victim's originals and reconstructions (uint8, ``images/<trial_id>/`` of the run
            folder); unset (left out of the trial's dict): on for images of at most 3×64×64 values.
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
    attacks: tuple[dict[str, Any], ...] = ()
    adaptive: bool = True
    estimate: bool = True
    eps: tuple[NonNegativeFloat, ...] | None = None
    eps_relative: tuple[NonNegativeFloat, ...] | None = None
    lower_bound_tol: Tolerance = 1e-3
    cg_tol: Tolerance = 1e-4
    cg_max_iter: Count = 300
    case: dict[str, Any] = field(default_factory=dict)
    model_state: str | dict[str, Any] = "init"
    seed: int = 0
    victims_per_step: Count = 4
    lpips: bool = True
    dtype: Literal["float32", "float64"] = "float32"
    save_images: bool | None = None

    def __post_init__(self) -> None:
        _resolve_damping(self)
        check_fields(self, json=True, skip=("attacks", "model_state"))  # types and ranges (dglbench.params)
        _normalize_attacks(self)
        if self.attack is None and not self.estimate:
            raise ConfigError("a trial with attack: null and estimate: false measures nothing; enable one of them")
        case_keys = {f.name for f in dataclasses.fields(Case)}
        unknown = sorted(set(self.case) - case_keys)
        if unknown:
            raise ConfigError(f"unknown case key {unknown[0]!r}; known keys: {', '.join(sorted(case_keys))}")
        Case(**self.case)  # validates the case
        parse_model_state(self.model_state)  # validates the training state

    # ---------------------------------------------------------------------------------------- (de)serialization
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Build from a plain dict; unknown keys are a :class:`ConfigError` naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown trial key {unknown[0]!r}; known keys: {', '.join(sorted(names))}")
        data = copy.deepcopy(data)
        if data.get("attacks") and ("attack" in data or "attack_params" in data):
            first = data["attacks"][0] if isinstance(data["attacks"][0], dict) else {}
            if (data.get("attack", first.get("name")), data.get("attack_params", first.get("params") or {})) != (
                first.get("name"),
                first.get("params") or {},
            ):
                raise ConfigError("give the attack suite as attacks: [...] or one attack as attack:, not both")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists).

        A suite of one attack (or none) is written in its shorthand (``attack`` / ``attack_params``), a
        longer one as ``attacks`` only; ``adaptive`` only when it is off. So a one-attack trial has the
        dict, and the id, it had before trials could run a suite.
        """
        data = dataclasses.asdict(self)
        if len(self.attacks) > 1:
            del data["attack"], data["attack_params"]
        else:
            del data["attacks"]
        if self.adaptive:
            del data["adaptive"]
        if self.model_state == "init":
            del data["model_state"]
        if self.save_images is None:
            del data["save_images"]
        if not self.eps_relative:
            del data["eps_relative"]  # absolute damping only: the dict (and id) of trials made before the key
        return _freeze(data)

    def with_overrides(self, overrides: dict[str, Any]) -> TrialConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"defense_params.sigma": 0.1}``."""
        data = self.to_dict()
        data.setdefault("adaptive", self.adaptive)
        data.setdefault("save_images", self.save_images)
        data.setdefault("eps_relative", list(self.eps_relative or ()))
        data.setdefault("model_state", self.model_state)
        heads = {dotted.split(".")[0] for dotted in overrides}
        if "eps" in heads and "eps_relative" not in heads:
            data.pop("eps_relative", None)  # setting eps alone means absolute damping only, as in a config file
        if heads & {"attack", "attack_params"}:
            data.pop("attacks", None)
            data.setdefault("attack", self.attack)
            data.setdefault("attack_params", dict(self.attack_params))
        elif "attacks" in heads:
            data.pop("attack", None), data.pop("attack_params", None)
            data.setdefault("attacks", [dict(a) for a in self.attacks])
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
        for i, spec in enumerate(self.attacks):
            try:
                create_attack(spec["name"], **spec["params"])
            except ParamError as exc:
                raise exc.under("attack_params" if len(self.attacks) == 1 else f"attacks[{i}].params") from None

    @property
    def attack_names(self) -> list[str]:
        """The names of the attacks the trial lists (without the defense's adaptive attacks)."""
        return [spec["name"] for spec in self.attacks]

    @property
    def case_obj(self) -> Case:
        return Case(**self.case)

    @property
    def trial_id(self) -> str:
        """Stable id: a hash of the resolved configuration and the dglbench version (and, for a trained
        ``model_state``, the key of its training recipe: :func:`dglbench.model_state.model_state_key`)."""
        from dglbench import __version__
        from dglbench.model_state import model_state_key

        content: dict[str, Any] = {"config": self.to_dict(), "version": __version__}
        key = model_state_key(self)
        if key is not None:
            content["model_state_key"] = key
        blob = json.dumps(content, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
