"""The pieces of a gradient-matching objective: the dummy's gradient, distances, total variation.

An attack solves ``P`` independent *problems* at once (victims × restarts). Tensors carry the
problem dimension first: dummy images ``[P, B, C, H, W]``, labels ``[P, B]`` (or soft ``[P, B, K]``),
gradients ``[P, d_θ]``, losses ``[P]``. Because the problems are independent, the gradient of the
summed loss with respect to the stacked images is, slice by slice, each problem's own gradient: one
backward pass serves all of them, and element-wise optimizers (Adam, sign, clamping) then behave
exactly as ``P`` separate runs.

Example:
    >>> import torch
    >>> from dglbench.attacks.objectives import GradientMatcher, cosine_distance
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> matcher = GradientMatcher(model, torch.nn.functional.cross_entropy)
    >>> g = matcher(torch.randn(2, 1, 1, 2, 2), torch.tensor([[0], [2]]))
    >>> g.shape, cosine_distance(g, g, matcher.segments).abs().max().item() < 1e-6
    (torch.Size([2, 15]), True)
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from dglbench.case import Case
from dglbench.gradients import LossFn, flat_parameter_gradient, functional_gradient, functional_state
from torch import Tensor, nn
from torch.func import vmap

__all__ = ["GradientMatcher", "cosine_distance", "squared_distance", "total_variation"]

_EPS = 1e-12


class GradientMatcher:
    """The attacker's recomputed gradients ``g(x')`` for ``P`` independent problems.

    With ``vectorize=True`` and ``P > 1`` the per-problem gradient is vectorized with
    ``torch.func.vmap`` over ``functional_call`` (one batched forward and double backward for all
    problems); otherwise each problem's gradient is :func:`dglbench.gradients.flat_parameter_gradient`
    with ``create_graph=True``. A model that vmap cannot handle (e.g. BatchNorm updating its running
    statistics in train mode) falls back to the loop with a warning.

    Args:
        model: the victim model, already in the case's mode.
        loss_fn: the victim's loss ``(logits, labels) -> scalar`` (``case.loss_fn()``).
        vectorize: use vmap when there is more than one problem.
        one_hot: one-hot encode integer labels before vmap (for losses such as ``"mse"`` that would
            encode them inside, which vmap cannot trace); :meth:`for_case` sets it from the case.

    Attributes:
        segments: ``[d_θ]`` index of the parameter tensor ("layer") each gradient entry belongs to.
        num_segments: the number of trainable parameter tensors.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, vectorize: bool = True, one_hot: bool = False) -> None:
        self.model, self.loss_fn, self.vectorize, self.one_hot = model, loss_fn, vectorize, one_hot
        self.params, self.buffers = functional_state(model)
        sizes = torch.tensor([p.numel() for p in self.params.values()])
        device = next(iter(self.params.values())).device if self.params else None
        self.num_segments = len(self.params)
        self.segments = torch.repeat_interleave(torch.arange(self.num_segments), sizes).to(device)
        self.num_parameters = int(sizes.sum())

    @classmethod
    def for_case(cls, model: nn.Module, case: Case, *, vectorize: bool = True) -> GradientMatcher:
        """The matcher for a case: its loss (``case.loss_fn()``), one-hot labels for ``"mse"``."""
        return cls(model, case.loss_fn(), vectorize=vectorize, one_hot=case.loss == "mse")

    def _single(self, images: Tensor, labels: Tensor) -> Tensor:
        grads = functional_gradient(self.model, self.params, self.buffers, self.loss_fn, images, labels)
        return torch.cat([g.reshape(-1) for g in grads.values()])

    def __call__(self, images: Tensor, labels: Tensor) -> Tensor:
        """Gradients ``[P, d_θ]`` of the dummies ``images [P, B, C, H, W]`` with ``labels [P, B, ...]``.

        The result is differentiable with respect to ``images`` and (soft) ``labels``.
        """
        if self.vectorize and images.shape[0] > 1:
            if self.one_hot and not labels.is_floating_point():
                was_training = self.model.training
                with torch.no_grad():
                    classes = self.model.eval()(images[0]).shape[-1]
                self.model.train(was_training)
                labels = F.one_hot(labels, classes).to(images.dtype)
            try:
                return vmap(self._single)(images, labels)
            except RuntimeError as exc:
                warnings.warn(
                    f"vectorized gradients failed for {type(self.model).__name__} ({str(exc).splitlines()[0]}); "
                    f"falling back to one problem at a time",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.vectorize = False
        return torch.stack(
            [flat_parameter_gradient(self.model, x, y, self.loss_fn, create_graph=True) for x, y in zip(images, labels)]
        )


def _per_segment(values: Tensor, segments: Tensor, num_segments: int) -> Tensor:
    out = values.new_zeros(*values.shape[:-1], num_segments)
    return out.index_add(-1, segments, values)


def cosine_distance(
    gradient: Tensor, target: Tensor, segments: Tensor | None = None, num_segments: int | None = None
) -> Tensor:
    """``1 − cos(g, g̃)``: over the whole gradient (``segments=None``) or per layer, summed over layers.

    Args:
        gradient: the dummy's gradients ``[P, d_θ]``.
        target: the payload gradients ``[P, d_θ]``.
        segments: ``[d_θ]`` layer index of each entry (``GradientMatcher.segments``) for the layer-wise
            form ``Σ_l (1 − cos(g_l, g̃_l))``; ``None`` for the global form.
        num_segments: the number of layers (read from ``segments`` when not given, at the cost of a sync).

    Returns:
        ``[P]``. A layer whose target is all zeros contributes a constant 1 (cosine taken as 0).
    """
    if segments is None:
        dot, gg, tt = (gradient * target).sum(-1), gradient.pow(2).sum(-1), target.pow(2).sum(-1)
        return 1 - dot / (gg * tt).clamp_min(_EPS**2).sqrt()
    n = num_segments if num_segments is not None else int(segments.max()) + 1
    dot = _per_segment(gradient * target, segments, n)
    gg = _per_segment(gradient.pow(2), segments, n)
    tt = _per_segment(target.pow(2), segments, n)
    return (1 - dot / (gg * tt).clamp_min(_EPS**2).sqrt()).sum(-1)


def squared_distance(gradient: Tensor, target: Tensor) -> Tensor:
    """``‖g − g̃‖²`` per problem (DLG's objective); ``[P, d_θ]`` → ``[P]``."""
    return (gradient - target).pow(2).sum(-1)


def total_variation(images: Tensor) -> Tensor:
    """Anisotropic total variation per problem: mean ``|Δx|`` over rows plus over columns.

    The form of Inverting Gradients (``inversefed.metrics.total_variation``), applied to each
    problem's batch ``[B, C, H, W]`` of ``images [P, B, C, H, W]``; returns ``[P]``.
    """
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(-1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(-1)
    return dx + dy
