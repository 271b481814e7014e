"""Label inference from the shared gradient of the last linear layer.

Two strategies, both reading only the gradient of "the last layer" — the last ``nn.Linear`` in
parameter order (its weight ``W [K, F]`` and, when it has one, its bias ``b [K]``):

``idlg`` (one image; Zhao et al., "iDLG: Improved Deep Leakage from Gradients", 2020)
    With cross-entropy, ``∂ℓ/∂z = softmax(z) − onehot(y)``: the true class is the only entry with a
    negative sign. dglbench reads that sign from the bias gradient (exactly ``∂ℓ/∂z``, whatever the
    activations); without a bias it uses the row sums of the weight gradient as in the iDLG paper
    (``(p_i − y_i) · Σ h``, correct when the features ``h`` are non-negative, e.g. after a sigmoid or
    ReLU). Exact for cross-entropy (mean or sum); for MSE the same arg-min is only a heuristic.

``llg`` (a batch of ``B`` images; Wainakh et al., "User-Level Label Leakage from Gradients in
Federated Learning", PoPETs 2022, strategy "LLG")
    Every class with a negative gradient entry occurs at least once and is taken first; the
    "impact" of one occurrence is estimated as ``m = (Σ_{g_c<0} g_c / B) · (1 + 1/K)``; each chosen
    class is charged ``−m`` and the remaining ``B − #negative`` labels are picked greedily as the arg-min
    of the charged vector, charging again after each pick (so repeated labels are found). Uses the
    same per-class vector as ``idlg`` (bias gradient, else weight row sums).

Example:
    >>> import torch
    >>> from dglbench.attacks.labels import idlg_labels
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    >>> g = flat_parameter_gradient(model, torch.randn(1, 1, 4, 4), torch.tensor([3]))
    >>> idlg_labels(model, g).tolist()
    [3]
"""

from __future__ import annotations

from typing import Literal

import torch
from dglbench.case import Payload
from dglbench.errors import ConfigError, ShapeError
from torch import Tensor, nn

__all__ = ["LABEL_STRATEGIES", "class_gradient", "idlg_labels", "infer_labels", "llg_labels", "yin_labels"]

LabelStrategy = Literal["auto", "idlg", "llg", "yin"]
LABEL_STRATEGIES: tuple[str, ...] = ("auto", "idlg", "llg", "yin")


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    owners = {id(p): (name, module) for name, module in model.named_modules() for p in module.parameters(False)}
    for _, p in reversed(list(model.named_parameters())):
        name, module = owners.get(id(p), ("", None))
        if isinstance(module, nn.Linear) and p.requires_grad:
            return name, module
    raise ConfigError(
        f"label inference needs a trainable nn.Linear output layer, but {type(model).__name__} has none; "
        f"give the labels to the attacker (Case(labels='given')) or use an attack that optimizes them (dlg)"
    )


def class_gradient(model: nn.Module, gradient: Tensor) -> Tensor:
    """The per-class vector ``[K]`` the strategies read: the last layer's bias gradient, else its weight row sums.

    Args:
        model: the victim model; its trainable parameters define the layout of ``gradient``.
        gradient: the flat shared gradient ``[d_θ]``.
    """
    name, layer = _last_linear(model)
    offsets, offset = {}, 0
    for pname, p in model.named_parameters():
        if p.requires_grad:
            offsets[pname] = (offset, p.shape)
            offset += p.numel()
    if gradient.dim() != 1 or gradient.numel() != offset:
        raise ShapeError(
            f"the gradient has shape {tuple(gradient.shape)}, but the model has {offset} trainable parameters"
        )
    prefix = f"{name}." if name else ""
    bias_key = prefix + "bias"
    if layer.bias is not None and bias_key in offsets:
        start, shape = offsets[bias_key]
        return gradient[start : start + shape.numel()]
    start, shape = offsets[prefix + "weight"]
    return gradient[start : start + shape.numel()].reshape(shape).sum(-1)


def last_weight_gradient(model: nn.Module, gradient: Tensor) -> Tensor:
    """The last linear layer's weight gradient ``[K, F]`` out of the flat shared gradient ``[d_θ]``."""
    name, _ = _last_linear(model)
    offset, key = 0, f"{name}.weight" if name else "weight"
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if pname == key:
            return gradient[offset : offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    raise ConfigError(f"the last linear layer's weight {key!r} is not a trainable parameter")


def yin_labels(model: nn.Module, gradient: Tensor, batch_size: int) -> Tensor:
    """GradInversion's label restoration for a batch without repeated labels (Yin et al., CVPR 2021, section 3.1).

    With non-negative features (after a ReLU) the weight-gradient row ``∇W_c = Σ_b (p_bc − [y_b = c]) h_b`` of a
    class present in the batch has negative entries, the others none; the ``batch_size`` classes whose rows reach
    the most negative minimum are returned (sorted). A batch larger than the number of classes must repeat labels:
    then LLG (:func:`llg_labels`) is used.

    Example:
        >>> import torch
        >>> from dglbench.gradients import flat_parameter_gradient
        >>> nn, _ = torch.nn, torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
        >>> g = flat_parameter_gradient(model, torch.rand(2, 1, 4, 4), torch.tensor([4, 1]))
        >>> yin_labels(model, g, 2).tolist()
        [1, 4]
    """
    weight = last_weight_gradient(model, gradient).detach()
    if batch_size > weight.shape[0]:
        return llg_labels(model, gradient, batch_size)
    return weight.min(1).values.argsort()[:batch_size].sort().values.to(gradient.device)


def idlg_labels(model: nn.Module, gradient: Tensor) -> Tensor:
    """The label of a single image: the class whose last-layer gradient is negative (iDLG).

    Args:
        model: the victim model.
        gradient: the flat shared gradient ``[d_θ]`` of one image.

    Returns:
        ``[1]`` long tensor.
    """
    return class_gradient(model, gradient).argmin().reshape(1)


def llg_labels(model: nn.Module, gradient: Tensor, batch_size: int) -> Tensor:
    """The label multiset of a batch of ``batch_size`` images (LLG; see the module docstring).

    Args:
        model: the victim model.
        gradient: the flat shared gradient ``[d_θ]`` of the batch.
        batch_size: how many images (labels) to return.

    Returns:
        ``[batch_size]`` long tensor, sorted.

    Example:
        >>> import torch
        >>> from dglbench.gradients import flat_parameter_gradient
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
        >>> g = flat_parameter_gradient(model, torch.randn(3, 1, 4, 4), torch.tensor([4, 1, 1]))
        >>> llg_labels(model, g, 3).tolist()
        [1, 1, 4]
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 for label inference, got {batch_size}")
    g = class_gradient(model, gradient).detach().double().cpu().clone()
    negative = torch.nonzero(g < 0).flatten()
    if len(negative) >= batch_size:  # more present classes than slots: keep the most negative
        return negative[g[negative].argsort()[:batch_size]].sort().values.to(gradient.device)
    impact = (g[negative].sum() / batch_size) * (1 + 1 / g.numel())
    labels = negative.tolist()
    g[negative] -= impact
    while len(labels) < batch_size:
        j = int(g.argmin())
        labels.append(j)
        g[j] -= impact
    return torch.tensor(sorted(labels), dtype=torch.long, device=gradient.device)


def infer_labels(model: nn.Module, payload: Payload, strategy: LabelStrategy = "auto") -> Tensor:
    """Infer a payload's labels from its gradient.

    Args:
        model: the victim model.
        payload: what the attacker received; ``payload.batch_size`` (1 when unknown) labels are returned.
        strategy: ``"idlg"`` (one image), ``"llg"`` (any batch), ``"yin"`` (a batch of distinct labels,
            :func:`yin_labels`) or ``"auto"`` (idlg for one image, else llg).

    Returns:
        ``[B]`` long tensor on the gradient's device.

    Example:
        >>> import torch
        >>> from dglbench.case import Case, make_payload
        >>> from dglbench.gradients import flat_parameter_gradient
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
        >>> g = flat_parameter_gradient(model, torch.randn(1, 1, 4, 4), torch.tensor([2]))
        >>> infer_labels(model, make_payload(Case(labels="inferred"), g, torch.tensor([2]))).tolist()
        [2]
    """
    if strategy not in LABEL_STRATEGIES:
        raise ConfigError(f"unknown label strategy {strategy!r}; use one of {', '.join(LABEL_STRATEGIES)}")
    batch_size = payload.batch_size or 1
    if strategy == "idlg" and batch_size != 1:
        raise ConfigError(f"the 'idlg' label strategy needs one image, the payload has {batch_size}; use 'llg'")
    if strategy == "idlg" or (strategy == "auto" and batch_size == 1):
        return idlg_labels(model, payload.gradient)
    if strategy == "yin":
        return yin_labels(model, payload.gradient, batch_size)
    return llg_labels(model, payload.gradient, batch_size)
