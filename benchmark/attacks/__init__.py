"""Gradient-inversion attacks: one module per attack, label inference, and a registry.

==========================  ======================================================================
``dlg``                     :class:`DLG` — Zhu et al. 2019: L-BFGS on ‖g(x') − g̃‖², labels jointly
``idlg``                    :class:`IDLG` — Zhao et al. 2020: analytic labels, then DLG on images
``inverting_gradients``     :class:`InvertingGradients` — Geiping et al. 2020: signed Adam on
                            1 − cosine + TV, boxed, step decay, restarts
``ig_masked`` ``ig_sign``   adaptive attacks (:mod:`dglbench.attacks.adaptive`): Inverting Gradients
``ig_quantized``            with a distance that knows a defense's mechanism (sparsification, sign,
``ig_clipped`` ``ig_l2``    quantization, DP-SGD clipping, Gaussian and Laplace noise); defenses
``ig_l1``                   declare theirs (:func:`dglbench.defenses.adaptive_attacks_for`)
``ig_fedavg``               :class:`InvertingGradientsFedAvg` — Geiping et al. 2020, section 6: the
                            cosine on a FedAvg update through the simulated local steps
``analytic_linear``         :class:`AnalyticLinear` — Phong et al. 2017: closed-form input of a first
                            fully connected layer, ``x = ∂W_i / ∂b_i``
``imprint``                 :class:`Imprint` — Fowl et al. 2022 ("Robbing the Fed"): a malicious server's
                            imprint block; images alone in a brightness bin recovered exactly
``april``                   :class:`April` — Lu et al. 2022: a ViT's patches from its position
                            embedding's gradient, by one linear solve
``april_opt``               :class:`AprilOptimization` — Lu et al. 2022, section 3.3: Inverting
                            Gradients plus a cosine on the position embedding's gradient
``gradinversion``           :class:`GradInversion` — Yin et al. 2021: gradient matching with BatchNorm-
                            statistics and group-consistency priors, Langevin Adam, label restoration
==========================  ======================================================================

Every attack has ``run(model, payload, image_shape, *, box, generator, init) -> AttackResult`` for
one victim and ``run_many(model, payloads, image_shape, ...) -> list[AttackResult]`` for many.

Example:
    >>> from dglbench.attacks import ATTACKS, create_attack
    >>> ATTACKS.list()  # doctest: +NORMALIZE_WHITESPACE
    ['analytic_linear', 'april', 'april_opt', 'dlg', 'gradinversion', 'idlg', 'ig_clipped', 'ig_fedavg', 'ig_l1',
     'ig_l2', 'ig_masked', 'ig_quantized', 'ig_sign', 'imprint', 'inverting_gradients']
    >>> create_attack("inverting_gradients", max_iterations=200, restarts=2).max_iterations
    200
"""

from __future__ import annotations

from typing import Any

from dglbench.attacks.adaptive import AdaptiveInvertingGradients
from dglbench.attacks.analytic import AnalyticLinear
from dglbench.attacks.april import April, AprilOptimization
from dglbench.attacks.base import ATTACKS, Attack, AttackResult
from dglbench.attacks.dlg import DLG, IDLG
from dglbench.attacks.fedavg import InvertingGradientsFedAvg
from dglbench.attacks.gradinversion import GradInversion
from dglbench.attacks.imprint import Imprint
from dglbench.attacks.inverting_gradients import InvertingGradients
from dglbench.attacks.labels import infer_labels

__all__ = [
    "ATTACKS",
    "AdaptiveInvertingGradients",
    "AnalyticLinear",
    "April",
    "AprilOptimization",
    "DLG",
    "GradInversion",
    "IDLG",
    "Imprint",
    "Attack",
    "AttackResult",
    "InvertingGradients",
    "InvertingGradientsFedAvg",
    "create_attack",
    "infer_labels",
    "list_attacks",
]


def list_attacks(pattern: str = "*") -> list[str]:
    """The registered attack names matching a wildcard ``pattern``, sorted.

    Example:
        >>> list_attacks("*dlg")
        ['dlg', 'idlg']
    """
    return ATTACKS.list(pattern)


def create_attack(name: str, **kwargs: Any) -> Attack:
    """Instantiate the attack registered as ``name`` with its hyperparameters.

    An unknown name raises :class:`~dglbench.errors.UnknownNameError` listing the available ones; an
    unknown argument or a value of the wrong type or range raises :class:`~dglbench.errors.ConfigError`.

    Example:
        >>> create_attack("dlg", max_iterations=50).max_iterations
        50
    """
    return ATTACKS.create(name, **kwargs)
