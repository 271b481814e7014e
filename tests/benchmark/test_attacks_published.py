"""The attacks are the published ones: each checked against an independent plain-PyTorch loop of its paper.

The loops below are written from the papers' reference code (read, not imported):

- Inverting Gradients — Geiping, Bauermeister, Dröge and Moeller, "Inverting Gradients - How easy is it to
  break privacy in federated learning?", NeurIPS 2020; ``JonasGeiping/invertinggradients``,
  ``inversefed/reconstruction_algorithms.py`` (``GradientReconstructor._run_trial``, ``_gradient_closure``,
  ``_score_trial``, ``reconstruction_costs`` with ``cost_fn='sim'``), ``inversefed/metrics.py``
  (``total_variation``), ``inversefed/options.py`` and ``reconstruct_image.py`` (the settings).
- DLG — Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019; ``mit-han-lab/dlg``, ``main.py``.
- iDLG — Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020;
  ``PatrickZH/Improved-Deep-Leakage-from-Gradients``, ``iDLG.py``.

Nothing here calls dglbench's attack internals: the loops compute their own gradients, cosine, TV and
schedule, and only the starting point is shared (through ``init=`` or a generator seeded the same way).
Everything runs in float64 on a small sigmoid conv net and sklearn's 8x8 digits, so "the same
reconstruction" means equal to rounding.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from dglbench.attacks import DLG, IDLG, InvertingGradients
from dglbench.case import Case, make_payload
from sklearn.datasets import load_digits
from torch import nn

LO, HI = -1.0, 1.0  # the pixel box [0, 1] normalized with mean 0.5 and std 0.5
BOX = (torch.tensor([LO], dtype=torch.float64), torch.tensor([HI], dtype=torch.float64))
SHAPE = (1, 8, 8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(seed=0):
    """A small sigmoid conv net in float64 (LeNet-like, as in DLG's and iDLG's code), U(-0.5, 0.5) weights."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5, generator=generator)
    return model.eval()


def digit(index):
    """One normalized 8x8 digit ``[1, 1, 8, 8]`` in [-1, 1] and its label ``[1]``."""
    data = load_digits()
    x = torch.tensor(data.images[index] / 16.0, dtype=torch.float64).reshape(1, *SHAPE)
    return (x - 0.5) / 0.5, torch.tensor([int(data.target[index])])


def true_gradient(model, x, y):
    """The victim's gradient as a list of tensors, one per parameter tensor (mean cross-entropy)."""
    return [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))]


def noisy(gradient, sigma, seed):
    generator = torch.Generator().manual_seed(seed)
    return [g + sigma * torch.randn(g.shape, generator=generator, dtype=g.dtype) for g in gradient]


def payload_of(gradient, y, case=None):
    return make_payload(case or Case(), torch.cat([g.reshape(-1) for g in gradient]), y)


def psnr(a, b):
    """PSNR of two normalized images on the [0, 1] pixel scale."""
    mse = F.mse_loss((a * 0.5 + 0.5).clamp(0, 1), (b * 0.5 + 0.5).clamp(0, 1)).item()
    return 10 * math.log10(1 / max(mse, 1e-30))


# --- Inverting Gradients, written out from inversefed ----------------------------------------------------------


def reference_cosine_cost(model, x, y, target):
    """``reconstruction_costs(cost_fn='sim')``: ``1 − Σ_l⟨g_l, g̃_l⟩ / (‖g‖ ‖g̃‖)``, one cosine over all layers."""
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()), create_graph=True)
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    norm_g = sum(g.pow(2).sum() for g in grads).sqrt()
    norm_t = sum(t.pow(2).sum() for t in target).sqrt()
    return 1 - dot / norm_g / norm_t


def reference_tv(x):
    """``inversefed.metrics.total_variation``: mean absolute difference along columns plus along rows."""
    return (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean() + (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean()


def reference_inverting_gradients(model, y, target, starts, *, steps, lr=0.1, tv=1e-4):
    """The published attack, restart after restart: signed Adam, the reference's step decay, box, loss scoring.

    Returns the chosen image and its score (the matching cost without TV, as ``_score_trial``).
    """
    results = []
    for start in starts:
        x = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=lr)
        # the reference's milestones are floats from floor divisions ("3/8 5/8 7/8")
        scheduler = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[steps // 2.667, steps // 1.6, steps // 1.142], gamma=0.1
        )
        for _ in range(steps):
            optimizer.zero_grad()
            loss = reference_cosine_cost(model, x, y, target)
            if tv > 0:
                loss = loss + tv * reference_tv(x)
            loss.backward()
            x.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                x.data = torch.max(torch.min(x, torch.tensor(HI)), torch.tensor(LO))
        score = float(reference_cosine_cost(model, x.detach(), y, target).detach())
        results.append((score, x.detach()))
    score, best = min(results, key=lambda r: r[0])
    return best, score


def starts_for(seed, restarts=1):
    return torch.randn((restarts, 1, *SHAPE), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("tv", [1e-4, 0.0])
def test_inverting_gradients_equals_the_published_loop(tv):
    model = tiny_net()
    x, y = digit(3)
    target = true_gradient(model, x, y)
    starts = starts_for(7)
    # 400 steps: the reference's floor-division milestones (149, 249, 350) differ from 3/8, 5/8 of 400 (150, 250)
    expected, score = reference_inverting_gradients(model, y, target, starts, steps=400, tv=tv)
    result = InvertingGradients(max_iterations=400, tv_weight=tv).run(
        model, payload_of(target, y), SHAPE, box=BOX, init=starts[0]
    )
    assert result.status == "ok" and result.iterations == 400
    assert (result.images - expected).abs().max().item() < 1e-9
    assert result.final_loss == pytest.approx(score, rel=1e-9, abs=1e-12)


def test_inverting_gradients_on_noisy_gradients_has_the_published_psnr():
    """sigma = 1e-2 Gaussian noise on the shared gradient: the same reconstruction, PSNR within 0.5 dB."""
    model = tiny_net(seed=1)
    for index, seed in ((0, 11), (42, 12)):
        x, y = digit(index)
        target = noisy(true_gradient(model, x, y), 1e-2, seed)
        starts = starts_for(seed)
        expected, _ = reference_inverting_gradients(model, y, target, starts, steps=300)
        result = InvertingGradients(max_iterations=300).run(
            model, payload_of(target, y), SHAPE, box=BOX, init=starts[0]
        )
        assert abs(psnr(result.images, x) - psnr(expected, x)) < 0.5
        assert (result.images - expected).abs().max().item() < 1e-6


def test_inverting_gradients_keeps_the_restart_with_the_lowest_matching_cost():
    """Restarts are scored by the gradient-matching cost without TV (``_score_trial``), victims batched by vmap."""
    model = tiny_net(seed=2)
    victims = [digit(i) for i in (5, 9)]
    targets = [noisy(true_gradient(model, x, y), 1e-2, i) for i, (x, y) in enumerate(victims)]
    starts = [starts_for(20 + i, restarts=3) for i in range(len(victims))]
    results = InvertingGradients(max_iterations=150, restarts=3).run_many(
        model, [payload_of(t, y) for t, (_, y) in zip(targets, victims)], SHAPE, box=BOX, inits=starts
    )
    for result, target, start, (_, y) in zip(results, targets, starts, victims):
        expected, score = reference_inverting_gradients(model, y, target, start, steps=150)
        assert result.restarts == 3 and result.iterations == 3 * 150
        assert (result.images - expected).abs().max().item() < 1e-6
        assert result.final_loss == pytest.approx(score, rel=1e-6, abs=1e-12)


# --- DLG and iDLG, written out from their code --------------------------------------------------------------------


def reference_dlg(model, target, start, label_logits, *, labels=None, steps):
    """DLG's ``main.py`` (labels optimized jointly) or iDLG's ``iDLG.py`` (``labels`` given): L-BFGS, lr 1."""
    x = start.clone().requires_grad_(True)
    logits = None if labels is not None else label_logits.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x] if logits is None else [x, logits], lr=1)

    def closure():
        optimizer.zero_grad()
        pred = model(x)
        if logits is None:
            loss = F.cross_entropy(pred, labels)
        else:  # cross_entropy_for_onehot(pred, softmax(dummy_label))
            loss = torch.mean(torch.sum(-F.softmax(logits, -1) * F.log_softmax(pred, -1), 1))
        grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
        distance = sum(((g - t) ** 2).sum() for g, t in zip(grads, target))
        distance.backward()
        return distance

    for _ in range(steps):
        optimizer.step(closure)
    return x.detach(), None if logits is None else logits.detach()


def test_dlg_equals_the_published_loop_with_labels_optimized_jointly():
    model = tiny_net(seed=3)
    x, y = digit(17)
    target = true_gradient(model, x, y)
    generator = torch.Generator().manual_seed(5)  # the attack draws images, then label logits, from it
    start = torch.randn((1, *SHAPE), generator=generator, dtype=torch.float64)
    logits = torch.randn((1, 10), generator=generator, dtype=torch.float64)
    expected, expected_logits = reference_dlg(model, target, start, logits, steps=30)
    result = DLG(max_iterations=30).run(
        model, payload_of(target, y, Case(labels="inferred")), SHAPE, generator=torch.Generator().manual_seed(5)
    )
    assert result.status == "ok" and result.label_source == "inferred"
    assert result.labels.tolist() == expected_logits.argmax(-1).tolist()
    assert (result.images - expected).abs().max().item() < 1e-6


def test_idlg_equals_the_published_loop_on_the_images_alone():
    model = tiny_net(seed=4)
    x, y = digit(23)
    target = true_gradient(model, x, y)
    start = starts_for(9)[0]
    expected, _ = reference_dlg(model, target, start, None, labels=y, steps=30)
    result = IDLG(max_iterations=30).run(model, payload_of(target, y, Case(labels="inferred")), SHAPE, init=start)
    assert result.status == "ok" and result.labels.tolist() == y.tolist()
    assert (result.images - expected).abs().max().item() < 1e-6


# --- Defaults: each is the published value ------------------------------------------------------------------------


def test_inverting_gradients_defaults_are_the_papers():
    ig = InvertingGradients()
    # Geiping et al. 2020; inversefed/options.py: --cost_fn 'sim' (one cosine over the whole gradient)
    assert ig.cosine_scope == "global"
    # reconstruct_image.py, config for optim == 'ours': lr=0.1, max_iterations=24_000, lr_decay=True
    assert (ig.lr, ig.max_iterations, ig.lr_decay) == (0.1, 24_000, True)
    # inversefed/options.py: --signed and --boxed are on (store_false), --restarts 1, --tv 1e-4
    assert (ig.signed, ig.boxed, ig.restarts, ig.tv_weight) == (True, True, 1, 1e-4)


def test_inverting_gradients_starts_from_randn():
    """reconstruction_algorithms.py, ``_init_images`` with init='randn': a standard normal start per restart."""
    model = tiny_net()
    x, y = digit(0)
    result = InvertingGradients(max_iterations=1, lr=1e-12, boxed=False, lr_decay=False).run(
        model, payload_of(true_gradient(model, x, y), y), SHAPE, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(result.images, starts_for(3)[0], rtol=0, atol=1e-9)


def test_dlg_defaults_are_the_papers():
    dlg = DLG()
    # Zhu et al. 2019; mit-han-lab/dlg main.py: torch.optim.LBFGS([dummy_data, dummy_label]) (torch defaults:
    # lr 1, max_iter 20, history_size 100, no line search), for iters in range(300), no box, one start
    assert (dlg.lr, dlg.lbfgs_max_iter, dlg.history_size, dlg.line_search) == (1.0, 20, 100, "none")
    assert (dlg.max_iterations, dlg.boxed, dlg.restarts) == (300, False, 1)
    defaults = torch.optim.LBFGS([torch.zeros(1, requires_grad=True)]).defaults
    assert (defaults["lr"], defaults["max_iter"], defaults["history_size"], defaults["line_search_fn"]) == (
        1,
        20,
        100,
        None,
    )


def test_idlg_defaults_are_the_papers():
    idlg = IDLG()
    # Zhao et al. 2020; PatrickZH/Improved-Deep-Leakage-from-Gradients iDLG.py: lr = 1.0, Iteration = 300,
    # torch.optim.LBFGS([dummy_data], lr=lr); the label from the last layer's gradient (argmin of row sums)
    assert (idlg.lr, idlg.max_iterations, idlg.lbfgs_max_iter, idlg.line_search) == (1.0, 300, 20, "none")
    assert IDLG.infers_labels and idlg.label_strategy == "auto"
