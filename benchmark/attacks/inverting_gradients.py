"""Inverting Gradients (Geiping, Bauermeister, Dröge and Moeller, NeurIPS 2020).

``x̂ = argmin_x' Σ_l (1 − cos(g_l(x'), g̃_l)) + α · TV(x')``, optimized by Adam on the *sign* of the
gradient, with the step size decayed by 10 at 3/8, 5/8 and 7/8 of the budget, each iterate
projected into the valid pixel box, from a Gaussian start; of several restarts the one with the
lowest final objective is kept. Labels that the payload does not carry are inferred first
(iDLG for one image, LLG for a batch; see :mod:`dglbench.attacks.labels`).

Defaults follow the paper and its code (``inversefed``): Adam lr 0.1, signed, boxed, step decay,
24 000 iterations (the paper's budget for its reported images), TV weight 1e-4 (the code's
default), one restart (the paper uses 1 to 8), ``randn`` start. The paper's ``cost_fn='sim'`` is one
cosine over the whole gradient (``cosine_scope="global"``); the default here is the layer-wise sum
(``"layer"``), which weighs every layer equally whatever its size.

Victims and restarts are independent problems: they are stacked and their gradients computed in
one vectorized pass (``torch.func.vmap``); as Adam, the sign and the clamp act element-wise, this
equals running them one by one (to float rounding). On a CPU thread with convnet5 on 28x28 images,
8 victims run about 2.5x faster than 8 separate runs (see :mod:`dglbench.bench_attacks`).

Example:
    >>> import torch
    >>> from dglbench.attacks import InvertingGradients
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    >>> x, y = torch.rand(1, 1, 2, 2), torch.tensor([1])
    >>> payload = make_payload(Case(labels="inferred"), flat_parameter_gradient(model, x, y), y)
    >>> box = (torch.zeros(1), torch.ones(1))
    >>> r = InvertingGradients(max_iterations=20).run(model, payload, (1, 2, 2), box=box)
    >>> r.labels.tolist(), r.label_source, bool(r.images.min() >= 0)
    ([1], 'inferred', True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from dglbench.attacks.base import ATTACKS, Attack, Box, Outcome, Victim, best_restart, subsample
from dglbench.attacks.objectives import GradientMatcher, cosine_distance, total_variation
from dglbench.errors import ConfigError
from torch import Tensor, nn

__all__ = ["InvertingGradients", "signed_adam_descent"]

_CHECK_EVERY = 25  # steps between finiteness checks (one host sync each)


@dataclass
class Descent:
    """The state :func:`signed_adam_descent` returns for ``P`` problems."""

    images: Tensor  # [P, ...] final iterate, or the last finite one for failed problems
    history: Tensor  # [steps, P] objective before each step
    steps: int  # steps run
    failed_at: list[int | None]  # first step whose objective or iterate was not finite


def signed_adam_descent(
    objective: Callable[[Tensor], Tensor],
    start: Tensor,
    *,
    steps: int,
    lr: float,
    signed: bool = True,
    lr_decay: bool = True,
    box: Box | None = None,
) -> Descent:
    """Minimize ``objective(x) -> [P]`` over ``x [P, ...]`` for ``P`` independent problems with Adam.

    Each step: the objective's gradient (of the sum, which is each problem's own gradient), its sign
    when ``signed``, an Adam step, the step decay (×0.1 at 3/8, 5/8, 7/8 of ``steps``) and the clamp to
    ``box`` (``(lo, hi)`` broadcastable to one problem's batch ``[B, C, H, W]``).
    """
    x = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    milestones = [steps * 3 // 8, steps * 5 // 8, steps * 7 // 8]
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1) if lr_decay else None
    history = x.new_empty(steps, x.shape[0])
    last_ok = x.detach().clone()
    failed_at: list[int | None] = [None] * x.shape[0]
    checked = 0
    step = 0
    while step < steps:
        loss = objective(x)
        (grad,) = torch.autograd.grad(loss.sum(), [x])
        x.grad = grad.sign_() if signed else grad
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if box is not None:
            with torch.no_grad():
                x.clamp_(min=box[0], max=box[1])
        history[step] = loss.detach()
        step += 1
        if step % _CHECK_EVERY == 0 or step == steps:
            window = torch.isfinite(history[checked:step])
            ok = window.all(0) & torch.isfinite(x.detach()).flatten(1).all(1)
            last_ok = torch.where(ok.view(-1, *[1] * (x.dim() - 1)), x.detach(), last_ok)
            if not bool(ok.all()):
                for p in torch.nonzero(~ok).flatten().tolist():
                    bad = ~window[:, p]
                    if failed_at[p] is None:  # steps run from a finite objective before the first bad one
                        failed_at[p] = checked + int(bad.int().argmax()) if bool(bad.any()) else step
                if all(f is not None for f in failed_at):
                    break
            checked = step
    return Descent(last_ok, history[:step], step, failed_at)


def _steps(run: Descent, problem: int) -> int:
    failed = run.failed_at[problem]
    return run.steps if failed is None else failed


@ATTACKS.register("inverting_gradients")
@dataclass(frozen=True)
class InvertingGradients(Attack):
    """Inverting Gradients: signed Adam on 1 − cosine similarity plus total variation, boxed, with restarts.

    Args:
        max_iterations: Adam steps per restart (paper: 24 000; CPU configs use a few hundred).
        lr: Adam step size (0.1).
        tv_weight: weight α of the total variation prior (1e-4, inversefed's default).
        restarts: independent random starts; the lowest final objective wins (1; paper 1 to 8).
        cosine_scope: ``"layer"`` — Σ over parameter tensors of 1 − cos; ``"global"`` — one cosine (paper).
        signed: step on the sign of the gradient (True, as in the paper).
        boxed: clamp to the valid pixel range after each step when a box is given (True).
        lr_decay: divide the step size by 10 at 3/8, 5/8 and 7/8 of the budget (True).
        label_strategy: how labels absent from the payload are inferred: "auto", "idlg" or "llg".
        vectorize: solve victims × restarts together with ``torch.func.vmap`` (True: faster, same result).

    Example:
        >>> InvertingGradients(max_iterations=500, restarts=2).cosine_scope
        'layer'
    """

    max_iterations: int = 24_000
    lr: float = 0.1
    tv_weight: float = 1e-4
    restarts: int = 1
    cosine_scope: Literal["layer", "global"] = "layer"
    signed: bool = True
    boxed: bool = True
    lr_decay: bool = True
    label_strategy: Literal["auto", "idlg", "llg"] = "auto"
    vectorize: bool = True

    def check(self) -> None:
        super().check()
        if self.max_iterations < 1 or self.lr <= 0 or self.tv_weight < 0:
            raise ConfigError(
                f"InvertingGradients needs max_iterations >= 1, lr > 0 and tv_weight >= 0; got "
                f"{self.max_iterations}, {self.lr}, {self.tv_weight}"
            )

    def objective(self, matcher: GradientMatcher, labels: Tensor, targets: Tensor) -> Callable[[Tensor], Tensor]:
        """The per-problem objective ``x [P, B, C, H, W] -> [P]`` for fixed labels and targets."""
        segments = matcher.segments if self.cosine_scope == "layer" else None

        def loss(images: Tensor) -> Tensor:
            value = cosine_distance(matcher(images, labels), targets, segments, matcher.num_segments)
            if self.tv_weight > 0:
                value = value + self.tv_weight * total_variation(images)
            return value

        return loss

    def _solve(self, model: nn.Module, victims: list[Victim], box: Box | None) -> list[Outcome]:
        restarts = self.restarts
        start = torch.cat([v.inits for v in victims])  # [V*R, B, C, H, W], victim-major
        labels = torch.stack([v.labels for v in victims if v.labels is not None]).repeat_interleave(restarts, 0)
        targets = torch.stack([v.target for v in victims]).repeat_interleave(restarts, 0)
        matcher = GradientMatcher.for_case(model, victims[0].case, vectorize=self.vectorize)
        objective = self.objective(matcher, labels, targets)
        run = signed_adam_descent(
            objective,
            start,
            steps=self.max_iterations,
            lr=self.lr,
            signed=self.signed,
            lr_decay=self.lr_decay,
            box=box if self.boxed else None,
        )
        final = objective(run.images).detach().tolist()
        outcomes = []
        for i in range(len(victims)):
            problems = range(i * restarts, (i + 1) * restarts)
            reasons = [
                None if run.failed_at[p] is None else f"objective or images became NaN/Inf at step {run.failed_at[p]}"
                for p in problems
            ]
            best = i * restarts + best_restart([final[p] for p in problems], reasons)
            ok = [r is None for r in reasons]
            outcomes.append(
                Outcome(
                    images=run.images[best],
                    labels=labels[best],
                    final_loss=final[best],
                    iterations=sum(_steps(run, p) for p in problems),
                    loss_history=subsample(run.history[: _steps(run, best), best]),
                    failure=None if any(ok) else f"all {restarts} restarts failed; first: {reasons[0]}",
                )
            )
        return outcomes
