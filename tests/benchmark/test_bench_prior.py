"""The BatchNorm nets of the ``attacks-prior`` benchmark and its public gradient-weight rule.

Truth is computed here from the raw embedded data (scikit-image photographs / scikit-learn digits, the stratified
split, the published normalization) in float64, with the layers applied by hand, never through the helpers' own
data path.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dglbench.bench_attacks_more import bn_digits_net, bn_net, public_gradient_weight
from dglbench.datamodules.embedded import DigitsDataModule, NaturalDataModule, stratified_split
from torch import nn


def _public_images(module: type) -> torch.Tensor:
    images, labels = module.load_all()
    train = images[stratified_split(labels)["train"]].double()
    mean, std = torch.tensor(module.mean).double(), torch.tensor(module.std).double()
    return (train - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _channel_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = features.transpose(0, 1).flatten(1)  # [C, N·H·W]
    return flat.mean(1), flat.var(1, unbiased=True)


@pytest.fixture(scope="module")
def natural_net() -> nn.Module:
    return bn_net("natural", width=16, pool=True)


def test_bn_net_natural_carries_the_public_splits_statistics(natural_net):
    model = natural_net
    assert not model.training
    conv1, bn1 = model[0], model[1]
    x = _public_images(NaturalDataModule)
    assert x.shape == (1168, 3, 32, 32)
    pre1 = F.conv2d(x.float(), conv1.weight, conv1.bias, padding=1).double()  # the statistics in float64
    mean1, var1 = _channel_stats(pre1)
    torch.testing.assert_close(bn1.running_mean.double(), mean1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn1.running_var.double(), var1, rtol=1e-4, atol=1e-5)
    assert tuple(model(torch.zeros(2, 3, 32, 32)).shape) == (2, 6)


@pytest.mark.slow
def test_bn_net_natural_second_layer_sees_the_first_normalized_by_public_statistics(natural_net):
    # the train-mode pass normalizes with the biased variance, eval mode with the unbiased one: n = 1.2 M, a 1e-6 gap
    conv1, bn1, _, _, conv2, bn2 = list(natural_net)[:6]
    x = _public_images(NaturalDataModule)
    pre1 = F.conv2d(x, conv1.weight.double(), conv1.bias.double(), padding=1)
    mean1, var1 = _channel_stats(pre1)
    normalized = (pre1 - mean1.view(1, -1, 1, 1)) / (var1.view(1, -1, 1, 1) + bn1.eps).sqrt()
    affine = normalized * bn1.weight.double().view(1, -1, 1, 1) + bn1.bias.double().view(1, -1, 1, 1)
    hidden = F.avg_pool2d(F.relu(affine), 2)
    pre2 = F.conv2d(hidden, conv2.weight.double(), conv2.bias.double(), padding=1)
    mean2, var2 = _channel_stats(pre2)
    torch.testing.assert_close(bn2.running_mean.double(), mean2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn2.running_var.double(), var2, rtol=1e-4, atol=1e-5)


def test_bn_digits_net_is_the_unpooled_8_channel_net_with_digit_statistics():
    model = bn_digits_net()
    assert not model.training
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8]
    assert not any(isinstance(m, nn.AvgPool2d) for m in model.modules())
    x = _public_images(DigitsDataModule)
    mean, var = _channel_stats(F.conv2d(x, convs[0].weight.double(), convs[0].bias.double(), padding=1))
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-4, atol=1e-5)
    assert tuple(model(torch.zeros(3, 1, 8, 8)).shape) == (3, 10)


def test_public_gradient_weight_is_one_over_the_median_squared_gradient_norm():
    from dglbench.datamodules import create_datamodule

    model = bn_digits_net()
    dm = create_datamodule("digits", split="train", num_victims=5, images_per_victim=4, seed=1)
    dm.setup("predict")
    norms = []
    for j in range(5):
        v = dm.victim(j)
        # the gradient by hand: the model's parameters, cross-entropy with mean reduction, one backward
        model.zero_grad()
        F.cross_entropy(model(v["images"]), v["labels"]).backward()
        norms.append(sum(float(p.grad.double().square().sum()) for p in model.parameters()))
    model.zero_grad()
    expected = 1.0 / float(np.median(norms))
    assert public_gradient_weight(model, "digits", batches=5) == pytest.approx(expected, rel=1e-5)


def test_paired_summary_is_the_hand_worked_per_victim_comparison():
    """Three victims: B − A gains are (+1, 0, +2): median +1, two wins, and the base row gains 0 over itself."""
    from dglbench.bench_attacks_more import paired_summary, paired_table

    rows = [
        {"label": "IG", "psnr": [10.0, 12.0, 14.0], "s": 1.0},
        {"label": "B", "psnr": [11.0, 12.0, 16.0], "s": 2.0},
    ]
    paired_summary(rows, base=0)
    assert rows[1]["wins"] == 2 and rows[0]["wins"] == 0
    assert rows[1]["gain"][0] == 1.0 and rows[0]["gain"] == (0.0, 0.0, 0.0)
    assert rows[1]["median"][0] == 12.0
    assert rows[1]["gain"][1] <= 1.0 <= rows[1]["gain"][2]
    assert rows[1]["gain"][1] >= 0.0
    table = paired_table(rows, digits=1)
    assert table[-1].startswith("| B |") and "+1.0 [" in table[-1] and "| 2/3 |" in table[-1]


def test_measure_gradinversion_runs_the_chosen_variants_after_ig_and_resumes_from_its_cache(tmp_path, monkeypatch):
    """variants=[2]: IG and the rescaled GradInversion only, in that order; a second call reads the cache and
    attacks nothing."""
    import dglbench.bench_attacks_more as bench

    cache = tmp_path / "prior.json"
    rows = bench.measure_gradinversion("digits", 1, iterations=2, restarts=1, cache=cache, variants=[2])
    labels = [label for label, _, _ in bench.gradinversion_variants(rows[0]["gradient_weight"])]
    assert [r["label"] for r in rows] == [labels[0], labels[2]]
    monkeypatch.setattr(bench, "create_attack", lambda *a, **k: pytest.fail("re-ran a cached variant"))
    again = bench.measure_gradinversion("digits", 1, iterations=2, restarts=1, cache=cache, variants=[2])
    assert [r["psnr"] for r in again] == [r["psnr"] for r in rows]
