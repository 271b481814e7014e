"""The threat model ("case") and the payload: exactly what the attacker sees.

A :class:`Case` states what the server (the attacker) and the user (the victim) share: the client's
update rule (FedSGD: one gradient; FedAvg: the update after local SGD steps), the loss and its
reduction, the model's mode, whether labels come with the gradient, and what the server knows about
buffers and batch size. The :class:`Payload` is built from a case and the defended shared quantity
and is the only thing an attack receives besides the model.

Example:
    >>> import torch
    >>> from dglbench.case import Case, make_payload
    >>> case = Case(labels="inferred")
    >>> payload = make_payload(case, torch.zeros(10), torch.tensor([3]))
    >>> payload.labels is None, payload.batch_size
    (True, 1)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from dglbench.errors import ConfigError
from dglbench.gradients import LocalUpdate, LossFn, make_loss
from dglbench.params import Count, Range, check_fields
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
        server: ``"honest"`` (the default): the client trains the model the benchmark builds. ``"malicious"``:
            the server modifies the model it sends (the client cannot tell), here by the imprint block of
            "Robbing the Fed" in front of it (:func:`dglbench.attacks.imprint.imprint_model`); the victim
            model, its shared quantity and I2F are those of the modified model.
        imprint_bins: under a malicious server, the bins of its imprint block (256; more bins separate more
            images of a large batch, at a larger layer: see :mod:`dglbench.attacks.imprint`). Ignored otherwise.
        imprint_scale: under a malicious server, the scale ``s`` of its imprint block's measuring layer (1.0:
            the paper's block). The server multiplies that layer's weights and biases by ``s`` and the layer after
            it by ``1/s``: the model computes the same function and the block's gradients grow by ``1/s``, above
            noise a defense adds at a fixed scale (a noise-aware server; not in the paper). Ignored otherwise.
        update: the client's update rule, known to the attacker. ``"fedsgd"`` (the default): the client
            shares its gradient ``g``. ``"fedavg"``: it runs ``local_epochs · local_steps`` local SGD steps of
            rate ``local_lr`` from ``θ_0`` on mini-batches of ``local_batch_size`` of its images in a fixed
            order and shares ``Δθ = θ_T − θ_0`` (schedule: :class:`dglbench.gradients.LocalUpdate`); the
            defense acts on ``Δθ``. The ``local_*`` fields are ignored under FedSGD.
        local_steps: SGD steps per local epoch (5: ``inversefed``'s weight-update notebooks).
        local_lr: the local learning rate η (1e-4: the same notebooks).
        local_batch_size: images per local step, a divisor of the batch size; ``None``: the whole batch.
        local_epochs: local epochs.
        bn_stats: what the attacker's copy of the model normalizes BatchNorm layers with (no effect on models
            without BatchNorm, nor on the client's update and so on I2F, which takes the client's ``K``).
            ``"known"`` (the default): exactly what the client used — in eval mode the running statistics,
            which are buffers of the global model the server sent; in train mode the statistics of the batch,
            which the attacker's candidate images supply. ``"batch"``: the server does not know the running
            statistics and its model normalizes with the statistics of its candidate batch (train-mode
            BatchNorm) whatever the client's mode. ``"unknown"``: the server does not know the running
            statistics and uses those of a fresh BatchNorm (mean 0, variance 1), in the client's mode.
            Under ``model_mode="train"`` the running statistics are not used, so all three are ``"known"``.

    Example:
        >>> Case(update="fedavg", local_steps=3, local_lr=0.1).update_rule()
        LocalUpdate(steps=3, lr=0.1, batch_size=None, epochs=1)
        >>> Case().update_rule() is None
        True
    """

    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    reduction: Literal["mean", "sum"] = "mean"
    model_mode: Literal["eval", "train"] = "eval"
    labels: Literal["given", "inferred"] = "given"
    server_knows_batch_size: bool = True
    server: Literal["honest", "malicious"] = "honest"
    imprint_bins: Annotated[int, Range(ge=2)] = 256
    imprint_scale: Annotated[float, Range(gt=0, le=1)] = 1.0
    update: Literal["fedsgd", "fedavg"] = "fedsgd"
    local_steps: Count = 5
    local_lr: Annotated[float, Range(gt=0)] = 1e-4
    local_batch_size: Count | None = None
    local_epochs: Count = 1
    bn_stats: Literal["known", "batch", "unknown"] = "known"

    def __post_init__(self) -> None:
        check_fields(self, "case", skip=("loss", "reduction", "model_mode", "labels", "bn_stats"))
        for name, allowed in (
            ("loss", ("cross_entropy", "mse")),
            ("reduction", ("mean", "sum")),
            ("model_mode", ("eval", "train")),
            ("labels", ("given", "inferred")),
            ("bn_stats", ("known", "batch", "unknown")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"case.{name} must be one of {allowed}, got {getattr(self, name)!r}")

    def update_rule(self) -> LocalUpdate | None:
        """The client's update rule for :mod:`dglbench.gradients`: ``None`` under FedSGD, else a ``LocalUpdate``."""
        if self.update == "fedsgd":
            return None
        return LocalUpdate(self.local_steps, self.local_lr, self.local_batch_size, self.local_epochs)

    def loss_fn(self) -> LossFn:
        """The loss both victim and attacker use: the attacker's model of the loss matches exactly."""
        return make_loss(self.loss, self.reduction)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Put ``model`` in the case's mode (in place) and return it."""
        return model.train(self.model_mode == "train")

    def attacker_model(self, model: nn.Module) -> nn.Module:
        """The attacker's copy of the client's ``model`` (in the case's mode): ``model`` itself, or a copy whose
        BatchNorm layers normalize as ``bn_stats`` says.

        Example:
            >>> bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).eval()
            >>> _ = bn[1].running_mean.fill_(3.0)
            >>> Case(bn_stats="unknown").attacker_model(bn)[1].running_mean.tolist()
            [0.0, 0.0]
            >>> Case(bn_stats="batch").attacker_model(bn)[1].training, Case().attacker_model(bn) is bn
            (True, True)
        """
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms or self.bn_stats == "known" or self.model_mode == "train":
            return model
        twin = copy.deepcopy(model)
        for module in twin.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if self.bn_stats == "unknown":
                    module.reset_running_stats()
                else:
                    module.train(True)
        if self.bn_stats == "batch":
            twin.training = True  # the functional forward then works on copies of the buffers it updates
        return twin


@dataclass(frozen=True)
class Payload:
    """What the attacker receives for one victim.

    Attributes:
        gradient: the defended shared quantity as a flat ``[d_θ]`` vector: the gradient ``g̃`` under FedSGD,
            the update ``Δθ̃`` under FedAvg (``case.update``).
        labels: the true labels when the case grants them, else ``None``.
        batch_size: the number of private images when the case grants it, else ``None``.
        case: the case the payload was made under.
    """

    gradient: Tensor
    labels: Tensor | None
    batch_size: int | None
    case: Case = field(default_factory=Case)


def make_payload(case: Case, defended_gradient: Tensor, labels: Tensor) -> Payload:
    """Build the payload for one victim from its defended shared quantity (gradient, or ``Δθ`` under FedAvg:
    :func:`dglbench.defenses.run_defense` computes it for the case) and true labels."""
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
    """What a defense may look at besides the shared quantity: the victim's model, batch and a seeded generator.

    The defense acts on what the case's client shares: the gradient under FedSGD, ``Δθ`` under FedAvg.

    Attributes:
        model: the victim model (in the case's mode).
        images: the victim's private batch ``[B, C, H, W]`` (normalized).
        labels: ``[B]``.
        case: the threat model (update rule, loss and reduction).
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
