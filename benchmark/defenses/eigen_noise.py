"""Noise along eigen-directions of ``KᵀK`` (the I2F paper's insight turned into a defense).

If ``v_i`` is a unit eigenvector of ``KᵀK`` with eigenvalue ``λ_i`` then ``u_i = K v_i / √λ_i`` is a
unit parameter-space direction, and ``δ = c·u_i`` has exact I2F (ε = 0) ``c / √λ_i``: noise along
high-eigenvalue directions protects little, along low-eigenvalue directions much.

This defense computes the ``k`` largest eigenpairs of the victim's ``KᵀK`` with
:func:`dglbench.influence.top_eigenpairs` (rank 0 is the largest) and adds

    δ = c · Σ_{i∈S} z_i u_i,    z_i ~ N(0, 1) / √n   (``sampling="gaussian"``, from the generator), or
    δ = c · Σ_{i∈S} u_i / √n                         (``sampling="deterministic"``),

over a set ``S`` of ``n`` ranks, so that ``E‖δ‖² = c²`` (exactly ``c²`` when deterministic).
``ranks`` selects ``S`` among the computed ranks ``0 .. k−1``:

* ``"top"``: ``0 .. n−1``, the ``n`` largest eigenvalues (k defaults to n);
* ``"bottom"``: ``k−n .. k−1``, the ``n`` SMALLEST among the ``k`` computed — only the largest ``k``
  are ever computed, so choose ``k`` large to reach low-eigenvalue directions (``k`` is required);
* ``"a:b"``: ranks ``a .. b−1`` (k defaults to b); an integer or ``"a"``: that single rank.

Example:
    >>> from dglbench.defenses import EigenNoise
    >>> EigenNoise(scale=0.1, ranks="bottom", n=2, k=8).selected_ranks()
    [6, 7]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from dglbench.case import DefenseContext
from dglbench.defenses.base import Defense, defense_name, register_defense
from dglbench.defenses.noise import randn_like
from dglbench.errors import ConfigError, ShapeError
from dglbench.influence import top_eigenpairs
from dglbench.params import Count, NoiseScale
from torch import Tensor

__all__ = ["EigenNoise"]


@register_defense("eigen_noise")
@dataclass(frozen=True)
class EigenNoise(Defense):
    """Noise of norm ``scale`` spread over chosen eigen-directions ``u_i`` of the victim's ``KᵀK``.

    Args:
        scale: the noise norm ``c`` (≥ 0).
        ranks: ``"top"``, ``"bottom"``, a range ``"a:b"``, or one rank (``int`` or ``"a"``); rank 0 is the largest.
        n: number of ranks for ``"top"`` / ``"bottom"``.
        k: number of eigenpairs to compute (default: the fewest the selection needs; required for ``"bottom"``).
        sampling: ``"gaussian"`` (random coefficients from the generator) or ``"deterministic"``.
    """

    # No adaptive attack: the noise lies along eigenvectors of the victim's private KᵀK, which an attacker could
    # only approximate at its own candidate (a Lanczos solve per step); the plain attacks are the suite here.
    adaptive_attacks: ClassVar[tuple[str, ...]] = ()
    strength: ClassVar[str | None] = "scale"

    scale: NoiseScale = 0.01
    ranks: str | int = "top"
    n: Count = 1
    k: Count | None = None
    sampling: Literal["gaussian", "deterministic"] = "gaussian"

    def check(self) -> None:
        self.selected_ranks()

    def _parse(self) -> tuple[int, int]:
        """The selection as a half-open range ``[start, stop)`` of ranks (bottom needs k)."""
        ranks = self.ranks
        if ranks == "top":
            return 0, self.n
        if ranks == "bottom":
            if self.k is None:
                raise ConfigError(
                    f"defense {defense_name(self)!r}: ranks='bottom' needs parameter 'k' (how many of the largest "
                    f"eigenpairs to compute; the bottom n of those are used)"
                )
            return self.k - self.n, self.k
        try:
            if isinstance(ranks, int):
                return ranks, ranks + 1
            if ":" in ranks:
                start, stop = (int(part) for part in ranks.split(":"))
                return start, stop
            return int(ranks), int(ranks) + 1
        except ValueError:
            raise ConfigError(
                f"defense {defense_name(self)!r}: parameter 'ranks' must be 'top', 'bottom', 'a:b' or a rank, "
                f"got {ranks!r}"
            ) from None

    def selected_ranks(self) -> list[int]:
        """The ranks (0 = largest eigenvalue) the noise is placed along."""
        start, stop = self._parse()
        k = self.num_eigenpairs
        if not 0 <= start < stop <= k:
            raise ConfigError(
                f"defense {defense_name(self)!r}: ranks {self.ranks!r} select {start}..{stop - 1}, outside the "
                f"k={k} computed eigenpairs (ranks 0..{k - 1}); raise 'k' or change 'ranks'"
            )
        return list(range(start, stop))

    @property
    def num_eigenpairs(self) -> int:
        """How many of the largest eigenpairs are computed."""
        return self.k if self.k is not None else self._parse()[1]

    def __call__(self, gradients: list[Tensor], context: DefenseContext) -> list[Tensor]:
        ranks = self.selected_ranks()
        pairs = top_eigenpairs(
            context.model, context.images, context.labels, self.num_eigenpairs, loss=context.case.loss_fn()
        )
        directions = pairs.directions[0, ranks]  # [n, d_θ]
        sizes = [g.numel() for g in gradients]
        if directions.shape[1] != sum(sizes):
            raise ShapeError(
                f"defense {defense_name(self)!r}: eigen-directions have {directions.shape[1]} entries but the gradient "
                f"has {sum(sizes)}; context.parameter_names must be all trainable parameters of the model"
            )
        if self.sampling == "gaussian":
            assert context.generator is not None
            coefficients = randn_like(directions[:, 0], context.generator)
        else:
            coefficients = torch.ones_like(directions[:, 0])
        delta = self.scale / math.sqrt(len(ranks)) * (coefficients[:, None] * directions).sum(0)
        out, offset = [], 0
        for g, size in zip(gradients, sizes):
            out.append(g + delta[offset : offset + size].reshape(g.shape).to(g.dtype))
            offset += size
        return out
