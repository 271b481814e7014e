"""GradInversion (Yin, Mallya, Vahdat, Alvarez, Kautz and Molchanov, "See through Gradients", CVPR 2021).

Batch recovery through BatchNorm networks (arXiv 2104.07586): labels first (section 3.1, the classes whose
last-layer weight-gradient rows reach the most negative minimum, :func:`~dglbench.attacks.labels.yin_labels`),
then a group of ``G`` candidate batches from different random seeds optimized in parallel with Adam on

``α_grad ½‖g(x') − g̃‖² + α_TV TV(x') + α_ℓ2 ½ mean(x'²) + α_BN R_BN(x') + α_group ‖x' − E(x')‖²``

- TV in Inverting Gradients' form (mean absolute difference of neighbouring pixels; breaching's convolution
  also counts the border against zero padding);
- the gradient term and the ℓ2 term in breaching's scaling (``Euclidean``: ``0.5 · Σ (g − g̃)²``;
  ``NormRegularization``, p = 2: ``1/p · mean(x^p)``), so that its weights mean what they mean there;
- ``R_BN = Σ_l m_l (‖μ_l(x') − μ_l‖₂ + ‖σ²_l(x') − σ²_l‖₂)``: the batch mean and variance of each BatchNorm layer's
  input under the candidate batch against the running statistics the model carries (section 3.2, after
  DeepInversion), the first layer weighted ``m_1 = 10`` and the others 1 (breaching's ``DeepInversion``
  regularizer, ``first_bn_multiplier=10``); the server sent those buffers, so it knows them (``Case(bn_stats=...)``
  governs what the attacker's copy uses).
- group consistency (section 3.3): ``E(x')`` is the group's consensus, here the pixel-wise mean of the ``G``
  candidates (the paper registers them to each other with RANSAC-flow first; without registration the mean is
  the plain average, which this implementation uses), detached, recomputed every step.
- Langevin updates: Gaussian noise of scale ``langevin · lr_t`` added to each step's image gradient.

Defaults from breaching's implementation of the paper (``breaching/config/attack/seethroughgradients.yaml``):
``α_grad = 1e-4`` (``objective: euclidean, scale: 1e-4``), Adam ``lr = 0.1``, unsigned, boxed, 20 000 iterations,
cosine decay after a 50-step warm-up, ``α_TV = 1e-4``, ``α_ℓ2 = 1e-6``, ``α_BN = 0.1``; from the paper (through the
comments of that file, which does not implement them): ``langevin = 0.2`` and ``α_group = 0.01``. The size of the
group is the attack's ``restarts`` (4 here; the paper uses several seeds per batch); the returned batch is the
group member of least gradient-matching cost (the attacker's own loss, never the private images).

Example:
    >>> import torch
    >>> from dglbench.attacks import create_attack
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    >>> x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    >>> payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    >>> r = create_attack("gradinversion", max_iterations=10).run(model, payload, (1, 4, 4))
    >>> r.images.shape, r.restarts, r.status
    (torch.Size([2, 1, 4, 4]), 4, 'ok')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from dglbench.attacks.base import ATTACKS, Attack, Box, Outcome, Victim, best_restart, subsample
from dglbench.attacks.objectives import GradientMatcher, squared_distance, total_variation
from dglbench.errors import ConfigError
from torch import Tensor, nn

__all__ = ["GradInversion", "bn_statistics_loss", "cosine_schedule"]


def cosine_schedule(step: int, steps: int, warmup: int) -> float:
    """The step-size factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``.

    Example:
        >>> [round(cosine_schedule(s, 10, 2), 3) for s in (0, 1, 5, 9)]
        [0.5, 0.976, 0.5, 0.024]
    """
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return warm * 0.5 * (1 + math.cos(math.pi * step / steps))


def bn_statistics_loss(model: nn.Module, images: Tensor, first_multiplier: float = 1.0) -> Tensor:
    """``R_BN`` per problem for ``images [P, B, C, H, W]``: ``Σ_l m_l (‖μ_l − μ̄_l‖₂ + ‖σ²_l − σ̄²_l‖₂)`` ``[P]``.

    ``μ_l, σ²_l`` are the per-channel mean and (biased) variance of BatchNorm layer ``l``'s input over one problem's
    batch; ``μ̄_l, σ̄²_l`` its running statistics; ``m_1 = first_multiplier`` weighs the first layer (in the order
    the forward pass reaches them) and ``m_l = 1`` the others. The model runs once on all problems' images (its
    mode unchanged; in eval mode every image is normalized on its own, so problems do not mix).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    captured: list[tuple[nn.Module, Tensor]] = []
    handles = [m.register_forward_hook(lambda mod, inp, _out: captured.append((mod, inp[0]))) for m in norms]
    problems, batch = images.shape[:2]
    try:
        model(images.reshape(problems * batch, *images.shape[2:]))
    finally:
        for h in handles:
            h.remove()
    loss = images.new_zeros(problems)
    for i, (module, features) in enumerate(captured):
        if module.running_mean is None or module.running_var is None:
            continue
        f = features.reshape(problems, batch, features.shape[1], -1).transpose(1, 2).flatten(2)  # [P, C, B·HW]
        mean, var = f.mean(-1), f.var(-1, unbiased=False)
        term = (mean - module.running_mean).norm(dim=-1) + (var - module.running_var).norm(dim=-1)
        loss = loss + (first_multiplier if i == 0 else 1.0) * term
    return loss


@ATTACKS.register("gradinversion")
@dataclass(frozen=True)
class GradInversion(Attack):
    """GradInversion: gradient matching with BatchNorm-statistics and group-consistency priors, Langevin Adam.

    Yin et al., CVPR 2021; defaults and sources in the module docstring. FedSGD.

    Args:
        max_iterations: Adam steps (20 000).
        lr: Adam step size (0.1), cosine decay after ``warmup`` steps (50).
        gradient_weight: ``α_grad`` on half the squared L2 gradient distance (1e-4).
        tv_weight / l2_weight / bn_weight / group_weight: ``α_TV`` (1e-4), ``α_ℓ2`` (1e-6), ``α_BN`` (0.1),
            ``α_group`` (0.01).
        first_bn_multiplier: the weight of the first BatchNorm layer inside ``R_BN`` (10).
        langevin: scale of the Gaussian noise added to each step's gradient, times the current step size (0.2).
        restarts: the group's size ``G`` (4).
        boxed: clamp to the valid pixel range after each step (True).
        label_strategy: "yin" (the paper's), "llg", "idlg" or "auto".

    ``final_loss`` is the returned member's ``‖g(x') − g̃‖²``.

    Example:
        >>> GradInversion().bn_weight, GradInversion().restarts
        (0.1, 4)
    """

    max_iterations: int = 20_000
    lr: float = 0.1
    warmup: int = 50
    gradient_weight: float = 1e-4
    tv_weight: float = 1e-4
    l2_weight: float = 1e-6
    bn_weight: float = 0.1
    group_weight: float = 0.01
    first_bn_multiplier: float = 10.0
    langevin: float = 0.2
    restarts: int = 4
    boxed: bool = True
    label_strategy: Literal["auto", "idlg", "llg", "yin"] = "yin"

    def check(self) -> None:
        super().check()
        weights = (self.gradient_weight, self.tv_weight, self.l2_weight, self.bn_weight, self.group_weight,
                   self.first_bn_multiplier)  # fmt: skip
        if self.max_iterations < 1 or self.lr <= 0 or self.warmup < 0 or self.langevin < 0 or min(weights) < 0:
            raise ConfigError(
                "gradinversion needs max_iterations >= 1, lr > 0, warmup >= 0, langevin >= 0 and weights >= 0; got "
                f"{self.max_iterations}, {self.lr}, {self.warmup}, {self.langevin}, {weights}"
            )

    def _solve(self, model: nn.Module, victims: list[Victim], box: Box | None) -> list[Outcome]:
        matcher = GradientMatcher.for_case(model, victims[0].case)
        return [self._victim(model, matcher, v, box) for v in victims]

    def _victim(self, model: nn.Module, matcher: GradientMatcher, v: Victim, box: Box | None) -> Outcome:
        assert v.labels is not None
        group = v.inits.shape[0]
        labels, target = v.labels.expand(group, -1), v.target.expand(group, -1)
        # the Langevin noise is seeded by the victim's (seeded) starting images: reruns are identical
        seed = int(v.inits.detach().double().abs().sum().mul(1e6).item()) % 2**31
        gen = torch.Generator(device=v.inits.device).manual_seed(seed)
        x = v.inits.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.lr)
        history, failure, steps = [], None, 0
        for step in range(self.max_iterations):
            for group_ in optimizer.param_groups:
                group_["lr"] = self.lr * cosine_schedule(step, self.max_iterations, self.warmup)
            loss = self._objective(model, matcher, x, labels, target)
            (grad,) = torch.autograd.grad(loss.sum(), [x])
            if self.langevin > 0:
                noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
                grad = grad + self.langevin * optimizer.param_groups[0]["lr"] * noise
            x.grad = grad
            optimizer.step()
            if box is not None and self.boxed:
                with torch.no_grad():
                    x.clamp_(min=box[0], max=box[1])
            history.append(loss.detach())
            steps = step + 1
            if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(loss).all()):
                failure = f"the objective or the images became NaN/Inf at step {step}"
                break
        with torch.no_grad():
            x_final = torch.nan_to_num(x.detach())
        costs = squared_distance(matcher(x_final, labels), target).detach().tolist()
        best = best_restart(costs, [failure] * group if failure else [None] * group)
        trace = torch.stack(history)[:, best] if history else torch.empty(0)
        return Outcome(x_final[best], v.labels, costs[best], steps * group, subsample(trace), failure)

    def _objective(self, model: nn.Module, matcher: GradientMatcher, x: Tensor, labels: Tensor, target: Tensor):
        value = self.gradient_weight * 0.5 * squared_distance(matcher(x, labels), target)
        if self.tv_weight > 0:
            value = value + self.tv_weight * total_variation(x)
        if self.l2_weight > 0:
            value = value + self.l2_weight * 0.5 * x.flatten(1).square().mean(-1)
        if self.bn_weight > 0:
            value = value + self.bn_weight * bn_statistics_loss(model, x, self.first_bn_multiplier)
        if self.group_weight > 0 and x.shape[0] > 1:
            consensus = x.detach().mean(0, keepdim=True)
            value = value + self.group_weight * (x - consensus).flatten(1).square().sum(-1)
        return value
