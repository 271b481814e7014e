"""april_opt (Lu et al. 2022, section 3.3): Inverting Gradients plus a cosine on the position embedding's gradient."""

import dglbench.models  # noqa: F401  (registers the classic nets into timm)
import pytest
import timm
import torch
import torch.nn.functional as F
from dglbench.attacks import InvertingGradients, create_attack
from dglbench.case import Case, make_payload
from dglbench.errors import ConfigError
from dglbench.gradients import flat_parameter_gradient
from dglbench.models import make_twice_differentiable
from dglbench.runner import run_trial
from dglbench.trial import TrialConfig


def _tiny_vit(img_size: int = 8, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=img_size, patch_size=4, depth=1, num_classes=3)
    return make_twice_differentiable(vit).eval()


def _gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Written out with plain autograd: the whole flat gradient and the position embedding's gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    pos = next(g for p, g in zip(params, grads) if p is model.pos_embed)
    return torch.cat([g.reshape(-1) for g in grads]), pos.reshape(-1)


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(1 - torch.dot(a, b) / (a.norm() * b.norm()))


def test_the_position_term_is_the_cosine_of_the_pos_embed_gradients():
    """Both terms against plain autograd (float64), for two candidates at once (the vectorized path) and for one."""
    model = _tiny_vit().double()
    x, y = torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.tensor([1])
    target_whole, target_pos = _gradients(model, x, y)
    candidates = torch.randn(2, 1, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attack = create_attack("april_opt", pos_weight=0.7)
    matcher = attack.matcher(model, Case())
    for batch in (candidates, candidates[:1]):
        labels, targets = y.expand(len(batch), 1), target_whole.expand(len(batch), -1)
        whole, position = (t.detach() for t in attack.costs(matcher, labels, targets)(batch))
        cost = attack.matching_cost(matcher, labels, targets)(batch).detach()
        for p, candidate in enumerate(batch):
            g_whole, g_pos = _gradients(model, candidate, y)
            assert float(position[p]) == pytest.approx(_cosine_distance(g_pos, target_pos), rel=1e-9)
            assert float(whole[p]) == pytest.approx(_cosine_distance(g_whole, target_whole), rel=1e-9)
            assert float(cost[p]) == pytest.approx(float(whole[p]) + 0.7 * float(position[p]), rel=1e-12)
    assert 0.01 < float(position[0]) < 2  # a candidate far from the image: the term is not trivially 0


def test_without_the_position_term_it_is_inverting_gradients():
    """α = 0: the same objective values as Inverting Gradients at the same points, and the same run step for step."""
    model = _tiny_vit()
    x, y = torch.rand(1, 3, 8, 8), torch.tensor([2])
    payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    ours, ig = create_attack("april_opt", pos_weight=0.0, tv_weight=1e-2), InvertingGradients(tv_weight=1e-2)
    matcher = ig.matcher(model, Case())
    points = torch.randn(3, 1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    labels, targets = y.expand(3, 1), payload.gradient.expand(3, -1)
    torch.testing.assert_close(
        ours.objective(matcher, labels, targets)(points), ig.objective(matcher, labels, targets)(points)
    )
    box = (torch.zeros(3), torch.ones(3))
    runs = [
        create_attack(name, max_iterations=6, tv_weight=1e-2, **extra).run(
            model, payload, (3, 8, 8), box=box, generator=torch.Generator().manual_seed(3)
        )
        for name, extra in (("april_opt", {"pos_weight": 0.0}), ("inverting_gradients", {}))
    ]
    torch.testing.assert_close(runs[0].images, runs[1].images)
    assert runs[0].final_loss == pytest.approx(runs[1].final_loss, abs=1e-6)


def test_rebuilds_one_image_through_a_tiny_vit_better_than_its_start():
    """Undefended, one 3×16×16 image (16 patches), 150 steps from a uniform random start: 8.7 dB → 10.9 dB.

    Far from exact although the matching cost falls to ~1e-4: at timm's initialization every patch gets nearly the
    same gradient (the position gradient's singular values span ~10³), so a small gradient mismatch leaves the
    patches far off; the closed form (``april``) solves the same system exactly.
    """
    model = _tiny_vit(img_size=16)
    gen = torch.Generator().manual_seed(4)
    x = F.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=16, mode="bilinear")  # a smooth image in [0, 1]
    y = torch.tensor([0])
    payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    start = torch.rand(1, 3, 16, 16, generator=gen)
    attack = create_attack("april_opt", max_iterations=150, lr=0.1)
    result = attack.run(model, payload, (3, 16, 16), box=(torch.zeros(3), torch.ones(3)), init=start)

    def psnr(images: torch.Tensor) -> float:
        return float(10 * torch.log10(1 / (images.clamp(0, 1) - x).square().mean()))

    assert result.status == "ok" and result.iterations == 150
    assert result.loss_history[-1] < 0.5 * result.loss_history[0]
    assert psnr(result.images) > psnr(start) + 1.5, (psnr(start), psnr(result.images))


def test_is_skipped_with_a_reason_on_a_net_without_a_position_embedding():
    attack = create_attack("april_opt")
    reason = attack.applicable(Case(), timm.create_model("convnet5", num_classes=10, in_chans=1))
    assert reason is not None and reason.startswith("april_opt needs a ViT with a learnable position embedding")
    config = TrialConfig.from_dict({
        "dataset_params": {"num_victims": 1, "image_size": 8}, "model": "convnet5", "lpips": False, "estimate": False,
        "attacks": [{"name": "april_opt", "params": {"max_iterations": 2}},
                    {"name": "dlg", "params": {"max_iterations": 2}}],
    })  # fmt: skip
    (rec,) = run_trial(config, progress=False)
    assert rec.attack("april_opt").status == "skipped" and "position embedding" in rec.attack("april_opt").reason
    assert rec.attack("dlg").status == "ok"


def test_accepts_a_batch_and_refuses_a_negative_weight():
    model = _tiny_vit()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 2])
    payload = make_payload(Case(), flat_parameter_gradient(model, x, y), y)
    result = create_attack("april_opt", max_iterations=3).run(model, payload, (3, 8, 8))
    assert result.status == "ok" and result.images.shape == (2, 3, 8, 8)
    with pytest.raises(ConfigError, match="pos_weight >= 0"):
        create_attack("april_opt", pos_weight=-1.0)
