"""The defense interface: a typed, frozen dataclass that maps the clean gradient to the shared one.

A defense ``M`` turns the victim's clean gradient ``g`` (a list of tensors aligned with the
trainable parameters, ``context.parameter_names``) into the gradient the victim shares,
``g̃ = M(g)``; the perturbation is ``δ = g̃ − g``. Stochastic defenses draw only from
``context.generator``, so the same seed gives the same output.

:func:`apply_defense` is how the benchmark calls a defense: it hands the defense copies of the
gradient and checks what comes back (one tensor per parameter, same shapes, dtypes and devices,
finite values). :func:`run_defense` also computes the clean gradient and returns flat vectors.

Example:
    >>> import torch
    >>> from dglbench.case import DefenseContext
    >>> from dglbench.defenses import create_defense, run_defense
    >>> model = torch.nn.Linear(4, 3)
    >>> context = DefenseContext(model, torch.randn(2, 4), torch.tensor([0, 2]))
    >>> out = run_defense(create_defense("gaussian", sigma=0.1), context)
    >>> out.clean.shape, out.perturbation.shape
    (torch.Size([15]), torch.Size([15]))
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from dglbench.case import DefenseContext
from dglbench.errors import ConfigError, DglbenchError, ShapeError
from dglbench.gradients import shared_update
from dglbench.params import ParamError, check_fields, coerce
from dglbench.registry import Registry
from torch import Tensor

__all__ = [
    "DEFENSES",
    "Defense",
    "DefenseFn",
    "DefendedGradient",
    "NoDefense",
    "adaptive_attacks_for",
    "apply_defense",
    "clean_gradients",
    "coerce_param",
    "defense_name",
    "describe_defense",
    "register_defense",
    "run_defense",
]

DEFENSES: Registry[type] = Registry("defense")


@runtime_checkable
class DefenseFn(Protocol):
    """Anything the benchmark accepts as a defense: ``defense(gradients, context) -> gradients``."""

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]: ...


def register_defense(name: str):
    """Class decorator: register a defense under ``name`` and record the name on the class."""

    def decorator(cls: type) -> type:
        cls.name = name  # type: ignore[attr-defined]
        return DEFENSES.register(name)(cls)

    return decorator


# ------------------------------------------------------------------------------------- parameter types
def coerce_param(owner: str, name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint of parameter ``name`` (:func:`dglbench.params.coerce`).

    Integers pass as floats; a string where a number is declared is an error (command-line text is
    parsed once, at the command line: :func:`dglbench.params.parse_cli_value`).

    Example:
        >>> coerce_param("gaussian", "sigma", 1, float)
        1.0
        >>> coerce_param("gaussian", "sigma", "0.5", float)
        Traceback (most recent call last):
        ...
        dglbench.params.ParamError: defense 'gaussian' parameter 'sigma': expected a number, got str '0.5'; ...
    """
    try:
        return coerce(value, hint, name)
    except ParamError as exc:
        raise ParamError(exc.key, exc.detail, f"defense {owner!r}") from None


# ----------------------------------------------------------------------------------------- the base class
@dataclass(frozen=True)
class Defense:
    """Base class of the built-in defenses: a frozen dataclass whose fields are its parameters.

    Subclasses are ``@dataclass(frozen=True)``, implement :meth:`__call__`, and may override
    :meth:`check` (checks that involve several parameters, with :meth:`require`) and :meth:`privacy`.
    Field values are checked against their type hints on construction by :mod:`dglbench.params`, ranges
    included (``sigma: Annotated[float, Range(ge=0)]``); a subclass that defines ``__post_init__`` must
    call ``super().__post_init__()``.
    """

    name: ClassVar[str] = ""
    #: registered attacks that know this family's mechanism (see :func:`adaptive_attacks_for`).
    adaptive_attacks: ClassVar[tuple[str, ...]] = ()
    #: the field that sets how strongly the defense perturbs (a report's strength axis), ``None`` when none does.
    strength: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        check_fields(self, f"defense {defense_name(self)!r}")
        self.check()

    def check(self) -> None:
        """Checks beyond each field's declared type and ``Range`` (e.g. between parameters); raise ConfigError."""

    def require(self, ok: bool, parameter: str, requirement: str) -> None:
        """For :meth:`check`: raise a one-line ConfigError unless ``ok`` (e.g. ``requirement=">= 0"``)."""
        if not ok:
            detail = f"expected a value {requirement}, got {getattr(self, parameter)!r}"
            raise ParamError(parameter, detail, f"defense {defense_name(self)!r}")

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        """The shared gradient ``g̃``, one tensor per entry of ``gradients`` (do not modify the inputs)."""
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        """The defense's parameters as a plain dict (for records)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def privacy(self) -> dict[str, Any] | None:
        """A formal privacy guarantee (e.g. DP ``epsilon``/``delta``), or ``None`` when there is none."""
        return None

    def adaptive_attack_params(self, attack: str) -> dict[str, Any] | None:
        """The parameters of adaptive attack ``attack`` (one of :attr:`adaptive_attacks`) for this instance.

        The defense's public mechanism parameters (e.g. DP-SGD's clip norm) and settings its mechanism calls
        for (e.g. a per-layer objective), never a budget; ``None`` when the attack does not apply to this
        instance (e.g. the sign attack on 8-bit quantization).
        """
        return {}

    def describe(self) -> dict[str, Any]:
        """``{"name", "params", "privacy"}`` — what a record stores about the defense."""
        return {"name": defense_name(self), "params": self.params, "privacy": self.privacy()}


def defense_name(defense: Any) -> str:
    """The registered name of a defense, else ``module:Class``."""
    cls = defense if isinstance(defense, type) or inspect.isroutine(defense) else type(defense)
    return getattr(cls, "name", "") or f"{cls.__module__}:{cls.__qualname__}"


def adaptive_attacks_for(defense: Any) -> list[tuple[str, dict[str, Any]]]:
    """The adaptive attacks that apply to ``defense``, as ``(registered attack name, parameters)`` pairs.

    Contract (for the attack suite): build each with ``create_attack(name, **{**budget, **params})``, where
    ``budget`` holds the suite's own settings (``max_iterations``, ``restarts``, ...) and ``params`` — the
    defense's public mechanism parameters the attack needs, never a budget — take precedence. Run them on
    the same payloads as the other attacks and count them in the per-victim worst case. The list is empty
    for a defense that declares nothing (``none``, a third-party defense without the attribute).

    What is read: the class attribute ``adaptive_attacks`` (a tuple of attack names) and, when the defense
    has it, the method ``adaptive_attack_params(name) -> dict | None`` (``None`` drops that attack for this
    instance; without the method every declared attack gets ``{}``). Any defense object may declare them,
    subclass of :class:`Defense` or not.

    Raises:
        ConfigError: a declared name is not a registered attack, or the declaration is not a tuple of names.

    Example:
        >>> from dglbench.defenses import create_defense
        >>> adaptive_attacks_for(create_defense("dp_sgd", clip=0.5))
        [('ig_clipped', {'clip': 0.5})]
        >>> adaptive_attacks_for(create_defense("quantization", bits=1))
        [('ig_sign', {})]
        >>> adaptive_attacks_for(create_defense("none"))
        []
    """
    from dglbench.attacks import ATTACKS

    declared = getattr(type(defense), "adaptive_attacks", getattr(defense, "adaptive_attacks", ()))
    if isinstance(declared, str) or not all(isinstance(n, str) for n in declared):
        raise ConfigError(
            f"defense {defense_name(defense)!r}: adaptive_attacks must be a tuple of attack names, got {declared!r}"
        )
    derive = getattr(defense, "adaptive_attack_params", None)
    out = []
    for attack in declared:
        if attack not in ATTACKS:
            raise ConfigError(
                f"defense {defense_name(defense)!r} declares adaptive attack {attack!r}, which is not registered; "
                f"available: {', '.join(ATTACKS.list())}"
            )
        params = derive(attack) if callable(derive) else {}
        if params is not None:
            out.append((attack, dict(params)))
    return out


def describe_defense(defense: Any) -> dict[str, Any]:
    """:meth:`Defense.describe` for any defense object, also those that do not subclass :class:`Defense`."""
    if hasattr(defense, "describe"):
        return defense.describe()
    if is_dataclass(defense):
        params = {f.name: getattr(defense, f.name) for f in fields(defense)}
    else:
        params = {k: v for k, v in vars(defense).items() if not k.startswith("_")}
    privacy = defense.privacy() if hasattr(defense, "privacy") else None
    return {"name": defense_name(defense), "params": params, "privacy": privacy}


@register_defense("none")
@dataclass(frozen=True)
class NoDefense(Defense):
    """Share the clean gradient unchanged (δ = 0): the undefended baseline."""

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        return [g.clone() for g in gradients]


# ------------------------------------------------------------------------------------------- applying
def apply_defense(defense: DefenseFn, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
    """Run ``defense`` on copies of ``gradients`` and check its output.

    Args:
        defense: any callable ``(gradients, context) -> gradients``.
        gradients: the clean gradient, one tensor per name in ``context.parameter_names``.
        context: the victim's model, batch, case and generator.

    Returns:
        The defended gradient, detached, one tensor per parameter.

    Raises:
        ShapeError: the output has the wrong number of tensors or a wrong shape (names the parameter).
        DglbenchError: the output has NaN/inf values, or another dtype or device than the input.
    """
    name = defense_name(defense)
    params = context.parameter_names
    if len(gradients) != len(params):
        raise ShapeError(f"got {len(gradients)} gradient tensors for {len(params)} trainable parameters")
    with torch.enable_grad():  # Soteria, DP-SGD and eigen-noise differentiate; inference_mode must be off
        out = defense([g.detach().clone() for g in gradients], context)
    if not isinstance(out, (list, tuple)) or len(out) != len(gradients):
        got = f"{len(out)} tensors" if isinstance(out, (list, tuple)) else type(out).__name__
        raise ShapeError(
            f"defense {name!r} returned {got}; return a list of {len(gradients)} tensors, one per parameter"
        )
    checked = []
    for param, g, h in zip(params, gradients, out):
        if not isinstance(h, Tensor) or h.shape != g.shape:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ShapeError(
                f"defense {name!r} returned shape {got} for parameter {param!r}, expected {tuple(g.shape)}"
            )
        if h.dtype != g.dtype or h.device != g.device:
            raise DglbenchError(
                f"defense {name!r} returned {h.dtype} on {h.device} for parameter {param!r}; "
                f"keep the input's {g.dtype} on {g.device}"
            )
        if not bool(torch.isfinite(h).all()):
            raise DglbenchError(f"defense {name!r} returned NaN or inf values for parameter {param!r}")
        checked.append(h.detach())
    return checked


@dataclass(frozen=True)
class DefendedGradient:
    """The clean and the defended gradient of one victim, as flat ``[d_θ]`` vectors."""

    clean: Tensor
    defended: Tensor

    @property
    def perturbation(self) -> Tensor:
        """``δ = g̃ − g``."""
        return self.defended - self.clean


def clean_gradients(context: DefenseContext) -> list[Tensor]:
    """The victim's clean shared quantity under the case's loss and update rule (the gradient under FedSGD,
    ``Δθ`` under FedAvg: :func:`dglbench.gradients.shared_update`), one tensor per ``context.parameter_names``."""
    named = dict(context.model.named_parameters())
    missing = [n for n in context.parameter_names if n not in named]
    if missing:
        raise ConfigError(f"context.parameter_names lists {missing[:3]}, which the model does not have")
    with torch.enable_grad():
        grads = shared_update(
            context.model,
            context.images,
            context.labels,
            context.case.loss_fn(),
            context.case.update_rule(),
            names=context.parameter_names,
        )
    return [g.detach() for g in grads]


def run_defense(defense: DefenseFn, context: DefenseContext) -> DefendedGradient:
    """Compute the victim's clean gradient, defend it, and return both flattened.

    Example:
        >>> import torch
        >>> from dglbench.case import DefenseContext
        >>> model = torch.nn.Linear(3, 2)
        >>> out = run_defense(NoDefense(), DefenseContext(model, torch.randn(1, 3), torch.tensor([1])))
        >>> float(out.perturbation.abs().max())
        0.0
    """
    clean = clean_gradients(context)
    defended = apply_defense(defense, clean, context)
    return DefendedGradient(torch.cat([g.reshape(-1) for g in clean]), torch.cat([g.reshape(-1) for g in defended]))
