"""Additive noise defenses: Gaussian and Laplace noise on every entry of the gradient.

Both draw their noise from ``context.generator`` (on the generator's device, then moved to the
gradient's), so a seed fixes the output.

Example:
    >>> import torch
    >>> from dglbench.case import DefenseContext
    >>> from dglbench.defenses import GaussianNoise
    >>> context = DefenseContext(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.tensor([0]))
    >>> noisy = GaussianNoise(sigma=0.01)([torch.zeros(2, 2), torch.zeros(2)], context)
    >>> [t.shape for t in noisy]
    [torch.Size([2, 2]), torch.Size([2])]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from dglbench.case import DefenseContext
from dglbench.defenses.base import Defense, register_defense
from dglbench.params import NoiseScale
from torch import Tensor

__all__ = ["GaussianNoise", "LaplaceNoise", "randn_like", "rand_like"]


def _generator(context: DefenseContext) -> torch.Generator:
    assert context.generator is not None  # DefenseContext always sets one
    return context.generator


def randn_like(t: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``t``, drawn from ``generator`` (whatever its device)."""
    return torch.randn(t.shape, generator=generator, device=generator.device, dtype=t.dtype).to(t.device)


def rand_like(t: Tensor, generator: torch.Generator) -> Tensor:
    """Uniform ``[0, 1)`` noise shaped like ``t``, drawn from ``generator``."""
    return torch.rand(t.shape, generator=generator, device=generator.device, dtype=t.dtype).to(t.device)


@register_defense("gaussian")
@dataclass(frozen=True)
class GaussianNoise(Defense):
    """Add ``N(0, sigma²)`` noise independently to every entry of the gradient.

    Args:
        sigma: standard deviation of the noise (≥ 0).
    """

    adaptive_attacks: ClassVar[tuple[str, ...]] = ("ig_l2",)  # the Gaussian MLE distance
    strength: ClassVar[str | None] = "sigma"

    sigma: NoiseScale = 0.01

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        gen = _generator(context)
        return [g + self.sigma * randn_like(g, gen) for g in gradients]


@register_defense("laplace")
@dataclass(frozen=True)
class LaplaceNoise(Defense):
    """Add Laplace noise with scale ``b`` (density ``exp(−|z|/b) / 2b``, std ``b·√2``) to every entry.

    The noise is drawn as the difference of two exponential variables, ``b·(E₁ − E₂)``.

    Args:
        scale: the Laplace scale ``b`` (≥ 0).
    """

    adaptive_attacks: ClassVar[tuple[str, ...]] = ("ig_l1",)  # the Laplace MLE distance
    strength: ClassVar[str | None] = "scale"

    scale: NoiseScale = 0.01

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        gen = _generator(context)
        out = []
        for g in gradients:
            e1 = -torch.log1p(-rand_like(g, gen))  # Exp(1): 1 − U ∈ (0, 1], so the log is finite
            e2 = -torch.log1p(-rand_like(g, gen))
            out.append(g + self.scale * (e1 - e2))
        return out
