"""The twice-differentiability layer: same forward values, working double backward, named culprits."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from dglbench.errors import ConfigError, NotTwiceDifferentiableError
from dglbench.models.compat import (
    Hardsigmoid,
    Hardswish,
    check_twice_differentiable,
    hardsigmoid,
    hardswish,
    make_twice_differentiable,
    set_batchnorm_mode,
)
from timm.layers import activations, activations_me
from torch import nn

torch.set_num_threads(1)


def probe_points(dtype: torch.dtype) -> torch.Tensor:
    """Random points, a fine grid over the kinks' neighbourhood, the kinks themselves and the extremes."""
    torch.manual_seed(0)
    special = torch.tensor([-3.0, 3.0, 0.0, -0.0, 1e-30, float("inf"), -float("inf"), float("nan")])
    return torch.cat([4 * torch.randn(20_000), torch.linspace(-4, 4, 20_001), special]).to(dtype)


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_twins_give_bit_identical_values(dtype: torch.dtype) -> None:
    x = probe_points(dtype)
    assert same_values(hardsigmoid(x), F.hardsigmoid(x))
    assert same_values(hardswish(x), F.hardswish(x))
    assert same_values(Hardsigmoid()(x), nn.Hardsigmoid()(x))
    assert same_values(Hardswish()(x), nn.Hardswish(inplace=True)(x.clone()))


def second_derivative(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    (first,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    if not first.requires_grad:  # a piecewise-constant derivative may come back detached
        return torch.zeros_like(x)
    (second,) = torch.autograd.grad(first.sum(), x)
    return second


def test_double_backward_matches_closed_form_where_the_original_raises() -> None:
    # away from the kinks at ±3: hardsigmoid'' = 0, hardswish'' = 1/3 inside (-3, 3) and 0 outside
    x = torch.tensor([-5.0, -2.5, -1.0, 0.0, 0.7, 2.9, 3.5, 8.0], dtype=torch.float64)
    inside = (x.abs() < 3).double()
    torch.testing.assert_close(second_derivative(hardsigmoid, x), torch.zeros_like(x))
    torch.testing.assert_close(second_derivative(hardswish, x), inside / 3)
    with pytest.raises(RuntimeError, match="hardsigmoid_backward"):
        second_derivative(F.hardsigmoid, x)


def first_derivative(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    return torch.autograd.grad(fn(x).sum(), x)[0]


def test_first_derivative_is_torchs_away_from_kinks() -> None:
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    x = x[(x.abs() - 3).abs() > 1e-6]
    torch.testing.assert_close(first_derivative(hardsigmoid, x), first_derivative(F.hardsigmoid, x))
    torch.testing.assert_close(first_derivative(hardswish, x), first_derivative(F.hardswish, x))


@pytest.mark.parametrize(
    "act",
    [
        activations.HardSigmoid,
        activations.HardSwish,
        activations.HardMish,
        activations_me.HardSigmoidMe,
        activations_me.HardSwishMe,
        activations_me.HardMishMe,
    ],
)
def test_timms_own_hard_activations_have_a_correct_double_backward(act) -> None:
    # they are kept by make_twice_differentiable; check their second derivative against finite differences
    torch.manual_seed(1)
    x = 2.5 * torch.randn(32, dtype=torch.float64)
    x = x[((x.abs() - 3).abs() > 0.05) & ((x + 2).abs() > 0.05) & (x.abs() > 0.05)]
    analytic = second_derivative(act(), x)
    eps = 1e-6
    numeric = (first_derivative(act(), x + eps) - first_derivative(act(), x - eps)) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=1e-5)


class Gated(nn.Module):
    """A module that holds ``F.hardsigmoid`` as an attribute (as timm's ``get_act_fn`` hands it out)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.gate_fn = F.hardsigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate_fn(self.proj(x))


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Hardswish(inplace=True), Gated(), nn.Linear(6, 3), nn.Hardsigmoid())


def test_make_twice_differentiable_keeps_outputs_and_fixes_double_backward() -> None:
    torch.manual_seed(0)
    net = small_net()
    x = 3 * torch.randn(64, 4)
    before = net(x)
    with pytest.raises(NotTwiceDifferentiableError):
        check_twice_differentiable(net, (4,), num_classes=3)
    assert make_twice_differentiable(net) is net
    assert isinstance(net[1], Hardswish) and isinstance(net[4], Hardsigmoid)
    assert net[2].gate_fn is hardsigmoid
    assert torch.equal(net(x), before)
    check_twice_differentiable(net, (4,), num_classes=3)


def test_check_names_the_offending_module_and_the_fix() -> None:
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3))
    net.add_module("block", nn.Sequential(nn.BatchNorm2d(4), nn.Hardsigmoid()))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("head", nn.Linear(4, 5))
    net.eval()
    with pytest.raises(NotTwiceDifferentiableError) as info:
        check_twice_differentiable(net, (3, 8, 8))
    message = str(info.value)
    assert "'block.1' (Hardsigmoid)" in message and "make_twice_differentiable" in message
    assert "\n" not in message


def test_fused_attention_is_found_and_turned_off() -> None:
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, num_classes=4).eval()
    if not model.blocks[0].attn.fused_attn:
        pytest.skip("fused attention is off in this timm configuration")
    with pytest.raises(NotTwiceDifferentiableError, match=r"'blocks\.0\.attn' \(Attention\)"):
        check_twice_differentiable(model, (3, 16, 16))
    make_twice_differentiable(model)
    assert not model.blocks[0].attn.fused_attn
    check_twice_differentiable(model, (3, 16, 16))


def test_mobilenetv3_gates_are_swapped() -> None:
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    assert any(isinstance(m, nn.Hardsigmoid) for m in model.modules())
    x = torch.randn(1, 3, 32, 32)
    before = model(x)
    make_twice_differentiable(model)
    assert not any(isinstance(m, nn.Hardsigmoid | nn.Hardswish) for m in model.modules())
    assert torch.equal(model(x), before)
    check_twice_differentiable(model, (3, 32, 32))


def test_batchnorm_mode() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4))
    net.train()
    with pytest.raises(ConfigError, match="set_batchnorm_mode"):
        check_twice_differentiable(nn.Sequential(net, nn.Flatten()), (3, 8, 8))
    set_batchnorm_mode(net, "eval")
    assert not net[1].training and not net[4].training and net[2].training
    set_batchnorm_mode(net, "train")
    assert net[1].training
    trainable = nn.Sequential(net[0], net[1], nn.Flatten())  # 6x6 maps: train-mode BatchNorm works
    before = net[1].running_mean.clone()
    check_twice_differentiable(trainable, (3, 8, 8), num_classes=4)
    assert torch.equal(net[1].running_mean, before)  # the check leaves the statistics alone
    with pytest.raises(ConfigError):
        set_batchnorm_mode(net, "frozen")
