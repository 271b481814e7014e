"""Seeded initializations: deterministic per seed, independent of the global RNG, right distributions."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from dglbench import models  # noqa: F401  (registers the classic nets)
from dglbench.errors import ConfigError, UnknownNameError
from dglbench.models.init import INITIALIZATIONS, initialize
from scipy import stats
from torch import nn

torch.set_num_threads(1)

SCHEMES = ["uniform", "normal", "kaiming", "xavier", "normal_std0.1", "kaiming_uniform", "xavier_uniform"]


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_registry_lists_the_schemes() -> None:
    assert INITIALIZATIONS.list() == sorted([*SCHEMES, "default"])
    with pytest.raises(UnknownNameError, match="uniform"):
        initialize(net(), "unifrom", seed=0)
    with pytest.raises(ConfigError, match="bad options"):
        initialize(net(), "kaiming_uniform", seed=0, std=1.0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_parameters_whatever_the_global_rng(scheme: str) -> None:
    torch.manual_seed(1)
    a = flat(initialize(net(), scheme, seed=7))
    torch.manual_seed(2)
    model = net()
    state = torch.get_rng_state()
    b = flat(initialize(model, scheme, seed=7))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not advanced
    assert torch.equal(a, b)
    assert not torch.equal(a, flat(initialize(net(), scheme, seed=8)))


def test_default_leaves_the_model_as_constructed() -> None:
    model = net()
    before = flat(model).clone()
    assert torch.equal(flat(initialize(model, "default", seed=3)), before)


def test_uniform_is_uniform_on_the_dlg_interval() -> None:
    model = initialize(timm.create_model("convnet5"), "uniform", seed=0)
    values = flat(model).double()
    assert values.min() >= -0.5 and values.max() <= 0.5
    assert stats.kstest(values.numpy(), stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 1e-3
    # and every parameter, BatchNorm's included
    bn = initialize(net(), "uniform", seed=0)[1]
    assert not torch.equal(bn.weight, torch.ones(8)) and bn.weight.abs().max() <= 0.5


@pytest.mark.parametrize(
    ("scheme", "bound"),
    [
        ("kaiming_uniform", lambda fan_in, fan_out: math.sqrt(6 / fan_in)),
        ("xavier_uniform", lambda fan_in, fan_out: math.sqrt(6 / (fan_in + fan_out))),
    ],
)
def test_fan_based_schemes_match_their_bounds(scheme: str, bound) -> None:
    model = initialize(nn.Sequential(nn.Linear(300, 400), nn.Conv2d(16, 32, 5)), scheme, seed=0)
    for layer, fan_in, fan_out in [(model[0], 300, 400), (model[1], 16 * 25, 32 * 25)]:
        b = bound(fan_in, fan_out)
        w = layer.weight.detach().reshape(-1).double().numpy()
        assert abs(w).max() <= b
        assert stats.kstest(w, stats.uniform(loc=-b, scale=2 * b).cdf).pvalue > 1e-3
        assert torch.count_nonzero(layer.bias) == 0


def test_normal_has_the_documented_std_and_resets_batchnorm() -> None:
    model = initialize(initialize(net(), "uniform", seed=0), "normal_std0.1", seed=0)
    weights = torch.cat([model[0].weight.reshape(-1), model[4].weight.reshape(-1)]).detach().double().numpy()
    assert stats.kstest(weights, stats.norm(scale=0.1).cdf).pvalue > 1e-3
    assert torch.equal(model[1].weight, torch.ones(8)) and torch.count_nonzero(model[1].bias) == 0
    assert torch.count_nonzero(model[0].bias) == 0
    custom = flat(initialize(nn.Linear(50, 40, bias=False), "normal_std0.1", seed=0, std=0.02)).double()
    assert abs(custom.std().item() - 0.02) < 0.002
