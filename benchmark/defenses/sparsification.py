"""Sparsifying defenses: global magnitude pruning and per-layer top-k.

* ``pruning`` (:class:`GradientPruning`, Zhu et al. 2019, "Deep Leakage from Gradients") ranks all
  entries of all layers together and zeroes the fraction ``ratio`` with the smallest ``|g|``:
  layers with small gradients can lose everything.
* ``topk`` (:class:`TopK`, as in gradient-compression schemes) keeps, in every layer separately,
  the fraction ``ratio`` of entries with the largest ``|g|``: every layer keeps at least one entry.

In both, ``δ = −(pruned entries)``. Counts are exact: ``floor(ratio · d)`` entries are pruned
globally, ``ceil(ratio · n_l)`` entries are kept in a layer of ``n_l`` entries; ties are broken by
``torch.topk``.

Example:
    >>> import torch
    >>> from dglbench.case import DefenseContext
    >>> from dglbench.defenses import GradientPruning
    >>> context = DefenseContext(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.tensor([0]))
    >>> GradientPruning(ratio=0.5)([torch.tensor([[1., -4.], [3., 2.]]), torch.tensor([0.5, -6.])], context)
    [tensor([[ 0., -4.],
            [ 3.,  0.]]), tensor([ 0., -6.])]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from dglbench.case import DefenseContext
from dglbench.defenses.base import Defense, register_defense
from torch import Tensor

__all__ = ["GradientPruning", "TopK"]


@register_defense("pruning")
@dataclass(frozen=True)
class GradientPruning(Defense):
    """Global magnitude pruning: zero the ``ratio`` fraction of entries with the smallest ``|g|``, across all layers.

    Args:
        ratio: fraction of all gradient entries to zero, in ``[0, 1]`` (``floor(ratio · d_θ)`` entries).
    """

    adaptive_attacks: ClassVar[tuple[str, ...]] = ("ig_masked",)  # matches the transmitted coordinates only
    strength: ClassVar[str | None] = "ratio"

    ratio: float = 0.9

    def check(self) -> None:
        self.require(0.0 <= self.ratio <= 1.0, "ratio", "in [0, 1]")

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        flat = torch.cat([g.reshape(-1) for g in gradients])
        num_pruned = int(math.floor(self.ratio * flat.numel()))
        if num_pruned > 0:
            idx = torch.topk(flat.abs(), num_pruned, largest=False, sorted=False).indices
            flat = flat.clone()
            flat[idx] = 0
        out, offset = [], 0
        for g in gradients:
            out.append(flat[offset : offset + g.numel()].reshape(g.shape).clone())
            offset += g.numel()
        return out


@register_defense("topk")
@dataclass(frozen=True)
class TopK(Defense):
    """Per-layer top-k: in each layer keep the ``ratio`` fraction of entries with the largest ``|g|``, zero the rest.

    Unlike ``pruning`` the budget is per layer, so no layer is silenced entirely (for ``ratio > 0``).

    Args:
        ratio: fraction of each layer's entries to keep, in ``[0, 1]`` (``ceil(ratio · n_l)`` entries).
    """

    adaptive_attacks: ClassVar[tuple[str, ...]] = ("ig_masked",)  # matches the transmitted coordinates only
    strength: ClassVar[str | None] = "ratio"

    ratio: float = 0.1

    def check(self) -> None:
        self.require(0.0 <= self.ratio <= 1.0, "ratio", "in [0, 1]")

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        out = []
        for g in gradients:
            flat = g.reshape(-1)
            keep = min(flat.numel(), int(math.ceil(self.ratio * flat.numel() - 1e-9)))
            mask = torch.zeros_like(flat, dtype=torch.bool)
            if keep > 0:
                mask[torch.topk(flat.abs(), keep, sorted=False).indices] = True
            out.append(torch.where(mask, flat, torch.zeros_like(flat)).reshape(g.shape))
        return out
