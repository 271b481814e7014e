"""The classic nets: found through timm's registry, shaped as their papers describe, I2F-ready."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from dglbench import models
from dglbench.errors import ConfigError
from dglbench.influence import i2f_lower_bound
from torch import nn

torch.set_num_threads(1)

# small inputs per net keep the double-backward and Lanczos products cheap on a CPU
SMALL = {
    "convnet5": (1, 28, 28),
    "mlp_1x256": (1, 8, 8),
    "mlp_2x256": (1, 8, 8),
    "linear": (3, 8, 8),
    "ig_convnet": (3, 9, 9),
    "ig_convnet_w16": (3, 18, 18),
    "cifar_resnet18": (3, 8, 8),
    "cifar_resnet20": (3, 8, 8),
    "cifar_resnet56": (3, 8, 8),
    "cifar_resnet32_10": (3, 8, 8),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_classic_net_is_in_timms_registry() -> None:
    assert set(SMALL) == set(models.CLASSIC_MODELS)
    assert set(models.CLASSIC_MODELS) <= set(timm.list_models())
    assert timm.list_models("convnet*") == ["convnet5"]
    assert timm.list_models("cifar_resnet*") == [
        "cifar_resnet18",
        "cifar_resnet20",
        "cifar_resnet32_10",
        "cifar_resnet56",
    ]
    assert timm.list_models("mlp_*") == ["mlp_1x256", "mlp_2x256"]
    assert timm.list_models("ig_convnet*") == ["ig_convnet", "ig_convnet_w16"]
    assert not timm.list_models("convnet*", pretrained=True)  # no weights are advertised


@pytest.mark.parametrize("name", list(SMALL))
def test_create_forward_and_i2f_lower_bound(name: str) -> None:
    chans, height, width = SMALL[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, in_chans=chans, img_size=(height, width)).eval()
    assert model.pretrained_cfg["input_size"] == (chans, height, width)
    assert model.pretrained_cfg["num_classes"] == 7 and len(model.pretrained_cfg["mean"]) == chans
    x = torch.randn(1, chans, height, width)
    assert model(x).shape == (1, 7)
    models.check_twice_differentiable(model, (chans, height, width))
    delta = 1e-3 * torch.randn(n_params(model))
    res = i2f_lower_bound(model, x, torch.tensor([3]), delta, tol=1e-2, max_iter=4)
    assert math.isfinite(res.value.item()) and res.value.item() > 0
    assert res.max_eigenvalue.item() > 0


def conv_out(size: int, stride: int, kernel: int = 5, pad: int = 2) -> int:
    return (size + 2 * pad - kernel) // stride + 1


@pytest.mark.parametrize(
    ("in_chans", "img_size", "num_classes", "expected_hw"),
    [(1, None, 10, (28, 28)), (3, None, 100, (32, 32)), (3, 64, 10, (64, 64)), (1, (20, 36), 5, (20, 36))],
)
def test_convnet5_shapes_and_parameter_count(in_chans, img_size, num_classes, expected_hw) -> None:
    model = timm.create_model("convnet5", in_chans=in_chans, img_size=img_size, num_classes=num_classes)
    assert model.pretrained_cfg["input_size"] == (in_chans, *expected_hw)
    out = model(torch.randn(2, in_chans, *expected_hw))
    assert out.shape == (2, num_classes)
    # DLG's LeNet: 5x5 convs, 12 channels, padding 2, strides 2, 2, 1, 1, then one linear layer
    h, w = expected_hw
    for stride in (2, 2, 1, 1):
        h, w = conv_out(h, stride), conv_out(w, stride)
    convs = (in_chans * 12 * 25 + 12) + 3 * (12 * 12 * 25 + 12)
    head = 12 * h * w * num_classes + num_classes
    assert n_params(model) == convs + head
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 4


def test_convnet5_mnist_is_the_17k_parameter_net() -> None:
    assert n_params(timm.create_model("convnet5", num_classes=10)) == 17038


def test_cifar_resnets_match_their_depth_and_width() -> None:
    def convs(model: nn.Module) -> list[nn.Conv2d]:
        return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]

    for name, depth, widths in [
        ("cifar_resnet18", 18, {64, 128, 256, 512}),
        ("cifar_resnet20", 20, {16, 32, 64}),
        ("cifar_resnet56", 56, {16, 32, 64}),
        ("cifar_resnet32_10", 32, {160, 320, 640}),
    ]:
        model = timm.create_model(name, num_classes=10, in_chans=1)
        layers = convs(model)
        assert len(layers) + 1 == depth  # 3x3 convs plus the linear head
        assert layers[0].stride == (1, 1) and layers[0].in_channels == 1  # CIFAR stem, no max-pool
        assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
        assert {m.out_channels for m in layers} == widths


def test_ig_convnet_head_follows_width_and_size() -> None:
    for width, size in [(16, 32), (64, 32), (8, 28)]:
        model = timm.create_model("ig_convnet", width=width, img_size=size, in_chans=3)
        assert model.head.in_features == 4 * width * (size // 9) ** 2
    assert timm.create_model("ig_convnet_w16").head.in_features == 36 * 16


def test_mlps_and_linear_compute_input_dimension() -> None:
    linear = timm.create_model("linear", in_chans=3, img_size=32, num_classes=10)
    assert n_params(linear) == 3 * 32 * 32 * 10 + 10
    mlp = timm.create_model("mlp_2x256", in_chans=1, num_classes=10)
    assert n_params(mlp) == (784 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    assert isinstance(timm.create_model("mlp_1x256", act_layer="relu").features[1], nn.ReLU)


def test_pretrained_and_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="no pretrained weights"):
        timm.create_model("convnet5", pretrained=True)
    with pytest.raises(ConfigError, match="bad arguments"):
        timm.create_model("cifar_resnet20", depth=7)
    with pytest.raises(ConfigError, match="act_layer"):
        timm.create_model("mlp_1x256", act_layer="swish")
