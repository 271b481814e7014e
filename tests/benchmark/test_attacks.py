"""Attacks: the attacker's gradient model, recovery on real digits, batching, failures and configuration."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from dglbench.attacks import ATTACKS, DLG, IDLG, InvertingGradients, create_attack
from dglbench.attacks.objectives import GradientMatcher, cosine_distance, squared_distance, total_variation
from dglbench.case import Case, make_payload
from dglbench.errors import ConfigError, UnknownNameError
from dglbench.gradients import flat_parameter_gradient
from sklearn.datasets import load_digits
from torch import nn

BOX = (torch.tensor([-1.0]), torch.tensor([1.0]))  # [0, 1] pixels normalized with mean 0.5, std 0.5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Double backward on tiny tensors: a second intra-op thread only adds contention on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def convnet5(side, seed=0):
    """DLG's LeNet (models' convnet5 when available) with DLG's uniform U(-0.5, 0.5) initialization."""
    try:
        import timm
        from dglbench import models  # noqa: F401

        model = timm.create_model("convnet5", num_classes=10, in_chans=1, img_size=side)
    except Exception:  # the model zoo is not there yet: the same architecture, locally
        layers, channels, size = [], 1, side
        for stride in (2, 2, 1, 1):
            layers += [nn.Conv2d(channels, 12, 5, stride, 2), nn.Sigmoid()]
            channels, size = 12, (size - 1) // stride + 1
        model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(12 * size * size, 10))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5, generator=generator)
    return model.eval()


def digits(indices):
    """sklearn's 8x8 digits as [0, 1] images and labels."""
    data = load_digits()
    images = torch.tensor(data.images[indices] / 16.0, dtype=torch.float32).unsqueeze(1)
    return images, torch.tensor(data.target[indices])


def psnr(reconstruction, images01):
    rec = (reconstruction * 0.5 + 0.5).clamp(0, 1)
    return 10 * math.log10(1 / max(F.mse_loss(rec, images01).item(), 1e-20))


def payloads_for(model, images01, labels, case):
    out = []
    for x, y in zip(images01, labels):
        x, y = ((x - 0.5) / 0.5).unsqueeze(0), y.reshape(1)
        out.append(make_payload(case, flat_parameter_gradient(model, x, y, case.loss_fn()), y))
    return out


def reference_loss(kind, logits, y):
    """The victim's loss written out independently of dglbench.gradients.make_loss."""
    if kind == "ce-mean":
        return nn.CrossEntropyLoss()(logits, y)
    if kind == "ce-sum":
        return nn.CrossEntropyLoss(reduction="sum")(logits, y)
    return ((logits - torch.eye(logits.shape[1])[y]) ** 2).sum(1).mean()


CASES = {"ce-mean": Case(), "ce-sum": Case(reduction="sum"), "mse": Case(loss="mse")}


@pytest.mark.parametrize("kind", list(CASES))
def test_attacker_gradient_at_the_truth_is_the_victims_gradient(kind):
    model = convnet5(8)
    images01, labels = digits([0, 1, 2, 3])
    x = ((images01 - 0.5) / 0.5).reshape(2, 2, 1, 8, 8)  # two victims of two images
    y = labels.reshape(2, 2)
    victim = torch.stack(
        [
            torch.cat(
                [
                    g.flatten()
                    for g in torch.autograd.grad(reference_loss(kind, model(xi), yi), list(model.parameters()))
                ]
            )
            for xi, yi in zip(x, y)
        ]
    )
    one_by_one = GradientMatcher.for_case(model, CASES[kind], vectorize=False)(x, y)
    vectorized = GradientMatcher.for_case(model, CASES[kind])(x, y)
    assert torch.equal(one_by_one, victim)
    torch.testing.assert_close(vectorized, victim, rtol=1e-5, atol=1e-7)
    assert cosine_distance(one_by_one, victim).abs().max() == 0
    segments = GradientMatcher(model, CASES[kind].loss_fn()).segments
    assert cosine_distance(vectorized, victim, segments).abs().max() < 1e-5
    assert squared_distance(one_by_one, victim).max() == 0


def test_total_variation_is_mean_absolute_neighbour_difference():
    image = torch.tensor([[0.0, 1.0], [3.0, 1.0]]).reshape(1, 1, 1, 2, 2)
    assert total_variation(image).item() == pytest.approx((1 + 2) / 2 + (3 + 0) / 2)


def test_inverting_gradients_recovers_digits():
    model = convnet5(8)
    images01, labels = digits([0, 7, 13])
    payloads = payloads_for(model, images01, labels, Case(labels="inferred"))
    # TV weight 0, as the I2F paper's scripts: the paper's CIFAR weight 1e-4 smooths sharp 8x8 digits (~25-32 dB)
    attack = InvertingGradients(max_iterations=200, tv_weight=0.0)
    results = attack.run_many(model, payloads, (1, 8, 8), box=BOX, generator=torch.Generator().manual_seed(1))
    for r, x, y in zip(results, images01, labels):
        assert r.status == "ok" and r.label_source == "inferred" and r.labels.tolist() == [int(y)]
        assert psnr(r.images, x.unsqueeze(0)) >= 30
        assert r.iterations == 200 and 0 < len(r.loss_history) <= 257 and r.seconds > 0
        assert bool((r.images >= -1).all() and (r.images <= 1).all())


@pytest.mark.parametrize("name", ["dlg", "idlg"])
def test_dlg_and_idlg_recover_digits_with_unknown_labels(name):
    model = convnet5(8, seed=1)
    images01, labels = digits([5, 42])
    payloads = payloads_for(model, images01, labels, Case(labels="inferred"))
    attack = create_attack(name, max_iterations=20, line_search="strong_wolfe")
    results = attack.run_many(model, payloads, (1, 8, 8), generator=torch.Generator().manual_seed(1))
    for r, x, y in zip(results, images01, labels):
        assert r.status == "ok" and r.label_source == "inferred" and r.labels.tolist() == [int(y)]
        assert psnr(r.images, x.unsqueeze(0)) >= 30
        assert 0 < r.iterations <= 20


@pytest.mark.parametrize("attack", [InvertingGradients(max_iterations=30, restarts=2), DLG(max_iterations=3)])
def test_run_many_equals_one_by_one(attack):
    model = convnet5(8).double()
    images01, labels = digits([3, 4, 5])
    payloads = payloads_for(model, images01.double(), labels, Case(labels="inferred"))
    payloads[1] = make_payload(Case(), payloads[1].gradient, labels[1:2])  # a victim with given labels
    many = attack.run_many(model, payloads, (1, 8, 8), box=BOX, generator=torch.Generator().manual_seed(3))
    shared = torch.Generator().manual_seed(3)
    single = [attack.run(model, p, (1, 8, 8), box=BOX, generator=shared) for p in payloads]
    assert [r.label_source for r in many] == ["inferred", "given", "inferred"]
    for a, b in zip(many, single):
        torch.testing.assert_close(a.images, b.images, rtol=1e-9, atol=1e-9)
        assert torch.equal(a.labels, b.labels) and a.iterations == b.iterations and a.status == b.status
        assert a.final_loss == pytest.approx(b.final_loss, rel=1e-6, abs=1e-12)


def test_dlg_started_at_the_truth_stays_there():
    model = convnet5(8)
    images01, labels = digits([9])
    (payload,) = payloads_for(model, images01, labels, Case())
    truth = (images01 - 0.5) / 0.5
    result = DLG(max_iterations=10).run(model, payload, (1, 8, 8), init=truth)
    assert result.status == "ok" and result.iterations == 1 and result.final_loss == 0
    assert torch.equal(result.images, truth) and result.label_source == "given"


def test_vectorization_falls_back_when_vmap_cannot_run_the_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Sigmoid(), nn.Flatten(), nn.Linear(8, 3))
    case = Case(model_mode="train")
    x, y = torch.randn(2, 1, 4, 4), torch.tensor([0, 2])
    model.train()
    payload = make_payload(case, flat_parameter_gradient(model, x, y), y)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = InvertingGradients(max_iterations=3).run_many(model, [payload, payload], (1, 4, 4))
    assert all(r.status == "ok" for r in results)
    assert any("falling back" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "attack", [InvertingGradients(max_iterations=5), DLG(max_iterations=2), IDLG(max_iterations=2)], ids=str
)
def test_non_finite_payload_fails_without_raising(attack):
    model = convnet5(8)
    images01, labels = digits([0, 1])
    payloads = payloads_for(model, images01, labels, Case())
    bad = payloads[0].gradient.clone()
    bad[3] = float("nan")
    payloads[0] = make_payload(Case(), bad, labels[:1])
    results = attack.run_many(model, payloads, (1, 8, 8))
    assert results[0].status == "failed" and "NaN" in results[0].reason and results[0].iterations == 0
    assert results[1].status == "ok" and results[1].reason is None


def test_objective_overflow_during_the_run_is_a_failed_result():
    model = convnet5(8)
    images01, labels = digits([0])
    (payload,) = payloads_for(model, images01, labels, Case())
    huge = make_payload(Case(), payload.gradient * 1e30, labels)
    result = DLG(max_iterations=5).run(model, huge, (1, 8, 8))
    assert result.status == "failed" and "NaN/Inf" in result.reason
    assert bool(torch.isfinite(result.images).all())


def test_registry_and_configuration_errors():
    assert ATTACKS.list("*dlg") + ATTACKS.list("inv*") == ["dlg", "idlg", "inverting_gradients"]  # + adaptive ig_*
    listed = (
        "available: analytic_linear, april, april_opt, dlg, gradinversion, idlg, ig_clipped, .*, inverting_gradients"
    )
    with pytest.raises(UnknownNameError, match=listed):
        create_attack("deep_leakage")
    for bad in (
        dict(max_iterations="a"),
        dict(restarts=0),
        dict(cosine_scope="pixel"),
        dict(signed=1),
        dict(lr=-0.1),
        dict(max_iterations=10.0),
        dict(no_such_option=1),
    ):
        with pytest.raises(ConfigError):
            create_attack("inverting_gradients", **bad)
    with pytest.raises(ConfigError, match="line_search"):
        DLG(line_search="wolfe")
    assert InvertingGradients(lr=1).lr == 1.0 and isinstance(InvertingGradients(lr=1).lr, float)


def test_paper_defaults():
    ig, dlg = InvertingGradients(), DLG()
    assert (ig.max_iterations, ig.lr, ig.tv_weight, ig.restarts) == (24_000, 0.1, 1e-4, 1)
    assert (ig.signed, ig.boxed, ig.lr_decay, ig.cosine_scope) == (True, True, True, "global")
    assert (dlg.max_iterations, dlg.lr, dlg.lbfgs_max_iter, dlg.line_search) == (300, 1.0, 20, "none")
