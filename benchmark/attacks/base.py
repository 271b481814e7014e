"""The attack interface: ``run`` rebuilds one victim's images, ``run_many`` many victims' at once.

An attack is a frozen dataclass whose fields are its typed hyperparameters (defaults: the paper's).
Types are checked at construction by :mod:`dglbench.params` (a wrong type or range is a
:class:`~dglbench.errors.ConfigError`); numerical trouble during a run is not an exception but an
:class:`AttackResult` with ``status="failed"`` and a ``reason``.

What an attack sees is the model and the :class:`~dglbench.case.Payload`: the (defended) gradient,
the labels and batch size when the case grants them, and the case, whose loss and model mode the
attacker copies exactly. Images are rebuilt in the model's normalized input space; ``box=(lo, hi)``
gives the valid range per channel in that space (``((0 − mean)/std, (1 − mean)/std)``).

Subclasses implement :meth:`Attack._solve` for a list of prepared :class:`Victim` records that share
a case and a batch size, and return one :class:`Outcome` each.

Example:
    >>> import torch
    >>> from dglbench.attacks import create_attack
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x, y = torch.rand(1, 1, 2, 2), torch.tensor([1])
    >>> payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    >>> attack = create_attack("inverting_gradients", max_iterations=5)
    >>> result = attack.run(model, payload, (1, 2, 2), generator=torch.Generator().manual_seed(0))
    >>> result.images.shape, result.status, result.iterations
    (torch.Size([1, 1, 2, 2]), 'ok', 5)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from dglbench import params
from dglbench.attacks.labels import infer_labels
from dglbench.case import Case, Payload
from dglbench.errors import ConfigError, ShapeError
from dglbench.registry import Registry
from torch import Tensor, nn

__all__ = ["ATTACKS", "Attack", "AttackResult", "Box", "Outcome", "Victim", "best_restart", "check_fields", "subsample"]

Box = tuple[Tensor, Tensor]

#: The attack registry: ``ATTACKS.create("inverting_gradients", max_iterations=500)``.
ATTACKS: Registry = Registry("attack")


@dataclass(frozen=True)
class AttackResult:
    """One victim's reconstruction.

    Attributes:
        images: ``[B, C, H, W]`` rebuilt images in the model's normalized input space (detached).
        labels: ``[B]`` the labels used: given, inferred before the optimization, or optimized (DLG).
        label_source: ``"given"`` or ``"inferred"``.
        final_loss: the attack's objective at ``images`` (NaN when it failed before any step).
        iterations: optimizer steps actually run, summed over restarts.
        restarts: how many restarts were run; the one with the lowest final loss is returned.
        seconds: wall time spent on this victim (a share of the group's time when victims ran batched).
        loss_history: the returned restart's objective, subsampled to a few hundred points, for plots.
        status: ``"ok"`` or ``"failed"`` (numerical failure: NaN/Inf gradient or loss).
        reason: why it failed, else ``None``.
    """

    images: Tensor
    labels: Tensor
    label_source: Literal["given", "inferred"]
    final_loss: float
    iterations: int
    restarts: int
    seconds: float
    loss_history: list[float] = field(default_factory=list)
    status: Literal["ok", "failed"] = "ok"
    reason: str | None = None


@dataclass
class Victim:
    """One victim prepared for :meth:`Attack._solve`.

    Attributes:
        target: the payload gradient ``[d_θ]`` in the model's dtype and device.
        labels: ``[B]`` labels (given or inferred), or ``None`` when the attack optimizes them.
        label_source: ``"given"`` or ``"inferred"``.
        inits: ``[R, B, C, H, W]`` starting images, one per restart.
        label_inits: ``[R, B, K]`` starting label logits when ``labels`` is ``None``.
        case: the payload's case.
        failure: set when the payload itself is unusable (then the victim is not solved).
    """

    target: Tensor
    labels: Tensor | None
    label_source: Literal["given", "inferred"]
    inits: Tensor
    label_inits: Tensor | None
    case: Case
    failure: str | None = None


@dataclass
class Outcome:
    """What :meth:`Attack._solve` returns for one victim (the chosen restart)."""

    images: Tensor
    labels: Tensor
    final_loss: float
    iterations: int
    loss_history: list[float]
    failure: str | None = None


def check_fields(obj: Any) -> None:
    """Check every dataclass field against its type hint with :func:`dglbench.params.check_fields`.

    An int passes where a float is declared (stored as float); a string is not a number; NaN and
    infinities are refused unless the field's ``Range`` allows them.
    """
    params.check_fields(obj, f"attack {type(obj).__name__!r}")


def best_restart(final_losses: Sequence[float], failures: Sequence[str | None]) -> int:
    """Index of the restart with the lowest finite final loss among those that did not fail (0 if none)."""
    usable = [r for r, (loss, why) in enumerate(zip(final_losses, failures)) if why is None and math.isfinite(loss)]
    return min(usable, key=lambda r: final_losses[r]) if usable else 0


def _draw(shape: tuple[int, ...], generator: torch.Generator | None, ref: Tensor) -> Tensor:
    if generator is None:
        return torch.randn(shape, dtype=ref.dtype, device=ref.device)
    return torch.randn(shape, generator=generator, dtype=ref.dtype, device=generator.device).to(ref.device)


class Attack:
    """Base class of the attacks; subclasses are frozen dataclasses of hyperparameters.

    Subclasses declare a ``restarts: int`` field, may declare ``label_strategy`` (see
    :func:`~dglbench.attacks.labels.infer_labels`), set :attr:`infers_labels`, and implement :meth:`_solve`.
    """

    #: labels that are not given are inferred before the optimization (True) or optimized with it (False).
    infers_labels: ClassVar[bool] = True
    #: the client update rules (``Case.update``) the attack applies to.
    updates: ClassVar[tuple[str, ...]] = ("fedsgd",)
    #: the servers (``Case.server``) it applies to; an attack on the model as sent applies under both.
    servers: ClassVar[tuple[str, ...]] = ("honest", "malicious")
    #: a closed-form (analytic) reconstruction rather than an optimization; I2F, a model of optimization
    #: attacks, makes no prediction for it and reports make no correlation claim for it.
    closed_form: ClassVar[bool] = False
    restarts: int

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Range checks beyond the types; raise :class:`ConfigError`."""
        if self.restarts < 1:
            raise params.ParamError(
                "restarts",
                f"expected an integer >= 1, got {self.restarts!r}; give an integer like 1",
                f"attack {type(self).__name__!r}",
            )

    def applicable(self, case: Case, model: nn.Module | None = None) -> str | None:
        """Why the attack does not apply to ``case`` (and ``model``, when given), or ``None`` when it does.

        The suite skips an attack that does not apply and records this reason (status ``"skipped"``).

        Example:
            >>> from dglbench.attacks import create_attack
            >>> create_attack("dlg").applicable(Case(update="fedavg"))
            "dlg applies to update in ('fedsgd',), the case has update='fedavg'"
        """
        name = self.registered_name()
        if case.update not in self.updates:
            return f"{name} applies to update in {self.updates}, the case has update={case.update!r}"
        server = getattr(case, "server", "honest")
        if server not in self.servers:
            return f"{name} applies to server in {self.servers}, the case has server={server!r}"
        return None if model is None else self.applicable_model(model)

    def applicable_model(self, model: nn.Module) -> str | None:
        """Why the attack cannot attack ``model`` (an architecture it needs is missing), or ``None``."""
        return None

    @classmethod
    def registered_name(cls) -> str:
        """The name the attack is registered under (the class name when it is not registered)."""
        return next((n for n in ATTACKS if ATTACKS.get(n) is cls), cls.__name__)

    def _solve(self, model: nn.Module, victims: list[Victim], box: Box | None) -> list[Outcome]:
        raise NotImplementedError

    def run(
        self,
        model: nn.Module,
        payload: Payload,
        image_shape: Sequence[int],
        *,
        box: tuple[Tensor, Tensor] | None = None,
        generator: torch.Generator | None = None,
        init: Tensor | None = None,
    ) -> AttackResult:
        """Rebuild one victim's images from its payload.

        Args:
            model: the victim model (put in the case's mode here; its ``.grad`` is left untouched).
            payload: what the attacker received.
            image_shape: ``(C, H, W)``; ``payload.batch_size`` images (1 when unknown) are rebuilt.
            box: per-channel ``(lo, hi)`` tensors ``[C]`` of the valid range in normalized space.
            generator: seeded generator for the random starting images (and label logits).
            init: starting images ``[B, C, H, W]`` (or ``[R, B, C, H, W]``, one per restart) instead of random.
        """
        return self.run_many(
            model, [payload], image_shape, box=box, generator=[generator], inits=None if init is None else [init]
        )[0]

    def run_many(
        self,
        model: nn.Module,
        payloads: Sequence[Payload],
        image_shape: Sequence[int],
        *,
        box: tuple[Tensor, Tensor] | None = None,
        generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
        inits: Sequence[Tensor | None] | None = None,
    ) -> list[AttackResult]:
        """Rebuild many independent victims' images; equal to calling :meth:`run` on each (to float rounding).

        Victims that share a case and batch size are solved together where the attack can (see
        the attack's docstring); the results do not depend on the grouping. ``seconds`` in each
        result is its share of its group's wall time.

        Args:
            model: the victim model.
            payloads: one payload per victim.
            image_shape: ``(C, H, W)``.
            box: as in :meth:`run`, shared by all victims.
            generator: one generator consumed victim after victim (as a loop of :meth:`run` calls with
                it would), or one generator per victim.
            inits: per-victim starting images (``None`` entries draw random ones).
        """
        payloads = list(payloads)
        for payload in payloads:
            if (why := self.applicable(payload.case, model)) is not None:
                raise ConfigError(f"attack does not apply: {why}")
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3:
            raise ShapeError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
        gens = list(generator) if isinstance(generator, Sequence) else [generator] * len(payloads)
        init_list = [None] * len(payloads) if inits is None else list(inits)
        if len(gens) != len(payloads) or len(init_list) != len(payloads):
            raise ConfigError(f"give one generator and one init per payload ({len(payloads)} payloads)")
        ref = next(iter(model.parameters()), None)
        if ref is None:
            raise ConfigError(f"{type(model).__name__} has no parameters to attack")
        with torch.inference_mode(False), torch.enable_grad():
            lo_hi = self._box(box, shape[0], ref)
            victims = [self._prepare(model, p, shape, g, i, ref) for p, g, i in zip(payloads, gens, init_list)]
            results: list[AttackResult | None] = [None] * len(victims)
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, v in enumerate(victims):
                if v.failure is not None:
                    results[i] = self._failed_early(v)
                else:
                    groups.setdefault((v.case, v.inits.shape[1], v.labels is None), []).append(i)
            for (case, _, _), members in groups.items():
                case.prepare(model)
                start = time.perf_counter()
                outcomes = self._solve(model, [victims[i] for i in members], lo_hi)
                seconds = (time.perf_counter() - start) / len(members)
                for i, out in zip(members, outcomes):
                    results[i] = self._result(victims[i], out, seconds)
        return [r for r in results if r is not None]

    @staticmethod
    def _box(box: tuple[Tensor, Tensor] | None, channels: int, ref: Tensor) -> Box | None:
        if box is None:
            return None
        lo, hi = (torch.as_tensor(b, dtype=ref.dtype, device=ref.device).reshape(-1) for b in box)
        if lo.numel() == 1:
            lo, hi = lo.expand(channels), hi.expand(channels)
        if lo.numel() != channels or hi.numel() != channels:
            raise ShapeError(f"box bounds must have one value per channel ({channels}), got {lo.numel()}, {hi.numel()}")
        return lo.reshape(channels, 1, 1), hi.reshape(channels, 1, 1)

    def _prepare(
        self,
        model: nn.Module,
        payload: Payload,
        shape: tuple[int, ...],
        gen: torch.Generator | None,
        init: Tensor | None,
        ref: Tensor,
    ) -> Victim:
        d = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if payload.gradient.dim() != 1 or payload.gradient.numel() != d:
            raise ShapeError(
                f"payload gradient has shape {tuple(payload.gradient.shape)} but the model has {d} trainable parameters"
            )
        target = payload.gradient.detach().clone().to(device=ref.device, dtype=ref.dtype)
        batch = payload.batch_size or (payload.labels.numel() if payload.labels is not None else 1)
        if init is None:
            inits = _draw((self.restarts, batch, *shape), gen, ref)
        else:
            inits = init.detach().to(device=ref.device, dtype=ref.dtype)
            inits = inits.expand(self.restarts, *inits.shape) if inits.dim() == 4 else inits
            if tuple(inits.shape) != (self.restarts, batch, *shape):
                raise ShapeError(
                    f"init has shape {tuple(init.shape)}; expected {(batch, *shape)} "
                    f"or {(self.restarts, batch, *shape)}"
                )
            inits = inits.clone()
        failure = None if bool(torch.isfinite(target).all()) else "the payload gradient contains NaN or Inf entries"
        label_inits = None
        if payload.labels is not None:
            labels, source = payload.labels.to(ref.device).reshape(-1), "given"
        elif failure is not None:
            labels, source = torch.zeros(batch, dtype=torch.long, device=ref.device), "inferred"
        elif self.infers_labels:
            strategy = getattr(self, "label_strategy", "auto")
            labels, source = infer_labels(model, payload, strategy).to(ref.device), "inferred"
        else:
            was_training = model.training
            with torch.no_grad():  # eval: do not touch BatchNorm statistics
                classes = model.eval()(inits[0]).shape[-1]
            model.train(was_training)
            labels, source = None, "inferred"
            label_inits = _draw((self.restarts, batch, classes), gen, ref)
        return Victim(target, labels, source, inits, label_inits, payload.case, failure)  # type: ignore[arg-type]

    def _failed_early(self, v: Victim) -> AttackResult:
        labels = v.labels
        if labels is None:
            labels = torch.zeros(v.inits.shape[1], dtype=torch.long, device=v.inits.device)
        return AttackResult(
            images=v.inits[0].detach(),
            labels=labels,
            label_source=v.label_source,
            final_loss=math.nan,
            iterations=0,
            restarts=self.restarts,
            seconds=0.0,
            status="failed",
            reason=v.failure,
        )

    def _result(self, v: Victim, out: Outcome, seconds: float) -> AttackResult:
        return AttackResult(
            images=out.images.detach(),
            labels=out.labels.detach(),
            label_source=v.label_source,
            final_loss=float(out.final_loss),
            iterations=int(out.iterations),
            restarts=self.restarts,
            seconds=seconds,
            loss_history=list(out.loss_history),
            status="ok" if out.failure is None else "failed",
            reason=out.failure,
        )


def subsample(values: Tensor | Sequence[float], points: int = 256) -> list[float]:
    """At most about ``points`` evenly spaced values (always the last one), as Python floats, for plots."""
    values = values.tolist() if isinstance(values, Tensor) else list(values)
    if len(values) <= points:
        return [float(v) for v in values]
    stride = math.ceil(len(values) / points)
    picked = values[::stride]
    if (len(values) - 1) % stride:
        picked.append(values[-1])
    return [float(v) for v in picked]
