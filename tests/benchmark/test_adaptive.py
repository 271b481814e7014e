"""Adaptive attacks: each distance against a hand-computed value, the defenses' declarations, and a small
end-to-end check that knowing the mechanism pays (sparsification and sign compression on embedded digits)."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from dglbench.attacks import ATTACKS, create_attack
from dglbench.attacks.adaptive import (
    bin_distance,
    l1_distance,
    masked_cosine_distance,
    quantization_half_widths,
    relative_squared_distance,
    sign_distance,
)
from dglbench.attacks.objectives import GradientMatcher
from dglbench.case import Case, DefenseContext, make_payload
from dglbench.defenses import Defense, adaptive_attacks_for, create_defense, run_defense
from dglbench.errors import ConfigError
from torch import nn


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2))


# --------------------------------------------------------------------------------- distances by hand
def test_masked_cosine_by_hand_and_pruned_coordinates_are_ignored():
    g = torch.tensor([[1.0, 5.0, 0.0]])
    t = torch.tensor([[1.0, 0.0, 2.0]])
    m = torch.tensor([1.0, 0.0, 1.0])
    # masked g = (1, 0, 0), t = (1, 0, 2): cos = 1 / √5
    assert masked_cosine_distance(g, t, m).item() == pytest.approx(1 - 1 / math.sqrt(5), abs=1e-6)
    t_changed = t.clone()
    t_changed[0, 1] = -7.0  # a pruned coordinate's value in the payload
    g_changed = g.clone()
    g_changed[0, 1] = 100.0  # and the candidate's value there
    assert masked_cosine_distance(g_changed, t_changed, m).item() == pytest.approx(1 - 1 / math.sqrt(5), abs=1e-6)
    # per layer: layer 0 = entries (0, 1), layer 1 = entry 2 → (1 − 1) + (1 − cos((0), (2)) = 1)
    assert masked_cosine_distance(g, t, m, torch.tensor([0, 0, 1]), 2).item() == pytest.approx(1.0, abs=1e-6)


def test_masked_attack_ignores_the_candidate_on_pruned_coordinates():
    model = _mlp()
    matcher = GradientMatcher(model, nn.functional.cross_entropy)
    target = torch.randn(1, matcher.num_parameters)
    target[0, ::3] = 0  # pruned
    gradient = torch.randn(1, matcher.num_parameters)
    moved = gradient.clone()
    moved[0, ::3] += torch.randn(moved[0, ::3].shape) * 10
    attack = create_attack("ig_masked", max_iterations=1)
    before = attack.distance(matcher, gradient, target, torch.zeros(1, 1, 1, 2, 2))
    after = attack.distance(matcher, moved, target, torch.zeros(1, 1, 1, 2, 2))
    assert after.item() == pytest.approx(before.item(), abs=1e-6)
    plain = create_attack("inverting_gradients", max_iterations=1, cosine_scope="global")
    assert plain.matching_cost  # the plain attack does see them: its cosine changes
    from dglbench.attacks.objectives import cosine_distance

    assert abs(cosine_distance(moved, target).item() - cosine_distance(gradient, target).item()) > 1e-3


def test_masked_attack_soteria_scope_masks_only_the_last_linear_weight():
    model = _mlp()
    matcher = GradientMatcher(model, nn.functional.cross_entropy)
    d = matcher.num_parameters  # 4·3 + 3 + 3·2 + 2 = 23; last Linear weight = entries 15..20
    target = torch.arange(1.0, d + 1).unsqueeze(0)
    target[0, 15:18] = 0  # pruned columns of the last Linear weight
    target[0, 0] = 0  # an exact zero elsewhere: matched as a real zero
    gradient = torch.ones(1, d)
    attack = create_attack("ig_masked", max_iterations=1, scope="last_linear")
    value = attack.distance(matcher, gradient, target, torch.zeros(1, 1, 1, 2, 2)).item()
    mask = torch.ones(d)
    mask[15:18] = 0
    masked_g, masked_t = gradient[0] * mask, target[0] * mask
    expected = 1 - float(masked_g @ masked_t) / float(masked_g.norm() * masked_t.norm())
    assert value == pytest.approx(expected, abs=1e-6)


def test_sign_distance_by_hand():
    g = torch.tensor([[2.0, -1.0, 1.0]])
    s = torch.tensor([[1.0, 1.0, 0.0]])
    assert sign_distance(g, s).item() == pytest.approx(1 - (2 - 1) / 4)
    # per layer: (2, −1) vs (+, +): 1 − 1/3; (1) vs (0): 1 − 0
    assert sign_distance(g, s, (torch.tensor([0, 0, 1]), 2)).item() == pytest.approx(2 / 3 + 1)
    # scale-free, and zero iff all signs agree
    assert sign_distance(7 * g, s).item() == pytest.approx(0.75)
    assert sign_distance(torch.tensor([[3.0, 0.5]]), torch.tensor([[0.2, 0.2]])).item() == pytest.approx(0.0)


def test_bin_distance_and_half_widths_by_hand():
    g = torch.tensor([[1.0, 3.0, -0.2]])
    q = torch.tensor([[1.2, 2.0, 0.0]])
    w = torch.tensor([0.5, 0.5, 0.1])
    # outside: (0, 0.5, 0.1) → (0.25 + 0.01) / (1.44 + 4)
    assert bin_distance(g, q, w).item() == pytest.approx(0.26 / 5.44)
    q2 = torch.tensor([[0.0, 1.0, 3.0, -1.0, 1.0]])
    seg = torch.tensor([0, 0, 0, 1, 1])
    # tensor 0: levels over [0, 3] with 4 levels → step 1; tensor 1: [−1, 1] → step 2/3
    assert quantization_half_widths(q2, seg, 2, 4, "nearest")[0].tolist() == pytest.approx([0.5] * 3 + [1 / 3] * 2)
    assert quantization_half_widths(q2, seg, 2, 4, "stochastic")[0, 0].item() == pytest.approx(1.0)


def test_the_clean_gradient_lies_in_the_bins_the_quantizer_sent():
    model = _mlp()
    context = DefenseContext(model, torch.randn(2, 1, 2, 2), torch.tensor([0, 1]))
    out = run_defense(create_defense("quantization", bits=2), context)
    matcher = GradientMatcher(model, nn.functional.cross_entropy)
    q = out.defended.unsqueeze(0)
    w = quantization_half_widths(q, matcher.segments, matcher.num_segments, 4, "nearest")
    assert bin_distance(out.clean.unsqueeze(0), q, w * 1.0001).item() == pytest.approx(0.0, abs=1e-10)
    assert bin_distance(out.clean.unsqueeze(0), q, w * 0.5).item() > 0


def test_noise_distances_by_hand():
    g, t = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, -2.0]])
    assert l1_distance(g, t).item() == pytest.approx((1 + 3) / 4)
    assert relative_squared_distance(g, t).item() == pytest.approx((1 + 9) / 8)
    seg = (torch.tensor([0, 1]), 2)
    assert l1_distance(g, t, seg).item() == pytest.approx(1 / 2 + 3 / 2)


def test_clipped_gradient_equals_dp_sgd_without_noise():
    """The attack's candidate gradient is the defense's own output at σ = 0 (an independent code path)."""
    model = _mlp()
    images, labels = torch.randn(3, 1, 2, 2) * 3, torch.tensor([0, 1, 1])
    defended = run_defense(
        create_defense("dp_sgd", clip=0.05, sigma=0.0), DefenseContext(model, images, labels)
    ).defended
    attack = create_attack("ig_clipped", clip=0.05, max_iterations=1, reduction="mean")
    matcher = GradientMatcher(model, nn.functional.cross_entropy)
    ours = attack.gradients(matcher, images.unsqueeze(0), labels.unsqueeze(0))[0]
    torch.testing.assert_close(ours, defended, rtol=1e-5, atol=1e-7)
    summed = create_attack("ig_clipped", clip=0.05, max_iterations=1, reduction="sum")
    torch.testing.assert_close(summed.gradients(matcher, images[None], labels[None])[0], 3 * defended)


# ----------------------------------------------------------------------------------------- declarations
@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("none", {}, []),
        ("gaussian", {"sigma": 0.1}, [("ig_l2", {})]),
        ("laplace", {"scale": 0.1}, [("ig_l1", {})]),
        ("dp_sgd", {"clip": 2.0}, [("ig_clipped", {"clip": 2.0})]),
        ("pruning", {"ratio": 0.9}, [("ig_masked", {})]),
        ("topk", {"ratio": 0.1}, [("ig_masked", {})]),
        ("soteria", {"ratio": 0.5}, [("ig_masked", {"scope": "last_linear", "cosine_scope": "layer"})]),
        ("quantization", {"bits": 1}, [("ig_sign", {})]),
        ("quantization", {"mode": "sign", "bits": 8}, [("ig_sign", {})]),
        (
            "quantization",
            {"bits": 3, "rounding": "stochastic"},
            [("ig_quantized", {"levels": 8, "rounding": "stochastic"})],
        ),
        ("eigen_noise", {"scale": 0.1}, []),
    ],
)
def test_builtin_defenses_declare_their_adaptive_attacks(name, params, expected):
    pairs = adaptive_attacks_for(create_defense(name, **params))
    assert pairs == expected
    for attack, attack_params in pairs:  # every pair builds, with a budget overlaid
        assert create_attack(attack, **{"max_iterations": 3, **attack_params}).max_iterations == 3


def test_third_party_defenses_declare_with_the_same_attribute():
    class Plain:  # not a Defense subclass: only the attribute
        adaptive_attacks = ("ig_masked", "ig_l1")

        def __call__(self, gradients, context):
            return gradients

    assert adaptive_attacks_for(Plain()) == [("ig_masked", {}), ("ig_l1", {})]

    class Undeclared:
        def __call__(self, gradients, context):
            return gradients

    assert adaptive_attacks_for(Undeclared()) == []

    class Typo(Defense):
        adaptive_attacks = ("ig_maskd",)

    with pytest.raises(ConfigError, match="ig_maskd"):
        adaptive_attacks_for(Typo())

    class NotATuple(Defense):
        adaptive_attacks = "ig_masked"  # type: ignore[assignment]

    with pytest.raises(ConfigError, match="tuple of attack names"):
        adaptive_attacks_for(NotATuple())


def test_adaptive_attacks_are_registered():
    assert set(ATTACKS.list("ig_*")) >= {"ig_masked", "ig_sign", "ig_quantized", "ig_clipped", "ig_l1", "ig_l2"}


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def digits():
    from dglbench.datamodules import DigitsDataModule

    dm = DigitsDataModule(num_victims=3, images_per_victim=1, seed=1)
    dm.setup()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Sigmoid(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(128, 10),
    ).eval()  # fmt: skip
    for p in model.parameters():  # DLG's uniform init
        nn.init.uniform_(p, -0.5, 0.5)
    victims = [dm.victim(j) for j in range(3)]
    mean, std = torch.tensor(dm.mean), torch.tensor(dm.std)
    return model, dm, victims, ((0 - mean) / std, (1 - mean) / std)


def _median_psnr(digits, defense, attack) -> float:
    model, dm, victims, box = digits
    payloads = []
    for j, v in enumerate(victims):
        ctx = DefenseContext(model, v["images"], v["labels"], generator=torch.Generator().manual_seed(j))
        payloads.append(make_payload(Case(), run_defense(defense, ctx).defended, v["labels"]))
    gens = [torch.Generator().manual_seed(j) for j in range(len(victims))]
    results = attack.run_many(model, payloads, (1, 8, 8), box=box, generator=gens)
    psnr = []
    for r, v in zip(results, victims):
        mse = (dm.denormalize(r.images).clamp(0, 1) - dm.denormalize(v["images"]).clamp(0, 1)).pow(2).mean()
        psnr.append(float(10 * torch.log10(1 / mse)))
    return statistics.median(psnr)


@pytest.mark.parametrize(
    ("defense", "params", "adaptive"),
    [("topk", {"ratio": 0.02}, "ig_masked"), ("quantization", {"mode": "sign"}, "ig_sign")],
)
def test_adaptive_attack_beats_the_plain_one_on_its_family(digits, defense, params, adaptive):
    """A small convnet (a one-layer MLP leaks its input through the first layer's signs alone)."""
    budget = {"max_iterations": 150, "tv_weight": 1e-4}
    defense_obj = create_defense(defense, **params)
    ((name, attack_params),) = adaptive_attacks_for(defense_obj)
    assert name == adaptive
    adapted = _median_psnr(digits, defense_obj, create_attack(name, **budget, **attack_params))
    plain = max(
        _median_psnr(digits, defense_obj, create_attack("inverting_gradients", cosine_scope=scope, **budget))
        for scope in ("global", "layer")
    )
    assert adapted > plain + 2.0, (adapted, plain)
