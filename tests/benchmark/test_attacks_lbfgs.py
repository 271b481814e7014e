"""The batched L-BFGS driver against torch.optim.LBFGS, and batched DLG against DLG's one-victim-at-a-time path."""

import math

import pytest
import torch
from dglbench.attacks import DLG
from dglbench.attacks.lbfgs import minimize
from dglbench.case import Case, make_payload
from dglbench.gradients import flat_parameter_gradient
from torch import nn


def rosenbrock(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """A sum of 2-D Rosenbrock valleys, shifted by ``a`` per problem (``x [P, n]``, ``a [P]``)."""
    x1, x2 = x[:, 0::2], x[:, 1::2]
    return ((a[:, None] - x1) ** 2 + 100 * (x2 - x1**2) ** 2).sum(1)


def torch_reference(x0, a, steps, **kw):
    """One problem with torch.optim.LBFGS, stopping as DLG does: after a step that took one evaluation."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], line_search_fn=None, **kw)
    count = [0]

    def closure():
        opt.zero_grad()
        loss = rosenbrock(x[None], a[None])[0]
        loss.backward()
        count[0] += 1
        return loss

    history = []
    for _ in range(steps):
        before = count[0]
        history.append(float(opt.step(closure)))
        if count[0] - before <= 1:
            break
    return x.detach(), history, count[0]


@pytest.mark.parametrize("kw", [{}, {"max_iter": 4, "history_size": 3, "lr": 0.5}])
def test_minimize_takes_torchs_lbfgs_steps_for_each_problem(kw):
    """Five problems of different difficulty, evaluated together, each follows torch's optimizer exactly."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 6, generator=gen, dtype=torch.float64) * 0.5
    a = torch.tensor([1.0, 0.5, -0.3, 2.0, 1.0], dtype=torch.float64)
    x0[4] = a[4]  # problem 4 starts at the minimum (1, 1, ...): zero gradient, one evaluation, done
    x0[4, 1::2] = a[4] ** 2
    calls = []

    def evaluate(index, x):
        calls.append(len(index))
        x = x.detach().requires_grad_(True)
        loss = rosenbrock(x, a[index])
        (grad,) = torch.autograd.grad(loss.sum(), x)
        return loss, grad

    runs = minimize(evaluate, x0, steps=8, **kw)
    for i, run in enumerate(runs):
        x, history, evaluations = torch_reference(x0[i], a[i], 8, **kw)
        assert torch.allclose(run.x, x, rtol=1e-10, atol=1e-12), i
        assert run.history == pytest.approx(history, rel=1e-10, abs=1e-14)
        assert run.evaluations + 1 == evaluations + 1  # torch's closures; the driver adds one final evaluation
        assert run.final_loss == pytest.approx(float(rosenbrock(x[None], a[i : i + 1])[0]), rel=1e-10, abs=1e-14)
    assert runs[4].steps == 1 and runs[4].evaluations == 1
    assert max(calls) == 5 and sum(calls) == sum(r.evaluations + 1 for r in runs)  # batched, nothing extra


def test_minimize_stops_a_problem_that_becomes_non_finite_at_its_last_good_point():
    def evaluate(index, x):
        loss = (x**2).sum(1)
        loss = torch.where(x[:, 0] < -5, torch.full_like(loss, math.nan), loss)
        return loss, torch.full_like(x, 1.0) * (index[:, None] + 1)  # a gradient that drives x down forever

    (run,) = minimize(evaluate, torch.zeros(1, 2, dtype=torch.float64), steps=50, max_iter=3)
    assert run.failure and "NaN/Inf" in run.failure
    assert bool(torch.isfinite(run.x).all()) and float(run.x[0]) >= -5 - 1e-9 or run.steps < 50


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Sigmoid(), nn.Linear(6, 3)).double().eval()


@pytest.mark.parametrize("labels", ["given", "inferred"])
def test_batched_dlg_equals_torchs_lbfgs_one_victim_at_a_time(labels):
    """Each victim's result is what torch.optim.LBFGS gives on it alone (DLG's original loop, `_trial`)."""
    model, case, shape = _net(), Case(labels=labels), (3, 2, 2)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.rand(2, *shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    ys = [torch.tensor([0, 2]), torch.tensor([1, 1]), torch.tensor([2, 0])]
    payloads = [make_payload(case, flat_parameter_gradient(model, x, y), y) for x, y in zip(xs, ys)]
    attack = DLG(max_iterations=6, batched=True)
    batched = attack.run_many(model, payloads, shape, generator=[torch.Generator().manual_seed(j) for j in range(3)])
    ref = next(model.parameters())
    for j, (payload, result) in enumerate(zip(payloads, batched)):
        victim = attack._prepare(model, payload, shape, torch.Generator().manual_seed(j), None, ref)
        alone = attack._trial(model, victim, 0, None)
        # float64; the vectorized gradient differs from autograd's in the last bits, which L-BFGS near
        # convergence (loss ~1e-7 here) amplifies to ~1e-6 relative: far below anything an image metric sees
        assert torch.allclose(result.images, alone.images, rtol=1e-5, atol=1e-7), j
        assert result.final_loss == pytest.approx(alone.final_loss, rel=1e-4, abs=1e-12)
        assert result.iterations == alone.iterations
        assert torch.equal(result.labels, alone.labels)


def test_batched_needs_the_published_no_line_search():
    from dglbench.errors import ConfigError

    with pytest.raises(ConfigError, match="batched=True needs line_search='none'"):
        DLG(batched=True, line_search="strong_wolfe")
