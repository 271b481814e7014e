"""APRIL's closed-form attack on vision transformers (Lu, Huang, Cheng, Huang and Wang, CVPR 2022).

Lu et al., "APRIL: Finding the Achilles' Heel on Privacy for Vision Transformers" (arXiv 2112.14087), section 3.2
("Closed-form APRIL"). A ViT embeds the image's ``n`` patches linearly, ``e = X Eᵀ + 1 cᵀ`` (``X [n, p]`` the
flattened patches, ``E [d, p]`` the patch embedding, ``c`` its bias), then adds a learnable position embedding,
``z = e + P_pos``. Since ``z`` depends on ``P_pos`` through that sum only, the gradient of the position embedding
*is* the gradient of the embedded patches, ``G = ∂ℓ/∂P_pos = ∂ℓ/∂e`` ``[n, d]``, and the patch embedding's weight
gradient is ``∂ℓ/∂E = Gᵀ X``. Both are in the shared gradient, so the patches solve the linear system
``Gᵀ X = ∂ℓ/∂E``; it has one solution when ``Gᵀ`` ``[d, n]`` has full column rank (``d ≥ n``: an embedding at least
as wide as the number of patches, and a generic gradient), found here by least squares (``torch.linalg.lstsq`` in
float64). Rows of the position embedding for prefix tokens (the class token) are dropped. One image: for a batch
both gradients are sums over the images and the system no longer determines them (the paper treats one image).

Applies to timm ``VisionTransformer``-style models: a learnable ``pos_embed``, a ``patch_embed.proj`` convolution
whose stride equals its kernel (non-overlapping patches) and no normalization inside the patch embedding.

Example:
    >>> import timm, torch
    >>> from dglbench.attacks import create_attack
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, num_classes=3).eval()
    >>> x, y = torch.rand(1, 3, 16, 16), torch.tensor([2])
    >>> payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    >>> r = create_attack("april").run(model, payload, (3, 16, 16))
    >>> bool((r.images - x).abs().max() < 1e-3)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from dglbench.attacks.analytic import parameter_slices
from dglbench.attacks.base import ATTACKS, Attack, Box, Outcome, Victim
from dglbench.attacks.inverting_gradients import InvertingGradients
from dglbench.attacks.objectives import GradientMatcher, cosine_distance
from dglbench.errors import ConfigError
from torch import Tensor, nn

__all__ = ["April", "AprilOptimization", "patches_to_image", "position_span", "solve_patches"]


def solve_patches(pos_grad: Tensor, weight_grad: Tensor) -> tuple[Tensor, float]:
    """The patches ``X [n, p]`` with ``Gᵀ X = ∂ℓ/∂E``, by least squares, and the system's relative residual.

    Args:
        pos_grad: ``G [n, d]``, the position embedding's gradient on the patch tokens.
        weight_grad: ``∂ℓ/∂E [d, p]``, the patch embedding's weight gradient (flattened per output channel).

    Example:
        >>> g, x = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        >>> solved, residual = solve_patches(g, g.T @ x)
        >>> bool(torch.allclose(solved, x)), residual < 1e-20
        (True, True)
    """
    a, b = pos_grad.double().T, weight_grad.double()
    solution = torch.linalg.lstsq(a, b, driver="gelsd").solution
    residual = float((a @ solution - b).square().sum() / b.square().sum().clamp_min(1e-300))
    return solution, residual


def patches_to_image(patches: Tensor, channels: int, patch: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Flattened patches ``[n, C·ph·pw]`` (row-major over the ``grid``) back to an image ``[C, H, W]``."""
    (ph, pw), (gh, gw) = patch, grid
    return patches.reshape(gh, gw, channels, ph, pw).permute(2, 0, 3, 1, 4).reshape(channels, gh * ph, gw * pw)


def _position_embedding(model: nn.Module, attack: str = "april") -> nn.Parameter | str:
    """The model's learnable position embedding ``pos_embed``, or why ``attack`` cannot use the model."""
    pos = getattr(model, "pos_embed", None)
    if not isinstance(pos, nn.Parameter) or not pos.requires_grad:
        return f"{attack} needs a ViT with a learnable position embedding (pos_embed); {type(model).__name__} has none"
    return pos


def _vit_parts(model: nn.Module) -> tuple[nn.Conv2d, nn.Parameter] | str:
    pos, embed = _position_embedding(model), getattr(model, "patch_embed", None)
    proj = getattr(embed, "proj", None)
    name = type(model).__name__
    if isinstance(pos, str):
        return pos
    if not isinstance(proj, nn.Conv2d) or proj.stride != proj.kernel_size or proj.padding not in ((0, 0), "valid"):
        return f"april needs non-overlapping patches (patch_embed.proj, stride = kernel); {name} has none"
    if not isinstance(getattr(embed, "norm", nn.Identity()), nn.Identity):
        return f"april needs a patch embedding without normalization; {name}'s normalizes"
    if proj.groups != 1 or proj.dilation != (1, 1):
        return f"april needs a plain patch convolution; {name}'s is grouped or dilated"
    return proj, pos


@ATTACKS.register("april")
@dataclass(frozen=True)
class April(Attack):
    """Closed-form APRIL: the patches from the position embedding's and the patch embedding's gradients.

    Lu et al., CVPR 2022, section 3.2; see the module docstring. One image per victim.

    Args:
        boxed: clamp the recovered image to the valid pixel range when a box is given (True).
        label_strategy: how labels absent from the payload are inferred ("auto", "idlg", "llg").
        restarts: 1 (nothing to restart).

    ``final_loss`` is the relative residual of the linear system (0 when it is consistent, as without a defense).

    Example:
        >>> April().closed_form
        True
    """

    closed_form = True

    boxed: bool = True
    label_strategy: Literal["auto", "idlg", "llg"] = "auto"
    restarts: int = 1

    def applicable_model(self, model: nn.Module) -> str | None:
        parts = _vit_parts(model)
        return parts if isinstance(parts, str) else None

    def _solve(self, model: nn.Module, victims: list[Victim], box: Box | None) -> list[Outcome]:
        parts = _vit_parts(model)
        assert not isinstance(parts, str)
        proj, pos = parts
        names = {id(p): n for n, p in model.named_parameters()}
        slices = parameter_slices(model)
        (w_at, w_shape), (p_at, p_shape) = slices[names[id(proj.weight)]], slices[names[id(pos)]]
        channels, height, width = victims[0].inits.shape[2:]
        ph, pw = proj.kernel_size
        grid = (height // ph, width // pw)
        n = grid[0] * grid[1]
        outcomes = []
        for v in victims:
            labels = v.labels if v.labels is not None else torch.zeros(v.inits.shape[1], dtype=torch.long)
            why = None
            if v.inits.shape[1] != 1:
                why = f"closed-form APRIL recovers one image; the payload has {v.inits.shape[1]}"
            elif height % ph or width % pw:
                why = f"the image ({height}x{width}) is not a whole number of {ph}x{pw} patches"
            elif p_shape.numel() // p_shape[-1] not in (n, n + int(getattr(model, "num_prefix_tokens", 1))):
                why = f"the position embedding's rows do not match the image's {n} patches (resampled?)"
            if why is not None:
                outcomes.append(Outcome(v.inits[0], labels, math.nan, 0, [], why))
                continue
            pos_grad = v.target[p_at : p_at + p_shape.numel()].reshape(-1, p_shape[-1])[-n:]  # drop prefix tokens
            weight_grad = v.target[w_at : w_at + w_shape.numel()].reshape(w_shape[0], -1)
            patches, residual = solve_patches(pos_grad, weight_grad)
            image = patches_to_image(patches, channels, (ph, pw), grid)[None].to(v.inits)
            if self.boxed and box is not None:
                image = torch.maximum(torch.minimum(image, box[1]), box[0])
            outcomes.append(Outcome(image.detach(), labels, residual, 0, [residual]))
        return outcomes


def position_span(model: nn.Module, matcher: GradientMatcher) -> tuple[int, int]:
    """Where the position embedding's gradient lies in the matcher's flat gradient: ``(start, stop)``.

    Raises:
        ConfigError: when the model has no learnable ``pos_embed`` among the matcher's parameters.
    """
    pos = _position_embedding(model, "april_opt")
    if isinstance(pos, str):
        raise ConfigError(pos)
    name = next((n for n, p in model.named_parameters() if p is pos), None)
    start = 0
    for key, value in matcher.params.items():
        if key == name:
            return start, start + value.numel()
        start += value.numel()
    raise ConfigError(f"april_opt: the position embedding {name!r} is not a trainable parameter of the model")


@ATTACKS.register("april_opt")
@dataclass(frozen=True)
class AprilOptimization(InvertingGradients):
    """Optimization-based APRIL: Inverting Gradients plus ``α (1 − cos)`` on the position embedding's gradient.

    Lu et al., CVPR 2022 (arXiv 2112.14087), section 3.3 ("Optimization-based APRIL"): a gradient-matching attack
    whose loss gets one more term, the cosine distance between the candidate's and the victim's position-embedding
    gradients ``∂ℓ/∂P_pos``, weighted by ``α``:

    ``x̂ = argmin_x' (1 − cos(g(x'), g̃)) + α (1 − cos(∂ℓ/∂P_pos(x'), ∂P̃_pos)) + tv_weight · TV(x')``

    Why a separate term (section 3.2): ``∂ℓ/∂P_pos`` equals the gradient at the embedded patches, the quantity
    that ties the patch embedding's gradient to the image (``∂ℓ/∂E = Gᵀ X``); inside the one global cosine it is a
    small share of the entries (12 480 of 5.4 M in the zoo's ViT at 32×32). Unlike the closed form the term needs
    nothing of the architecture beyond a learnable ``pos_embed`` (any patch embedding, normalization or overlap;
    the paper's Fig. 1 (B)), and it accepts batches (the gradients are then sums over the images; the paper
    attacks one image). The whole ``pos_embed`` gradient enters, class-token row included.

    Settings: the defaults are not the paper's (its values of ``α``, optimizer, step size and iterations are not
    reproduced here, and no code by its authors was found; breaching, the field's reference library, implements
    only the closed form). They are dglbench's choice: the base attack is Inverting Gradients with its published
    settings (signed Adam, global cosine, TV 1e-4, box, step decay, restarts scored by the attacker's own loss;
    see :class:`~dglbench.attacks.InvertingGradients`), so that ``pos_weight = 0`` is Inverting Gradients exactly
    and a comparison at the same budget isolates the term; ``α = 1`` weighs the two cosines (both in [0, 2])
    equally. BENCHMARKS.md (section ``attacks-more``) compares it with Inverting Gradients through the zoo's ViT.

    Args:
        pos_weight: ``α``, the weight of the position-embedding cosine (1.0, chosen as above).
        (the other arguments as in :class:`~dglbench.attacks.InvertingGradients`.)

    ``final_loss`` is the chosen restart's matching cost: both cosine terms, without TV.

    Example:
        >>> import timm, torch
        >>> from dglbench.attacks import create_attack
        >>> from dglbench.case import Case, make_payload
        >>> from dglbench.gradients import flat_parameter_gradient
        >>> from dglbench.models import make_twice_differentiable
        >>> vit = timm.create_model("vit_tiny_patch16_224", img_size=8, patch_size=4, depth=1, num_classes=3)
        >>> model = make_twice_differentiable(vit).eval()  # no fused attention: it has no double backward
        >>> x, y = torch.rand(1, 3, 8, 8), torch.tensor([2])
        >>> payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
        >>> r = create_attack("april_opt", max_iterations=5).run(model, payload, (3, 8, 8))
        >>> r.status, r.iterations
        ('ok', 5)
    """

    pos_weight: float = 1.0

    def check(self) -> None:
        super().check()
        if self.pos_weight < 0:
            raise ConfigError(f"april_opt needs pos_weight >= 0 (α, the position term's weight), got {self.pos_weight}")

    def applicable_model(self, model: nn.Module) -> str | None:
        found = _position_embedding(model, "april_opt")
        return found if isinstance(found, str) else None

    def costs(
        self, matcher: GradientMatcher, labels: Tensor, targets: Tensor
    ) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """Both matching terms from one gradient: ``x [P, B, C, H, W] -> (1 − cos(g, g̃), 1 − cos on pos_embed)``."""
        start, stop = position_span(matcher.model, matcher)
        segments = matcher.segments if self.cosine_scope == "layer" else None

        def terms(images: Tensor) -> tuple[Tensor, Tensor]:
            gradient = matcher(images, labels)
            whole = cosine_distance(gradient, targets, segments, matcher.num_segments)
            return whole, cosine_distance(gradient[:, start:stop], targets[:, start:stop])

        return terms

    def matching_cost(self, matcher: GradientMatcher, labels: Tensor, targets: Tensor) -> Callable[[Tensor], Tensor]:
        """The matching cost ``x -> [P]``: Inverting Gradients' cosine plus ``pos_weight`` · the position term."""
        terms = self.costs(matcher, labels, targets)

        def cost(images: Tensor) -> Tensor:
            whole, position = terms(images)
            return whole + self.pos_weight * position

        return cost
