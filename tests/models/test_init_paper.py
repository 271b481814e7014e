"""The I2F paper's initializations (exp. 4) have the paper's statistics, per layer, weights and biases.

The truth is the paper's script (illidanlab/inversion-influence-function,
``demos/codes/invert_initializations.py::model_init``), re-implemented below with ``torch.nn.init`` and
``model.apply`` as it is written there. Both it and :func:`dglbench.models.init.initialize` are checked
against the distribution each layer should have (scipy's, by a Kolmogorov-Smirnov test over many seeds)
and against its exact bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
from dglbench import models  # noqa: F401  (registers the classic nets)
from dglbench.models.init import initialize
from scipy import stats
from torch import nn

torch.set_num_threads(1)

SEEDS = range(12)
ARCHS = {"convnet5": {"img_size": 28}, "mlp_1x256": {"img_size": 28}}


def reference_init(scheme: str) -> Callable[[nn.Module], None]:
    """The paper script's ``model_init``, line for line (its ``normal`` bias line re-draws the weight)."""

    def uniform_init(m: nn.Module) -> None:
        if hasattr(m, "weight"):
            m.weight.data.uniform_(-0.5, 0.5)
        if hasattr(m, "bias"):
            m.bias.data.uniform_(-0.5, 0.5)

    def normal_init(m: nn.Module) -> None:
        if hasattr(m, "weight"):
            m.weight.data.normal_(0, 0.5)
        if hasattr(m, "bias"):
            m.weight.data.normal_(0, 0.5)

    def kaiming_uniform(m: nn.Module) -> None:
        if hasattr(m, "weight"):
            nn.init.kaiming_uniform_(m.weight.data, nonlinearity="sigmoid")
        if hasattr(m, "bias"):
            m.bias.data.uniform_(-0.5, 0.5)

    def xavier_uniform(m: nn.Module) -> None:
        if hasattr(m, "weight"):
            nn.init.xavier_uniform_(m.weight.data)
        if hasattr(m, "bias"):
            m.bias.data.uniform_(-0.5, 0.5)

    return {"uniform": uniform_init, "normal": normal_init, "kaiming": kaiming_uniform, "xavier": xavier_uniform}[
        scheme
    ]


def fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = int(np.prod(weight.shape[2:])) if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def intended(scheme: str, kind: str, weight: torch.Tensor) -> stats.rv_continuous:
    """The distribution the paper's script gives a conv / linear layer's weight or bias, worked out by hand."""
    fan_in, fan_out = fans(weight)
    if kind == "bias" and scheme in ("uniform", "kaiming", "xavier"):
        return stats.uniform(loc=-0.5, scale=1.0)
    if kind == "bias":  # normal: PyTorch's constructor default, U(±1/√fan_in)
        b = 1 / math.sqrt(fan_in)
        return stats.uniform(loc=-b, scale=2 * b)
    if scheme == "uniform":
        return stats.uniform(loc=-0.5, scale=1.0)
    if scheme == "normal":
        return stats.norm(scale=0.5)
    b = math.sqrt(3 / fan_in) if scheme == "kaiming" else math.sqrt(6 / (fan_in + fan_out))
    return stats.uniform(loc=-b, scale=2 * b)


def layer_values(arch: str, scheme: str, ours: bool) -> dict[tuple[str, str], tuple[np.ndarray, torch.Tensor]]:
    """Per (layer, weight|bias): the values pooled over SEEDS, and the layer's weight (for its fans)."""
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    weights: dict[str, torch.Tensor] = {}
    for seed in SEEDS:
        torch.manual_seed(1000 + seed)
        model = timm.create_model(arch, num_classes=10, in_chans=1, **ARCHS[arch])
        if ours:
            initialize(model, scheme, seed=seed)
        else:
            model.apply(reference_init(scheme))
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                weights[name] = module.weight.detach()
                for kind in ("weight", "bias"):
                    values = getattr(module, kind).detach().double().reshape(-1).numpy()
                    pooled.setdefault((name, kind), []).append(values)
    return {key: (np.concatenate(v), weights[key[0]]) for key, v in pooled.items()}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("scheme", ["uniform", "normal", "kaiming", "xavier"])
@pytest.mark.parametrize("ours", [True, False], ids=["dglbench", "paper-script"])
def test_each_layer_has_the_papers_distribution(arch: str, scheme: str, ours: bool) -> None:
    layers = layer_values(arch, scheme, ours)
    assert len(layers) == 2 * (5 if arch == "convnet5" else 2)
    for (name, kind), (values, weight) in layers.items():
        dist = intended(scheme, kind, weight)
        lo, hi = dist.support()
        if math.isfinite(hi):  # uniform: inside the bounds and reaching near them
            assert lo <= values.min() and values.max() <= hi, (name, kind)
            assert values.max() > hi - 12 * (hi - lo) / len(values), (name, kind, values.max(), hi)  # P(miss) = e^-12
        pvalue = stats.kstest(values, dist.cdf).pvalue
        assert pvalue > 1e-4, (name, kind, pvalue)


def test_the_schemes_differ_where_the_paper_and_the_textbook_differ() -> None:
    """A KS test that can fail: each paper scheme is rejected against its textbook namesake's distribution."""
    for scheme, wrong in [("kaiming", "kaiming_uniform"), ("xavier", "xavier_uniform"), ("normal", "normal_std0.1")]:
        paper = layer_values("convnet5", scheme, ours=True)
        textbook = layer_values("convnet5", wrong, ours=True)
        (weight_p, _), (weight_t, _) = paper[("features.2", "weight")], textbook[("features.2", "weight")]
        (bias_p, _), (bias_t, _) = paper[("head", "bias")], textbook[("head", "bias")]
        assert stats.ks_2samp(weight_p, weight_t).pvalue < 1e-6 or scheme == "xavier", scheme
        assert stats.ks_2samp(bias_p, bias_t).pvalue < 1e-6, scheme
        assert np.count_nonzero(bias_t) == 0 and np.count_nonzero(bias_p) == bias_p.size
