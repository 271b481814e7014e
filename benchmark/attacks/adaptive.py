"""Adaptive attacks: Inverting Gradients with an objective that knows the defense's (public) mechanism.

A defense that zeroes, quantizes, clips or noises the gradient is attacked by the plain attacks as if
the payload ``g̃`` were an ordinary gradient: pruned zeros are matched as real zeros, sign bits as real
values. An attacker who knows the mechanism does better by matching only what the mechanism transmits
(AutoAttack's lesson for robustness benchmarks, Tramèr et al. 2020 "On Adaptive Attacks to Adversarial
Example Defenses"). Every attack here is :class:`~dglbench.attacks.InvertingGradients` — signed Adam,
box, step decay, restarts chosen by the attacker's own loss, victims × restarts vectorized — with a
different distance ``D(g(x'), g̃)`` (plus the same total variation prior):

===================  =============================================  =========================================
name                 adapts to                                      distance
===================  =============================================  =========================================
``ig_masked``        ``pruning``, ``topk``, ``soteria``             1 − cos over the transmitted coordinates
``ig_sign``          ``quantization`` with ``mode="sign"``/1 bit    1 − ⟨sign(g̃), g⟩ / ‖g‖₁
``ig_quantized``     ``quantization``, k-bit uniform                squared distance to the transmitted bins
``ig_clipped``       ``dp_sgd``                                     the candidate's clipped gradient vs g̃
``ig_l2``            ``gaussian``                                   ‖g − g̃‖² / ‖g̃‖² (the Gaussian MLE)
``ig_l1``            ``laplace``                                    ‖g − g̃‖₁ / ‖g̃‖₁ (the Laplace MLE)
===================  =============================================  =========================================

Where adaptation cannot help (said here so nobody reads more into the numbers): for additive noise the
noise is unknown, so the best an attacker can do is the maximum-likelihood distance; the plain squared
L2 distance already is the MLE for Gaussian noise, and the cosine differs from it only in ignoring the
scale, so ``ig_l2`` and ``ig_l1`` are small changes of the objective, not new information. For DP-SGD on
one image per victim, clipping only rescales the gradient, which a cosine objective already ignores;
clipping matters for batches (it reweights the examples) and for the scale-aware ``"l2"`` distance.
``eigen_noise`` has no adaptive attack here: its directions are eigenvectors of the victim's private
``KᵀK``, which the attacker could only approximate at its own candidate (a Lanczos solve per step).

Which attacks apply to a defense is declared by the defense (``Defense.adaptive_attacks``), and
:func:`dglbench.defenses.adaptive_attacks_for` turns a defense instance into ``(name, params)`` pairs.

Example:
    >>> import torch
    >>> from dglbench.attacks import create_attack
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    >>> x, y = torch.rand(1, 1, 2, 2), torch.tensor([1])
    >>> g = flat_parameter_gradient(model, x, y)
    >>> pruned = torch.where(g.abs() >= g.abs().median(), g, torch.zeros_like(g))
    >>> r = create_attack("ig_masked", max_iterations=20).run(model, make_payload(Case(), pruned, y), (1, 2, 2))
    >>> r.status, r.images.shape
    ('ok', torch.Size([1, 1, 2, 2]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from dglbench.attacks.base import ATTACKS, Box, Outcome, Victim
from dglbench.attacks.inverting_gradients import InvertingGradients
from dglbench.attacks.objectives import GradientMatcher, _per_segment, cosine_distance
from dglbench.errors import ConfigError
from torch import Tensor, nn

__all__ = [
    "AdaptiveInvertingGradients",
    "ClippedInvertingGradients",
    "L1InvertingGradients",
    "L2InvertingGradients",
    "MaskedInvertingGradients",
    "QuantizedInvertingGradients",
    "SignInvertingGradients",
    "bin_distance",
    "clip_examples",
    "l1_distance",
    "masked_cosine_distance",
    "quantization_half_widths",
    "relative_squared_distance",
    "sign_distance",
]

_EPS = 1e-12
Segments = tuple[Tensor, int] | None  # (segment index per entry, number of segments), or None for one segment


def _sum(values: Tensor, segments: Segments) -> Tensor:
    """``values [P, d]`` summed over the last axis: ``[P]`` (global) or ``[P, L]`` (per segment)."""
    return values.sum(-1) if segments is None else _per_segment(values, segments[0], segments[1])


def _total(ratio: Tensor, segments: Segments) -> Tensor:
    return ratio if segments is None else ratio.sum(-1)


# ------------------------------------------------------------------------------------------- distances
def masked_cosine_distance(
    gradient: Tensor, target: Tensor, mask: Tensor, segments: Tensor | None = None, num_segments: int | None = None
) -> Tensor:
    """``1 − cos(m ⊙ g, m ⊙ g̃)``: the cosine over the transmitted coordinates ``m`` only (global or per layer).

    Coordinates outside ``mask`` (pruned ones) affect neither side, so their value in ``target`` is irrelevant.

    Example:
        >>> g, t, m = torch.tensor([[1.0, 5.0, 0.0]]), torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([1.0, 0.0, 1.0])
        >>> round(float(masked_cosine_distance(g, t, m)), 4)  # 1 − 1 / (1 · √5)
        0.5528
    """
    return cosine_distance(gradient * mask, target * mask, segments, num_segments)


def sign_distance(gradient: Tensor, signs: Tensor, segments: Segments = None) -> Tensor:
    """``1 − ⟨s, g⟩ / ‖g‖₁`` (global, or summed over layers): 0 iff every sign of ``g`` agrees with ``s``.

    ``⟨s, g⟩ ≤ ‖s‖_∞ ‖g‖₁`` is the dual-norm analogue of the cosine for a sign vector; the distance is
    ``2 Σ_{wrong sign} |g_i| / ‖g‖₁``, the share of ``g``'s L1 mass on the wrong side, and is scale-free.
    Entries where ``s = 0`` (the defense sent an exact zero) count as wrong unless ``g_i = 0``.

    Example:
        >>> round(float(sign_distance(torch.tensor([[2.0, -1.0, 1.0]]), torch.tensor([[1.0, 1.0, 0.0]]))), 4)
        0.75
    """
    return _total(
        1 - _sum(gradient * signs.sign(), segments) / _sum(gradient.abs(), segments).clamp_min(_EPS), segments
    )


def bin_distance(gradient: Tensor, target: Tensor, half_width: Tensor, segments: Segments = None) -> Tensor:
    """``Σ relu(|g − q| − w)² / Σ q²``: how far ``g`` lies outside the transmitted bins ``[q − w, q + w]``.

    Zero for every candidate whose gradient the quantizer could have mapped to ``q``; a squared distance
    (normalized by the payload's energy, per layer or globally) outside the bins.

    Args:
        gradient: ``[P, d]`` the candidate's gradients.
        target: ``[P, d]`` the quantized payload ``q``.
        half_width: ``[P, d]`` (or broadcastable) half-width ``w`` of each entry's bin.
        segments: ``(segment index per entry, number of segments)`` for the per-layer form, or ``None``.

    Example:
        >>> g, q, w = torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]]), torch.tensor([0.5, 0.5])
        >>> round(float(bin_distance(g, q, w)), 6)  # (1 − 0.5)² / (1² + 2²)
        0.05
    """
    outside = ((gradient - target).abs() - half_width).clamp_min(0).pow(2)
    return _total(_sum(outside, segments) / _sum(target.pow(2), segments).clamp_min(_EPS**2), segments)


def relative_squared_distance(gradient: Tensor, target: Tensor, segments: Segments = None) -> Tensor:
    """``‖g − g̃‖² / ‖g̃‖²`` (global, or summed over layers): the Gaussian-noise log-likelihood up to constants.

    Example:
        >>> float(relative_squared_distance(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])))
        0.5
    """
    return _total(
        _sum((gradient - target).pow(2), segments) / _sum(target.pow(2), segments).clamp_min(_EPS**2), segments
    )


def l1_distance(gradient: Tensor, target: Tensor, segments: Segments = None) -> Tensor:
    """``‖g − g̃‖₁ / ‖g̃‖₁`` (global, or summed over layers): the Laplace-noise log-likelihood up to constants.

    Example:
        >>> float(l1_distance(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, -2.0]])))
        1.0
    """
    return _total(_sum((gradient - target).abs(), segments) / _sum(target.abs(), segments).clamp_min(_EPS), segments)


def quantization_half_widths(target: Tensor, segments: Tensor, num_segments: int, levels: int, rounding: str) -> Tensor:
    """Per-entry bin half-widths of a per-tensor uniform quantization with ``levels`` levels, from the payload.

    Each tensor's levels span its own ``[min, max]``, which the payload shows (the extreme levels are always
    sent), so the step is ``(max − min) / (levels − 1)``; the bin is ``± step/2`` for nearest rounding and
    ``± step`` for stochastic rounding. ``target [P, d]`` → ``[P, d]``.

    Example:
        >>> q = torch.tensor([[0.0, 1.0, 3.0, -1.0, -1.0]])
        >>> quantization_half_widths(q, torch.tensor([0, 0, 0, 1, 1]), 2, 4, "nearest").tolist()
        [[0.5, 0.5, 0.5, 0.0, 0.0]]
    """
    index = segments.expand_as(target)
    hi = target.new_full((*target.shape[:-1], num_segments), -torch.inf).scatter_reduce(-1, index, target, "amax")
    lo = target.new_full((*target.shape[:-1], num_segments), torch.inf).scatter_reduce(-1, index, target, "amin")
    step = (hi - lo) / max(levels - 1, 1)
    factor = 1.0 if rounding == "stochastic" else 0.5
    return (factor * step).gather(-1, index)


def clip_examples(per_example: Tensor, clip: float) -> Tensor:
    """Scale each example's flat gradient ``[..., B, d]`` to norm at most ``clip`` exactly as ``dp_sgd`` does.

    Example:
        >>> clip_examples(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0).norm(dim=-1).tolist()  # doctest: +ELLIPSIS
        [0.99999..., 0.5]
    """
    from dglbench.defenses.dp_sgd import clip_per_example

    shape = per_example.shape
    return clip_per_example([per_example.reshape(-1, shape[-1])], clip)[0].reshape(shape)


# ----------------------------------------------------------------------------------------------- attacks
@dataclass(frozen=True)
class AdaptiveInvertingGradients(InvertingGradients):
    """Inverting Gradients with a mechanism-aware distance; subclasses implement :meth:`distance`.

    ``cosine_scope`` here is the scope of the subclass's distance: ``"global"`` (one term over the whole
    gradient) or ``"layer"`` (one term per parameter tensor, summed). The TV prior, optimizer, box, decay,
    restarts and label inference are Inverting Gradients' own (see :class:`InvertingGradients`).
    """

    cosine_scope: Literal["layer", "global"] = "global"

    def distance(self, matcher: GradientMatcher, gradient: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        """``D(g(x'), g̃)`` per problem: ``gradient`` and ``targets`` are ``[P, d_θ]``, ``images`` the candidates."""
        raise NotImplementedError

    def gradients(self, matcher: GradientMatcher, images: Tensor, labels: Tensor) -> Tensor:
        """The candidate's gradient as the defense would see it before its mechanism (default: ``g(x')``)."""
        return matcher(images, labels)

    def segments(self, matcher: GradientMatcher) -> Segments:
        return (matcher.segments, matcher.num_segments) if self.cosine_scope == "layer" else None

    def matching_cost(self, matcher: GradientMatcher, labels: Tensor, targets: Tensor) -> Callable[[Tensor], Tensor]:
        """The gradient-matching cost ``x [P, B, C, H, W] -> [P]`` (:meth:`distance`, no prior): the restarts' score."""

        def cost(images: Tensor) -> Tensor:
            return self.distance(matcher, self.gradients(matcher, images, labels), targets, images)

        return cost


def _last_linear_segment(matcher: GradientMatcher, images: Tensor) -> int:
    from dglbench.defenses.soteria import last_linear_layer

    layer = last_linear_layer(matcher.model, images[0].detach())
    name = f"{layer}.weight" if layer else "weight"
    names = list(matcher.params)
    if name not in names:
        raise ConfigError(f"ig_masked scope='last_linear': {name!r} is not a trainable parameter of the model")
    return names.index(name)


@ATTACKS.register("ig_masked")
@dataclass(frozen=True)
class MaskedInvertingGradients(AdaptiveInvertingGradients):
    """Inverting Gradients matching only the coordinates a sparsifying defense transmitted.

    Adapts to ``pruning`` and ``topk`` (``scope="all"``: every zero of the payload is a pruned coordinate)
    and to ``soteria`` (``scope="last_linear"``: only the zeros in the weight gradient of the last
    ``nn.Linear`` layer, the one Soteria prunes; Soteria declares ``cosine_scope="layer"`` with it, so that
    the intact layers are matched one by one). A sparse payload is sent as (index, value) pairs, so the
    attacker knows which coordinates were dropped; the distance is :func:`masked_cosine_distance`, which
    neither rewards nor penalizes the candidate's gradient on the dropped coordinates (the plain attack
    pushes them to zero, a constraint the victim's gradient does not satisfy).

    Args:
        scope: ``"all"`` or ``"last_linear"`` (see above).
        cosine_scope: ``"global"`` (default) or ``"layer"``: one cosine, or one per parameter tensor.
        (the other arguments as in :class:`InvertingGradients`.)
    """

    scope: Literal["all", "last_linear"] = "all"

    def distance(self, matcher: GradientMatcher, gradient: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        mask = (targets != 0).to(targets.dtype)
        if self.scope == "last_linear":
            segment = _last_linear_segment(matcher, images)
            mask = torch.where(matcher.segments == segment, mask, torch.ones_like(mask))
        segments = matcher.segments if self.cosine_scope == "layer" else None
        return masked_cosine_distance(gradient, targets, mask, segments, matcher.num_segments)


@ATTACKS.register("ig_sign")
@dataclass(frozen=True)
class SignInvertingGradients(AdaptiveInvertingGradients):
    """Inverting Gradients that matches the signs of a sign-compressed payload, not its values.

    Adapts to ``quantization`` with ``mode="sign"`` or ``bits=1`` (``g̃ = sign(g)·mean|g|`` per tensor): only
    the signs carry information about ``x``, so the distance is :func:`sign_distance`, the L1 share of
    ``g(x')`` with the wrong sign. The plain cosine instead asks every ``|g_i(x')|`` to be equal.

    Args:
        cosine_scope: ``"layer"`` (default: one term per tensor, as the scale is per tensor) or ``"global"``.
        (the other arguments as in :class:`InvertingGradients`.)
    """

    cosine_scope: Literal["layer", "global"] = "layer"

    def distance(self, matcher: GradientMatcher, gradient: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        return sign_distance(gradient, targets, self.segments(matcher))


@ATTACKS.register("ig_quantized")
@dataclass(frozen=True)
class QuantizedInvertingGradients(AdaptiveInvertingGradients):
    """Inverting Gradients that pushes ``g(x')`` into the bins of a uniformly quantized payload.

    Adapts to ``quantization`` with ``mode="uniform"``: every tensor is quantized to ``levels`` levels
    between its min and max, so each transmitted value ``q`` stands for the bin ``q ± w`` (``w`` = half a
    step for nearest rounding, a full step for stochastic rounding), and the distance is
    ``1 − cos(g, q) + bin_weight · bin_distance(g, q, w)``: the cosine pulls the direction, the bin term
    (zero inside the bins) adds what the payload tells about the scale and tolerates the rounding.

    Args:
        levels: the defense's number of levels per tensor (``2**bits``).
        rounding: the defense's ``"nearest"`` or ``"stochastic"``.
        bin_weight: weight of :func:`bin_distance` (1.0; 0 gives back the plain cosine).
        cosine_scope: ``"layer"`` (default: the quantization is per tensor) or ``"global"``.
        (the other arguments as in :class:`InvertingGradients`.)
    """

    levels: int = 256
    rounding: Literal["nearest", "stochastic"] = "nearest"
    bin_weight: float = 1.0
    cosine_scope: Literal["layer", "global"] = "layer"

    def check(self) -> None:
        super().check()
        if self.levels < 2 or self.bin_weight < 0:
            raise ConfigError(
                f"ig_quantized needs levels >= 2 and bin_weight >= 0; got {self.levels}, {self.bin_weight}"
            )

    def distance(self, matcher: GradientMatcher, gradient: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        segments = self.segments(matcher)
        width = quantization_half_widths(targets, matcher.segments, matcher.num_segments, self.levels, self.rounding)
        layer = matcher.segments if segments is not None else None
        value = cosine_distance(gradient, targets, layer, matcher.num_segments)
        if self.bin_weight > 0:
            value = value + self.bin_weight * bin_distance(gradient, targets, width, segments)
        return value


@ATTACKS.register("ig_clipped")
@dataclass(frozen=True)
class ClippedInvertingGradients(AdaptiveInvertingGradients):
    """Inverting Gradients that clips the candidate's per-example gradients exactly as DP-SGD does.

    Adapts to ``dp_sgd``: the candidate's batch gradient is rebuilt as ``(1/B) Σ_i clip_C(g_i(x'))`` (the sum
    for a sum-reduced loss) with the defense's clip norm ``C`` before it is compared with ``g̃``; with
    ``distance="l2"`` (default) the comparison is :func:`relative_squared_distance`, the maximum-likelihood
    distance under DP-SGD's Gaussian noise. Adaptation cannot remove the noise: at the noise multipliers
    that give a meaningful ε the noise norm ``σC√d/B`` dwarfs the clipped gradient (norm ≤ C), and no
    objective recovers what it hides. For one image per victim clipping only rescales, so the cosine
    distance is unchanged by it.

    Args:
        clip: the defense's per-example clipping norm ``C``.
        distance_kind: ``"l2"`` (MLE under the Gaussian noise) or ``"cosine"``.
        reduction: the victim loss's reduction over the batch; ``None`` (default): the payload's case's.
        cosine_scope: ``"global"`` (default: the noise is i.i.d. over all coordinates) or ``"layer"``.
        (the other arguments as in :class:`InvertingGradients`.)
    """

    clip: float = 1.0
    distance_kind: Literal["l2", "cosine"] = "l2"
    reduction: Literal["mean", "sum"] | None = None

    def check(self) -> None:
        super().check()
        if self.clip <= 0:
            raise ConfigError(f"ig_clipped needs clip > 0, got {self.clip}")

    def _solve(self, model: nn.Module, victims: list[Victim], box: Box | None) -> list[Outcome]:
        if self.reduction is None:
            return replace(self, reduction=victims[0].case.reduction)._solve(model, victims, box)
        return super()._solve(model, victims, box)

    def gradients(self, matcher: GradientMatcher, images: Tensor, labels: Tensor) -> Tensor:
        problems, batch = images.shape[:2]
        flat_images = images.reshape(problems * batch, 1, *images.shape[2:])
        flat_labels = labels.reshape(problems * batch, 1, *labels.shape[2:])
        per_example = matcher(flat_images, flat_labels).reshape(problems, batch, -1)
        clipped = clip_examples(per_example, self.clip).sum(1)
        return clipped if self.reduction == "sum" else clipped / batch

    def distance(self, matcher: GradientMatcher, gradient: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        if self.distance_kind == "cosine":
            segments = matcher.segments if self.cosine_scope == "layer" else None
            return cosine_distance(gradient, targets, segments, matcher.num_segments)
        return relative_squared_distance(gradient, targets, self.segments(matcher))


@ATTACKS.register("ig_l2")
@dataclass(frozen=True)
class L2InvertingGradients(AdaptiveInvertingGradients):
    """Inverting Gradients on ``‖g − g̃‖² / ‖g̃‖²``: the maximum-likelihood distance under Gaussian noise.

    Adapts to ``gaussian``. The noise is unknown, so the MLE distance is all an attacker can use; unlike the
    cosine it keeps the payload's scale (which the noise leaves unbiased). Expect little gain: the cosine
    already is a good estimator here (see the module docstring).

    Args:
        cosine_scope: ``"global"`` (default: the noise is i.i.d. over all coordinates) or ``"layer"``.
        (the other arguments as in :class:`InvertingGradients`.)
    """

    def distance(self, matcher: GradientMatcher, gradient: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        return relative_squared_distance(gradient, targets, self.segments(matcher))


@ATTACKS.register("ig_l1")
@dataclass(frozen=True)
class L1InvertingGradients(AdaptiveInvertingGradients):
    """Inverting Gradients on ``‖g − g̃‖₁ / ‖g̃‖₁``: the maximum-likelihood distance under Laplace noise.

    Adapts to ``laplace``: the L1 distance is robust to the heavy tails of Laplace noise, which a squared
    or cosine distance over-weights. The noise itself stays unknown (see the module docstring).

    Args:
        cosine_scope: ``"global"`` (default: the noise is i.i.d. over all coordinates) or ``"layer"``.
        (the other arguments as in :class:`InvertingGradients`.)
    """

    def distance(self, matcher: GradientMatcher, gradient: Tensor, targets: Tensor, images: Tensor) -> Tensor:
        return l1_distance(gradient, targets, self.segments(matcher))
