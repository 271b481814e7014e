"""gradinversion (Yin et al. 2021): BatchNorm-statistics prior, group consistency, label restoration."""

import pytest
import torch
from dglbench.attacks import create_attack
from dglbench.attacks.gradinversion import bn_statistics_loss
from dglbench.attacks.labels import yin_labels
from dglbench.case import Case, make_payload
from dglbench.errors import ConfigError
from dglbench.gradients import flat_parameter_gradient
from torch import nn


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 5)
    ).eval()


def test_bn_statistics_loss_by_hand():
    """One BatchNorm on the input: ‖batch mean − running mean‖ + ‖batch variance − running variance‖, per problem."""
    model = nn.Sequential(nn.BatchNorm2d(2)).eval()
    model[0].running_mean.copy_(torch.tensor([0.5, -1.0]))
    model[0].running_var.copy_(torch.tensor([2.0, 0.25]))
    images = torch.randn(3, 4, 2, 5, 5)  # 3 problems of 4 images
    expected = []
    for p in range(3):
        per_channel = images[p].transpose(0, 1).reshape(2, -1)
        mean, var = per_channel.mean(1), per_channel.var(1, unbiased=False)
        expected.append(float((mean - model[0].running_mean).norm() + (var - model[0].running_var).norm()))
    torch.testing.assert_close(bn_statistics_loss(model, images), torch.tensor(expected))


def test_the_objective_is_breachings_scaling_written_out():
    """½·α_grad·Σ(g − g̃)² + α_TV·TV + ½·α_ℓ2·mean(x²) + α_BN·(10·R_BN,1 + R_BN,2) + α_group·Σ(x − E)², by hand."""
    from dglbench.attacks.objectives import GradientMatcher

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2),
        nn.Flatten(), nn.Linear(2 * 16, 4),
    ).double().eval()  # fmt: skip
    for bn, shift in ((model[1], 0.2), (model[4], -0.1)):
        bn.running_mean.fill_(shift)
        bn.running_var.fill_(1.5)
    x = torch.randn(3, 2, 1, 4, 4, dtype=torch.float64)  # a group of 3 candidates of a batch of 2
    labels = torch.tensor([[1, 3]] * 3)
    target = flat_parameter_gradient(model, torch.rand(2, 1, 4, 4, dtype=torch.float64), labels[0])
    attack = create_attack("gradinversion")

    def r_bn(module_input, bn):  # DeepInversion's feature term for one layer, one candidate
        per_channel = module_input.transpose(0, 1).reshape(module_input.shape[1], -1)
        mean, var = per_channel.mean(1), per_channel.var(1, unbiased=False)
        return (var - bn.running_var).norm() + (mean - bn.running_mean).norm()

    expected = []
    for p in range(3):
        g = flat_parameter_gradient(model, x[p], labels[p])
        first = model[0](x[p])
        second = model[3](model[2](model[1](first)))
        tv = (x[p][..., :, 1:] - x[p][..., :, :-1]).abs().mean() + (x[p][..., 1:, :] - x[p][..., :-1, :]).abs().mean()
        value = (
            1e-4 * 0.5 * (g - target).square().sum() + 1e-4 * tv + 1e-6 * 0.5 * x[p].square().mean()
            + 0.1 * (10 * r_bn(first, model[1]) + r_bn(second, model[4]))
            + 0.01 * (x[p] - x.mean(0)).square().sum()
        )  # fmt: skip
        expected.append(float(value))
    got = attack._objective(model, GradientMatcher(model, nn.functional.cross_entropy), x, labels, target.expand(3, -1))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("seed", range(5))
def test_yin_labels_restore_a_batch_of_distinct_labels(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))
    labels = torch.randperm(10)[:4]
    g = flat_parameter_gradient(model, torch.rand(4, 1, 4, 4), labels)
    assert yin_labels(model, g, 4).tolist() == sorted(labels.tolist())


def test_runs_a_group_on_a_batchnorm_net_and_returns_the_member_of_least_matching_cost():
    model = _bn_net()
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 3])
    payload = make_payload(Case(labels="inferred"), flat_parameter_gradient(model, x, y), y)
    attack = create_attack("gradinversion", max_iterations=30)
    first = attack.run(model, payload, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    again = attack.run(model, payload, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    assert first.status == "ok" and first.restarts == 4 and first.iterations == 30 * 4
    assert first.labels.tolist() == [0, 3] and first.label_source == "inferred"
    torch.testing.assert_close(first.images, again.images)  # the Langevin noise is seeded
    # final_loss is the returned member's ‖g(x̂) − g̃‖², recomputed here with plain autograd
    recomputed = flat_parameter_gradient(model, first.images, first.labels) - payload.gradient
    assert first.final_loss == pytest.approx(float(recomputed.square().sum()), rel=1e-4)


def test_the_priors_pull_the_batch_statistics_toward_the_running_ones():
    """With only the BN prior (no gradient term), the candidates' BN statistics approach the running statistics."""
    model = _bn_net()
    with torch.no_grad():
        model[1].running_mean.fill_(0.3)
        model[1].running_var.fill_(0.5)
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 3])
    payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    only_bn = dict(gradient_weight=0.0, tv_weight=0.0, l2_weight=0.0, group_weight=0.0, langevin=0.0, bn_weight=1.0)
    start = torch.randn(1, 2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    before = float(bn_statistics_loss(model, start).detach())
    result = create_attack("gradinversion", max_iterations=200, restarts=1, **only_bn).run(
        model, payload, (1, 4, 4), init=start[0]
    )
    assert float(bn_statistics_loss(model, result.images[None]).detach()) < 0.5 * before


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="gradinversion"):
        create_attack("gradinversion", bn_weight=-1.0)
