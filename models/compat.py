"""Make models differentiable twice, check that they are, and set the BatchNorm mode.

I2F and the gradient-matching attacks differentiate the parameter gradient ``g(x) = ∇_θ ℓ`` once
more with respect to the input (``Kᵀu = ∇_x ⟨g(x), u⟩``), so every operation in the model needs a
double backward. Two kinds of operation in torch / timm lack one:

- fused scaled-dot-product attention on the CPU (``aten::_scaled_dot_product_flash_attention_for_cpu``):
  timm attention modules carry a ``fused_attn`` flag, which :func:`make_twice_differentiable` sets to
  False on the model's modules (timm's global ``timm.layers.set_fused_attn`` is left alone, so other
  models are unaffected);
- ``hardsigmoid`` (``aten::hardsigmoid_backward`` has no derivative) and, in older torch releases,
  ``hardswish``: ``nn.Hardsigmoid`` / ``nn.Hardswish`` modules are replaced by :class:`Hardsigmoid` /
  :class:`Hardswish`, which compute the same values bit for bit from ``relu6``, and module attributes
  holding ``F.hardsigmoid`` / ``F.hardswish`` (timm's ``get_act_fn``) are rebound to their twins.
  timm's own ``HardSigmoid``, ``HardSwish``, ``HardMish`` and their ``*Me`` variants are built from
  ``relu6`` / ``clamp`` or from autograd functions with differentiable backward, and are kept.

BatchNorm policy: the case, not this module, decides the mode. Victims default to eval mode
(running statistics), since BatchNorm in train mode cannot normalize one image whose feature map
has shrunk to 1x1 and makes each image's gradient depend on the rest of the batch. Use
:func:`set_batchnorm_mode` to set it on every BatchNorm layer and nothing else.

Example:
    >>> import timm, torch, models
    >>> net = models.make_twice_differentiable(timm.create_model("mobilenetv3_small_050", num_classes=10).eval())
    >>> models.check_twice_differentiable(net, (3, 32, 32))
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from dglbench.errors import ConfigError, NotTwiceDifferentiableError
from torch import nn

__all__ = [
    "Hardsigmoid",
    "Hardswish",
    "check_twice_differentiable",
    "hardsigmoid",
    "hardswish",
    "make_twice_differentiable",
    "set_batchnorm_mode",
]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # torch's kernels compute half types in float32 and round once; doing the same keeps values identical
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``F.hardsigmoid`` with the same values, built from ``relu6`` (which has a double backward)."""
    y = _upcast(x)
    return (F.relu6(y + 3.0) / 6.0).to(x.dtype)


def hardswish(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """``F.hardswish`` with the same values, built from ``relu6`` (which has a double backward)."""
    y = _upcast(x)
    return (y * F.relu6(y + 3.0) / 6.0).to(x.dtype)


class Hardsigmoid(nn.Module):
    """Drop-in for ``nn.Hardsigmoid`` that can be differentiated twice (never in place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hardsigmoid(x)


class Hardswish(nn.Module):
    """Drop-in for ``nn.Hardswish`` that can be differentiated twice (never in place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hardswish(x)


_NO_DERIVATIVE = re.compile(r"derivative for '?([\w.:]+)'? is not implemented")
_MODULE_SWAPS: dict[type[nn.Module], type[nn.Module]] = {nn.Hardsigmoid: Hardsigmoid, nn.Hardswish: Hardswish}
_FUNCTION_SWAPS: dict[Any, Any] = {F.hardsigmoid: hardsigmoid, F.hardswish: hardswish}


def make_twice_differentiable(model: nn.Module) -> nn.Module:
    """Turn off fused attention and swap hard activations for twice-differentiable twins, in place.

    Forward values are unchanged. Returns ``model`` for chaining.

    Example:
        >>> from torch import nn
        >>> net = make_twice_differentiable(nn.Sequential(nn.Linear(4, 4), nn.Hardswish()))
        >>> type(net[1]).__name__
        'Hardswish'
    """
    for module in list(model.modules()):
        if isinstance(getattr(module, "fused_attn", None), int):  # bool, or timm's 0/1/2
            module.fused_attn = False
        for name, child in list(module.named_children()):
            if type(child) in _MODULE_SWAPS:
                setattr(module, name, _MODULE_SWAPS[type(child)]())
        for name, value in list(vars(module).items()):
            twin = next((new for old, new in _FUNCTION_SWAPS.items() if value is old), None)
            if twin is not None:
                setattr(module, name, twin)
    return model


def set_batchnorm_mode(model: nn.Module, mode: str) -> nn.Module:
    """Put every BatchNorm layer (and only those) in ``"eval"`` or ``"train"`` mode; returns ``model``."""
    if mode not in ("eval", "train"):
        raise ConfigError(f"unknown BatchNorm mode {mode!r}; use 'eval' or 'train'")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train(mode == "train")
    return model


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _detached(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, list | tuple):
        return type(obj)(_detached(item) for item in obj)
    if isinstance(obj, dict):
        return {key: _detached(item) for key, item in obj.items()}
    return obj


def _fed(obj: Any, leaves: list[torch.Tensor]) -> Any:
    """A copy of ``obj`` whose floating tensors are non-leaf views of fresh leaves (so in-place ops work)."""
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        leaves.append(obj.detach().clone().requires_grad_())
        return leaves[-1].clone()
    if isinstance(obj, list | tuple):
        return type(obj)(_fed(item, leaves) for item in obj)
    if isinstance(obj, dict):
        return {key: _fed(item, leaves) for key, item in obj.items()}
    return obj


def _signature(error: BaseException) -> str:
    """What identifies a failure: the op without a derivative, else the message's first line."""
    op = _NO_DERIVATIVE.search(str(error))
    return op.group(1) if op else (str(error).splitlines() or [""])[0]


def _double_backward_error(module: nn.Module, args: tuple, kwargs: dict) -> BaseException | None:
    """Differentiate ``module`` alone twice (params and inputs, then inputs); the error raised, if any."""
    inputs: list[torch.Tensor] = []
    args, kwargs = _fed(args, inputs), _fed(kwargs, inputs)
    try:
        outputs = [t for t in _tensors(module(*args, **kwargs)) if t.requires_grad]
        params = [p for p in module.parameters() if p.requires_grad]
        if not outputs or not inputs:
            return None
        loss = sum((out.float() ** 2).sum() for out in outputs)
        grads = torch.autograd.grad(loss, inputs + params, create_graph=True, allow_unused=True)
        grads = [g for g in grads if g is not None and g.requires_grad]
        if grads:
            torch.autograd.grad(sum((g.float() ** 2).sum() for g in grads), inputs, allow_unused=True)
    except (RuntimeError, NotImplementedError) as exc:
        return exc
    return None


def _find_culprit(model: nn.Module, x: torch.Tensor, error: BaseException) -> tuple[str, nn.Module, BaseException]:
    """Descend from the root to the deepest module that fails the same way on its own recorded inputs."""
    records: dict[nn.Module, tuple[tuple, dict]] = {}

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        records.setdefault(module, (_detached(args), _detached(kwargs)))

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    target = _signature(error)
    path, module = "", model
    while True:
        for name, child in module.named_children():
            child_error = _double_backward_error(child, *records[child]) if child in records else None
            if child_error is not None and _signature(child_error) == target:
                path, module, error = f"{path}.{name}" if path else name, child, child_error
                break
        else:
            return path, module, error


def _fix_hint(module: nn.Module) -> str:
    if type(module) in _MODULE_SWAPS or getattr(module, "fused_attn", False):
        return "call models.make_twice_differentiable(model) first"
    return f"replace {type(module).__name__} by twice-differentiable ops (make_twice_differentiable does not cover it)"


def check_twice_differentiable(model: nn.Module, input_shape: tuple[int, ...], num_classes: int | None = None) -> None:
    """Check that ``∇_x ⟨∇_θ ℓ(f_θ(x), y), u⟩`` can be computed; raise a one-line error naming the culprit.

    Runs the model (in its current mode) on one random input of ``input_shape`` ((C, H, W) or
    (B, C, H, W)), takes the cross-entropy parameter gradient with ``create_graph=True`` and
    differentiates its inner product with a random direction with respect to the input. The model's
    buffers (BatchNorm running statistics) are restored afterwards.

    Args:
        model: the victim model, in the mode the case uses (eval for one image with BatchNorm).
        input_shape: one input's shape, with or without the batch dimension.
        num_classes: labels are drawn below this; default: the model's output width.

    Raises:
        NotTwiceDifferentiableError: naming the deepest module whose double backward fails, and the fix.
        ConfigError: BatchNorm in train mode cannot normalize the batch.

    Example:
        >>> from torch import nn
        >>> check_twice_differentiable(nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Sigmoid()), (3, 2, 2))
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]  # train-mode BatchNorm updates its statistics
    try:
        _check(model, tuple(input_shape) if len(input_shape) == 4 else (1, *input_shape), num_classes)
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def _check(model: nn.Module, shape: tuple[int, ...], num_classes: int | None) -> None:
    param = next(model.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (torch.device("cpu"), torch.float32)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device, dtype).requires_grad_()
    try:
        logits = model(x)
    except ValueError as exc:
        if "Expected more than 1 value per channel" in str(exc):
            raise ConfigError(
                "BatchNorm in train mode cannot normalize this batch; call models.set_batchnorm_mode(model, 'eval')"
            ) from None
        raise
    classes = num_classes or logits.shape[-1]
    y = torch.randint(classes, (shape[0],), generator=generator).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        grads = torch.autograd.grad(F.cross_entropy(logits, y), params, create_graph=True, allow_unused=True)
        directions = [torch.randn(p.shape, generator=generator).to(device, p.dtype) for p in params]
        inner = sum((g * u).sum() for g, u in zip(grads, directions, strict=True) if g is not None and g.requires_grad)
        if isinstance(inner, torch.Tensor):
            torch.autograd.grad(inner, x, allow_unused=True)
    except (RuntimeError, NotImplementedError) as exc:
        path, module, error = _find_culprit(model, x.detach(), exc)
        op = _NO_DERIVATIVE.search(str(error))
        what = f"{op.group(1)} has no double backward" if op else _signature(error)
        name = f"module {path!r} ({type(module).__name__})" if path else f"model {type(module).__name__}"
        raise NotTwiceDifferentiableError(f"{name} is not twice differentiable ({what}); {_fix_hint(module)}") from None
