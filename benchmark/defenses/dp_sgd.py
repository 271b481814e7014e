"""DP-SGD (Abadi et al. 2016): clip each example's gradient, aggregate, add Gaussian noise.

The victim's gradient of a mean-reduced loss is the mean of its per-example gradients. DP-SGD
replaces it by

    g̃ = (1/B) · (Σ_i clip_C(g_i) + N(0, σ² C² I)),    clip_C(v) = v · min(1, C / ‖v‖),

i.e. the mean of the clipped per-example gradients plus noise of standard deviation ``σ·C/B``
(with a sum-reduced loss: the sum plus noise of standard deviation ``σ·C``). ``‖v‖`` is the norm
over all trainable parameters together. Per-example gradients come from ``torch.func``
(``vmap`` over ``grad`` of ``functional_call`` with the case's loss on one example).

The guarantee is computed by Opacus' RDP accountant for ``steps`` steps of the sampled Gaussian
mechanism with noise multiplier ``σ`` and Poisson sampling rate ``sample_rate``.

Example:
    >>> from dglbench.defenses import DPSGD
    >>> DPSGD(clip=1.0, sigma=1.0, delta=1e-5, steps=100, sample_rate=0.01).privacy()["epsilon"] < 2
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from dglbench.case import DefenseContext
from dglbench.defenses.base import Defense, defense_name, register_defense
from dglbench.defenses.noise import randn_like
from dglbench.errors import ConfigError, DglbenchError
from dglbench.gradients import functional_gradient, functional_state
from dglbench.params import Count, NoiseScale, PositiveFloat, Range
from torch import Tensor, nn
from torch.func import vmap

__all__ = ["DPSGD", "RDP_ORDERS", "per_example_gradients", "clip_per_example"]

#: Rényi orders the accountant minimizes over: Opacus' defaults extended to large orders (tighter for large σ).
RDP_ORDERS: list[float] = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [2.0**p for p in range(6, 13)]


def per_example_gradients(context: DefenseContext) -> list[Tensor]:
    """Gradients of the case's loss on each example of the victim's batch separately.

    Returns one tensor per ``context.parameter_names``, shaped ``[B, *parameter.shape]``.
    The batch gradient is their mean (mean reduction) or sum (sum reduction).
    """
    model = context.model
    if model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise ConfigError(
            "dp_sgd needs per-example gradients, but BatchNorm in train mode mixes the examples of a batch; "
            "use case model_mode='eval' or a model without BatchNorm"
        )
    params, constants = functional_state(model, context.parameter_names)
    loss_fn = context.case.loss_fn()

    def one_example(x: Tensor, y: Tensor) -> dict[str, Tensor]:
        return functional_gradient(model, params, constants, loss_fn, x.unsqueeze(0), y.unsqueeze(0))

    grads = vmap(one_example, randomness="different")(context.images.detach(), context.labels)
    return [grads[n].detach() for n in context.parameter_names]


def clip_per_example(per_example: list[Tensor], clip: float) -> list[Tensor]:
    """Scale each example's gradient (all parameters together) to norm at most ``clip`` (Opacus' factor)."""
    norms = torch.stack([g.reshape(g.shape[0], -1).norm(dim=1) for g in per_example]).norm(dim=0)  # [B]
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return [g * factor.view(-1, *([1] * (g.dim() - 1))).to(g.dtype) for g in per_example]


@register_defense("dp_sgd")
@dataclass(frozen=True)
class DPSGD(Defense):
    """Per-example clipping to norm ``clip`` plus Gaussian noise with multiplier ``sigma`` (DP-SGD).

    Args:
        clip: per-example clipping norm ``C`` (> 0).
        sigma: noise multiplier ``σ`` (≥ 0); the noise on the summed gradient has std ``σ·C``.
            ``sigma=0`` clips without noise and carries no privacy guarantee.
        delta: the ``δ`` of the reported (ε, δ) guarantee.
        steps: number of training steps the guarantee covers.
        sample_rate: Poisson sampling rate ``q`` of a batch (1.0: the batch is the whole data set).
    """

    adaptive_attacks: ClassVar[tuple[str, ...]] = ("ig_clipped",)  # clips the candidate's gradient with `clip`
    strength: ClassVar[str | None] = "sigma"

    clip: PositiveFloat = 1.0
    sigma: NoiseScale = 1.0
    delta: Annotated[float, Range(gt=0, lt=1)] = 1e-5
    steps: Count = 1
    sample_rate: Annotated[float, Range(gt=0, le=1)] = 1.0

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        per_example = per_example_gradients(context)
        batch = context.images.shape[0]
        mean = context.case.reduction == "mean"
        if not context.model.training:  # the per-example gradients must add up to the victim's gradient
            for name, g, pe in zip(context.parameter_names, gradients, per_example):
                total = pe.mean(0) if mean else pe.sum(0)
                if not torch.allclose(total, g, rtol=1e-3, atol=1e-5 * max(1.0, float(g.abs().max()))):
                    raise DglbenchError(
                        f"defense {defense_name(self)!r}: per-example gradients of {name!r} do not add up to the "
                        f"victim's gradient; compute the gradient with the context's model, batch and case loss"
                    )
        clipped = clip_per_example(per_example, self.clip)
        assert context.generator is not None
        out = []
        for g, c in zip(gradients, clipped):
            noisy = c.sum(0) + self.sigma * self.clip * randn_like(g, context.generator)
            out.append((noisy / batch if mean else noisy).to(g.dtype))
        return out

    def adaptive_attack_params(self, attack: str) -> dict[str, Any] | None:
        """``ig_clipped`` clips with this defense's ``clip``."""
        return {"clip": self.clip} if attack == "ig_clipped" else {}

    def privacy(self) -> dict[str, Any] | None:
        """``(epsilon, delta)`` from Opacus' RDP accountant, or ``None`` without noise (no guarantee)."""
        if self.sigma == 0:
            return None
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = [(self.sigma, self.sample_rate, self.steps)]
        epsilon, alpha = accountant.get_privacy_spent(delta=self.delta, alphas=RDP_ORDERS)
        return {
            "epsilon": float(epsilon),
            "delta": self.delta,
            "accountant": "opacus.rdp",
            "rdp_order": float(alpha),
            "noise_multiplier": self.sigma,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }
