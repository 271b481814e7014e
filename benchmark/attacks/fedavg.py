"""Inverting Gradients against FedAvg: invert a weight update through the client's simulated local steps.

Geiping, Bauermeister, Dröge and Moeller, NeurIPS 2020 (arXiv 2003.14053), section 6 "Inverting weight
updates". Under ``Case(update="fedavg", ...)`` the client shares ``Δθ = θ_T − θ_0`` after ``T`` local SGD steps
(:class:`dglbench.gradients.LocalUpdate`). The attacker knows the update rule: it simulates the same local
steps on its candidate images, ``Δθ(x')``, through the unrolled steps, and minimizes
``1 − cos(Δθ(x'), Δθ̃) + α · TV(x')`` with the optimizer of :mod:`dglbench.attacks.inverting_gradients`
(signed Adam, step decay, box, restarts scored by the matching cost alone).

Where the defaults come from (``JonasGeiping/invertinggradients``, package ``inversefed``):

- the simulated update: ``loss_steps`` in ``inversefed/reconstruction_algorithms.py`` (``use_updates=True``:
  the difference of the weights), used by ``FedAvgReconstructor`` for both the objective and the restart score;
  its step ``i`` uses mini-batch ``i mod (B // b)``, the schedule :class:`~dglbench.gradients.LocalUpdate` uses.
- ``cost_fn='sim'`` (one global cosine), ``lr=0.1``, ``signed``, ``boxed``, ``lr_decay``, ``restarts=1``,
  ``max_iterations=8_000``, ``total_variation=1e-6``, ``randn`` start: the ``config`` of the notebook
  "Recovery from Weight Updates" (one image, ``local_steps=5``, ``local_lr=1e-4``: :class:`~dglbench.case.Case`'s
  FedAvg defaults). The notebook with 8 images and local steps uses ``lr=1``, ``restarts=8``,
  ``max_iterations=24_000`` with the same TV weight.

Labels that the payload does not carry are inferred from ``−Δθ``, which equals ``η · g`` for one full-batch step
and stays close to a positive multiple of ``g`` while ``η · T`` is small (the label rules read signs of the last
layer's rows); the reference assumes known labels.

Example:
    >>> import torch
    >>> from dglbench.attacks import create_attack
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import shared_update
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    >>> case = Case(update="fedavg", local_steps=2, local_lr=0.1)
    >>> x, y = torch.rand(1, 1, 2, 2), torch.tensor([1])
    >>> update = torch.cat([t.flatten() for t in shared_update(model, x, y, update=case.update_rule())])
    >>> attack = create_attack("ig_fedavg", max_iterations=10)
    >>> r = attack.run(model, make_payload(case, update, y), (1, 2, 2))
    >>> r.images.shape, r.status
    (torch.Size([1, 1, 2, 2]), 'ok')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from dglbench.attacks.base import ATTACKS, Victim
from dglbench.attacks.inverting_gradients import InvertingGradients
from dglbench.attacks.objectives import GradientMatcher
from dglbench.case import Case, Payload
from dglbench.errors import ConfigError
from dglbench.gradients import LocalUpdate, LossFn, functional_update
from torch import Tensor, nn

__all__ = ["InvertingGradientsFedAvg", "UpdateMatcher"]


class UpdateMatcher(GradientMatcher):
    """The attacker's simulated updates ``Δθ(x')`` ``[P, d_θ]`` for ``P`` problems: the client's local steps,
    unrolled (:func:`dglbench.gradients.functional_update`), vectorized over problems with ``vmap`` when it can.

    Args:
        model: the victim model, in the case's mode.
        loss_fn: the case's loss.
        update: the client's update rule.
        vectorize / one_hot: as :class:`~dglbench.attacks.objectives.GradientMatcher`.
    """

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, update: LocalUpdate, *, vectorize: bool = True, one_hot: bool = False
    ) -> None:
        super().__init__(model, loss_fn, vectorize=vectorize, one_hot=one_hot)
        self.update = update

    @classmethod
    def for_case(cls, model: nn.Module, case: Case, *, vectorize: bool = True) -> UpdateMatcher:
        update = case.update_rule()
        if update is None:
            raise ConfigError(f"UpdateMatcher needs a FedAvg case (update='fedavg'), got update={case.update!r}")
        return cls(model, case.loss_fn(), update, vectorize=vectorize, one_hot=case.loss == "mse")

    def _single(self, images: Tensor, labels: Tensor) -> Tensor:
        delta = functional_update(self.model, self.params, self.buffers, self.loss_fn, images, labels, self.update)
        return torch.cat([t.reshape(-1) for t in delta.values()])

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        """Simulated updates of the dummies ``images [P, B, C, H, W]`` with ``labels [P, B, ...]``."""
        if self.vectorize and images.shape[0] > 1:
            out = super().__call__(images, labels)  # vmap of _single; on failure it turns vectorize off
            if self.vectorize:
                return out
        return torch.stack([self._single(x, y) for x, y in zip(images, labels)])


@ATTACKS.register("ig_fedavg")
@dataclass(frozen=True)
class InvertingGradientsFedAvg(InvertingGradients):
    """Inverting Gradients on a FedAvg update: match ``Δθ(x')`` of the simulated local steps by one cosine.

    Parameters as :class:`~dglbench.attacks.InvertingGradients`; the defaults differ where the reference's
    weight-update notebook does (module docstring): ``max_iterations=8_000``, ``tv_weight=1e-6``.

    Example:
        >>> InvertingGradientsFedAvg().max_iterations, InvertingGradientsFedAvg.updates
        (8000, ('fedavg',))
    """

    #: the client update rules (``Case.update``) this attack applies to.
    updates: ClassVar[tuple[str, ...]] = ("fedavg",)

    max_iterations: int = 8_000
    tv_weight: float = 1e-6

    def matcher(self, model: nn.Module, case: Case) -> GradientMatcher:
        """The simulated FedAvg update under the case's rule."""
        return UpdateMatcher.for_case(model, case, vectorize=self.vectorize)

    def _prepare(
        self,
        model: nn.Module,
        payload: Payload,
        shape: tuple[int, ...],
        gen: torch.Generator | None,
        init: Tensor | None,
        ref: Tensor,
    ) -> Victim:
        # the label rules read the gradient's signs: hand them −Δθ (∝ g for small η·T), then restore the target
        flipped = dataclasses.replace(payload, gradient=-payload.gradient)
        victim = super()._prepare(model, flipped, shape, gen, init, ref)
        victim.target = -victim.target
        return victim
