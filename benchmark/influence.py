"""The Inversion Influence Function (I2F) of Zhang et al., NeurIPS 2023 (arXiv 2309.13016).

For a victim with gradient Jacobian ``K = ∂g/∂x`` and a defense perturbation ``δ = g̃ − g``:

* exact I2F (Eq. 4): ``I(δ) = ‖(KᵀK + εI)⁻¹ Kᵀδ‖`` — :func:`i2f`, conjugate gradient in input space;
* lower bound (Eq. 5): ``I_lb(δ) = ‖Kᵀδ‖ / λ_max(KᵀK)`` — :func:`i2f_lower_bound`, Lanczos in input space;
* eigen-directions: :func:`top_eigenpairs` gives ``λ_i``, input-space ``v_i`` and unit parameter-space
  directions ``u_i = K v_i / √λ_i``.

Under FedAvg (``case=Case(update="fedavg", ...)``) the shared quantity is the update ``Δθ``, ``K = ∂Δθ/∂x``
through the unrolled local steps and ``δ = Δθ̃ − Δθ``; every formula is the same.

All solvers work matrix-free in input space (``d_x``, thousands) and never form anything of size
``d_θ × d_θ``. Many independent victims are solved at once: pass lists of image batches; victims with
the same batch shape are vectorized together, each with its own Krylov coefficients.

Example:
    >>> import torch
    >>> from dglbench.influence import i2f_lower_bound
    >>> torch.manual_seed(0) and None
    >>> nn = torch.nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 3))
    >>> x, y = torch.randn(1, 1, 4, 4), torch.tensor([2])
    >>> delta = 1e-3 * torch.randn(sum(p.numel() for p in model.parameters()))
    >>> res = i2f_lower_bound(model, x, y, delta)
    >>> bool(res.converged.all()), res.value.shape
    (True, torch.Size([1]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from dglbench.case import Case
from dglbench.errors import ConfigError, ShapeError
from dglbench.gradients import GradientOperator, LossFn, Perturbation, flatten_perturbation
from torch import Tensor, nn

__all__ = [
    "Eigenpairs",
    "I2FResult",
    "LowerBoundResult",
    "i2f",
    "i2f_lower_bound",
    "I2FEstimate",
    "estimate_i2f",
    "lanczos",
    "conjugate_gradient",
    "spectral_preconditioner",
    "top_eigenpairs",
    "I2F_lb",
    "compute_exact_bound",
]

Operator = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------- results
class _PerVictim:
    """Results hold one entry per victim along the first dimension."""

    def records(self) -> list[dict[str, object]]:
        """One plain dict per victim (tensors of one element become Python numbers)."""
        out: list[dict[str, object]] = []
        n = len(getattr(self, fields(self)[0].name))  # type: ignore[arg-type]
        for i in range(n):
            row: dict[str, object] = {}
            for f in fields(self):  # type: ignore[arg-type]
                value = getattr(self, f.name)
                item = value[i] if isinstance(value, Tensor) and value.dim() > 0 else value
                row[f.name] = item.item() if isinstance(item, Tensor) and item.numel() == 1 else item
            out.append(row)
        return out


@dataclass(frozen=True)
class LowerBoundResult(_PerVictim):
    """I2F lower bound per victim: ``value = jt_delta / max_eigenvalue``."""

    value: Tensor  # [V]
    jt_delta: Tensor  # [V]   ‖Kᵀδ‖
    max_eigenvalue: Tensor  # [V]   λ_max(KᵀK)
    products: Tensor  # [V]   K / Kᵀ products used
    iterations: Tensor  # [V]   Lanczos steps
    converged: Tensor  # [V]   bool


@dataclass(frozen=True)
class I2FResult(_PerVictim):
    """Exact I2F per victim: ``value = ‖(KᵀK + εI)⁻¹ Kᵀδ‖`` by conjugate gradient."""

    value: Tensor  # [V]
    jt_delta: Tensor  # [V]
    residual: Tensor  # [V]   ‖b − (KᵀK+εI) z‖ / ‖b‖, recomputed at the end
    iterations: Tensor  # [V]
    products: Tensor  # [V]
    converged: Tensor  # [V]
    eps: float


@dataclass(frozen=True)
class Eigenpairs(_PerVictim):
    """Top-k eigenpairs of ``KᵀK`` per victim, largest first."""

    eigenvalues: Tensor  # [V, k]
    eigenvectors: Tensor  # [V, k, *input_shape]  unit input-space eigenvectors v_i
    directions: Tensor  # [V, k, d_θ]  unit parameter-space directions u_i = K v_i / √λ_i
    products: Tensor  # [V]
    converged: Tensor  # [V]


# ---------------------------------------------------------------------------------------------- solvers
@dataclass(frozen=True)
class LanczosOutput:
    eigenvalues: Tensor  # [V, k] largest first
    eigenvectors: Tensor  # [V, k, n]
    iterations: Tensor  # [V] step at which each victim met the tolerance (or the last step)
    converged: Tensor  # [V]
    ritz_values: Tensor | None = None  # [V, r] the top r Ritz values of the final Krylov space (``ritz=r``)
    ritz_vectors: Tensor | None = None  # [V, r, n] their orthonormal Ritz vectors
    ritz_residuals: Tensor | None = None  # [V, r] ‖A s − θ s‖ of each


def lanczos(
    operator: Operator,
    start: Tensor,
    k: int = 1,
    tol: float = 1e-3,
    max_iter: int = 100,
    ritz: int = 0,
) -> LanczosOutput:
    """Top-``k`` eigenpairs of symmetric PSD operators by Lanczos with full reorthogonalization.

    ``operator`` maps ``[V, n] → [V, n]`` (``V`` independent operators). A Ritz pair ``(θ, s)``
    counts as converged when its residual ``‖A s − θ s‖ = β_m |e_mᵀ s|`` is at most
    ``tol · θ_max`` (ARPACK's criterion): an eigenvalue then lies within ``tol · θ_max`` of ``θ``.
    A gap-based shortcut (Kato–Temple with Ritz gaps) is deliberately not used: with clustered
    eigenvalues the Ritz gap overestimates the true gap and stops too early.

    ``ritz > 0`` also returns the top ``ritz`` Ritz pairs of the final Krylov space and their residuals, at
    no extra product: the well-converged ones make :func:`spectral_preconditioner`.
    """
    num, n = start.shape
    if k > n:
        raise ConfigError(f"asked for {k} eigenpairs of an operator of dimension {n}")
    max_iter = min(max_iter, n)
    q = start / start.norm(dim=1, keepdim=True)
    basis = [q]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    done = torch.zeros(num, dtype=torch.bool, device=start.device)
    iterations = torch.full((num,), max_iter, dtype=torch.long, device=start.device)
    theta = s = None
    for step in range(1, max_iter + 1):
        w = operator(basis[-1])
        alpha = (w * basis[-1]).sum(1)
        Q = torch.stack(basis, 1)  # [V, m, n]
        for _ in range(2):  # full reorthogonalization, twice is enough
            w = w - torch.einsum("vmn,vm->vn", Q, torch.einsum("vmn,vn->vm", Q, w))
        beta = w.norm(dim=1)
        alphas.append(alpha)
        T = torch.diag_embed(torch.stack(alphas, 1))
        if betas:
            off = torch.stack(betas, 1)
            T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, s = torch.linalg.eigh(T)  # ascending
        theta, s = theta.flip(-1), s.flip(-1)
        kk = min(k, step)
        residual = (beta[:, None] * s[:, -1, :kk]).abs()  # [V, kk]
        top = theta[:, :1].abs().clamp_min(torch.finfo(theta.dtype).tiny)
        ok = residual <= tol * top
        exhausted = beta <= 1e-12 * top[:, 0]
        newly = ((ok.all(1) & (step >= k)) | exhausted) & ~done
        iterations[newly] = step
        done |= newly
        if bool(done.all()) or step == max_iter:
            break
        betas.append(beta)
        basis.append(w / beta.clamp_min(torch.finfo(w.dtype).tiny)[:, None])
    assert theta is not None and s is not None
    Q = torch.stack(basis[: theta.shape[1]], 1)
    vectors = torch.einsum("vmn,vmk->vkn", Q, s[:, :, :k])
    if ritz <= 0:
        return LanczosOutput(theta[:, :k], vectors, iterations, done)
    r = min(ritz, theta.shape[1])
    ritz_vectors = torch.einsum("vmn,vmk->vkn", Q, s[:, :, :r])
    ritz_residuals = (beta[:, None] * s[:, -1, :r]).abs()
    return LanczosOutput(theta[:, :k], vectors, iterations, done, theta[:, :r], ritz_vectors, ritz_residuals)


@dataclass(frozen=True)
class CGOutput:
    solution: Tensor  # [V, n]
    iterations: Tensor  # [V]
    converged: Tensor  # [V]


def conjugate_gradient(
    operator: Operator,
    rhs: Tensor,
    tol: float = 1e-5,
    max_iter: int = 500,
    preconditioner: Operator | None = None,
) -> CGOutput:
    """Solve ``A z = b`` for ``V`` independent symmetric positive (semi)definite systems.

    Stops each system when ``‖r‖ ≤ tol · ‖b‖`` (recursive residual of the unpreconditioned system); a
    zero right-hand side has the zero solution. Converged systems are frozen while the others go on.
    ``preconditioner`` applies a symmetric positive definite ``M⁻¹`` (preconditioned CG); the solution
    is the same, only the number of iterations changes.
    """
    precondition = preconditioner if preconditioner is not None else (lambda v: v)
    z = torch.zeros_like(rhs)
    r = rhs.clone()
    w = precondition(r)
    p = w.clone()
    rr = (r * r).sum(1)
    rw = (r * w).sum(1)
    target = tol * rhs.norm(dim=1)
    done = rr.sqrt() <= target
    iterations = torch.zeros(rhs.shape[0], dtype=torch.long, device=rhs.device)
    ones = torch.ones_like(rr)
    for _ in range(max_iter):
        if bool(done.all()):
            break
        Ap = operator(p)
        pAp = (p * Ap).sum(1)
        active = ~done & (pAp > 0)
        alpha = torch.where(active, rw / torch.where(active, pAp, ones), torch.zeros_like(rr))
        z = z + alpha[:, None] * p
        r = r - alpha[:, None] * Ap
        w = precondition(r)
        rw_new = (r * w).sum(1)
        iterations += active.long()
        beta = torch.where(active, rw_new / torch.where(active, rw, ones), torch.zeros_like(rr))
        p = torch.where(active[:, None], w + beta[:, None] * p, p)
        rw = torch.where(active, rw_new, rw)
        rr = torch.where(active, (r * r).sum(1), rr)
        done = done | (rr.sqrt() <= target) | ~active
    return CGOutput(z, iterations, rr.sqrt() <= target)


RITZ_ACCURACY = 1e-2  # a Ritz pair enters the preconditioner when ‖A s − θ s‖ ≤ 1e-2 · θ


def spectral_preconditioner(lanczos_out: LanczosOutput, eps: float, repeat: int = 1) -> Operator | None:
    """``M⁻¹`` from the well-converged top Ritz pairs ``(θ_i, s_i)`` of ``A = KᵀK``: deflates the top of the spectrum.

    ``M⁻¹ x = x + Σ_i (σ / (θ_i + ε) − 1) s_i s_iᵀ x`` over the kept pairs, with ``σ = θ_rest + ε`` where
    ``θ_rest`` is the largest Ritz value not kept (the smallest kept one when all are kept): along each kept
    direction the preconditioned operator has eigenvalue ≈ σ, at the top of the rest of the spectrum, so the
    condition number CG sees drops from ``(λ_1 + ε)/(λ_min + ε)`` to about ``(λ_{r+1} + ε)/(λ_min + ε)``.
    ``M⁻¹`` is symmetric positive definite for any orthonormal ``s_i`` (each coefficient exceeds −1), so
    preconditioned CG converges to the same solution even where a Ritz vector is inexact. ``repeat`` applies
    each victim's ``M⁻¹`` to that many consecutive rows (several right-hand sides per victim). Returns
    ``None`` when no pair qualifies.
    """
    values, vectors, residuals = lanczos_out.ritz_values, lanczos_out.ritz_vectors, lanczos_out.ritz_residuals
    if values is None or vectors is None or residuals is None or values.shape[1] == 0:
        return None
    keep = (residuals <= RITZ_ACCURACY * values) & (values > 0)  # [V, r]
    if not bool(keep.any()):
        return None
    big = torch.finfo(values.dtype).max
    smallest_kept = torch.where(keep, values, torch.full_like(values, big)).amin(1, keepdim=True)
    largest_rest = torch.where(keep, torch.zeros_like(values), values).amax(1, keepdim=True)
    sigma = torch.where(largest_rest > 0, largest_rest, smallest_kept) + eps  # [V, 1]
    coeff = torch.where(keep, sigma / (values + eps) - 1, torch.zeros_like(values))  # [V, r]
    if repeat > 1:
        coeff, vectors = coeff.repeat_interleave(repeat, 0), vectors.repeat_interleave(repeat, 0)

    def apply(x: Tensor) -> Tensor:
        return x + torch.einsum("vrn,vr->vn", vectors, coeff * torch.einsum("vrn,vn->vr", vectors, x))

    return apply


# ------------------------------------------------------------------------------------------ victim input
VECTORIZE_MAX_PARAMETERS_CPU = 2_000_000
DEFLATE = 16  # Ritz pairs of the λ_max Lanczos run that precondition exact I2F in estimate_i2f


def _should_vectorize(model: nn.Module, vectorize: bool | str) -> bool:
    """``"auto"``: vmap on GPUs, and on CPUs for models up to 2M parameters.

    Measured on a 2-core CPU (BENCHMARKS.md): vmap over 8 victims is 3.7× the throughput of a loop
    for convnet5 (17k parameters) but 0.6× for ResNet18 (11M), where the stacked products are
    memory-bound.
    """
    if isinstance(vectorize, bool):
        return vectorize
    if vectorize != "auto":
        raise ConfigError(f"vectorize must be True, False or 'auto', got {vectorize!r}")
    first = next(model.parameters(), None)
    if first is not None and first.device.type == "cuda":
        return True
    return sum(p.numel() for p in model.parameters()) <= VECTORIZE_MAX_PARAMETERS_CPU


def _groups(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    perturbation: Perturbation | Sequence[Perturbation] | None,
    vectorize: bool | str,
) -> tuple[int, list[tuple[list[int], Tensor, Tensor, Tensor | None]]]:
    """Normalize one victim or many into groups of equal-shape victims: (result rows, X, Y, Δ ``[V, m, d_θ]``).

    One victim with a 2-D ``[m, d_θ]`` perturbation means ``m`` perturbations of that victim: one group whose
    ``m`` result rows share the victim's operator. Otherwise ``m = 1`` and there is one row per victim.
    """
    vectorize = _should_vectorize(model, vectorize)
    if isinstance(images, Tensor) and isinstance(perturbation, Tensor) and perturbation.dim() == 2:
        y = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
        _check_batch(0, images, y)
        if perturbation.shape[0] == 0:
            raise ShapeError("got an empty [0, d_θ] perturbation matrix; give at least one row")
        D = torch.stack([flatten_perturbation(model, d) for d in perturbation]).to(images.dtype)
        return D.shape[0], [(list(range(D.shape[0])), images[None], y[None], D[None])]
    if isinstance(images, Tensor):
        xs, ys = [images], [labels if isinstance(labels, Tensor) else torch.as_tensor(labels)]
        deltas = None if perturbation is None else [flatten_perturbation(model, perturbation)]  # type: ignore[arg-type]
    else:
        xs, ys = list(images), list(labels)  # type: ignore[arg-type]
        if len(xs) != len(ys):
            raise ShapeError(f"got {len(xs)} image batches but {len(ys)} label batches; give one per victim")
        if perturbation is None:
            deltas = None
        elif isinstance(perturbation, Tensor) and perturbation.dim() == 2:
            deltas = list(perturbation)
        else:
            deltas = list(perturbation)  # type: ignore[arg-type]
        if deltas is not None:
            if len(deltas) != len(xs):
                raise ShapeError(f"got {len(xs)} victims but {len(deltas)} perturbations; give one per victim")
            deltas = [flatten_perturbation(model, d) for d in deltas]
    for i, (x, y) in enumerate(zip(xs, ys)):
        _check_batch(i, x, y)
    groups: dict[tuple, list[int]] = {}
    for i, (x, y) in enumerate(zip(xs, ys)):
        key = (tuple(x.shape), tuple(y.shape), y.dtype) if vectorize else (i,)
        groups.setdefault(key, []).append(i)
    out = []
    for idx in groups.values():
        X = torch.stack([xs[i] for i in idx])
        Y = torch.stack([ys[i] for i in idx])
        D = None if deltas is None else torch.stack([deltas[i] for i in idx]).to(X.dtype)[:, None]
        out.append((idx, X, Y, D))
    return len(xs), out


def _check_batch(i: int, x: Tensor, y: Tensor) -> None:
    if x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ShapeError(
            f"victim {i}: images {tuple(x.shape)} and labels {tuple(y.shape)} disagree; "
            f"images must be [B, C, H, W] with B labels"
        )


def _scatter(total: int, parts: list[tuple[list[int], dict[str, Tensor]]]) -> dict[str, Tensor]:
    keys = parts[0][1].keys()
    merged: dict[str, Tensor] = {}
    for key in keys:
        first = parts[0][1][key]
        buf = first.new_zeros((total, *first.shape[1:]))
        for idx, values in parts:
            buf[torch.as_tensor(idx, device=buf.device)] = values[key].to(buf.dtype)
        merged[key] = buf
    return merged


def _operator(model: nn.Module, X: Tensor, Y: Tensor, loss: str | LossFn | None, case: Case | None) -> GradientOperator:
    """The group's operator under the case's update rule (FedSGD without a case); ``loss`` defaults to the case's."""
    if loss is None:
        loss = case.loss_fn() if case is not None else "cross_entropy"
    return GradientOperator(model, X, Y, loss, stacked=True, update=None if case is None else case.update_rule())


def _start_vectors(like: Tensor, seed: int) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)


# --------------------------------------------------------------------------------------------- public API
def i2f_lower_bound(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    perturbation: Perturbation | Sequence[Perturbation],
    loss: str | LossFn | None = None,
    *,
    case: Case | None = None,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    vectorize: bool | str = "auto",
) -> LowerBoundResult:
    """I2F lower bound ``‖Kᵀδ‖ / λ_max(KᵀK)`` (paper Eq. 5) for one victim or many.

    Args:
        model: the victim model, in the mode (train/eval) the victim uses.
        images: one victim's batch ``[B, C, H, W]``, or a list of such batches (one per victim).
        labels: ``[B]`` (or a list aligned with ``images``).
        perturbation: δ = g̃ − g; for one victim a flat ``[d_θ]`` vector, a list shaped like
            ``model.parameters()``, or a name → tensor dict; for many victims a list of those or ``[V, d_θ]``.
            For ONE victim, a ``[m, d_θ]`` matrix is ``m`` perturbations of that victim: one linearization and
            one eigensolve serve all of them, and the result has one entry per perturbation.
        loss: the victim's loss (see :func:`dglbench.gradients.make_loss`); default: the case's loss
            (cross-entropy with mean reduction without a case).
        case: the threat model whose update rule defines the shared quantity and so ``K``: ``None`` or
            ``Case(update="fedsgd")`` — the gradient; ``Case(update="fedavg", ...)`` — ``K = ∂Δθ/∂x`` through the
            unrolled local steps (:class:`dglbench.gradients.LocalUpdate`), and δ perturbs ``Δθ``.
        tol: relative tolerance on ``λ_max`` (Lanczos residual test).
        max_iter: most Lanczos steps (each costs one ``K v`` and one ``Kᵀ u``).
        seed: seed of the Lanczos start vector.
        vectorize: stack victims with equal shapes and solve them together (``vmap``); ``"auto"``
            does so on GPUs and, on CPUs, for models up to 2M parameters (where it measured faster).

    Returns:
        :class:`LowerBoundResult` with one entry per victim.
    """
    total, groups = _groups(model, images, labels, perturbation, vectorize)
    parts = []
    for idx, X, Y, D in groups:
        op = _operator(model, X, Y, loss, case)
        assert D is not None
        b = op.rmatvec_many(D)
        out = _lanczos_of(op, b, tol, max_iter, seed, ritz=0)
        parts.append((idx, _lower_bound_of(op, b, out, op.products)))
    return LowerBoundResult(**_scatter(total, parts))


def _lanczos_of(op: GradientOperator, like: Tensor, tol: float, max_iter: int, seed: int, ritz: int) -> LanczosOutput:
    return lanczos(op.gram, _start_vectors(like[:, 0], seed), 1, tol, max_iter, ritz=ritz)


def _lower_bound_of(op: GradientOperator, jt_delta: Tensor, out: LanczosOutput, products: int) -> dict[str, Tensor]:
    """Lower-bound fields of one group's rows, given ``Kᵀδ`` ``[V, m, d_x]`` and the Lanczos run for ``λ_max``."""
    m = jt_delta.shape[1]
    jt, lam = jt_delta.norm(dim=2), out.eigenvalues[:, :1]  # [V, m], [V, 1]
    return {
        "value": (jt / lam).reshape(-1), "jt_delta": jt.reshape(-1),
        "max_eigenvalue": lam.expand_as(jt).reshape(-1),
        "products": torch.full((jt.numel(),), products, dtype=torch.long, device=jt.device),
        "iterations": out.iterations.repeat_interleave(m), "converged": out.converged.repeat_interleave(m),
    }  # fmt: skip


def _exact_of(
    op: GradientOperator, b: Tensor, eps: float, tol: float, max_iter: int, deflation: LanczosOutput | None = None
) -> dict[str, Tensor]:
    """Exact-I2F fields of one group's rows, given ``b = Kᵀδ`` ``[V, m, d_x]``; ``products`` counts the ``m``
    products of ``b`` too. With ``deflation`` (a Lanczos run with Ritz pairs), CG is preconditioned by
    :func:`spectral_preconditioner`."""
    before = op.products
    V, m, n = b.shape

    def damped(v: Tensor) -> Tensor:  # [V·m, n] rows, victim-major
        return (op.gram_many(v.reshape(V, m, n)) + eps * v.reshape(V, m, n)).reshape(V * m, n)

    flat = b.reshape(V * m, n)
    precondition = None if deflation is None else spectral_preconditioner(deflation, eps, repeat=m)
    out = conjugate_gradient(damped, flat, tol, max_iter, precondition)
    bnorm = flat.norm(dim=1)
    residual = (flat - damped(out.solution)).norm(dim=1) / bnorm.clamp_min(torch.finfo(b.dtype).tiny)
    residual = torch.where(bnorm > 0, residual, torch.zeros_like(residual))
    return {
        "value": out.solution.norm(dim=1), "jt_delta": bnorm, "residual": residual,
        "iterations": out.iterations, "products": torch.full_like(out.iterations, m + op.products - before),
        "converged": residual <= max(tol, 10 * torch.finfo(b.dtype).eps),
    }  # fmt: skip


def i2f(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    perturbation: Perturbation | Sequence[Perturbation],
    loss: str | LossFn | None = None,
    *,
    case: Case | None = None,
    eps: float = 0.1,
    tol: float = 1e-5,
    max_iter: int = 500,
    vectorize: bool | str = "auto",
    deflate: int = 0,
    seed: int = 0,
) -> I2FResult:
    """Exact I2F ``‖(KᵀK + εI)⁻¹ Kᵀδ‖`` (paper Eq. 4) by conjugate gradient in input space.

    Args: as :func:`i2f_lower_bound`, plus ``eps`` (damping ε ≥ 0), ``tol`` (relative residual of
    the linear solve) and ``max_iter`` (most CG steps, each one ``K v`` and one ``Kᵀ u``).

    The reported ``residual`` is recomputed from the final solution (one extra pair of products),
    and ``converged`` means it is at most ``tol``. ``deflate > 0`` first runs Lanczos (seeded by ``seed``)
    and preconditions CG with up to that many of its top Ritz pairs (:func:`spectral_preconditioner`):
    the same solution in fewer CG steps, which pays when the Lanczos run is shared (:func:`estimate_i2f`
    does so by default) or when many perturbations of one victim are solved together.
    """
    if eps < 0:
        raise ConfigError(f"damping eps must be >= 0, got {eps}")
    total, groups = _groups(model, images, labels, perturbation, vectorize)
    parts = []
    for idx, X, Y, D in groups:
        op = _operator(model, X, Y, loss, case)
        assert D is not None
        b = op.rmatvec_many(D)
        deflation = _lanczos_of(op, b, 1e-3, 100, seed, ritz=deflate) if deflate > 0 else None
        before = op.products
        part = _exact_of(op, b, eps, tol, max_iter, deflation)
        part["products"] = part["products"] + (before - D.shape[1])  # the Lanczos run's products count too
        parts.append((idx, part))
    return I2FResult(**_scatter(total, parts), eps=eps)


@dataclass(frozen=True)
class I2FEstimate:
    """The lower bound and exact I2F at several ε from one shared operator per victim group."""

    lower_bound: LowerBoundResult
    exact: dict[float, I2FResult]
    products: Tensor  # [V] K / Kᵀ products actually spent (Kᵀδ and the linearization are shared)


def estimate_i2f(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    perturbation: Perturbation | Sequence[Perturbation],
    loss: str | LossFn | None = None,
    *,
    case: Case | None = None,
    eps: Sequence[float] = (0.1,),
    lower_bound_tol: float = 1e-3,
    lower_bound_max_iter: int = 100,
    cg_tol: float = 1e-5,
    cg_max_iter: int = 500,
    seed: int = 0,
    vectorize: bool | str = "auto",
    deflate: int = DEFLATE,
) -> I2FEstimate:
    """:func:`i2f_lower_bound` and :func:`i2f` at every ``eps`` with the same numbers, but one gradient
    linearization, one ``Kᵀδ`` and one Lanczos run per victim group instead of one per term (what a benchmark
    run needs). The Lanczos run that gives ``λ_max`` also gives the top Ritz pairs that precondition every
    exact solve (``deflate`` of them at most; 0 for plain CG): same values, fewer products.

    Example:
        >>> import torch
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        >>> x, y = torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.tensor([2])
        >>> deltas = 1e-3 * torch.randn(5, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
        >>> est = estimate_i2f(model, x, y, deltas, eps=(0.1,))  # five perturbations of one victim
        >>> est.lower_bound.value.shape, est.exact[0.1].value.shape
        (torch.Size([5]), torch.Size([5]))
    """
    if any(e < 0 for e in eps):
        raise ConfigError(f"damping eps must be >= 0, got {list(eps)}")
    total, groups = _groups(model, images, labels, perturbation, vectorize)
    lb_parts, products = [], []
    exact_parts: dict[float, list] = {float(e): [] for e in eps}
    for idx, X, Y, D in groups:
        op = _operator(model, X, Y, loss, case)
        assert D is not None
        b = op.rmatvec_many(D)
        out = _lanczos_of(op, b, lower_bound_tol, lower_bound_max_iter, seed, ritz=deflate)
        lb_parts.append((idx, _lower_bound_of(op, b, out, op.products)))
        for e, part in exact_parts.items():
            part.append((idx, _exact_of(op, b, e, cg_tol, cg_max_iter, out if deflate > 0 else None)))
        products.append((idx, {"products": torch.full((len(idx),), op.products, dtype=torch.long)}))
    return I2FEstimate(
        lower_bound=LowerBoundResult(**_scatter(total, lb_parts)),
        exact={e: I2FResult(**_scatter(total, part), eps=e) for e, part in exact_parts.items()},
        products=_scatter(total, products)["products"],
    )


def top_eigenpairs(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    k: int = 1,
    loss: str | LossFn | None = None,
    *,
    case: Case | None = None,
    tol: float = 1e-4,
    max_iter: int = 200,
    seed: int = 0,
    vectorize: bool | str = "auto",
) -> Eigenpairs:
    """The ``k`` largest eigenpairs of ``KᵀK`` per victim, and the parameter-space directions.

    ``u_i = K v_i / √λ_i`` is a unit vector in parameter space; noise ``δ = c · u_i`` gives
    ``I2F = c / √λ_i`` exactly (with ε = 0), the paper's eigen-direction insight.
    """
    total, groups = _groups(model, images, labels, None, vectorize)
    parts = []
    for idx, X, Y, _ in groups:
        op = _operator(model, X, Y, loss, case)
        out = lanczos(op.gram, _start_vectors(op.images.reshape(len(idx), -1), seed), k, tol, max_iter)
        dirs = torch.stack([op.matvec(out.eigenvectors[:, i]) for i in range(k)], 1)
        dirs = dirs / out.eigenvalues.clamp_min(torch.finfo(dirs.dtype).tiny).sqrt()[..., None]
        parts.append((idx, {
            "eigenvalues": out.eigenvalues,
            "eigenvectors": out.eigenvectors.reshape(len(idx), k, *op.input_shape),
            "directions": dirs, "products": torch.full_like(out.iterations, op.products),
            "converged": out.converged,
        }))  # fmt: skip
    return Eigenpairs(**_scatter(total, parts))


# ------------------------------------------------------------------------- names of the paper's reference code
def I2F_lb(model: nn.Module, images: Tensor, labels: Tensor, noise: Sequence[Tensor]) -> float:  # noqa: N802
    """The paper code's ``I2F_lb``: the I2F lower bound for one victim, ``noise`` shaped like ``model.parameters()``."""
    return float(i2f_lower_bound(model, images, labels, list(noise)).value[0])


def compute_exact_bound(
    model: nn.Module, images: Tensor, labels: Tensor, noise: Sequence[Tensor], regu: float = 0.1
) -> float:
    """The paper code's ``compute_exact_bound``: exact I2F with damping ``regu`` (ε), solved to tolerance."""
    return float(i2f(model, images, labels, list(noise), eps=regu).value[0])
