"""Gradient quantization: uniform k-bit per-tensor quantization, and signSGD-style sign compression.

``mode="uniform"`` maps each tensor onto ``2^bits`` evenly spaced levels between its minimum and
maximum (step ``(max − min) / (2^bits − 1)``), rounding to the nearest level (error ≤ step / 2)
or stochastically from ``context.generator`` (unbiased, error < step). ``mode="sign"`` — and
``bits=1``, which means the same — shares ``sign(g) · mean|g|`` per tensor, as signSGD with a
per-tensor scale (Bernstein et al. 2018); exact zeros stay zero, so a tensor has at most three values.

Example:
    >>> import torch
    >>> from dglbench.case import DefenseContext
    >>> from dglbench.defenses import Quantization
    >>> context = DefenseContext(torch.nn.Linear(2, 1), torch.zeros(1, 2), torch.tensor([0]))
    >>> Quantization(bits=1)([torch.tensor([[0.5, -1.5]]), torch.tensor([2.0])], context)
    [tensor([[ 1., -1.]]), tensor([2.])]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from dglbench.case import DefenseContext
from dglbench.defenses.base import Defense, register_defense
from dglbench.defenses.noise import rand_like
from torch import Tensor

__all__ = ["Quantization"]


@register_defense("quantization")
@dataclass(frozen=True)
class Quantization(Defense):
    """Per-tensor k-bit uniform quantization, or sign compression.

    Args:
        bits: number of bits per entry (1 to 32); ``bits=1`` selects sign compression.
        rounding: ``"nearest"`` (deterministic) or ``"stochastic"`` (from the context's generator).
        mode: ``"uniform"`` (``2^bits`` levels between the tensor's min and max) or ``"sign"``.
    """

    adaptive_attacks: ClassVar[tuple[str, ...]] = ("ig_sign", "ig_quantized")  # one applies, by mode
    strength: ClassVar[str | None] = "bits"  # fewer bits perturb more

    bits: int = 8
    rounding: Literal["nearest", "stochastic"] = "nearest"
    mode: Literal["uniform", "sign"] = "uniform"

    def check(self) -> None:
        self.require(1 <= self.bits <= 32, "bits", "between 1 and 32")

    @property
    def levels(self) -> int:
        """The number of quantization levels per tensor (sign mode: two signs, plus exact zeros)."""
        return 2 if self.mode == "sign" or self.bits == 1 else 2**self.bits

    def adaptive_attack_params(self, attack: str) -> dict[str, Any] | None:
        """``ig_sign`` for sign compression, ``ig_quantized`` (with the levels and rounding) for uniform."""
        sign = self.mode == "sign" or self.bits == 1
        if attack == "ig_sign":
            return {} if sign else None
        if attack == "ig_quantized":
            return None if sign else {"levels": self.levels, "rounding": self.rounding}
        return {}

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        if self.mode == "sign" or self.bits == 1:
            return [torch.sign(g) * g.abs().mean() for g in gradients]
        return [self._uniform(g, context) for g in gradients]

    def _uniform(self, g: Tensor, context: DefenseContext) -> Tensor:
        lo, hi = g.min(), g.max()
        if not bool(hi > lo):
            return g.clone()
        step = (hi - lo) / (self.levels - 1)
        position = (g - lo) / step
        if self.rounding == "stochastic":
            assert context.generator is not None
            index = torch.floor(position + rand_like(g, context.generator))
        else:
            index = torch.round(position)
        return lo + index.clamp(0, self.levels - 1) * step
