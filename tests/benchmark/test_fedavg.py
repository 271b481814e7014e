"""FedAvg: Δθ and its Jacobian against the local steps written out with plain autograd, the case, and the attack.

The oracle models are written here as functions of explicit parameter tensors (no ``nn.Module``, no
``torch.func``); the unrolled local steps are plain ``torch.autograd.grad`` with ``create_graph=True``, and
``K = ∂Δθ/∂x`` is materialized by ``torch.autograd.functional.jacobian``.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dglbench.attacks import create_attack
from dglbench.case import Case, DefenseContext, make_payload
from dglbench.defenses import NoDefense, run_defense
from dglbench.errors import ConfigError
from dglbench.gradients import GradientOperator, LocalUpdate, shared_update
from dglbench.influence import estimate_i2f, i2f, i2f_lower_bound
from sklearn.datasets import load_digits
from torch import nn

RTOL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ oracle models
def mlp_module():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3))


def mlp_forward(p, x):
    h = torch.tanh(x.flatten(1) @ p[0].T + p[1])
    return h @ p[2].T + p[3]


def bn_module():
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Softplus(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    )


def bn_forward(p, x):
    """Conv → BatchNorm in train mode (the batch's own statistics, biased variance) → Softplus → Linear."""
    h = F.conv2d(x, p[0], p[1], padding=1)
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + 1e-5) * p[2].view(1, -1, 1, 1) + p[3].view(1, -1, 1, 1)
    return F.softplus(h).flatten(1) @ p[4].T + p[5]


MODELS = {"mlp": (mlp_module, mlp_forward, "eval"), "bn_convnet": (bn_module, bn_forward, "train")}


def oracle_update(forward, params, x, y, lr, minibatches):
    """Δθ(x) = θ_T − θ_0 of SGD on the given sequence of index lists, plain autograd; flat."""
    theta0 = [p.detach().clone().requires_grad_(True) for p in params]
    theta = theta0
    for idx in minibatches:
        loss = F.cross_entropy(forward(theta, x[idx]), y[idx])
        grads = torch.autograd.grad(loss, theta, create_graph=True)
        theta = [t - lr * g for t, g in zip(theta, grads)]
    return torch.cat([(t - t0).reshape(-1) for t, t0 in zip(theta, theta0)])


def oracle_k(forward, params, x, y, lr, minibatches):
    k = torch.autograd.functional.jacobian(lambda inp: oracle_update(forward, params, inp, y, lr, minibatches), x)
    return k.reshape(k.shape[0], -1).numpy()


def setup(name, seed=0):
    torch.manual_seed(seed)
    make, forward, mode = MODELS[name]
    model = make().double().train(mode == "train")
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 2])
    params = [p.detach() for p in model.parameters()]
    return model, forward, params, x, y, Case(model_mode=mode)


# The FedAvg rules under test and their schedules written out: τ = 3 full-batch steps; b = 1, 2 steps/epoch × 2
SCHEDULES = {
    "full_batch_tau3": (dict(update="fedavg", local_steps=3, local_lr=0.5), [[0, 1]] * 3),
    "minibatch1_2x2": (
        dict(update="fedavg", local_steps=2, local_lr=0.5, local_batch_size=1, local_epochs=2),
        [[0], [1], [0], [1]],
    ),
}


def fedavg_case(base, rule):
    return Case(model_mode=base.model_mode, **rule)


@pytest.mark.parametrize("checkpoint", [False, True], ids=["stored_vjp", "checkpointed"])
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_update_and_products_match_the_explicit_jacobian(name, schedule, checkpoint):
    if name == "bn_convnet" and schedule == "minibatch1_2x2":
        pytest.skip("train-mode BatchNorm needs more than one image per local step")
    model, forward, params, x, y, base = setup(name)
    rule, minibatches = SCHEDULES[schedule]
    case = fedavg_case(base, rule)
    K = oracle_k(forward, params, x, y, case.local_lr, minibatches)
    delta = oracle_update(forward, params, x, y, case.local_lr, minibatches).detach()
    op = GradientOperator(model, x, y, update=case.update_rule(), checkpoint=checkpoint)
    assert op.checkpoint is checkpoint
    np.testing.assert_allclose(op.gradient[0].numpy(), delta.numpy(), rtol=1e-9, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(1, K.shape[1], generator=gen, dtype=torch.float64)
    u = torch.randn(1, K.shape[0], generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(v)[0].numpy(), K @ v[0].numpy(), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(u)[0].numpy(), K.T @ u[0].numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_i2f_lower_bound_and_exact_match_the_explicit_jacobian(name):
    model, forward, params, x, y, base = setup(name)
    rule, minibatches = SCHEDULES["full_batch_tau3"]
    case = fedavg_case(base, rule)
    K = oracle_k(forward, params, x, y, case.local_lr, minibatches)
    gen = torch.Generator().manual_seed(2)
    deltas = 1e-2 * torch.randn(3, K.shape[0], generator=gen, dtype=torch.float64)
    A = K.T @ K
    lam_max = np.linalg.eigvalsh(A)[-1]
    eps = 0.1
    lb_truth = [np.linalg.norm(K.T @ d.numpy()) / lam_max for d in deltas]
    exact_truth = [np.linalg.norm(np.linalg.solve(A + eps * np.eye(len(A)), K.T @ d.numpy())) for d in deltas]
    n = K.shape[1]
    lb = i2f_lower_bound(model, x, y, deltas, case=case, tol=1e-10, max_iter=n)
    np.testing.assert_allclose(lb.value.numpy(), lb_truth, rtol=RTOL)
    np.testing.assert_allclose(lb.max_eigenvalue.numpy(), lam_max, rtol=RTOL)
    exact = i2f(model, x, y, deltas, case=case, eps=eps, tol=1e-10, max_iter=4 * n)
    np.testing.assert_allclose(exact.value.numpy(), exact_truth, rtol=RTOL)
    est = estimate_i2f(model, x, y, deltas, case=case, eps=(eps,), lower_bound_tol=1e-10, cg_tol=1e-10)
    np.testing.assert_allclose(est.lower_bound.value.numpy(), lb_truth, rtol=RTOL)
    np.testing.assert_allclose(est.exact[eps].value.numpy(), exact_truth, rtol=RTOL)


@pytest.mark.parametrize("checkpoint", [False, True], ids=["stored_vjp", "checkpointed"])
def test_many_products_of_stacked_victims_match_each_victims_explicit_jacobian(checkpoint):
    """``Kᵀ u`` for m = 3 vectors per victim, two victims stacked (vmap), against each victim's own K."""
    model, forward, params, x, y, base = setup("mlp")
    rule, minibatches = SCHEDULES["minibatch1_2x2"]
    case = fedavg_case(base, rule)
    xs, ys = torch.stack([x, x.flip(0) + 0.5]), torch.stack([y, y.flip(0)])
    ks = [oracle_k(forward, params, xi, yi, case.local_lr, minibatches) for xi, yi in zip(xs, ys)]
    op = GradientOperator(model, xs, ys, stacked=True, update=case.update_rule(), checkpoint=checkpoint)
    u = torch.randn(2, 3, ks[0].shape[0], generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = op.rmatvec_many(u)
    for i, k in enumerate(ks):
        np.testing.assert_allclose(out[i].numpy(), u[i].numpy() @ k, rtol=1e-8, atol=1e-12)
    assert op.products == 3


def test_fedavg_checkpoints_by_default_beyond_one_local_step():
    """The default keeps memory flat in T: iterates only (T of them), no stored VJP, once T > 1."""
    model, _, _, x, y, base = setup("mlp")
    one = GradientOperator(model, x, y, update=LocalUpdate(steps=1, lr=0.1))
    three = GradientOperator(model, x, y, update=LocalUpdate(steps=3, lr=0.1))
    fedsgd = GradientOperator(model, x, y, checkpoint=True)  # nothing to checkpoint under FedSGD
    assert (one.checkpoint, three.checkpoint, fedsgd.checkpoint) == (False, True, False)
    assert len(three._iterates) == 3 and three._vjp_fn is None


def test_victims_stacked_equal_victims_one_by_one():
    model, _, _, x, y, base = setup("mlp")
    case = fedavg_case(base, SCHEDULES["minibatch1_2x2"][0])
    xs, ys = [x, x.flip(0) + 0.5], [y, y.flip(0)]
    d = model[1].weight.numel() + model[1].bias.numel() + model[3].weight.numel() + model[3].bias.numel()
    deltas = 1e-2 * torch.randn(2, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kw = dict(case=case, tol=1e-10, max_iter=32)
    stacked = i2f_lower_bound(model, xs, ys, deltas, vectorize=True, **kw)
    looped = [i2f_lower_bound(model, xi, yi, di, vectorize=False, **kw) for xi, yi, di in zip(xs, ys, deltas)]
    np.testing.assert_allclose(stacked.value.numpy(), [r.value.item() for r in looped], rtol=1e-8)


@pytest.mark.parametrize("name", list(MODELS))
def test_one_step_is_minus_lr_times_fedsgd(name):
    model, _, _, x, y, base = setup(name)
    lr = 0.3
    fedsgd = GradientOperator(model, x, y)
    fedavg = GradientOperator(
        model, x, y, update=fedavg_case(base, dict(update="fedavg", local_steps=1, local_lr=lr)).update_rule()
    )
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(1, fedsgd.input_dim, generator=gen, dtype=torch.float64)
    u = torch.randn(1, fedsgd.num_parameters, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(fedavg.gradient, -lr * fedsgd.gradient, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(fedavg.matvec(v), -lr * fedsgd.matvec(v), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(fedavg.rmatvec(u), -lr * fedsgd.rmatvec(u), rtol=1e-12, atol=1e-15)


def test_defense_acts_on_the_fedavg_update():
    model, forward, params, x, y, base = setup("bn_convnet")
    rule, minibatches = SCHEDULES["full_batch_tau3"]
    case = fedavg_case(base, rule)
    out = run_defense(NoDefense(), DefenseContext(case.prepare(model), x, y, case=case))
    truth = oracle_update(forward, params, x, y, case.local_lr, minibatches).detach()
    torch.testing.assert_close(out.clean, truth, rtol=1e-9, atol=1e-12)
    payload = make_payload(case, out.defended, y)
    assert payload.case.update == "fedavg" and torch.equal(payload.gradient, out.defended)


def test_case_ranges_and_schedule_errors():
    with pytest.raises(ConfigError, match="local_steps"):
        Case(update="fedavg", local_steps=0)
    with pytest.raises(ConfigError, match="local_lr"):
        Case(update="fedavg", local_lr=float("nan"))
    with pytest.raises(ConfigError, match="local_lr"):
        Case(update="fedavg", local_lr=0.0)
    with pytest.raises(ConfigError, match="local_batch_size"):
        Case(update="fedavg", local_batch_size=0)
    with pytest.raises(ConfigError, match="local_epochs"):
        Case(update="fedavg", local_epochs=2.0)
    with pytest.raises(ConfigError, match="update"):
        Case(update="fedprox")
    assert Case().update_rule() is None
    assert LocalUpdate(steps=3, lr=0.1, batch_size=2, epochs=1).schedule(4) == [slice(0, 2), slice(2, 4), slice(0, 2)]
    with pytest.raises(ConfigError, match="must divide"):
        LocalUpdate(steps=1, lr=0.1, batch_size=3).schedule(4)


def test_shared_update_of_fedsgd_is_the_gradient():
    model, _, _, x, y, _ = setup("mlp")
    g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for a, b in zip(shared_update(model, x, y), g):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------- attack
BOX = (torch.tensor([-1.0]), torch.tensor([1.0]))  # [0, 1] pixels normalized with mean 0.5, std 0.5


def convnet(seed=0):
    """A small sigmoid ConvNet for 8×8 digits with DLG's U(−0.5, 0.5) initialization."""
    model = nn.Sequential(
        nn.Conv2d(1, 12, 5, 2, 2), nn.Sigmoid(), nn.Conv2d(12, 12, 5, 1, 2), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(12 * 4 * 4, 10),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5, generator=gen)
    return model.eval()


def psnr(reconstruction, images01):
    rec = (reconstruction * 0.5 + 0.5).clamp(0, 1)
    return 10 * math.log10(1 / max(F.mse_loss(rec, images01).item(), 1e-20))


ATTACK_ITERATIONS = 300


def test_fedavg_attack_recovers_digits_from_the_update():
    data = load_digits()
    images01 = torch.tensor(data.images[[0, 7]] / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(data.target[[0, 7]])
    model = convnet()
    case = Case(update="fedavg", local_steps=3, local_lr=0.1)
    payloads = []
    for x01, y in zip(images01, labels):
        x, y = ((x01 - 0.5) / 0.5).unsqueeze(0), y.reshape(1)
        update = torch.cat([t.flatten() for t in shared_update(model, x, y, update=case.update_rule())])
        payloads.append(make_payload(case, update, y))
    attack = create_attack("ig_fedavg", max_iterations=ATTACK_ITERATIONS, tv_weight=0.0)
    results = attack.run_many(model, payloads, (1, 8, 8), box=BOX, generator=torch.Generator().manual_seed(1))
    values = [psnr(r.images, x01.unsqueeze(0)) for r, x01 in zip(results, images01)]
    print(f"ig_fedavg PSNR on digits (τ=3, η=0.1, {ATTACK_ITERATIONS} iterations): {values}")
    assert all(r.status == "ok" for r in results)
    assert min(values) > 30, values


def test_fedavg_attack_refuses_fedsgd_payloads():
    model = convnet()
    x, y = torch.zeros(1, 1, 8, 8), torch.tensor([1])
    payload = make_payload(Case(), torch.cat([t.flatten() for t in shared_update(model, x, y)]), y)
    with pytest.raises(ConfigError, match="fedavg"):
        create_attack("ig_fedavg", max_iterations=2).run(model, payload, (1, 8, 8))
