"""The I2F terms of a record against independent truths on a tiny float64 model.

Truths: the explicit Jacobian ``K = ∂g/∂x`` (``torch.autograd.functional.jacobian``), numpy's ``lstsq`` for the
minimum-norm solution at ε = 0, ``numpy.linalg.solve`` and ``eigvalsh`` for damped I2F and ``λ_max``, and the best
rescaling ``s*`` worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dglbench.influence import best_rescaling, conjugate_gradient, estimate_i2f
from torch import nn


def _tiny(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    return model, x


def _frozen_first_layer(hidden: int, seed: int = 0, twin: float | None = None) -> tuple[nn.Module, torch.Tensor]:
    """x enters only through a frozen ``W₁ x``: ``K = (∂g/∂h) W₁``. ``hidden < 16`` makes ``KᵀK`` singular;
    ``twin`` makes pixel 15's column of ``W₁`` pixel 14's plus ``twin`` times noise: a tiny eigenvalue."""
    model, x = _tiny(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()
    with torch.no_grad():
        if twin is not None:
            model[1].weight[:, 15] = model[1].weight[:, 14] + twin * torch.randn(hidden, dtype=torch.float64)
    model[1].requires_grad_(False)
    return model, x


Y = torch.tensor([1])


def _gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = nn.functional.cross_entropy(model(x), Y)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])


def _jacobian(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    K = torch.autograd.functional.jacobian(lambda z: _gradient(model, z), x)
    return K.reshape(K.shape[0], -1).detach().numpy()  # [d_θ, d_x]


def _segments(model: nn.Module) -> list[int]:
    return [p.numel() for p in model.parameters() if p.requires_grad]


def test_exact_i2f_at_zero_damping_is_the_minimum_norm_solution():
    model, x = _frozen_first_layer(hidden=2)  # d_θ = 9 < d_x = 16: KᵀK has a null space of dimension >= 7
    K = _jacobian(model, x)
    assert np.linalg.matrix_rank(K) < 16  # the premise
    delta = np.random.default_rng(0).normal(size=K.shape[0]) * 1e-2
    truth = np.linalg.norm(np.linalg.lstsq(K, delta, rcond=None)[0])
    est = estimate_i2f(model, x, Y, torch.from_numpy(delta), eps=(0.0,), cg_tol=1e-10, lower_bound_tol=1e-8)
    res = est.exact[0.0]
    assert float(res.value[0]) == pytest.approx(truth, rel=1e-6)
    assert bool(res.converged[0]) and not bool(res.ill_conditioned[0])
    assert float(res.eps_used[0]) == 0.0


def test_zero_damping_on_a_nearly_singular_system_is_flagged_ill_conditioned():
    model, x = _frozen_first_layer(hidden=16, twin=1e-9)  # one eigenvalue of KᵀK about 1e-18 of λ_max
    K = _jacobian(model, x)
    lam = np.linalg.eigvalsh(K.T @ K)
    assert lam[0] / lam[-1] < 1e-14  # the premise
    delta = torch.from_numpy(np.random.default_rng(1).normal(size=K.shape[0]))
    well = estimate_i2f(model, x, Y, delta, eps_relative=(1e-3,), eps=(0.0,), cg_tol=1e-10, cg_max_iter=200)
    assert bool(well.exact[0.0].ill_conditioned[0])
    assert not bool(well.relative[1e-3].ill_conditioned[0])  # damping relative to the spectrum cures it


def test_relative_damping_uses_a_fraction_of_lambda_max_and_records_it():
    model, x = _tiny(seed=2)
    K = _jacobian(model, x)
    A = K.T @ K
    lam_max = np.linalg.eigvalsh(A)[-1]
    delta = np.random.default_rng(2).normal(size=K.shape[0]) * 1e-2
    est = estimate_i2f(
        model, x, Y, torch.from_numpy(delta), eps=(0.1,), eps_relative=(1e-2,), cg_tol=1e-11, lower_bound_tol=1e-10
    )
    rel = est.relative[1e-2]
    assert rel.relative and float(rel.eps_used[0]) == pytest.approx(1e-2 * lam_max, rel=1e-8)
    truth = np.linalg.norm(np.linalg.solve(A + 1e-2 * lam_max * np.eye(16), K.T @ delta))
    assert float(rel.value[0]) == pytest.approx(truth, rel=1e-7)
    absolute = est.exact[0.1]
    assert not absolute.relative and float(absolute.eps_used[0]) == 0.1
    truth_abs = np.linalg.norm(np.linalg.solve(A + 0.1 * np.eye(16), K.T @ delta))
    assert float(absolute.value[0]) == pytest.approx(truth_abs, rel=1e-7)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_each_exact_term_carries_the_lower_bound_of_the_same_damped_quantity(eps):
    model, x = _tiny(seed=3)
    K = _jacobian(model, x)
    A = K.T @ K
    lam_max = np.linalg.eigvalsh(A)[-1]
    delta = np.random.default_rng(3).normal(size=K.shape[0]) * 1e-2
    est = estimate_i2f(model, x, Y, torch.from_numpy(delta), eps=(eps,), cg_tol=1e-11, lower_bound_tol=1e-10)
    res = est.exact[eps]
    bound = np.linalg.norm(K.T @ delta) / (lam_max + eps)
    assert float(res.lower_bound[0]) == pytest.approx(bound, rel=1e-7)
    assert float(res.lower_bound[0]) <= float(res.value[0])  # ‖(A+εI)⁻¹b‖ ≥ ‖b‖ / (λ_max + ε)


def test_best_rescaling_matches_the_hand_computed_scale():
    g = torch.tensor([1.0, 2.0, 0.0, -1.0])
    gt = torch.tensor([2.0, 1.0, 1.0, 0.0])
    delta, s = best_rescaling(g, gt)
    assert float(s) == pytest.approx(4 / 6)  # ⟨g̃, g⟩ = 2 + 2 = 4, ‖g̃‖² = 6
    torch.testing.assert_close(delta, 4 / 6 * gt - g)
    delta_l, s_l = best_rescaling(g, gt, [2, 2])
    torch.testing.assert_close(s_l, torch.tensor([4 / 5, 0.0]))  # (2+2)/(4+1); ⟨(1,0),(0,−1)⟩ = 0
    torch.testing.assert_close(delta_l, torch.tensor([0.8 * 2 - 1, 0.8 * 1 - 2, 0.0 - 0.0, 0.0 + 1]))
    zero, s0 = best_rescaling(g, torch.zeros(4))
    assert float(s0) == 0 and torch.equal(zero, -g)


def test_attack_aware_i2f_is_zero_for_a_pure_global_rescaling():
    model, x = _tiny(seed=4)
    g = _gradient(model, x).detach()
    delta = 2 * g  # g̃ = 3 g: a cosine attack loses nothing
    est = estimate_i2f(model, x, Y, delta, eps=(0.0,), eps_relative=(1e-3,), rescale=True, cg_tol=1e-10)
    assert float(est.scale[0]) == pytest.approx(1 / 3, rel=1e-12)
    for res in (est.exact[0.0], est.relative[1e-3]):
        plain = float(res.value[0])
        assert plain > 1e-3
        assert float(res.rescaled[0]) <= 1e-9 * plain
        assert float(res.rescaled_layer[0]) <= 1e-9 * plain
        assert bool(res.rescaled_converged[0])


def test_attack_aware_i2f_per_layer_is_zero_for_a_per_layer_rescaling_and_matches_the_explicit_solve():
    model, x = _tiny(seed=5)
    K = _jacobian(model, x)
    A = K.T @ K + 1e-2 * np.eye(16)
    g = _gradient(model, x).detach()
    factors = torch.cat([torch.full((n,), c) for n, c in zip(_segments(model), (3.0, 0.5, 2.0, 0.25))])
    gt = factors.double() * g  # per-tensor clipping without noise
    est = estimate_i2f(model, x, Y, gt - g, eps=(1e-2,), rescale=True, cg_tol=1e-12, lower_bound_tol=1e-10)
    res = est.exact[1e-2]
    plain = float(res.value[0])
    assert float(res.rescaled_layer[0]) <= 1e-9 * plain
    gn, gtn = g.numpy(), gt.numpy()
    s = gtn @ gn / (gtn @ gtn)  # one global scale, by hand
    truth_global = np.linalg.norm(np.linalg.solve(A, K.T @ (s * gtn - gn)))
    assert float(res.rescaled[0]) == pytest.approx(truth_global, rel=1e-7)
    assert float(res.rescaled[0]) > 1e-3 * plain  # one scale cannot undo four different ones
    assert plain == pytest.approx(np.linalg.norm(np.linalg.solve(A, K.T @ (gtn - gn))), rel=1e-7)


def test_many_victims_vectorized_carry_their_own_terms():
    model, x0 = _tiny(seed=6)
    x1 = torch.randn_like(x0)
    rng = np.random.default_rng(6)
    deltas = [torch.from_numpy(rng.normal(size=123) * 1e-2) for _ in range(2)]
    est = estimate_i2f(
        model, [x0, x1], [Y, Y], deltas, eps=(0.1,), eps_relative=(1e-2,), rescale=True, cg_tol=1e-11,
        lower_bound_tol=1e-10, vectorize=True,
    )  # fmt: skip
    for i, x in enumerate((x0, x1)):
        K = _jacobian(model, x)
        lam = np.linalg.eigvalsh(K.T @ K)[-1]
        d = deltas[i].numpy()
        truth = np.linalg.norm(np.linalg.solve(K.T @ K + 1e-2 * lam * np.eye(16), K.T @ d))
        assert float(est.relative[1e-2].value[i]) == pytest.approx(truth, rel=1e-7)
        g = _gradient(model, x).detach().numpy()
        s = (g + d) @ g / ((g + d) @ (g + d))
        assert float(est.scale[i]) == pytest.approx(s, rel=1e-10)


def test_cg_smallest_ritz_value_reaches_the_smallest_eigenvalue():
    eig = torch.tensor([0.5, 1.0, 2.0, 3.0, 5.0, 8.0], dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    A = Q @ torch.diag(eig) @ Q.T
    b = torch.ones(1, 6, dtype=torch.float64) @ Q.T  # weight on every eigenvector
    out = conjugate_gradient(lambda v: v @ A, b, tol=1e-14, max_iter=6)
    assert float(out.min_ritz[0]) == pytest.approx(0.5, rel=1e-8)  # a full Krylov space: the exact λ_min
    early = conjugate_gradient(lambda v: v @ A, b, tol=1e-14, max_iter=2)
    assert float(early.min_ritz[0]) >= 0.5 - 1e-12  # a Ritz value is an upper bound on λ_min


def test_trials_naming_absolute_eps_keep_their_dict_and_the_v1_tracks_keep_absolute_damping():
    from dglbench.leaderboard.track import load_track
    from dglbench.trial import TrialConfig

    legacy = TrialConfig.from_dict({"eps": [0.1], "defense": "gaussian"})
    assert legacy.eps == (0.1,) and legacy.eps_relative == ()
    assert not {"eps_relative", "save_images"} & set(legacy.to_dict())  # the dict, so the id, made before the keys
    fresh = TrialConfig.from_dict({"defense": "gaussian"})
    assert (fresh.eps, fresh.eps_relative) == ((0.0,), (1e-3,)) and fresh.trial_id != legacy.trial_id
    for track in ("digits-convnet5@1", "mnist-convnet5@1", "cifar10-cifar_resnet18@1", "imagenet-resnet50@1"):
        for cfg in load_track(track).trial_configs("gaussian", {"sigma": 0.01}):
            assert cfg.eps == (0.001, 0.1) and cfg.eps_relative == (), track
            assert "eps_relative" not in cfg.to_dict()
