"""imprint ("Robbing the Fed", Fowl et al. 2022): a malicious server's imprint block and its closed-form attack."""

import dglbench.models  # noqa: F401  (registers the classic nets into timm)
import pytest
import timm
import torch
from dglbench.attacks import create_attack
from dglbench.attacks.imprint import ImprintedModel, bin_thresholds, brightness, imprint_model
from dglbench.case import Case, make_payload
from dglbench.errors import ConfigError
from dglbench.gradients import flat_parameter_gradient
from dglbench.runner import run_trial
from dglbench.trial import TrialConfig
from torch import nn

MALICIOUS = Case(server="malicious")


def _body() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 3))


def _shifted(base: torch.Tensor, levels: list[float]) -> torch.Tensor:
    """Images ``base[i]`` moved so that their brightness is exactly ``levels[i]``."""
    return base - brightness(base).view(-1, 1, 1, 1) + torch.tensor(levels).view(-1, 1, 1, 1)


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    payload = make_payload(MALICIOUS, flat_parameter_gradient(model, x, y), y)
    return create_attack("imprint").run(model, payload, tuple(x.shape[1:]))


def test_thresholds_split_the_public_distribution_into_equal_shares():
    values = torch.linspace(-1, 1, 1000)
    t = bin_thresholds(values, 5)
    assert t[0] < values.min() and bool((t[1:] > t[:-1]).all())
    counts = [int(((values > t[i]) & (values <= (t[i + 1] if i < 4 else 9))).sum()) for i in range(5)]
    assert counts == [200] * 5
    with pytest.raises(ConfigError, match="at least 2 bins"):
        bin_thresholds(values, 1)


def test_the_block_computes_the_mean_brightness_above_each_threshold():
    """By hand: row i of the block's first layer is ReLU(mean(x) − t_i); the block adds their mean to each pixel."""
    t = torch.tensor([-1.0, 0.0, 0.5])
    model = imprint_model(_body(), (1, 4, 4), torch.tensor([-1.0, 1.0]), bins=3)
    with torch.no_grad():
        model.imprint.encode.bias.copy_(-t)
        x = torch.full((1, 1, 4, 4), 0.25)
        h = model.imprint.encode(x.flatten(1))
        torch.testing.assert_close(torch.relu(h), torch.tensor([[1.25, 0.25, 0.0]]))
        torch.testing.assert_close(model.imprint(x), x + (1.25 + 0.25) / 3)


def test_images_alone_in_their_bins_are_recovered_exactly_and_a_shared_bin_is_not():
    """Public brightness uniform on [−1, 1], 4 bins: thresholds −3, −0.5, 0, 0.5; images 0–2 alone, 3–4 shared."""
    model = imprint_model(_body(), (1, 4, 4), torch.linspace(-1, 1, 1001), bins=4)
    x = _shifted(torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1)), [-0.8, -0.2, 0.3, 0.7, 0.9])
    y = torch.tensor([0, 1, 2, 0, 1])
    result = _attack(model, x, y)
    assert result.status == "ok" and result.final_loss == pytest.approx(1 / 5)  # 4 bins hit for 5 images
    for i in range(3):  # each lone image equals one of the recovered ones
        assert min(float((r - x[i]).abs().max()) for r in result.images) < 1e-5
    for i in (3, 4):
        assert min(float((r - x[i]).abs().max()) for r in result.images) > 1e-2


def test_through_mlp_1x256_a_32_image_batch_in_distinct_bins_is_recovered_exactly():
    body = timm.create_model("mlp_1x256", num_classes=10, in_chans=1, img_size=8).eval()
    public = torch.linspace(-1, 1, 4001)
    model = imprint_model(body, (1, 8, 8), public, bins=256)
    levels = torch.linspace(-0.95, 0.95, 32).tolist()  # 0.061 apart, bins 0.0078 wide: one image per bin
    x = _shifted(torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(2)), levels)
    y = torch.arange(32) % 10
    result = _attack(model, x, y)
    assert result.final_loss == 0.0
    order = brightness(result.images).argsort()
    torch.testing.assert_close(result.images[order], x, rtol=0, atol=1e-4)


def test_applies_only_to_a_malicious_server_and_a_model_with_the_block():
    attack = create_attack("imprint")
    imprinted = imprint_model(_body(), (1, 4, 4), torch.randn(100), bins=8)
    assert attack.applicable(MALICIOUS, imprinted) is None
    assert "server='honest'" in attack.applicable(Case(), imprinted)
    assert "imprint block" in attack.applicable(MALICIOUS, _body())
    assert attack.closed_form and create_attack("inverting_gradients").applicable(MALICIOUS) is None


def _trial(server: str, **case) -> TrialConfig:
    return TrialConfig.from_dict({
        "dataset_params": {"num_victims": 1, "images_per_victim": 32, "image_size": 8}, "model": "mlp_1x256",
        "lpips": False, "estimate": False, "case": {"server": server, **case}, "attacks": [{"name": "imprint"}],
    })  # fmt: skip


def test_a_malicious_trial_attacks_the_imprinted_victim_and_an_honest_one_skips_imprint():
    (rec,) = run_trial(_trial("malicious"), progress=False)
    outcome = rec.attack("imprint")
    assert rec.ok and outcome.status == "ok" and outcome.iterations == 0
    psnr = [float("inf") if p is None else p for p in outcome.metrics["per_image"]["psnr"]]
    assert len(psnr) == 32 and sum(p > 40 for p in psnr) >= 16  # at least half alone in a bin (89 % expected)
    (honest,) = run_trial(_trial("honest"), progress=False)
    assert not honest.ok and honest.attack("imprint").status == "skipped"
    assert "server='honest'" in honest.reason


@pytest.mark.parametrize("bins", [None, 2, 64])
def test_the_malicious_victim_model_is_the_imprinted_one(bins):
    from dglbench.datamodules import create_datamodule
    from dglbench.modules import LeakageModule

    module = LeakageModule(_trial("malicious", **({} if bins is None else {"imprint_bins": bins})))
    dm = create_datamodule("digits", num_victims=1, images_per_victim=32, image_size=8)

    class _Trainer:
        datamodule = dm

    module._trainer = _Trainer()  # setup reads the data module from the trainer only
    module.setup("predict")
    assert isinstance(module.victim_model, ImprintedModel)
    assert module.victim_model.imprint.encode.out_features == (256 if bins is None else bins)


def test_the_imprint_bin_count_is_checked_before_work_starts():
    with pytest.raises(ConfigError, match="imprint_bins"):
        _trial("malicious", imprint_bins=1)


def test_a_scaled_block_computes_the_same_function_with_its_measuring_gradients_one_over_the_scale_larger():
    """By the chain rule: with encode's weights and biases times s and decode's weights over s, the activations
    h = ReLU(s(Wx + b)) are s times the paper's and decode's input weights 1/s times, so the output is the same;
    ∂L/∂h is 1/s times the paper's, so encode's gradients are 1/s times and decode's weight gradients s times.
    In float64, up to the block's initial values, which are set in float32 (relative 6e-8) and then cast."""
    s = 1e-3
    public = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    plain = imprint_model(_body().double(), (1, 4, 4), public, bins=8)
    scaled = imprint_model(_body().double(), (1, 4, 4), public, bins=8, scale=s)
    torch.testing.assert_close(scaled(x), plain(x), rtol=1e-6, atol=1e-9)

    def grads(model: nn.Module) -> dict[str, torch.Tensor]:
        names, params = zip(*model.named_parameters())
        return dict(zip(names, torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params)))

    g_plain, g_scaled = grads(plain), grads(scaled)
    factor = {"imprint.encode.weight": 1 / s, "imprint.encode.bias": 1 / s, "imprint.decode.weight": s}
    for name, g in g_plain.items():
        torch.testing.assert_close(g_scaled[name], factor.get(name, 1.0) * g, rtol=1e-6, atol=1e-12)


def test_a_noise_aware_server_recovers_through_noise_that_stops_the_papers_block():
    """The 32-image batch of distinct bins above, Gaussian noise of σ = 0.01 added to the shared gradient by hand:
    the paper's block (scale 1) loses every image (off by > 0.1 somewhere), the block at scale 1e-8 recovers every
    one to 0.01 (pixels of unit scale; float32)."""
    body = timm.create_model("mlp_1x256", num_classes=10, in_chans=1, img_size=8).eval()
    levels = torch.linspace(-0.95, 0.95, 32).tolist()
    x = _shifted(torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(2)), levels)
    y = torch.arange(32) % 10
    errors = {}
    for scale in (1.0, 1e-8):
        model = imprint_model(body, (1, 8, 8), torch.linspace(-1, 1, 4001), bins=256, scale=scale)
        g = flat_parameter_gradient(model, x, y)
        noisy = g + 0.01 * torch.randn(g.shape, generator=torch.Generator().manual_seed(4))
        result = create_attack("imprint").run(model, make_payload(MALICIOUS, noisy, y), (1, 8, 8))
        errors[scale] = [min(float((r - xi).abs().max()) for r in result.images) for xi in x]
    assert min(errors[1.0]) > 0.1
    assert max(errors[1e-8]) < 1e-2


def test_the_case_passes_the_imprint_scale_to_the_victim_model_and_checks_it():
    from dglbench.datamodules import create_datamodule
    from dglbench.modules import LeakageModule

    module = LeakageModule(_trial("malicious", imprint_scale=1e-6))
    dm = create_datamodule("digits", num_victims=1, images_per_victim=32, image_size=8)

    class _Trainer:
        datamodule = dm

    module._trainer = _Trainer()
    module.setup("predict")
    block = module.victim_model.imprint
    assert float(block.encode.weight[0, 0]) == pytest.approx(1e-6 / 64)
    assert float(block.decode.weight[0, 0]) == pytest.approx(1 / (256 * 1e-6))
    for bad in (0.0, 2.0):
        with pytest.raises(ConfigError, match="imprint_scale"):
            _trial("malicious", imprint_scale=bad)


def test_a_defense_that_zeroes_the_block_leaves_the_data_mean_a_result_not_a_failure():
    """No bin's bias gradient survives (pruning at a high ratio does this): as ``ImprintAttacker`` (its empty set
    of hits padded with zeros), the answer is the whole batch at zero, the data mean of normalized pixels, with
    the share of the batch without a bin, 1, as its loss."""
    model = imprint_model(_body(), (1, 4, 4), torch.linspace(-1, 1, 1001), bins=4)
    x = _shifted(torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2)), [-0.8, -0.2, 0.3])
    y = torch.tensor([0, 1, 2])
    grad = flat_parameter_gradient(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    start = sum(sizes[: names.index("imprint.encode.weight")])
    stop = sum(sizes[: names.index("imprint.encode.bias") + 1])
    defended = grad.clone()
    defended[start:stop] = 0  # the block's gradients gone, the body's intact
    result = create_attack("imprint").run(model, make_payload(MALICIOUS, defended, y), tuple(x.shape[1:]))
    assert result.status == "ok" and result.final_loss == 1.0
    assert result.images.shape == x.shape and bool((result.images == 0).all())
    assert _attack(model, x, y).final_loss == 0.0  # undefended, the same batch is recovered whole
