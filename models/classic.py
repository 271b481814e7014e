"""The classic gradient-leakage networks, registered into timm's model registry.

Importing this module (``import dglbench.models`` does) makes these names known to ``timm.create_model`` and
``timm.list_models``:

========================  ==================================================================
``convnet5``              DLG's "LeNet" (Zhu et al. 2019): four 5x5 convolutions, 12 channels,
                          padding 2, strides 2, 2, 1, 1, a sigmoid after each, one linear head
``mlp_1x256``             flatten, Linear(d_x, 256), sigmoid, Linear(256, classes)
``mlp_2x256``             flatten, two hidden layers of 256 sigmoid units, linear head
``linear``                flatten, one Linear(d_x, classes) (multinomial logistic regression)
``ig_convnet``            the ConvNet of Inverting Gradients (Geiping et al. 2020; breaching's
                          "ConvNet"), width 64: eight conv3x3-BatchNorm-ReLU blocks of widths
                          w, 2w, 2w, 4w, 4w, 4w | 4w, 4w with a 3x3 max-pool after the 6th and 8th
``ig_convnet_w16``        the same with width 16 (about 16x fewer parameters), for CPU runs
========================  ==================================================================

Input size: ``in_chans=1`` defaults to 28x28 (MNIST), any other channel count to 32x32 (CIFAR);
``img_size=`` (int or (H, W)) sets any other size and the linear head's in-features follow from it.
The MLPs use sigmoid units by default because DLG's nets do and because their second derivative is
non-zero (ReLU's is zero almost everywhere); ``act_layer="relu"`` or ``"tanh"`` switches. The CIFAR
ResNets live in :mod:`dglbench.models.resnet_cifar`. No pretrained weights exist: ``pretrained=True`` raises.

Example:
    >>> import timm, models
    >>> net = timm.create_model("convnet5", num_classes=10, in_chans=1)
    >>> net.pretrained_cfg["input_size"], sum(p.numel() for p in net.parameters())
    ((1, 28, 28), 17038)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from dglbench.errors import ConfigError
from dglbench.models._factory import build, default_img_size, make_cfg
from timm.models import register_model
from torch import nn

__all__ = ["ConvNet5", "IGConvNet", "MLP"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}

default_cfgs = {
    "convnet5": make_cfg((1, 28, 28), first_conv="features.0", classifier="head"),
    "mlp_1x256": make_cfg((1, 28, 28), first_conv="features.0", classifier="head"),
    "mlp_2x256": make_cfg((1, 28, 28), first_conv="features.0", classifier="head"),
    "linear": make_cfg((1, 28, 28), classifier="head"),
    "ig_convnet": make_cfg((3, 32, 32), first_conv="features.conv0", classifier="head"),
    "ig_convnet_w16": make_cfg((3, 32, 32), first_conv="features.conv0", classifier="head"),
}


class ConvNet5(nn.Module):
    """DLG's LeNet: four 5x5 sigmoid convolutions (strides 2, 2, 1, 1) and a linear head.

    Args:
        num_classes: outputs of the linear head.
        in_chans: input channels.
        img_size: input (H, W) or side; default 28 for one channel, else 32.
        width: channels of every convolution (12 in DLG).
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, img_size: int | tuple[int, int] | None = None, width: int = 12
    ) -> None:
        super().__init__()
        height, wide = default_img_size(in_chans, img_size)
        self.num_classes, self.in_chans, self.input_size = num_classes, in_chans, (in_chans, height, wide)
        layers: list[nn.Module] = []
        channels = in_chans
        for stride in (2, 2, 1, 1):
            layers += [nn.Conv2d(channels, width, kernel_size=5, stride=stride, padding=2), nn.Sigmoid()]
            channels = width
            height, wide = (height - 1) // stride + 1, (wide - 1) // stride + 1
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * height * wide, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    """Flatten, ``len(hidden)`` fully connected layers with ``act_layer``, and a linear head.

    ``hidden=()`` is the linear model. ``act_layer`` is "sigmoid" (default), "relu" or "tanh".
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int | tuple[int, int] | None = None,
        hidden: tuple[int, ...] = (256,),
        act_layer: str = "sigmoid",
    ) -> None:
        super().__init__()
        if act_layer not in _ACTIVATIONS:
            raise ConfigError(f"unknown act_layer {act_layer!r}; use one of {', '.join(_ACTIVATIONS)}")
        height, wide = default_img_size(in_chans, img_size)
        self.num_classes, self.in_chans, self.input_size = num_classes, in_chans, (in_chans, height, wide)
        layers: list[nn.Module] = []
        features = in_chans * height * wide
        for units in hidden:
            layers += [nn.Linear(features, units), _ACTIVATIONS[act_layer]()]
            features = units
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.flatten(1)))


class IGConvNet(nn.Module):
    """The ConvNet of Inverting Gradients: eight conv3x3-BN-ReLU blocks, two 3x3 max-pools, linear head.

    Args:
        num_classes: outputs of the linear head.
        in_chans: input channels.
        img_size: input (H, W) or side; default 28 for one channel, else 32 (head in-features 36 * width).
        width: base width ``w``; the blocks have w, 2w, 2w, 4w, 4w, 4w, 4w, 4w channels.
    """

    def __init__(
        self, num_classes: int = 10, in_chans: int = 3, img_size: int | tuple[int, int] | None = None, width: int = 64
    ) -> None:
        super().__init__()
        height, wide = default_img_size(in_chans, img_size)
        self.num_classes, self.in_chans, self.input_size = num_classes, in_chans, (in_chans, height, wide)
        widths = (width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width, 4 * width, 4 * width)
        layers: list[tuple[str, nn.Module]] = []
        channels = in_chans
        for i, out in enumerate(widths):
            layers += [
                (f"conv{i}", nn.Conv2d(channels, out, kernel_size=3, padding=1)),
                (f"bn{i}", nn.BatchNorm2d(out)),
                (f"relu{i}", nn.ReLU()),
            ]
            channels = out
            if i in (5, 7):
                layers.append((f"pool{(i - 5) // 2}", nn.MaxPool2d(3)))
        self.features = nn.Sequential(OrderedDict(layers))
        self.head = nn.Linear(channels * (height // 9) * (wide // 9), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@register_model
def convnet5(pretrained: bool = False, **kwargs: Any) -> ConvNet5:
    """DLG's 4-conv sigmoid LeNet (17,038 parameters at 1x28x28, 10 classes)."""
    return build("convnet5", ConvNet5, pretrained, **kwargs)


@register_model
def mlp_1x256(pretrained: bool = False, **kwargs: Any) -> MLP:
    """MLP with one hidden layer of 256 sigmoid units."""
    return build("mlp_1x256", MLP, pretrained, **{"hidden": (256,), **kwargs})


@register_model
def mlp_2x256(pretrained: bool = False, **kwargs: Any) -> MLP:
    """MLP with two hidden layers of 256 sigmoid units."""
    return build("mlp_2x256", MLP, pretrained, **{"hidden": (256, 256), **kwargs})


@register_model
def linear(pretrained: bool = False, **kwargs: Any) -> MLP:
    """Flatten and one linear layer (softmax regression under cross-entropy)."""
    return build("linear", MLP, pretrained, **{"hidden": (), **kwargs})


@register_model
def ig_convnet(pretrained: bool = False, **kwargs: Any) -> IGConvNet:
    """Inverting Gradients' ConvNet, width 64."""
    return build("ig_convnet", IGConvNet, pretrained, **{"width": 64, **kwargs})


@register_model
def ig_convnet_w16(pretrained: bool = False, **kwargs: Any) -> IGConvNet:
    """Inverting Gradients' ConvNet, width 16."""
    return build("ig_convnet_w16", IGConvNet, pretrained, **{"width": 16, **kwargs})
