"""Analytic recovery through a fully connected layer with bias (Phong, Aono, Hayashi, Wang and Moriai 2017).

For a layer ``z = W u + b`` and one example, ``∂ℓ/∂W = (∂ℓ/∂z) uᵀ`` and ``∂ℓ/∂b = ∂ℓ/∂z``: every row ``i`` with a
nonzero bias gradient gives the layer's input exactly, ``u = (∂ℓ/∂W)_i / (∂ℓ/∂b)_i`` (Phong et al.,
"Privacy-Preserving Deep Learning: Revisited and Enhanced", ATIS 2017, section 3; the same observation closes
their IEEE TIFS 2018 paper's section 3.1). When the first layer of the victim is fully connected on the flattened
image (an MLP, a linear model) its input is the image, so one image is recovered in closed form, no optimization.

Here the rows are combined by least squares, ``û = Σ_i b_i W_i / Σ_i b_i²`` over the rows whose bias gradient is
not negligible (``|b_i| > rtol · max|b|``): for one clean image this equals every row's ratio (the gradient is
exactly rank one), and for a noisy payload it weights rows by their signal instead of dividing by near-zero
entries. For a batch of ``B`` images each row's ratio is a weighted mean of the inputs of the images that reach
it; the attack then returns ``B`` row ratios picked greedily far apart (farthest-point selection from the row of
largest ``|b_i|``): exact where a row sees one image only (e.g. behind ReLUs that are off for the others),
mixtures otherwise. The paper treats one example; the batch rule is this module's.

Example:
    >>> import torch
    >>> from dglbench.attacks import create_attack
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))
    >>> x, y = torch.rand(1, 1, 2, 2), torch.tensor([1])
    >>> payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    >>> r = create_attack("analytic_linear").run(model, payload, (1, 2, 2))
    >>> bool(torch.allclose(r.images, x, atol=1e-5)), r.iterations
    (True, 0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from dglbench.attacks.base import ATTACKS, Attack, Box, Outcome, Victim
from dglbench.errors import ConfigError, ShapeError
from torch import Tensor, nn

__all__ = ["AnalyticLinear", "first_linear", "linear_input", "parameter_slices", "pick_far_apart"]


def parameter_slices(model: nn.Module) -> dict[str, tuple[int, torch.Size]]:
    """Offset and shape of every trainable parameter in the flat gradient (``model.named_parameters`` order)."""
    slices, offset = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            slices[name] = (offset, p.shape)
            offset += p.numel()
    return slices


def _take(gradient: Tensor, slices: dict[str, tuple[int, torch.Size]], name: str) -> Tensor:
    start, shape = slices[name]
    return gradient[start : start + shape.numel()].reshape(shape)


def first_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The first module owning trainable parameters, when it is an ``nn.Linear`` with a bias; else ``None``."""
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            if isinstance(module, nn.Linear) and module.bias is not None and module.bias.requires_grad:
                return name, module
            return None
    return None


def linear_input(weight_grad: Tensor, bias_grad: Tensor, rtol: float = 1e-6) -> Tensor:
    """The input ``u`` of a linear layer from one example's gradients, by least squares over the usable rows.

    Args:
        weight_grad: ``[K, F]`` gradient of the weight.
        bias_grad: ``[K]`` gradient of the bias.
        rtol: rows with ``|b_i| <= rtol · max|b|`` are left out.

    Returns:
        ``[F]``: ``Σ_i b_i W_i / Σ_i b_i²`` over the usable rows (each row's ratio ``W_i / b_i`` when exact).

    Example:
        >>> u, delta = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 0.0, -2.0])
        >>> linear_input(torch.outer(delta, u), delta).tolist()
        [1.0, -2.0, 3.0]
    """
    rows = bias_grad.abs() > rtol * bias_grad.abs().max()
    b, w = bias_grad[rows], weight_grad[rows]
    return (b[:, None] * w).sum(0) / b.square().sum()


def pick_far_apart(candidates: Tensor, order: Tensor, count: int) -> Tensor:
    """Indices of ``count`` rows of ``candidates [N, F]`` chosen greedily far apart, starting from ``order[0]``.

    Each next pick is the candidate farthest (Euclidean) from all picked so far; ties go to the earlier one in
    ``order``. With ``N < count`` every candidate is returned.
    """
    picked = [int(order[0])]
    if count <= 1 or len(order) == 1:
        return torch.tensor(picked[:count], dtype=torch.long)
    ranked = candidates[order]
    distance = torch.cdist(ranked, ranked[:1]).squeeze(1)
    while len(picked) < min(count, len(order)):
        j = int(distance.argmax())
        picked.append(int(order[j]))
        distance = torch.minimum(distance, torch.cdist(ranked, ranked[j : j + 1]).squeeze(1))
    return torch.tensor(picked, dtype=torch.long)


@dataclass(frozen=True)
class RowRatioAttack(Attack):
    """What the closed-form attacks that divide a layer's weight gradient by its bias gradient share.

    ``rtol`` leaves out rows whose bias gradient is below ``rtol · max|b|``; nothing iterates or restarts.
    """

    closed_form = True

    rtol: float = 1e-6
    boxed: bool = True
    label_strategy: Literal["auto", "idlg", "llg"] = "auto"
    restarts: int = 1

    def check(self) -> None:
        super().check()
        if not 0 <= self.rtol < 1:
            raise ConfigError(f"{self.registered_name()} needs 0 <= rtol < 1, got {self.rtol}")


@ATTACKS.register("analytic_linear")
@dataclass(frozen=True)
class AnalyticLinear(RowRatioAttack):
    """Closed-form recovery of the input of a first fully connected layer with bias (Phong et al. 2017).

    Applies to FedSGD gradients of models whose first parameterized layer is an ``nn.Linear`` with bias on
    the flattened image (``mlp_1x256``, ``linear``...). Exact for one image; see the module docstring for batches.

    Args:
        rtol: rows whose bias gradient is at most ``rtol`` times the largest are left out (1e-6).
        boxed: clamp the recovered images to the valid pixel range when a box is given (True; breaching's
            analytic attacks clamp too). An exact recovery lies inside the box anyway.
        label_strategy: how labels absent from the payload are inferred ("auto", "idlg", "llg").
        restarts: 1 (a closed form has nothing to restart).

    ``final_loss`` is the relative residual ``‖∂W − ∂b ⊗ û‖² / ‖∂W‖²`` over the usable rows (0 when exact);
    ``iterations`` is 0.

    Example:
        >>> AnalyticLinear().closed_form, AnalyticLinear().updates
        (True, ('fedsgd',))
    """

    def applicable_model(self, model: nn.Module) -> str | None:
        if first_linear(model) is None:
            return (
                f"analytic_linear needs a model whose first layer is fully connected with a bias "
                f"(an MLP or a linear model); {type(model).__name__} starts otherwise"
            )
        return None

    def _solve(self, model: nn.Module, victims: list[Victim], box: Box | None) -> list[Outcome]:
        found = first_linear(model)
        assert found is not None
        name, layer = found
        prefix = f"{name}." if name else ""
        slices = parameter_slices(model)
        shape = victims[0].inits.shape[2:]
        failure = _check_sees_image(model, layer, victims[0].inits[0])
        outcomes = []
        for v in victims:
            dw, db = _take(v.target, slices, prefix + "weight"), _take(v.target, slices, prefix + "bias")
            labels = v.labels if v.labels is not None else torch.zeros(v.inits.shape[1], dtype=torch.long)
            if failure is None and not bool((db != 0).any()):
                why = "every bias gradient of the first layer is zero: nothing to divide by"
            else:
                why = failure
            if why is not None:
                outcomes.append(Outcome(v.inits[0], labels, math.nan, 0, [], why))
                continue
            images, residual = self._recover(dw, db, v.inits.shape[1])
            images = images.reshape(-1, *shape)
            if self.boxed and box is not None:
                images = images.clamp(min=box[0], max=box[1])
            outcomes.append(Outcome(images.detach(), labels, residual, 0, [residual]))
        return outcomes

    def _recover(self, dw: Tensor, db: Tensor, batch: int) -> tuple[Tensor, float]:
        rows = db.abs() > self.rtol * db.abs().max()
        b, w = db[rows], dw[rows]
        if batch == 1:
            images = linear_input(dw, db, self.rtol)[None]
            assigned = images.expand(len(b), -1)
        else:
            ratios = w / b[:, None]
            chosen = pick_far_apart(ratios, b.abs().argsort(descending=True), batch)
            images = ratios[chosen]
            assigned = images[torch.cdist(ratios, images).argmin(1)]
            if len(chosen) < batch:  # fewer usable rows than images: repeat the last
                images = torch.cat([images, images[-1:].expand(batch - len(chosen), -1)])
        residual = float((w - b[:, None] * assigned).square().sum() / w.square().sum().clamp_min(1e-30))
        return images, residual


def _check_sees_image(model: nn.Module, layer: nn.Linear, probe: Tensor) -> str | None:
    """``None`` when ``layer`` receives the flattened image in a forward pass of ``probe``; else why not."""
    seen: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach()))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    except (RuntimeError, ValueError, ShapeError) as exc:
        return f"the model does not run on the images: {exc}"
    finally:
        handle.remove()
        model.train(was_training)
    flat = probe.reshape(probe.shape[0], -1)
    if not seen or seen[0].shape != flat.shape or not torch.allclose(seen[0], flat):
        return "the first fully connected layer does not receive the flattened image"
    return None
