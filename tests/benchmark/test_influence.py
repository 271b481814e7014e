"""I2F engine against an explicit Jacobian and numpy's eigendecomposition / solve (float64)."""

import numpy as np
import pytest
import torch
from dglbench import I2F_lb, compute_exact_bound
from dglbench.errors import NotTwiceDifferentiableError, ShapeError
from dglbench.gradients import GradientOperator, flat_parameter_gradient, flatten_perturbation
from dglbench.influence import estimate_i2f, i2f, i2f_lower_bound, top_eigenpairs
from torch import nn

RTOL = 1e-4


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4))


def sigmoid_convnet():
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, stride=2),
        nn.Sigmoid(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 4),
    )


def bn_convnet():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.Softplus(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.Softplus(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 4),
    )
    with torch.no_grad():  # non-trivial running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


MODELS = {"mlp": mlp, "sigmoid_convnet": sigmoid_convnet, "bn_convnet": bn_convnet}


def explicit_k(model, x, y):
    """K = ∂g/∂x materialized by torch.autograd.functional.jacobian: [d_θ, d_x]."""
    k = torch.autograd.functional.jacobian(lambda inp: flat_parameter_gradient(model, inp, y, create_graph=True), x)
    return k.reshape(k.shape[0], -1).numpy()


def case(name, batch=1, seed=0):
    torch.manual_seed(seed)
    model = MODELS[name]().double()
    x = torch.randn(batch, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (batch,))
    d = sum(p.numel() for p in model.parameters())
    delta = torch.randn(d, dtype=torch.float64) * 1e-2
    return model, x, y, delta


def rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


@pytest.mark.parametrize("name", list(MODELS))
def test_products_match_explicit_jacobian(name):
    model, x, y, delta = case(name)
    K = explicit_k(model, x, y)
    op = GradientOperator(model, x, y)
    v = torch.randn(1, x.numel(), dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(v)[0].numpy(), K @ v[0].numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(op.rmatvec(delta[None])[0].numpy(), K.T @ delta.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(op.gradient[0].numpy(), flat_parameter_gradient(model, x, y).detach().numpy())


@pytest.mark.parametrize("name", list(MODELS))
def test_lower_bound_matches_eigendecomposition(name):
    model, x, y, delta = case(name, batch=2)
    K = explicit_k(model, x, y)
    lam_max = np.linalg.eigvalsh(K.T @ K)[-1]
    jt = np.linalg.norm(K.T @ delta.numpy())
    res = i2f_lower_bound(model, x, y, delta, tol=1e-8)
    assert bool(res.converged[0])
    assert rel(res.max_eigenvalue[0], lam_max) <= RTOL
    assert rel(res.jt_delta[0], jt) <= RTOL
    assert rel(res.value[0], jt / lam_max) <= RTOL


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("eps", [0.01, 0.1, 1.0, 10.0])
def test_exact_i2f_matches_solve(name, eps):
    model, x, y, delta = case(name)
    K = explicit_k(model, x, y)
    A = K.T @ K + eps * np.eye(K.shape[1])
    truth = np.linalg.norm(np.linalg.solve(A, K.T @ delta.numpy()))
    res = i2f(model, x, y, delta, eps=eps, tol=1e-10, max_iter=200)
    assert bool(res.converged[0]), res.residual
    assert rel(res.value[0], truth) <= RTOL


def test_exact_i2f_without_damping_when_well_conditioned():
    # a linear model on 4 inputs with 10 classes: KᵀK is 4×4 and well conditioned
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 10)).double()
    x, y = torch.randn(1, 1, 2, 2, dtype=torch.float64), torch.tensor([1])
    K = explicit_k(model, x, y)
    assert np.linalg.cond(K.T @ K) < 1e6
    delta = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    truth = np.linalg.norm(np.linalg.solve(K.T @ K, K.T @ delta.numpy()))
    res = i2f(model, x, y, delta, eps=0.0, tol=1e-12, max_iter=100)
    assert rel(res.value[0], truth) <= RTOL


@pytest.mark.parametrize("name", list(MODELS))
def test_top_eigenpairs(name):
    model, x, y, _ = case(name)
    K = explicit_k(model, x, y)
    w, V = np.linalg.eigh(K.T @ K)
    k = 3
    res = top_eigenpairs(model, x, y, k=k, tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues[0].numpy(), w[::-1][:k], rtol=RTOL)
    for i in range(k):
        v = res.eigenvectors[0, i].reshape(-1).numpy()
        assert abs(abs(v @ V[:, -1 - i]) - 1) <= RTOL  # same direction up to sign
        u = res.directions[0, i].numpy()
        np.testing.assert_allclose(u, K @ v / np.sqrt(w[-1 - i]), rtol=1e-3, atol=1e-8)
        assert abs(np.linalg.norm(u) - 1) <= RTOL


def test_eigen_direction_noise_gives_c_over_sqrt_lambda():
    model, x, y, _ = case("sigmoid_convnet")
    pairs = top_eigenpairs(model, x, y, k=2, tol=1e-10)
    c = 0.3
    for i in range(2):
        res = i2f(model, x, y, c * pairs.directions[0, i], eps=0.0, tol=1e-10, max_iter=100)
        assert rel(res.value[0], c / pairs.eigenvalues[0, i].sqrt()) <= 1e-3


def test_many_victims_equal_one_by_one():
    model, _, _, _ = case("bn_convnet")
    torch.manual_seed(1)
    xs = [torch.randn(2, 1, 4, 4, dtype=torch.float64) for _ in range(3)] + [torch.randn(1, 1, 4, 4).double()]
    ys = [torch.randint(0, 4, (x.shape[0],)) for x in xs]
    d = sum(p.numel() for p in model.parameters())
    deltas = [torch.randn(d, dtype=torch.float64) * 1e-2 for _ in xs]
    many_lb = i2f_lower_bound(model, xs, ys, deltas, tol=1e-8)
    many_ex = i2f(model, xs, ys, deltas, eps=0.1, tol=1e-10)
    for i, (x, y, dl) in enumerate(zip(xs, ys, deltas)):
        one_lb = i2f_lower_bound(model, x, y, dl, tol=1e-8)
        one_ex = i2f(model, x, y, dl, eps=0.1, tol=1e-10)
        assert rel(many_lb.value[i], one_lb.value[0]) <= RTOL
        assert rel(many_lb.max_eigenvalue[i], one_lb.max_eigenvalue[0]) <= RTOL
        assert rel(many_ex.value[i], one_ex.value[0]) <= RTOL
    assert len(many_lb.records()) == 4


def test_perturbation_formats_agree_and_bad_shapes_are_clear():
    model, x, y, delta = case("mlp")
    shapes = [p.shape for p in model.parameters()]
    as_list, offset = [], 0
    for s in shapes:
        as_list.append(delta[offset : offset + s.numel()].reshape(s))
        offset += s.numel()
    as_dict = {n: t for (n, _), t in zip(model.named_parameters(), as_list)}
    for fmt in (as_list, as_dict):
        assert torch.equal(flatten_perturbation(model, fmt), delta)
    assert I2F_lb(model, x, y, as_list) == pytest.approx(float(i2f_lower_bound(model, x, y, delta).value[0]))
    assert compute_exact_bound(model, x, y, as_list, 0.1) == pytest.approx(
        float(i2f(model, x, y, delta, eps=0.1).value[0])
    )
    with pytest.raises(ShapeError, match="length"):
        i2f_lower_bound(model, x, y, delta[:-1])
    with pytest.raises(ShapeError, match="1.weight"):
        flatten_perturbation(model, {**as_dict, "1.weight": torch.zeros(2, 2)})
    with pytest.raises(ShapeError, match="one tensor per entry"):
        flatten_perturbation(model, as_list[:-1])


class NoDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


def test_not_twice_differentiable_model_gets_clear_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Hardsigmoid(), nn.Linear(3, 2))
    x, y = torch.randn(1, 1, 2, 2), torch.tensor([0])
    delta = torch.randn(sum(p.numel() for p in model.parameters()))
    with pytest.raises(NotTwiceDifferentiableError, match="hardsigmoid"):
        i2f_lower_bound(model, x, y, delta)


def test_shared_estimate_equals_separate_calls_with_fewer_products():
    model, _, _, _ = case("bn_convnet")
    torch.manual_seed(2)
    xs = [torch.randn(1, 1, 4, 4, dtype=torch.float64) for _ in range(3)]
    ys = [torch.randint(0, 4, (1,)) for _ in xs]
    d = sum(p.numel() for p in model.parameters())
    deltas = [torch.randn(d, dtype=torch.float64) * 1e-2 for _ in xs]
    est = estimate_i2f(model, xs, ys, deltas, eps=(0.1, 1.0), lower_bound_tol=1e-8, cg_tol=1e-10, deflate=0)
    lb = i2f_lower_bound(model, xs, ys, deltas, tol=1e-8)
    assert torch.equal(est.lower_bound.value, lb.value)
    assert torch.equal(est.lower_bound.products, lb.products)
    separate = lb.products.clone()
    for eps in (0.1, 1.0):
        ex = i2f(model, xs, ys, deltas, eps=eps, tol=1e-10)
        assert torch.equal(est.exact[eps].value, ex.value)
        separate += ex.products
    assert bool((est.products == separate - 2).all())  # Kᵀδ computed once instead of three times


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("eps", [0.01, 0.1, 1.0])
def test_deflated_cg_matches_solve_and_plain_cg(name, eps):
    """CG preconditioned by the Lanczos run's Ritz pairs: the explicit solve's value, as plain CG, in no more steps."""
    model, x, y, delta = case(name, batch=2)
    K = explicit_k(model, x, y)
    truth = np.linalg.norm(np.linalg.solve(K.T @ K + eps * np.eye(K.shape[1]), K.T @ delta.numpy()))
    plain = estimate_i2f(model, x, y, delta, eps=(eps,), cg_tol=1e-10, lower_bound_tol=1e-8, deflate=0).exact[eps]
    deflated = estimate_i2f(model, x, y, delta, eps=(eps,), cg_tol=1e-10, lower_bound_tol=1e-8, deflate=8).exact[eps]
    assert bool(deflated.converged[0]) and bool(plain.converged[0])
    assert rel(deflated.value[0], truth) <= RTOL
    assert rel(deflated.value[0], plain.value[0]) <= RTOL
    assert int(deflated.iterations[0]) <= int(plain.iterations[0])
    if name == "mlp" and eps == 0.01:  # a spread spectrum: deflating its top saves steps (seen: 27 -> 21)
        assert int(deflated.iterations[0]) < int(plain.iterations[0])


def test_spectral_preconditioner_is_symmetric_positive_definite_even_with_inexact_ritz_vectors():
    from dglbench.influence import LanczosOutput, spectral_preconditioner

    torch.manual_seed(0)
    n = 6
    q, _ = torch.linalg.qr(torch.randn(n, 3, dtype=torch.float64))
    out = LanczosOutput(
        torch.ones(1, 1),
        torch.zeros(1, 1, n),
        torch.ones(1),
        torch.ones(1, dtype=torch.bool),
        ritz_values=torch.tensor([[9.0, 4.0, 1.0]], dtype=torch.float64),
        ritz_vectors=q.T[None],
        ritz_residuals=torch.tensor([[0.0, 0.01, 5.0]], dtype=torch.float64),  # the third is not kept
    )
    apply = spectral_preconditioner(out, eps=0.5)
    M = torch.stack([apply(e[None])[0] for e in torch.eye(n, dtype=torch.float64)], 1)
    # by hand: pairs 9 and 4 are kept (residual ≤ 1e-2·θ), σ = 1 + 0.5 (the largest value not kept, plus ε);
    # coefficients σ/(θ+ε) − 1 = 1.5/9.5 − 1 and 1.5/4.5 − 1, none for the third pair
    expected = (
        torch.eye(n, dtype=torch.float64)
        + (1.5 / 9.5 - 1) * torch.outer(q[:, 0], q[:, 0])
        + (1.5 / 4.5 - 1) * torch.outer(q[:, 1], q[:, 1])
    )
    torch.testing.assert_close(M, expected)
    assert bool((torch.linalg.eigvalsh(M) > 0).all())


@pytest.mark.parametrize("name", list(MODELS))
def test_many_perturbations_of_one_victim_equal_one_at_a_time(name):
    """A [m, d_θ] perturbation matrix for one victim: per-row values equal separate calls and the explicit solve."""
    model, x, y, _ = case(name, batch=2)
    d = sum(p.numel() for p in model.parameters())
    torch.manual_seed(5)
    scales = torch.tensor([1e-3, 1e-2, 1e-1, 1.0], dtype=torch.float64)
    deltas = torch.randn(4, d, dtype=torch.float64) * scales[:, None]
    K = explicit_k(model, x, y)
    lam_max = np.linalg.eigvalsh(K.T @ K)[-1]
    est = estimate_i2f(model, x, y, deltas, eps=(0.1,), lower_bound_tol=1e-8, cg_tol=1e-10)
    assert est.lower_bound.value.shape == (4,) and est.exact[0.1].value.shape == (4,)
    for j in range(4):
        one = estimate_i2f(model, x, y, deltas[j], eps=(0.1,), lower_bound_tol=1e-8, cg_tol=1e-10)
        truth = np.linalg.norm(np.linalg.solve(K.T @ K + 0.1 * np.eye(K.shape[1]), K.T @ deltas[j].numpy()))
        assert rel(est.exact[0.1].value[j], truth) <= RTOL
        assert rel(est.exact[0.1].value[j], one.exact[0.1].value[0]) <= RTOL
        assert rel(est.lower_bound.value[j], np.linalg.norm(K.T @ deltas[j].numpy()) / lam_max) <= RTOL
        assert rel(est.lower_bound.value[j], one.lower_bound.value[0]) <= 1e-10  # the same λ_max run
    lb = i2f_lower_bound(model, x, y, deltas, tol=1e-8)
    torch.testing.assert_close(lb.value, est.lower_bound.value)
    ex = i2f(model, x, y, deltas, eps=0.1, tol=1e-10)
    torch.testing.assert_close(ex.value, est.exact[0.1].value, rtol=1e-6, atol=0)


def test_empty_perturbation_matrix_is_a_shape_error():
    model, x, y, _ = case("mlp")
    d = sum(p.numel() for p in model.parameters())
    with pytest.raises(ShapeError, match="at least one row"):
        i2f_lower_bound(model, x, y, torch.zeros(0, d, dtype=torch.float64))
