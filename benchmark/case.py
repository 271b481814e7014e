"""The threat model ("case") and the payload: exactly what the attacker sees.

A :class:`Case` states what the server (the attacker) and the user (the victim) share: the loss
and its reduction, the model's mode, whether labels come with the gradient, and what the server
knows about buffers and batch size. The :class:`Payload` is built from a case and a defended
gradient and is the only thing an attack receives besides the model.

Example:
    >>> import torch
    >>> from dglbench.case import Case, make_payload
    >>> case = Case(labels="inferred")
    >>> payload = make_payload(case, torch.zeros(10), torch.tensor([3]))
    >>> payload.labels is None, payload.batch_size
    (True, 1)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from dglbench.errors import ConfigError
from dglbench.gradients import LossFn, make_loss
from torch import Tensor, nn

__all__ = ["Case", "Payload", "DefenseContext", "make_payload"]


@dataclass(frozen=True)
class Case:
    """What the server and the user share.

    Attributes:
        loss: the victim's loss, ``"cross_entropy"`` or ``"mse"``.
        reduction: how the loss reduces over the victim's batch, ``"mean"`` or ``"sum"``.
        model_mode: ``"eval"`` (BatchNorm uses running statistics, the default: train mode fails on
            one image) or ``"train"``.
        labels: ``"given"`` — the payload carries the true labels; ``"inferred"`` — the attacker
            must infer them (from the last layer's gradient, or jointly as in DLG).
        server_knows_batch_size: whether the payload tells the attacker how many images there are.
    """

    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    reduction: Literal["mean", "sum"] = "mean"
    model_mode: Literal["eval", "train"] = "eval"
    labels: Literal["given", "inferred"] = "given"
    server_knows_batch_size: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (
            ("loss", ("cross_entropy", "mse")),
            ("reduction", ("mean", "sum")),
            ("model_mode", ("eval", "train")),
            ("labels", ("given", "inferred")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"case.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def loss_fn(self) -> LossFn:
        """The loss both victim and attacker use: the attacker's model of the loss matches exactly."""
        return make_loss(self.loss, self.reduction)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in the case's mode (in place) and return it."""
        return model.train(self.model_mode == "train")


@dataclass(frozen=True)
class Payload:
    """What the attacker receives for one victim.

    Attributes:
        gradient: the defended gradient ``g̃`` as a flat ``[d_θ]`` vector.
        labels: the true labels when the case grants them, else ``None``.
        batch_size: the number of private images when the case grants it, else ``None``.
        case: the case the payload was made under.
    """

    gradient: Tensor
    labels: Tensor | None
    batch_size: int | None
    case: Case = field(default_factory=Case)


def make_payload(case: Case, defended_gradient: Tensor, labels: Tensor) -> Payload:
    """Build the payload for one victim from its defended gradient and true labels."""
    if defended_gradient.dim() != 1:
        raise ConfigError(f"the payload gradient must be a flat vector, got shape {tuple(defended_gradient.shape)}")
    return Payload(
        gradient=defended_gradient.detach(),
        labels=labels.detach().clone() if case.labels == "given" else None,
        batch_size=int(labels.shape[0]) if case.server_knows_batch_size else None,
        case=case,
    )


@dataclass
class DefenseContext:
    """What a defense may look at besides the gradient: the victim's model, batch and a seeded generator.

    Attributes:
        model: the victim model (in the case's mode).
        images: the victim's private batch ``[B, C, H, W]`` (normalized).
        labels: ``[B]``.
        case: the threat model (loss and reduction).
        generator: the seeded random generator stochastic defenses must draw from.
        parameter_names: names of the trainable parameters, aligned with the gradient list.
    """

    model: nn.Module
    images: Tensor
    labels: Tensor
    case: Case = field(default_factory=Case)
    generator: torch.Generator | None = None
    parameter_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.parameter_names:
            self.parameter_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if self.generator is None:
            self.generator = torch.Generator(device=self.images.device).manual_seed(0)
