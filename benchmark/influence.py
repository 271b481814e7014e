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
from dataclasses import dataclass, field, fields

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
    "best_rescaling",
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
    """Exact I2F per victim: ``value = ‖(KᵀK + εI)⁻¹ Kᵀδ‖`` by conjugate gradient.

    ``eps`` is the damping asked for: absolute, or (``relative=True``) a fraction of each victim's ``λ_max``;
    ``eps_used`` is the absolute ε each victim's solve used. :func:`estimate_i2f` also fills ``lower_bound``
    (``‖Kᵀδ‖ / (λ_max + ε)``, the lower bound of this same damped quantity) and, with ``rescale=True``, the
    attack-aware terms ``rescaled`` (I2F of ``s* g̃ − g``, one global ``s*``) and ``rescaled_layer`` (one ``s*``
    per parameter tensor).
    """

    value: Tensor  # [V]
    jt_delta: Tensor  # [V]
    residual: Tensor  # [V]   ‖b − (KᵀK+εI) z‖ / ‖b‖, recomputed at the end
    iterations: Tensor  # [V]
    products: Tensor  # [V]
    converged: Tensor  # [V]
    eps: float
    eps_used: Tensor | None = None  # [V]  absolute ε of each solve
    min_ritz: Tensor | None = None  # [V]  smallest Ritz value of CG's (preconditioned) system
    ill_conditioned: Tensor | None = None  # [V] bool: not converged, or min_ritz tiny against λ_max + ε
    relative: bool = False
    lower_bound: Tensor | None = None  # [V]  ‖Kᵀδ‖ / (λ_max + ε)
    rescaled: Tensor | None = None  # [V]  I2F of s* g̃ − g, s* = ⟨g̃, g⟩ / ‖g̃‖²
    rescaled_layer: Tensor | None = None  # [V]  the same with one s* per parameter tensor
    rescaled_converged: Tensor | None = None  # [V] bool: both rescaled solves converged


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
    min_ritz: Tensor | None = None  # [V] smallest Ritz value of the (preconditioned) operator CG explored; NaN if none


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

    ``min_ritz`` is the smallest eigenvalue of the Lanczos tridiagonal matrix that CG's coefficients define
    (Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., Sec. 6.7.3): a Ritz value of ``M⁻¹A``, an
    upper bound on its smallest eigenvalue, at no extra product. A tiny one means a nearly singular system.
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
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
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
        alphas.append(alpha)
        betas.append(beta)
        p = torch.where(active[:, None], w + beta[:, None] * p, p)
        rw = torch.where(active, rw_new, rw)
        rr = torch.where(active, (r * r).sum(1), rr)
        done = done | (rr.sqrt() <= target) | ~active
    return CGOutput(z, iterations, rr.sqrt() <= target, _cg_min_ritz(alphas, betas, iterations))


def _cg_min_ritz(alphas: list[Tensor], betas: list[Tensor], iterations: Tensor) -> Tensor:
    """Smallest eigenvalue of each system's CG tridiagonal ``T_k`` (``k`` its own steps): ``T[j,j] = 1/α_j +
    β_{j−1}/α_{j−1}``, ``T[j,j−1] = √β_{j−1}/α_{j−1}``. A system frozen at step ``k`` has its first ``k``
    coefficients active (a frozen system never resumes)."""
    out = torch.full(iterations.shape, float("nan"), dtype=torch.float64)
    if not alphas:
        return out.to(iterations.device)
    A = torch.stack(alphas, 1).double().cpu()  # [V, steps]
    B = torch.stack(betas, 1).double().cpu()
    for i, k in enumerate(iterations.tolist()):
        if k == 0:
            continue
        a, b = A[i, :k], B[i, : k - 1]
        diag = 1 / a
        diag[1:] += b / a[:-1]
        off = b.clamp_min(0).sqrt() / a[:-1]
        T = torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)
        out[i] = torch.linalg.eigvalsh(T)[0]
    return out.to(iterations.device)


RITZ_ACCURACY = 1e-2  # a Ritz pair enters the preconditioner when ‖A s − θ s‖ ≤ 1e-2 · θ


def spectral_preconditioner(lanczos_out: LanczosOutput, eps: float | Tensor, repeat: int = 1) -> Operator | None:
    """``M⁻¹`` from the well-converged top Ritz pairs ``(θ_i, s_i)`` of ``A = KᵀK``: deflates the top of the spectrum.

    ``M⁻¹ x = x + Σ_i (σ / (θ_i + ε) − 1) s_i s_iᵀ x`` over the kept pairs, with ``σ = θ_rest + ε`` where
    ``θ_rest`` is the largest Ritz value not kept (the smallest kept one when all are kept): along each kept
    direction the preconditioned operator has eigenvalue ≈ σ, at the top of the rest of the spectrum, so the
    condition number CG sees drops from ``(λ_1 + ε)/(λ_min + ε)`` to about ``(λ_{r+1} + ε)/(λ_min + ε)``.
    ``M⁻¹`` is symmetric positive definite for any orthonormal ``s_i`` (each coefficient exceeds −1), so
    preconditioned CG converges to the same solution even where a Ritz vector is inexact. ``repeat`` applies
    each victim's ``M⁻¹`` to that many consecutive rows (several right-hand sides per victim). ``eps`` is one
    damping for all, or one per victim (``[V, 1]``). Returns ``None`` when no pair qualifies.
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


def _operator(
    model: nn.Module,
    X: Tensor,
    Y: Tensor,
    loss: str | LossFn | None,
    case: Case | None,
    checkpoint: bool | None = None,
) -> GradientOperator:
    """The group's operator under the case's update rule (FedSGD without a case); ``loss`` defaults to the case's."""
    if loss is None:
        loss = case.loss_fn() if case is not None else "cross_entropy"
    update = None if case is None else case.update_rule()
    return GradientOperator(model, X, Y, loss, stacked=True, update=update, checkpoint=checkpoint)


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
    checkpoint: bool | None = None,
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
        checkpoint: under FedAvg, keep only the local iterates and rebuild one step's graph per ``Kᵀ u`` instead
            of storing the whole unrolled graph: memory nearly flat in the number of local steps ``T``, for a little
            more time (BENCHMARKS.md, ``fedavg``); ``None``: when ``T > 1``. See
            :class:`dglbench.gradients.GradientOperator`.
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
        op = _operator(model, X, Y, loss, case, checkpoint)
        assert D is not None
        b = op.rmatvec_many(D)
        out = _lanczos_of(op, b, tol, max_iter, seed, ritz=0)
        parts.append((idx, _lower_bound_of(op, b, out, op.products)))
    return LowerBoundResult(**_scatter(total, parts))


def _lanczos_of(op: GradientOperator, like: Tensor, tol: float, max_iter: int, seed: int, ritz: int) -> LanczosOutput:
    """Lanczos for ``λ_max`` from ``Kᵀr`` (``r`` random in parameter space; one product): a start in the range of
    ``KᵀK`` keeps the Ritz vectors there, so the preconditioner they make leaves ε = 0's minimum-norm solution alone
    where ``KᵀK`` is singular. Every victim gets the same ``r`` (drawn from ``seed``), so its start, and its
    numbers, do not depend on which victims it was grouped with."""
    start = op.rmatvec(_start_vectors(op.gradient[:1], seed).expand_as(op.gradient))
    fallback = _start_vectors(like[:1, 0], seed).expand_as(like[:, 0])  # K = 0: any start gives λ_max = 0
    start = torch.where(start.norm(dim=1, keepdim=True) > 0, start, fallback)
    return lanczos(op.gram, start, 1, tol, max_iter, ritz=ritz)


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


#: exact I2F is flagged ``ill_conditioned`` when CG's smallest Ritz value is below this many machine epsilons of
#: ``λ_max + ε``: eigenvalues that small are not resolved by products computed in that precision.
ILL_CONDITIONED_EPS = 100


def _exact_of(
    op: GradientOperator,
    b: Tensor,
    eps: float | Tensor,
    tol: float,
    max_iter: int,
    deflation: LanczosOutput | None = None,
    max_eigenvalue: Tensor | None = None,
) -> dict[str, Tensor]:
    """Exact-I2F fields of one group's rows, given ``b = Kᵀδ`` ``[V, m, d_x]``; ``products`` counts the ``m``
    products of ``b`` too. ``eps`` is one damping or one per victim (``[V]``). With ``deflation`` (a Lanczos run
    with Ritz pairs), CG is preconditioned by :func:`spectral_preconditioner`. ``ill_conditioned``: CG did not
    converge, or its smallest Ritz value is below ``ILL_CONDITIONED_EPS`` machine epsilons of ``λ_max + ε``
    (``max_eigenvalue`` ``[V]``; without it, of CG's own system)."""
    before = op.products
    V, m, n = b.shape
    eps_v = torch.as_tensor(eps, dtype=b.dtype, device=b.device).reshape(-1).expand(V)  # [V]

    def damped(v: Tensor) -> Tensor:  # [V·m, n] rows, victim-major
        return (op.gram_many(v.reshape(V, m, n)) + eps_v[:, None, None] * v.reshape(V, m, n)).reshape(V * m, n)

    flat = b.reshape(V * m, n)
    precondition = None if deflation is None else spectral_preconditioner(deflation, eps_v[:, None], repeat=m)
    out = conjugate_gradient(damped, flat, tol, max_iter, precondition)
    bnorm = flat.norm(dim=1)
    residual = (flat - damped(out.solution)).norm(dim=1) / bnorm.clamp_min(torch.finfo(b.dtype).tiny)
    residual = torch.where(bnorm > 0, residual, torch.zeros_like(residual))
    converged = residual <= max(tol, 10 * torch.finfo(b.dtype).eps)
    eps_rows = eps_v.repeat_interleave(m)
    min_ritz = out.min_ritz if out.min_ritz is not None else torch.full_like(residual, float("nan"))
    top = eps_rows + (max_eigenvalue.to(b.dtype).repeat_interleave(m) if max_eigenvalue is not None else 0)
    tiny = (min_ritz.to(b.dtype) <= ILL_CONDITIONED_EPS * torch.finfo(b.dtype).eps * top) & (bnorm > 0)
    return {
        "value": out.solution.norm(dim=1), "jt_delta": bnorm, "residual": residual,
        "iterations": out.iterations, "products": torch.full_like(out.iterations, m + op.products - before),
        "converged": converged, "eps_used": eps_rows, "min_ritz": min_ritz.to(b.dtype),
        "ill_conditioned": ~converged | tiny,
    }  # fmt: skip


def i2f(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    perturbation: Perturbation | Sequence[Perturbation],
    loss: str | LossFn | None = None,
    *,
    case: Case | None = None,
    checkpoint: bool | None = None,
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
        op = _operator(model, X, Y, loss, case, checkpoint)
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
    """The lower bound and exact I2F at several ε from one shared operator per victim group.

    ``exact`` is keyed by absolute ε, ``relative`` by ε as a fraction of each victim's ``λ_max``; ``scale`` is
    the global best rescaling ``s*`` of each victim's ``g̃`` (with ``rescale=True``).
    """

    lower_bound: LowerBoundResult
    exact: dict[float, I2FResult]
    products: Tensor  # [V] K / Kᵀ products actually spent (Kᵀδ and the linearization are shared)
    relative: dict[float, I2FResult] = field(default_factory=dict)
    scale: Tensor | None = None  # [V] s* = ⟨g̃, g⟩ / ‖g̃‖²


def best_rescaling(clean: Tensor, defended: Tensor, segments: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """The rescaled perturbation a cosine attack faces, ``δ* = s* g̃ − g``, and ``s*``.

    A cosine objective cannot see the scale of ``g̃``, so it meets ``g̃`` at its best scale
    ``s* = argmin_s ‖s g̃ − g‖ = ⟨g̃, g⟩ / ‖g̃‖²`` (``s* = 0`` for ``g̃ = 0``). With ``segments`` (the sizes of
    the parameter tensors, in order) each tensor gets its own ``s*``, as a layer-wise cosine sees it.

    Args:
        clean: ``g`` ``[..., d_θ]``.
        defended: ``g̃``, broadcastable against ``clean``.
        segments: sizes summing to ``d_θ`` for per-tensor scales; ``None`` for one global scale.

    Returns:
        ``(δ*, s*)``; ``s*`` is ``[...]`` for one global scale and ``[..., len(segments)]`` per tensor.

    Example:
        >>> g = torch.tensor([1.0, 2.0, 2.0])
        >>> delta, s = best_rescaling(g, 3 * g)
        >>> float(s), float(delta.norm())
        (0.3333333432674408, 0.0)
    """
    clean, defended = torch.broadcast_tensors(clean, defended)
    sizes = [clean.shape[-1]] if segments is None else list(segments)
    if sum(sizes) != clean.shape[-1]:
        raise ShapeError(f"segments sum to {sum(sizes)}, but the gradient has {clean.shape[-1]} entries")
    parts, scales = [], []
    for g, gt in zip(clean.split(sizes, -1), defended.split(sizes, -1)):
        den = (gt * gt).sum(-1, keepdim=True)
        s = torch.where(den > 0, (gt * g).sum(-1, keepdim=True) / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)
        parts.append(s * gt - g)
        scales.append(s)
    scale = torch.cat(scales, -1)
    return torch.cat(parts, -1), scale[..., 0] if segments is None else scale


def estimate_i2f(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    perturbation: Perturbation | Sequence[Perturbation],
    loss: str | LossFn | None = None,
    *,
    case: Case | None = None,
    checkpoint: bool | None = None,
    eps: Sequence[float] = (0.1,),
    eps_relative: Sequence[float] = (),
    rescale: bool = False,
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

    ``eps`` are absolute dampings; ``eps_relative`` are fractions of each victim's ``λ_max`` (ε = r · λ_max,
    so the damping sits at the same place in every victim's spectrum). ε = 0 gives the minimum-norm solution
    (CG from zero on the normal equations ``KᵀK z = Kᵀδ``, whose right-hand side lies in the range of ``KᵀK``),
    flagged ``ill_conditioned`` when it did not converge or CG's smallest Ritz value is tiny. Every exact term
    carries its damped lower bound ``‖Kᵀδ‖ / (λ_max + ε)``. ``rescale=True`` adds the I2F of the perturbation a
    cosine attack faces, ``s* g̃ − g`` (:func:`best_rescaling`, globally and per parameter tensor), solved in the
    same batched CG; it needs the clean shared quantity, which the operator computes.

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
    if any(e < 0 for e in (*eps, *eps_relative)):
        raise ConfigError(f"damping eps must be >= 0, got {[*eps, *eps_relative]}")
    total, groups = _groups(model, images, labels, perturbation, vectorize)
    lb_parts, products, scale_parts = [], [], []
    terms = [(float(e), False) for e in eps] + [(float(e), True) for e in eps_relative]
    exact_parts: dict[tuple[float, bool], list] = {t: [] for t in terms}
    for idx, X, Y, D in groups:
        op = _operator(model, X, Y, loss, case, checkpoint)
        assert D is not None
        m = D.shape[1]
        if rescale:
            clean = op.gradient[:, None]  # [V, 1, d_θ]
            d_global, s_global = best_rescaling(clean, clean + D)
            d_layer, _ = best_rescaling(clean, clean + D, [s.numel() for s in op.shapes.values()])
            D = torch.cat([D, d_global, d_layer], 1)  # [V, 3m, d_θ]: plain rows, then the rescaled ones
            scale_parts.append((idx, {"scale": s_global.reshape(-1)}))
        b = op.rmatvec_many(D)
        out = _lanczos_of(op, b, lower_bound_tol, lower_bound_max_iter, seed, ritz=deflate)
        lam = out.eigenvalues[:, 0]  # [V]
        lb_parts.append((idx, _lower_bound_of(op, b[:, :m], out, op.products)))
        for (e, relative), part in exact_parts.items():
            eps_v = e * lam if relative else e
            row = _exact_of(op, b, eps_v, cg_tol, cg_max_iter, out if deflate > 0 else None, lam)
            part.append((idx, _split_rescaled(row, X.shape[0], m, rescale, lam)))
        products.append((idx, {"products": torch.full((len(idx),), op.products, dtype=torch.long)}))
    exact = {t: I2FResult(**_scatter(total, part), eps=t[0], relative=t[1]) for t, part in exact_parts.items()}
    return I2FEstimate(
        lower_bound=LowerBoundResult(**_scatter(total, lb_parts)),
        exact={e: r for (e, rel), r in exact.items() if not rel},
        products=_scatter(total, products)["products"],
        relative={e: r for (e, rel), r in exact.items() if rel},
        scale=_scatter(total, scale_parts)["scale"] if rescale else None,
    )


def _split_rescaled(row: dict[str, Tensor], V: int, m: int, rescale: bool, lam: Tensor) -> dict[str, Tensor]:
    """One group's exact-I2F rows (``V·m`` plain, or ``V·3m`` with the rescaled ones) as the plain rows' fields,
    the rescaled values beside them, and the damped lower bound ``‖Kᵀδ‖ / (λ_max + ε)``."""
    k = 3 if rescale else 1
    parts = {key: value.reshape(V, k, m) for key, value in row.items()}
    out = {key: value[:, 0].reshape(-1) for key, value in parts.items()}
    out["lower_bound"] = out["jt_delta"] / (lam.repeat_interleave(m) + out["eps_used"])
    if rescale:
        out["rescaled"], out["rescaled_layer"] = parts["value"][:, 1].reshape(-1), parts["value"][:, 2].reshape(-1)
        out["rescaled_converged"] = parts["converged"][:, 1:].reshape(V, -1).all(1).repeat_interleave(m)
    return out


def top_eigenpairs(
    model: nn.Module,
    images: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor],
    k: int = 1,
    loss: str | LossFn | None = None,
    *,
    case: Case | None = None,
    checkpoint: bool | None = None,
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
        op = _operator(model, X, Y, loss, case, checkpoint)
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
