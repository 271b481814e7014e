"""CIFAR-style ResNets, registered into timm's model registry.

CIFAR stem: one 3x3 convolution with stride 1, BatchNorm and ReLU, no max-pool; then stages of
post-activation basic blocks (conv3x3-BN-ReLU-conv3x3-BN, add, ReLU), the first stage at stride 1
and each later one halving the resolution; global average pooling and a linear head. Shortcuts that
change shape are 1x1 convolutions with BatchNorm (projection shortcuts, "option B"). The stem has
the first stage's width. Weights start as in torchvision's ResNet (Kaiming-normal fan-out
convolutions, BatchNorm 1/0, PyTorch's default Linear).

=====================  ==============  ===================  ==========================
name                   blocks/stage    widths               notes
=====================  ==============  ===================  ==========================
``cifar_resnet18``     2, 2, 2, 2      64, 128, 256, 512    the DGL literature's ResNet18
``cifar_resnet20``     3, 3, 3         16, 32, 64           He et al. 2016, depth 6n+2
``cifar_resnet56``     9, 9, 9         16, 32, 64
``cifar_resnet32_10``  5, 5, 5         160, 320, 640        wide (WRN-32-10 widths), as breaching's ResNet32-10
=====================  ==============  ===================  ==========================

The nets are fully convolutional: any input of at least 8x8 works; ``img_size`` only records the
nominal input size in ``pretrained_cfg`` (default 32). BatchNorm needs eval mode for one image.

Example:
    >>> import timm, models
    >>> net = timm.create_model("cifar_resnet20", num_classes=10).eval()
    >>> import torch
    >>> net(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

from typing import Any

import torch
from dglbench.models._factory import build, default_img_size, make_cfg
from timm.models import register_model
from torch import nn

__all__ = ["BasicBlock", "CifarResNet"]

default_cfgs = {
    name: make_cfg((3, 32, 32), first_conv="stem.0", classifier="head")
    for name in ("cifar_resnet18", "cifar_resnet20", "cifar_resnet56", "cifar_resnet32_10")
}


class BasicBlock(nn.Module):
    """Post-activation basic block with a projection shortcut when the shape changes."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with a CIFAR stem (3x3 conv, stride 1, no max-pool).

    Args:
        layers: basic blocks per stage.
        widths: channels per stage (the stem has ``widths[0]``).
        num_classes: outputs of the linear head.
        in_chans: input channels.
        img_size: nominal input side or (H, W), recorded in the config only.
    """

    def __init__(
        self,
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.input_size = (in_chans, *default_img_size(3, img_size))
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages: list[nn.Module] = []
        channels = widths[0]
        for i, (blocks, width) in enumerate(zip(layers, widths, strict=True)):
            stage = [BasicBlock(channels, width, stride=1 if i == 0 else 2)]
            stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


def _create(variant: str, layers: tuple[int, ...], widths: tuple[int, ...], pretrained: bool, **kwargs: Any):
    return build(variant, CifarResNet, pretrained, **{"layers": layers, "widths": widths, **kwargs})


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet18 with a CIFAR stem: basic blocks [2, 2, 2, 2], widths 64-512."""
    return _create("cifar_resnet18", (2, 2, 2, 2), (64, 128, 256, 512), pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet20 (He et al. 2016, CIFAR): 3 stages of 3 basic blocks, widths 16, 32, 64."""
    return _create("cifar_resnet20", (3, 3, 3), (16, 32, 64), pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet56 (He et al. 2016, CIFAR): 3 stages of 9 basic blocks, widths 16, 32, 64."""
    return _create("cifar_resnet56", (9, 9, 9), (16, 32, 64), pretrained, **kwargs)


@register_model
def cifar_resnet32_10(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """Wide ResNet32-10: 3 stages of 5 basic blocks, widths 160, 320, 640."""
    return _create("cifar_resnet32_10", (5, 5, 5), (160, 320, 640), pretrained, **kwargs)
