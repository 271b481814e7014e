"""Shared plumbing for the classic nets: timm-style default configs and a builder without weights.

timm's ``create_model`` calls an entrypoint as ``fn(pretrained=..., pretrained_cfg=...,
pretrained_cfg_overlay=..., cache_dir=..., **kwargs)``. No pretrained weights exist for the classic
gradient-leakage nets, so :func:`build` refuses ``pretrained=True`` with a one-line
:class:`~dglbench.errors.ConfigError` (timm itself would only log a warning and return a randomly
initialized model), and attaches the resolved config as ``model.pretrained_cfg`` /
``model.default_cfg`` with the input size and class count the model was actually built with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dglbench.errors import ConfigError
from timm.models._builder import resolve_pretrained_cfg
from torch import nn


def make_cfg(input_size: tuple[int, int, int], num_classes: int = 10, **kwargs: Any) -> dict[str, Any]:
    """A default (weight-less) config dict in timm's ``PretrainedCfg`` fields."""
    channels = input_size[0]
    return dict(
        input_size=input_size,
        num_classes=num_classes,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        interpolation="bilinear",
        crop_pct=1.0,
        license="mit",
        **kwargs,
    )


def default_img_size(in_chans: int, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    """``img_size`` as (H, W); unset means 28x28 for one channel (MNIST) and 32x32 otherwise (CIFAR)."""
    if img_size is None:
        return (28, 28) if in_chans == 1 else (32, 32)
    if isinstance(img_size, int):
        return (img_size, img_size)
    height, width = img_size
    return (int(height), int(width))


def build(
    variant: str,
    model_cls: Callable[..., nn.Module],
    pretrained: bool = False,
    pretrained_cfg: Any = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    cache_dir: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls(**kwargs)`` for the registered name ``variant`` and attach its config."""
    if pretrained:
        raise ConfigError(f"no pretrained weights exist for model {variant!r}; create it with pretrained=False")
    try:
        model = model_cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {variant!r}: {exc}") from None
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg, pretrained_cfg_overlay).to_dict()
    channels = model.input_size[0]
    if len(cfg["mean"]) != channels:
        cfg.update(mean=(0.5,) * channels, std=(0.5,) * channels)
    cfg.update(input_size=tuple(model.input_size), num_classes=model.num_classes)
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
    return model
