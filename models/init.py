"""Named, seeded parameter initializations.

A scheme is a function ``scheme(model, generator, **options)`` registered in :data:`INITIALIZATIONS`;
:func:`initialize` runs it with a local ``torch.Generator`` seeded by ``seed``, so the result depends
on ``(architecture, scheme, seed, options)`` only, never on the global RNG. Values are drawn on the
CPU in ``named_parameters`` order and copied to each parameter's device, so a seed gives the same
weights on every device.

The I2F paper's schemes (Zhang et al. 2023, illidanlab/inversion-influence-function,
``demos/codes/invert_initializations.py::model_init``, applied with ``model.apply``; the names are that
script's ``--init`` choices, and the names exp. 4 uses):

==================  =========================================================================
``uniform``         every parameter, BatchNorm / LayerNorm affine terms included, from
                    U(-bound, bound), bound 0.5 (as DLG's reference code does, and the paper's)
``normal``          conv / linear weights from N(0, 0.5²); biases keep PyTorch's default
                    U(±1/√fan_in) (the script's bias line re-draws the weights), drawn here from
                    the seeded generator
``kaiming``         conv / linear weights from ``kaiming_uniform_(nonlinearity="sigmoid")``:
                    U(±√(3 / fan_in)) (gain 1); biases from U(-0.5, 0.5)
``xavier``          conv / linear weights from Glorot's U(±√(6 / (fan_in + fan_out))) (gain 1);
                    biases from U(-0.5, 0.5)
==================  =========================================================================

Textbook schemes, under their own names:

==================  =========================================================================
``normal_std0.1``   conv / linear weights from N(0, 0.1²); biases 0
``kaiming_uniform`` conv / linear weights from He et al.'s U(±√(6 / fan_in)) (ReLU gain); biases 0
``xavier_uniform``  conv / linear weights from Glorot's U(±√(6 / (fan_in + fan_out))); biases 0
``default``         the architecture's own initialization: the model is left as constructed (a
                    trial constructs it under a generator seeded by ``init_seed``)
==================  =========================================================================

Except under ``uniform``, normalization layers (BatchNorm, GroupNorm, LayerNorm, ...) are reset to
their standard weight 1 and bias 0 (the paper's script would draw their weights too, and its ``kaiming``
fails on them: fans of a 1-d tensor are undefined), and every other parameter (positional embeddings, class tokens,
layer-scale factors) keeps its constructed value; seed the construction (``torch.manual_seed``) when
those must be reproducible too. Buffers (BatchNorm running statistics) are never touched.

Example:
    >>> import timm, models
    >>> from dglbench.models.init import initialize
    >>> net = initialize(timm.create_model("convnet5"), "uniform", seed=0)
    >>> bool(all(p.abs().max() <= 0.5 for p in net.parameters()))
    True
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from dglbench.errors import ConfigError
from dglbench.registry import Registry
from torch import nn

__all__ = ["INITIALIZATIONS", "initialize"]

Scheme = Callable[..., None]
INITIALIZATIONS: Registry[Scheme] = Registry("initialization")

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def _draw(param: torch.Tensor, fill: Callable[[torch.Tensor], Any]) -> None:
    values = torch.empty(param.shape, dtype=param.dtype)
    fill(values)
    param.copy_(values)


def _weighted(model: nn.Module) -> Iterator[nn.Module]:
    return (m for m in model.modules() if isinstance(m, _WEIGHTED))


def _reset_norms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, _NORMS):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _reinit_weighted(
    model: nn.Module,
    sample: Callable[[torch.Tensor], Any],
    bias: Callable[[torch.Tensor, nn.Module], Any] | None = None,
) -> None:
    """Norms to 1 / 0; conv / linear weights by ``sample``, their biases by ``bias(tensor, module)`` (None: 0)."""
    _reset_norms(model)
    for module in _weighted(model):
        _draw(module.weight, sample)
        if module.bias is not None:
            if bias is None:
                module.bias.zero_()
            else:
                _draw(module.bias, lambda t, m=module: bias(t, m))


def _fan_in_bound(weight: torch.Tensor) -> float:
    """PyTorch's default bias bound for a conv / linear layer: 1/√fan_in."""
    fan_in = _fans(weight)[0]
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


# ------------------------------------------------------------------------------ the I2F paper's schemes
@INITIALIZATIONS.register("uniform")
def uniform(model: nn.Module, generator: torch.Generator, bound: float = 0.5) -> None:
    """Every parameter from U(-bound, bound) (DLG's and the I2F paper's ``uniform``)."""
    for param in model.parameters():
        _draw(param, lambda t: t.uniform_(-bound, bound, generator=generator))


@INITIALIZATIONS.register("normal")
def normal(model: nn.Module, generator: torch.Generator, std: float = 0.5) -> None:
    """The I2F paper's ``normal``: weights from N(0, std²), std 0.5; biases from PyTorch's default U(±1/√fan_in).

    The paper's script draws ``m.weight`` twice (its bias line reads ``m.weight.data.normal_(0, 0.5)``), so
    biases keep the values PyTorch's layer constructor gave them; here they are drawn from that same
    distribution with the seeded generator. Normalization layers are reset to 1 / 0.
    """
    _reinit_weighted(
        model,
        lambda t: t.normal_(0.0, std, generator=generator),
        lambda t, m: t.uniform_(-_fan_in_bound(m.weight), _fan_in_bound(m.weight), generator=generator),
    )


@INITIALIZATIONS.register("kaiming")
def kaiming(model: nn.Module, generator: torch.Generator, bias_bound: float = 0.5) -> None:
    """The I2F paper's ``kaiming``: weights from U(±√(3 / fan_in)) (sigmoid gain 1), biases from U(±0.5)."""

    def sample(t: torch.Tensor) -> None:
        bound = math.sqrt(3.0 / _fans(t)[0])
        t.uniform_(-bound, bound, generator=generator)

    _reinit_weighted(model, sample, lambda t, m: t.uniform_(-bias_bound, bias_bound, generator=generator))


@INITIALIZATIONS.register("xavier")
def xavier(model: nn.Module, generator: torch.Generator, bias_bound: float = 0.5) -> None:
    """The I2F paper's ``xavier``: weights from U(±√(6 / (fan_in + fan_out))), biases from U(±0.5)."""

    def sample(t: torch.Tensor) -> None:
        bound = math.sqrt(6.0 / sum(_fans(t)))
        t.uniform_(-bound, bound, generator=generator)

    _reinit_weighted(model, sample, lambda t, m: t.uniform_(-bias_bound, bias_bound, generator=generator))


# ------------------------------------------------------------------------------------- textbook schemes
@INITIALIZATIONS.register("normal_std0.1")
def normal_std01(model: nn.Module, generator: torch.Generator, std: float = 0.1) -> None:
    """Conv / linear weights from N(0, std²), std 0.1, biases 0, normalization layers 1 / 0."""
    _reinit_weighted(model, lambda t: t.normal_(0.0, std, generator=generator))


@INITIALIZATIONS.register("kaiming_uniform")
def kaiming_uniform(model: nn.Module, generator: torch.Generator) -> None:
    """He et al.: weights from U(±√(6 / fan_in)) (ReLU gain √2), biases 0, normalization layers 1 / 0."""

    def sample(t: torch.Tensor) -> None:
        bound = math.sqrt(6.0 / _fans(t)[0])
        t.uniform_(-bound, bound, generator=generator)

    _reinit_weighted(model, sample)


@INITIALIZATIONS.register("xavier_uniform")
def xavier_uniform(model: nn.Module, generator: torch.Generator) -> None:
    """Glorot: weights from U(±√(6 / (fan_in + fan_out))), biases 0, normalization layers 1 / 0."""

    def sample(t: torch.Tensor) -> None:
        bound = math.sqrt(6.0 / sum(_fans(t)))
        t.uniform_(-bound, bound, generator=generator)

    _reinit_weighted(model, sample)


@INITIALIZATIONS.register("default")
def default(model: nn.Module, generator: torch.Generator) -> None:
    """The architecture's own initialization: nothing changes."""


def initialize(model: nn.Module, scheme: str, seed: int, **options: Any) -> nn.Module:
    """Initialize ``model`` in place by the registered ``scheme``, deterministically for ``seed``.

    Args:
        model: any ``nn.Module``.
        scheme: a name in ``INITIALIZATIONS.list()``.
        seed: seeds a local ``torch.Generator``; the global RNG is neither used nor advanced.
        **options: scheme options (``bound`` for uniform, ``std`` for normal / normal_std0.1, ``bias_bound``
            for kaiming / xavier).

    Returns:
        ``model``.

    Example:
        >>> from torch import nn
        >>> a = initialize(nn.Linear(3, 2), "kaiming_uniform", seed=1)
        >>> b = initialize(nn.Linear(3, 2), "kaiming_uniform", seed=1)
        >>> bool((a.weight == b.weight).all())
        True
    """
    fn = INITIALIZATIONS.get(scheme)
    generator = torch.Generator().manual_seed(int(seed))
    try:
        inspect.signature(fn).bind(model, generator, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for initialization {scheme!r}: {exc}") from None
    with torch.no_grad():
        fn(model, generator, **options)
    return model
