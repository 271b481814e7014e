"""The victim's shared quantity and the products ``K v`` and ``Kᵀ u``.

The shared quantity depends on the client's update rule: under FedSGD (the default) it is the gradient
``g(x) = ∇_θ ℓ(f_θ(x), y)``; under FedAvg (:class:`LocalUpdate`) it is the update ``Δθ(x) = θ_T(x) − θ_0``
after ``T`` local SGD steps from ``θ_0`` (for one full-batch step, ``Δθ = −η g``). ``K`` is its Jacobian
with respect to the private input (``d_θ × d_x``). This module is the one place that computes the shared
quantity, ``K v`` (forward-over-reverse: a JVP through the gradient, or through the unrolled local steps)
and ``Kᵀ u`` (reverse-over-reverse: a VJP); everything else in dglbench calls it.

Many independent victims are handled at once: a *group* of ``V`` victims with the same batch
shape is stacked to ``[V, B, C, H, W]`` and the per-victim gradient is vectorized with
``torch.func.vmap``; every product then acts on ``[V, ·]`` stacks and the Jacobian is block
diagonal (victim ``i``'s gradient depends only on victim ``i``'s images).

Example:
    >>> import torch
    >>> from dglbench.gradients import GradientOperator
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> op = GradientOperator(model, torch.randn(1, 1, 2, 2), torch.tensor([1]))
    >>> op.gradient.shape, op.rmatvec(torch.randn(1, 15)).shape, op.matvec(torch.randn(1, 4)).shape
    (torch.Size([1, 15]), torch.Size([1, 4]), torch.Size([1, 15]))
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from dglbench.errors import ConfigError, NotTwiceDifferentiableError, ShapeError
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

LossFn = Callable[[Tensor, Tensor], Tensor]
Perturbation = Tensor | Sequence[Tensor] | Mapping[str, Tensor]

__all__ = [
    "GradientOperator",
    "LocalUpdate",
    "LossFn",
    "Perturbation",
    "flat_parameter_gradient",
    "flatten_perturbation",
    "functional_gradient",
    "functional_state",
    "functional_update",
    "make_loss",
    "parameter_gradients",
    "parameter_shapes",
    "shared_update",
]


def make_loss(loss: str | LossFn = "cross_entropy", reduction: str = "mean") -> LossFn:
    """The victim's training loss ``ℓ(logits, labels)``.

    Args:
        loss: ``"cross_entropy"`` (labels as class indices or as probabilities), ``"mse"``
            (labels one-hot encoded when given as indices), or any callable ``(logits, labels) -> scalar``.
        reduction: ``"mean"`` or ``"sum"`` over the victim's batch.

    Example:
        >>> import torch
        >>> round(make_loss("cross_entropy")(torch.zeros(2, 4), torch.tensor([0, 3])).item(), 4)  # log 4
        1.3863
    """
    if callable(loss):
        return loss
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"unknown loss reduction {reduction!r}; use 'mean' or 'sum'")
    if loss == "cross_entropy":
        return lambda logits, labels: F.cross_entropy(logits, labels, reduction=reduction)
    if loss == "mse":

        def mse(logits: Tensor, labels: Tensor) -> Tensor:
            target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype) if labels.dtype == torch.long else labels
            per_sample = ((logits - target) ** 2).sum(-1)
            return per_sample.mean() if reduction == "mean" else per_sample.sum()

        return mse
    raise ConfigError(f"unknown loss {loss!r}; use 'cross_entropy', 'mse' or a callable (logits, labels) -> scalar")


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def parameter_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Names and shapes of the parameters that make up θ (those that require grad), in order."""
    return {name: p.shape for name, p in _trainable(model).items()}


def flatten_perturbation(model: nn.Module, perturbation: Perturbation) -> Tensor:
    """One victim's parameter-space perturbation δ as a flat ``[d_θ]`` vector.

    Accepts a flat vector, a list aligned with ``model.parameters()`` (the paper's code uses this),
    or a dict keyed by parameter name. Shape mismatches raise :class:`ShapeError` naming the entry.
    """
    shapes = parameter_shapes(model)
    d = sum(s.numel() for s in shapes.values())
    if isinstance(perturbation, Tensor):
        if perturbation.dim() != 1 or perturbation.numel() != d:
            raise ShapeError(
                f"flat perturbation has shape {tuple(perturbation.shape)} but the model has {d} trainable "
                f"parameters; pass a vector of length {d}, a list shaped like model.parameters(), or a dict"
            )
        return perturbation
    if isinstance(perturbation, Mapping):
        unknown = sorted(set(perturbation) - set(shapes))
        missing = sorted(set(shapes) - set(perturbation))
        if unknown or missing:
            raise ShapeError(
                f"perturbation dict does not match the model's parameters (missing: {missing[:3]}, "
                f"unknown: {unknown[:3]}); use the names of model.named_parameters()"
            )
        parts = [(name, perturbation[name]) for name in shapes]
    else:
        parts_list = list(perturbation)
        all_params = list(model.named_parameters())
        if len(parts_list) == len(all_params) and len(all_params) != len(shapes):
            parts_list = [t for t, (_, p) in zip(parts_list, all_params) if p.requires_grad]
        if len(parts_list) != len(shapes):
            raise ShapeError(
                f"perturbation list has {len(parts_list)} tensors but the model has {len(shapes)} trainable "
                f"parameters; give one tensor per entry of model.parameters()"
            )
        parts = list(zip(shapes, parts_list))
    for name, t in parts:
        if tuple(t.shape) != tuple(shapes[name]):
            raise ShapeError(
                f"perturbation for parameter {name!r} has shape {tuple(t.shape)}, expected {tuple(shapes[name])}"
            )
    return torch.cat([t.reshape(-1) for _, t in parts])


_NO_DOUBLE_BACKWARD = re.compile(
    r"derivative for '?([\w.:]+)'? is not implemented|forward AD with ([\w.:]+) that does not support"
)


def _differentiability_error(exc: Exception, what: str) -> Exception:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    match = _NO_DOUBLE_BACKWARD.search(str(exc))
    if match is None and "not implemented" not in str(exc).lower():
        return exc
    op = next((g for g in match.groups() if g), "an operation") if match else "an operation"
    return NotTwiceDifferentiableError(
        f"cannot compute {what}: the model uses {op}, which has no higher-order derivative ({message}); "
        f"call models.compat.make_twice_differentiable(model) or pick another architecture"
    )


def parameter_gradients(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss: str | LossFn = "cross_entropy",
    *,
    create_graph: bool = False,
    names: Sequence[str] | None = None,
) -> list[Tensor]:
    """The victim's shared gradient ``g(x)``, one tensor per parameter of θ (plain autograd).

    Args:
        names: the parameters that make up θ (default: every parameter that requires grad), in order.
        create_graph: keep the result differentiable with respect to ``images`` (what an attack
            needs to optimize a dummy input).

    Example:
        >>> import torch
        >>> [g.shape for g in parameter_gradients(torch.nn.Linear(3, 2), torch.randn(1, 3), torch.tensor([0]))]
        [torch.Size([2, 3]), torch.Size([2])]
    """
    named = dict(model.named_parameters())
    params = [named[n] for n in names] if names is not None else list(_trainable(model).values())
    value = make_loss(loss)(model(images), labels)
    return list(torch.autograd.grad(value, params, create_graph=create_graph))


def flat_parameter_gradient(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss: str | LossFn = "cross_entropy",
    *,
    create_graph: bool = False,
) -> Tensor:
    """:func:`parameter_gradients` as one flat ``[d_θ]`` vector.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> flat_parameter_gradient(model, torch.randn(1, 3), torch.tensor([0])).shape
        torch.Size([8])
    """
    grads = parameter_gradients(model, images, labels, loss, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def functional_state(
    model: nn.Module, names: Sequence[str] | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """θ as detached tensors (``names``, default: the parameters that require grad) and the rest of the
    state a forward pass needs (frozen parameters and buffers), for :func:`functional_gradient`."""
    named = dict(model.named_parameters())
    keys = list(names) if names is not None else list(_trainable(model))
    params = {n: named[n].detach() for n in keys}
    rest = {n: p.detach() for n, p in named.items() if n not in params}
    rest.update(dict(model.named_buffers()))
    return params, rest


def functional_gradient(
    model: nn.Module,
    params: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    loss_fn: LossFn,
    images: Tensor,
    labels: Tensor,
) -> dict[str, Tensor]:
    """``∇_θ ℓ(f_θ(images), labels)`` by ``torch.func`` (composes with ``vmap``, ``jvp``, ``vjp``).

    The result is differentiable with respect to ``images`` and (soft) ``labels``. In train mode the
    forward pass runs on copies of the buffers, made inside the transform: BatchNorm normalizes with the
    batch's statistics and updates running statistics that the transforms cannot mutate and that do not
    change θ's gradient (the model's own buffers are left as they are).
    """
    training = model.training

    def loss_of(p: Mapping[str, Tensor]) -> Tensor:
        buffers = {k: v.clone() for k, v in state.items()} if training else state
        return loss_fn(functional_call(model, (p, buffers), (images,)), labels)

    return grad(loss_of)(dict(params))


@dataclass(frozen=True)
class LocalUpdate:
    """The FedAvg client's update rule: ``T = epochs · steps`` local SGD steps of rate ``lr`` from ``θ_0``.

    The schedule is fixed and known to the attacker. The client's ``B`` images are split, in their order, into
    ``n = B / b`` mini-batches of ``b = batch_size`` images (``None``: the whole batch, ``n = 1``); ``b`` must
    divide ``B``. Local step ``t = 0, …, T − 1`` takes one SGD step on mini-batch ``t mod n`` with the case's
    loss (its reduction over that mini-batch):

        ``θ_{t+1} = θ_t − lr · ∇_θ ℓ(f_{θ_t}(x_{(t mod n)}), y_{(t mod n)})``,   shared: ``Δθ = θ_T − θ_0``.

    ``steps`` is the number of steps per epoch: with ``steps = n`` an epoch is one pass over the client's
    images (McMahan et al.'s ``E`` epochs); with ``b = B`` and one epoch it is ``steps`` full-batch steps, the
    reference's ``loss_steps`` (``inversefed``, whose step ``i`` also uses mini-batch ``i mod (B // b)``).
    ``Δθ`` is accumulated as ``−lr · Σ_t g_t`` (no cancellation in ``θ_T − θ_0``). For ``T = 1`` and ``b = B``
    it is ``−lr · g``.

    Example:
        >>> LocalUpdate(steps=2, lr=0.1, batch_size=1, epochs=2).schedule(2)
        [slice(0, 1, None), slice(1, 2, None), slice(0, 1, None), slice(1, 2, None)]
    """

    steps: int = 1
    lr: float = 1e-4
    batch_size: int | None = None
    epochs: int = 1

    @property
    def total_steps(self) -> int:
        """``T = epochs · steps``."""
        return self.epochs * self.steps

    def schedule(self, batch: int) -> list[slice]:
        """The mini-batch of each of the ``T`` local steps, as slices of the client's ``batch`` images."""
        b = batch if self.batch_size is None else self.batch_size
        if b < 1 or b > batch or batch % b:
            raise ConfigError(
                f"the FedAvg local batch size {b} must divide the client's batch size {batch}; "
                f"set case.local_batch_size to a divisor of {batch} (or leave it unset for full-batch steps)"
            )
        n = batch // b
        return [slice((t % n) * b, (t % n + 1) * b) for t in range(self.total_steps)]


def functional_update(
    model: nn.Module,
    params: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    loss_fn: LossFn,
    images: Tensor,
    labels: Tensor,
    update: LocalUpdate | None = None,
) -> dict[str, Tensor]:
    """The shared quantity by ``torch.func``: the gradient (``update=None``, FedSGD) or ``Δθ`` of the FedAvg
    rule ``update`` (the local steps unrolled), per parameter. Composes with ``vmap``, ``jvp`` and ``vjp`` and
    is differentiable with respect to ``images`` and (soft) ``labels``.
    """
    if update is None:
        return functional_gradient(model, params, state, loss_fn, images, labels)
    delta = {k: torch.zeros_like(v) for k, v in params.items()}
    for part in update.schedule(images.shape[0]):
        theta = {k: params[k] + delta[k] for k in params}
        g = functional_gradient(model, theta, state, loss_fn, images[part], labels[part])
        delta = {k: delta[k] - update.lr * g[k] for k in params}
    return delta


def shared_update(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    loss: str | LossFn = "cross_entropy",
    update: LocalUpdate | None = None,
    *,
    names: Sequence[str] | None = None,
) -> list[Tensor]:
    """What the client shares, one detached tensor per parameter of θ (``names``, default: those requiring
    grad): the gradient :func:`parameter_gradients` under FedSGD (``update=None``), ``Δθ`` under FedAvg.

    Example:
        >>> import torch
        >>> model, x, y = torch.nn.Linear(3, 2), torch.randn(2, 3), torch.tensor([0, 1])
        >>> g = parameter_gradients(model, x, y)
        >>> d = shared_update(model, x, y, update=LocalUpdate(steps=1, lr=0.5))
        >>> all(torch.allclose(a, -0.5 * b) for a, b in zip(d, g))
        True
    """
    if update is None:
        return [t.detach() for t in parameter_gradients(model, images, labels, loss, names=names)]
    params, state = functional_state(model, names)
    delta = functional_update(model, params, state, make_loss(loss), images.detach(), labels.detach(), update)
    return [t.detach() for t in delta.values()]


class GradientOperator:
    """The shared quantity ``g(x)`` (or FedAvg's ``Δθ(x)``), ``K v`` and ``Kᵀ u`` for ``V`` independent victims.

    The Jacobian-transpose products reuse one stored linearization (``torch.func.vjp``); ``K v``
    is a forward-mode JVP of the gradient. Each call of :meth:`matvec` or :meth:`rmatvec` counts
    as one product in :attr:`products`.

    Args:
        model: the victim model ``f_θ`` (its mode — train/eval — is used as it is).
        images: ``[B, C, H, W]`` for one victim, or ``[V, B, C, H, W]`` with ``stacked=True``.
        labels: ``[B]`` class indices (or ``[B, num_classes]`` soft labels); ``[V, B, ...]`` when stacked.
        loss: the victim's loss (see :func:`make_loss`).
        stacked: whether ``images``/``labels`` carry a leading victim dimension.
        update: the client's update rule: ``None`` for FedSGD (the shared quantity is the gradient), a
            :class:`LocalUpdate` for FedAvg (``Δθ``; the products then go through the unrolled local steps).
            :attr:`gradient` holds the shared quantity.
        checkpoint: under FedAvg, how ``Kᵀ u`` gets through the ``T`` local steps. ``False``: one VJP of the
            whole unrolled map is stored when the operator is built, so memory grows with ``T`` (``T``
            double-backward graphs). ``True``: only the iterates ``Δθ_t`` are stored (``T · d_θ`` numbers) and
            each ``Kᵀ u`` runs the adjoint recursion backwards, rebuilding one step's VJP at a time:

                ``ū_T = u``;  ``x̄_t += −η ∂g_tᵀ/∂x ū_{t+1}``;  ``ū_t = ū_{t+1} − η ∂g_tᵀ/∂θ ū_{t+1}``,

            with ``g_t`` the gradient of step ``t`` at ``θ_0 + Δθ_t``. The same numbers; peak memory of one
            step's graph whatever ``T``, for a recomputed forward step per product. ``None`` (the default):
            ``True`` when ``T > 1``. ``K v`` is forward mode and holds one step's graph either way.
    """

    def __init__(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        loss: str | LossFn = "cross_entropy",
        *,
        stacked: bool = False,
        update: LocalUpdate | None = None,
        checkpoint: bool | None = None,
    ) -> None:
        if not stacked:
            images, labels = images.unsqueeze(0), labels.unsqueeze(0)
        if images.dim() < 3:
            raise ShapeError(f"images must be [B, C, H, W] (or [V, B, ...] stacked), got {tuple(images.shape)}")
        self.model = model
        self.loss_fn = make_loss(loss)
        self.update = update
        self.images = images.detach()
        self.labels = labels.detach()
        self.num_victims = images.shape[0]
        self.input_shape = tuple(images.shape[1:])
        self.input_dim = images[0].numel()
        self.params, self.buffers = functional_state(model)
        self.shapes = {k: v.shape for k, v in self.params.items()}
        self._sizes = [v.numel() for v in self.params.values()]
        self.num_parameters = sum(v.numel() for v in self.params.values())
        self.products = 0
        if checkpoint is None:
            checkpoint = update is not None and update.total_steps > 1
        self.checkpoint = bool(checkpoint) and update is not None
        self._vjp_fn: Callable[[Tensor], tuple[Tensor]] | None = None
        self._iterates: list[Tensor] = []
        if self.checkpoint:
            self.gradient: Tensor = self._unroll()
            return
        try:
            gradient, self._vjp_fn = vjp(self._stacked_gradient, self.images)
        except RuntimeError as exc:
            raise _differentiability_error(exc, "the Jacobian-transpose product Kᵀu") from exc
        self.gradient = gradient.detach()

    def _single_gradient(self, x: Tensor, y: Tensor) -> Tensor:
        grads = functional_update(self.model, self.params, self.buffers, self.loss_fn, x, y, self.update)
        return torch.cat([t.reshape(-1) for t in grads.values()])

    def _stacked_gradient(self, images: Tensor) -> Tensor:
        if images.shape[0] == 1:  # no vmap for a single victim: works with any model
            return self._single_gradient(images[0], self.labels[0]).unsqueeze(0)
        return vmap(self._single_gradient)(images, self.labels)

    # ------------------------------------------------------------------ FedAvg with checkpointed iterates
    def _step_gradient(self, delta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """One victim's local gradient at ``θ_0 + Δθ_t`` (``delta`` flat), flat."""
        parts = dict(zip(self.params, delta.split(self._sizes)))
        theta = {k: v + parts[k].reshape(v.shape) for k, v in self.params.items()}
        grads = functional_gradient(self.model, theta, self.buffers, self.loss_fn, x, y)
        return torch.cat([t.reshape(-1) for t in grads.values()])

    def _stacked_step(self, delta: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        if images.shape[0] == 1:
            return self._step_gradient(delta[0], images[0], labels[0]).unsqueeze(0)
        return vmap(self._step_gradient)(delta, images, labels)

    def _unroll(self) -> Tensor:
        """Runs the local steps without a graph, keeping ``Δθ_t`` before each step; returns ``Δθ_T``."""
        assert self.update is not None
        delta = self.images.new_zeros(self.num_victims, self.num_parameters)
        for part in self.update.schedule(self.images.shape[1]):
            self._iterates.append(delta)
            g = self._stacked_step(delta, self.images[:, part], self.labels[:, part]).detach()
            delta = delta - self.update.lr * g
        return delta

    def _adjoint(self, u: Tensor) -> Tensor:
        """``Kᵀ u`` by the adjoint recursion over the stored iterates; ``u`` is ``[V, d_θ]`` or ``[V, m, d_θ]``."""
        assert self.update is not None
        many = u.dim() == 3
        lead = (slice(None),) * (u.dim() - 1)  # [V] or [V, m] in front of the batch dimension
        lr = self.update.lr
        schedule = self.update.schedule(self.images.shape[1])
        grad_x = self.images.new_zeros((*u.shape[:-1], *self.images.shape[1:]))
        adjoint = u.to(self.gradient.dtype)
        for t in reversed(range(len(schedule))):
            part = schedule[t]
            labels = self.labels[:, part]
            _, fn = vjp(lambda d, x, y=labels: self._stacked_step(d, x, y), self._iterates[t], self.images[:, part])
            d_delta, d_x = vmap(fn, in_dims=1, out_dims=1)(adjoint) if many else fn(adjoint)
            grad_x[(*lead, part)] -= lr * d_x
            adjoint = adjoint - lr * d_delta.detach()
        return grad_x.detach()

    def rmatvec(self, u: Tensor) -> Tensor:
        """``Kᵀ u`` for ``u`` of shape ``[V, d_θ]``; returns ``[V, d_x]``."""
        self.products += 1
        try:
            if self._vjp_fn is None:  # checkpointed FedAvg
                return self._adjoint(u).reshape(self.num_victims, -1)
            (out,) = self._vjp_fn(u.to(self.gradient.dtype))
        except RuntimeError as exc:
            raise _differentiability_error(exc, "the Jacobian-transpose product Kᵀu") from exc
        return out.detach().reshape(self.num_victims, -1)  # (train-mode BatchNorm's VJP can carry requires_grad)

    def matvec(self, v: Tensor) -> Tensor:
        """``K v`` for ``v`` of shape ``[V, d_x]``; returns ``[V, d_θ]``."""
        self.products += 1
        tangent = v.reshape(self.images.shape).to(self.images.dtype)
        try:
            _, out = jvp(self._stacked_gradient, (self.images,), (tangent,))
        except RuntimeError as exc:
            raise _differentiability_error(exc, "the Jacobian-vector product Kv") from exc
        return out

    def gram(self, v: Tensor) -> Tensor:
        """``KᵀK v`` for ``v`` of shape ``[V, d_x]`` (two products)."""
        return self.rmatvec(self.matvec(v))

    def rmatvec_many(self, u: Tensor) -> Tensor:
        """``Kᵀ u`` for ``m`` vectors per victim, ``u`` of shape ``[V, m, d_θ]``; returns ``[V, m, d_x]``.

        One vectorized pass over the stored linearization (``vmap`` of the VJP); counts as ``m`` products.
        """
        m = u.shape[1]
        if m == 1:
            return self.rmatvec(u[:, 0]).unsqueeze(1)
        self.products += m
        try:
            if self._vjp_fn is None:
                return self._adjoint(u).reshape(self.num_victims, m, -1)
            vjp_fn = self._vjp_fn
            out = vmap(lambda w: vjp_fn(w)[0], in_dims=1, out_dims=1)(u.to(self.gradient.dtype))
        except RuntimeError as exc:
            raise _differentiability_error(exc, "the Jacobian-transpose product Kᵀu") from exc
        return out.detach().reshape(self.num_victims, m, -1)

    def gram_many(self, v: Tensor) -> Tensor:
        """``KᵀK v`` for ``m`` vectors per victim, ``v`` of shape ``[V, m, d_x]`` (``2m`` products, one pass each).

        The JVP is vectorized over the ``m`` tangents (``vmap``), so the model's forward pass is shared.
        """
        m = v.shape[1]
        if m == 1:
            return self.gram(v[:, 0]).unsqueeze(1)
        self.products += m

        def kv(t: Tensor) -> Tensor:
            return jvp(self._stacked_gradient, (self.images,), (t.reshape(self.images.shape),))[1]

        try:
            kv_out = vmap(kv, in_dims=1, out_dims=1)(v.to(self.images.dtype))
        except RuntimeError as exc:
            raise _differentiability_error(exc, "the Jacobian-vector product Kv") from exc
        return self.rmatvec_many(kv_out)
