"""``torch.optim.LBFGS`` (no line search) for many independent problems, their objectives evaluated together.

L-BFGS keeps a curvature history per problem, so stacking problems into one optimizer would couple them.
Here each problem runs torch's algorithm on its own state, written as a generator that *yields* the point it
needs evaluated and receives ``(loss, gradient)``; :func:`minimize` collects the pending points of all problems,
evaluates them in one batched call (one vectorized forward and double backward for DLG), and sends each problem
its values. Step for step this is ``torch.optim.LBFGS(..., line_search_fn=None).step(closure)`` with torch's
defaults for the tolerances (``tolerance_grad=1e-7``, ``tolerance_change=1e-9``, ``max_eval = max_iter · 5 / 4``),
checked against torch's own optimizer in ``tests/benchmark/test_attacks_lbfgs.py``.

Example:
    >>> import torch
    >>> targets = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])
    >>> def evaluate(index, x):  # two quadratics, evaluated together
    ...     return ((x - targets[index]) ** 2).sum(1), 2 * (x - targets[index])
    >>> out = minimize(evaluate, torch.zeros(2, 2), steps=5)
    >>> torch.allclose(torch.stack([o.x for o in out]), targets)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["LbfgsRun", "minimize"]

#: ``(problem indices [P], points [P, n]) -> (losses [P], gradients [P, n])``
Evaluate = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class LbfgsRun:
    """One problem's run: its last point, the loss there, the L-BFGS steps taken, the loss at the start of each
    step, the gradient evaluations, and why it stopped when that is a failure (non-finite loss or point)."""

    x: Tensor
    final_loss: float = math.nan
    steps: int = 0
    history: list[float] = field(default_factory=list)
    evaluations: int = 0
    failure: str | None = None


def _problem(
    x: Tensor,
    *,
    lr: float,
    max_iter: int,
    history_size: int,
    steps: int,
    project: Callable[[Tensor], None] | None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
) -> Generator[Tensor, tuple[float, Tensor], LbfgsRun]:
    """One problem: ``steps`` calls of torch's ``LBFGS.step`` (no line search) on the flat point ``x``.

    After each step ``project`` (the box) may change ``x`` in place; the run stops early when a step took one
    evaluation (converged or stalled) or the loss or point became non-finite (then ``x`` is the point before it).
    """
    run = LbfgsRun(x)
    max_eval = max_iter * 5 // 4
    n_iter_total = 0
    d = t = prev_flat_grad = None
    old_dirs: list[Tensor] = []
    old_stps: list[Tensor] = []
    ro: list[Tensor] = []
    h_diag: Tensor | float = 1.0
    al: list[Tensor | None] = [None] * history_size
    last = math.nan
    for step in range(steps):
        saved, before = x.clone(), run.evaluations
        loss, flat_grad = yield x
        run.evaluations += 1
        orig_loss = last = loss
        current_evals = 1
        if not bool(flat_grad.abs().max() <= tolerance_grad):
            n_iter = 0
            while n_iter < max_iter:
                n_iter += 1
                n_iter_total += 1
                if n_iter_total == 1:
                    d = flat_grad.neg()
                    old_dirs, old_stps, ro, h_diag = [], [], [], 1.0
                else:
                    y = flat_grad.sub(prev_flat_grad)
                    s = d.mul(t)
                    ys = y.dot(s)
                    if ys > 1e-10:
                        if len(old_dirs) == history_size:
                            old_dirs.pop(0)
                            old_stps.pop(0)
                            ro.pop(0)
                        old_dirs.append(y)
                        old_stps.append(s)
                        ro.append(1.0 / ys)
                        h_diag = ys / y.dot(y)
                    q = flat_grad.neg()
                    for i in range(len(old_dirs) - 1, -1, -1):
                        al[i] = old_stps[i].dot(q) * ro[i]
                        q.add_(old_dirs[i], alpha=-al[i])
                    d = r = torch.mul(q, h_diag)
                    for i in range(len(old_dirs)):
                        be_i = old_dirs[i].dot(r) * ro[i]
                        r.add_(old_stps[i], alpha=al[i] - be_i)
                prev_flat_grad = flat_grad.clone()
                prev_loss = loss
                t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if n_iter_total == 1 else lr
                if flat_grad.dot(d) > -tolerance_change:
                    break
                ls_func_evals = 0
                x.add_(d, alpha=t)
                if n_iter != max_iter:
                    loss, flat_grad = yield x
                    run.evaluations += 1
                    last = loss
                    ls_func_evals = 1
                current_evals += ls_func_evals
                if n_iter == max_iter or current_evals >= max_eval:
                    break
                if bool(flat_grad.abs().max() <= tolerance_grad):
                    break
                if bool(d.mul(t).abs().max() <= tolerance_change) or abs(loss - prev_loss) < tolerance_change:
                    break
        run.history.append(orig_loss)
        run.steps = step + 1
        if not math.isfinite(last) or not bool(torch.isfinite(x).all()):
            run.failure = f"the objective or the images became NaN/Inf at step {step}"
            run.steps = step
            x.copy_(saved)
            break
        if project is not None:
            project(x)
        if run.evaluations - before <= 1:  # converged (gradient below tolerance) or stalled
            break
    run.final_loss, _ = yield x
    return run


def minimize(
    evaluate: Evaluate,
    x0: Tensor,
    *,
    steps: int,
    lr: float = 1.0,
    max_iter: int = 20,
    history_size: int = 100,
    project: Callable[[Tensor], None] | None = None,
) -> list[LbfgsRun]:
    """Minimize ``P`` independent problems from the rows of ``x0 [P, n]``, each by its own L-BFGS.

    Args:
        evaluate: the objectives: given the indices of the problems that wait and their points, their losses and
            gradients (one batched call per round).
        x0: starting points, one row per problem (copied).
        steps: ``LBFGS.step`` calls per problem (fewer when it converges, stalls or fails).
        lr / max_iter / history_size: torch's ``LBFGS`` arguments (defaults: torch's).
        project: applied in place to a problem's point after each step (e.g. clamping to a box).

    Returns:
        One :class:`LbfgsRun` per problem; ``final_loss`` is the loss at the returned point.
    """
    runs: list[LbfgsRun | None] = [None] * x0.shape[0]
    problems = [
        _problem(x.clone(), lr=lr, max_iter=max_iter, history_size=history_size, steps=steps, project=project)
        for x in x0.detach()
    ]
    waiting = {i: next(p) for i, p in enumerate(problems)}
    while waiting:
        index = list(waiting)
        losses, grads = evaluate(torch.tensor(index, device=x0.device), torch.stack([waiting[i] for i in index]))
        losses, grads = losses.detach(), grads.detach()
        following = {}
        for k, i in enumerate(index):
            try:
                following[i] = problems[i].send((float(losses[k]), grads[k]))
            except StopIteration as stop:
                runs[i] = stop.value
        waiting = following
    return [r for r in runs if r is not None]
