"""A malicious server's imprint block and its closed-form attack ("Robbing the Fed", Fowl et al., ICLR 2022).

Fowl, Geiping, Czaja, Goldblum and Goldstein, "Robbing the Fed: Directly Obtaining Private Data in Federated
Learning with Modified Models" (arXiv 2110.13057), section 3. The server sends a model with an *imprint block*
in front: a linear layer whose ``k`` rows all measure one statistic of the image, here its mean brightness
``s(x) = mean(x)`` (weights ``1/d``), with biases ``−t_i`` at thresholds ``t_0 < t_1 < … < t_{k−1}`` placed at the
quantiles ``i/k`` of the statistic's distribution, then a ReLU; row ``i`` is active for the images with
``s(x) > t_i``. Its output returns to image size through a linear layer whose weights are all equal, added to the
image (breaching's ``connection: addition``), so every row of an image gets the same downstream gradient
``γ(x)``. For a batch, the weight and bias gradients of row ``i`` are ``Σ_{s(x) > t_i} γ(x) x`` and
``Σ_{s(x) > t_i} γ(x)``; the difference of consecutive rows keeps only the images whose statistic falls in
``(t_i, t_{i+1}]``, and an image alone in its bin is recovered exactly as the ratio of the two differences.
With equal-mass bins an image is alone with probability ``(1 − 1/k)^(B−1)``.

What the server knows: the statistic's distribution, estimated on public data of the same kind (here the data
module's other split, up to :data:`PUBLIC_IMAGES` images), as the paper assumes. The reference read for this
module: ``breaching/cases/malicious_modifications/imprint.py`` (``ImprintBlock``, bins at normal quantiles with
the first at −10) and ``breaching/attacks/analytic_attack.py`` (``ImprintAttacker``: differences of consecutive
rows, then the ratio, clamped to the pixel box; extra hits cut, missing ones filled with zeros).

A noise-aware server (``scale`` < 1, ``case.imprint_scale``; not in the paper): the server multiplies the
measuring layer's weights and biases by ``s`` and the returning layer's weights by ``1/s``. The model computes the
same function (the ReLU is positively homogeneous), but the measuring layer's gradients, and so both differences
above, grow by ``1/s`` while their ratio does not change: noise that a defense adds at a fixed scale shrinks
against them by ``s``. Clipping before the noise (DP-SGD) scales them back, so it does not help there. A client that
looked at its gradient's norm would see the block; like the paper, the threat model assumes it does not.

Settings (the server's, of the block): ``bins`` :data:`IMPRINT_BINS` = 256, set per trial by
``case: {server: malicious, imprint_bins: k}``; ``scale`` 1.0 (the paper's block), ``case.imprint_scale``. The
paper and breaching leave the number of bins to the experiment (breaching's ``malicious-model-rtf`` case uses 64
for its default batch); 256 bins expect ``(1 − 1/256)^31`` = 89 % of a 32-image batch alone in a bin.

Example:
    >>> import torch
    >>> from dglbench.attacks import create_attack
    >>> from dglbench.attacks.imprint import imprint_model
    >>> from dglbench.case import Case, make_payload
    >>> from dglbench.gradients import flat_parameter_gradient
    >>> nn = torch.nn
    >>> body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 3))
    >>> public = torch.randn(500, 1, 4, 4)
    >>> model = imprint_model(body, (1, 4, 4), public.mean((1, 2, 3)), bins=64)
    >>> x, y = torch.randn(2, 1, 4, 4), torch.tensor([0, 2])
    >>> payload = make_payload(Case(server="malicious"), flat_parameter_gradient(model, x, y), y)
    >>> r = create_attack("imprint").run(model, payload, (1, 4, 4))
    >>> r.status, r.images.shape
    ('ok', torch.Size([2, 1, 4, 4]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from dglbench.attacks.analytic import RowRatioAttack, parameter_slices
from dglbench.attacks.base import ATTACKS, Box, Outcome, Victim
from dglbench.errors import ConfigError
from torch import Tensor, nn

__all__ = [
    "IMPRINT_BINS",
    "PUBLIC_IMAGES",
    "Imprint",
    "ImprintBlock",
    "ImprintedModel",
    "bin_thresholds",
    "brightness",
    "imprint_model",
    "imprint_victim_model",
]

#: bins of the imprint block a malicious server inserts by default (see the module docstring; ``case.imprint_bins``).
IMPRINT_BINS = 256
#: at most this many public images estimate the statistic's distribution.
PUBLIC_IMAGES = 4096


def brightness(images: Tensor) -> Tensor:
    """The imprint statistic: each image's mean over channels and pixels, ``[B]`` (normalized space)."""
    return images.reshape(images.shape[0], -1).mean(1)


def bin_thresholds(statistics: Tensor, bins: int) -> Tensor:
    """``bins`` increasing thresholds: one below every value seen, then the ``i / bins`` quantiles (i = 1…bins−1).

    Each bin ``(t_i, t_{i+1}]`` (the last open above) then holds a ``1 / bins`` share of the distribution.

    Example:
        >>> bin_thresholds(torch.arange(8.0), 4).tolist()
        [-7.0, 1.75, 3.5, 5.25]
    """
    if bins < 2:
        raise ConfigError(f"the imprint block needs at least 2 bins, got {bins}")
    values = statistics.detach().double().reshape(-1)
    if values.numel() < 2:
        raise ConfigError("the imprint block needs at least 2 public images to place its bins")
    spread = float(values.max() - values.min()) or 1.0
    inner = torch.quantile(values, torch.arange(1, bins, dtype=torch.float64) / bins)
    return torch.cat([(values.min() - spread).reshape(1), inner])


class ImprintBlock(nn.Module):
    """``x ↦ x + decode(ReLU(encode(x)))``: ``encode`` has ``k`` rows measuring the mean brightness minus a threshold.

    Args:
        image_shape: ``(C, H, W)``.
        thresholds: ``[k]`` increasing thresholds (:func:`bin_thresholds`).
        gain: every weight of ``decode`` is ``gain / k`` (the block adds the mean of its activations, times the gain,
            to every pixel).
        scale: ``encode``'s weights and biases times ``scale``, ``decode``'s weights divided by it: the same function,
            ``encode``'s gradients ``1 / scale`` times larger (a noise-aware server; see the module docstring).
    """

    def __init__(self, image_shape: Sequence[int], thresholds: Tensor, gain: float = 1.0, scale: float = 1.0) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        features, bins = math.prod(self.image_shape), int(thresholds.numel())
        self.encode = nn.Linear(features, bins)
        self.decode = nn.Linear(bins, features)
        if not scale > 0:
            raise ConfigError(f"the imprint block's scale must be > 0, got {scale}")
        with torch.no_grad():
            self.encode.weight.fill_(scale / features)
            self.encode.bias.copy_(-scale * thresholds)  # in the thresholds' precision, rounded once
            self.decode.weight.fill_(gain / (bins * scale))
            self.decode.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.encode(x.flatten(1)))
        return x + self.decode(h).reshape(x.shape)


class ImprintedModel(nn.Module):
    """The model a malicious server sends: :class:`ImprintBlock` in front of ``model`` (parameters: block first)."""

    def __init__(self, block: ImprintBlock, model: nn.Module) -> None:
        super().__init__()
        self.imprint = block
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.imprint(x))


def imprint_model(
    model: nn.Module,
    image_shape: Sequence[int],
    statistics: Tensor,
    bins: int = IMPRINT_BINS,
    gain: float = 1.0,
    scale: float = 1.0,
) -> ImprintedModel:
    """``model`` with an imprint block in front, its bins at the quantiles of ``statistics`` (public brightness).

    The block takes the dtype and device of ``model``'s parameters and the model's train/eval mode; ``gain`` and
    ``scale`` as in :class:`ImprintBlock`.
    """
    ref = next(iter(model.parameters()), None)
    block = ImprintBlock(image_shape, bin_thresholds(statistics, bins), gain, scale)
    if ref is not None:
        block = block.to(device=ref.device, dtype=ref.dtype)
    return ImprintedModel(block, model).train(model.training)


def imprint_victim_model(
    model: nn.Module, datamodule: Any, bins: int = IMPRINT_BINS, scale: float = 1.0
) -> ImprintedModel:
    """The malicious server's victim model: the statistic's bins from the data module's other (public) split.

    Args:
        model: the victim model as built for an honest server.
        datamodule: a :class:`~dglbench.datamodules.base.VictimDataModule`; its victims' split stays private, the
            other split (up to :data:`PUBLIC_IMAGES` images, seeded) estimates the brightness distribution.
        bins: the block's bins.
        scale: the block's scale (:class:`ImprintBlock`; 1.0 is the paper's block).
    """
    public = "train" if datamodule.split != "train" else "test"
    split = datamodule.train_dataset() if public == "train" else datamodule.test_dataset()
    count = len(split)
    picked = torch.randperm(count, generator=torch.Generator().manual_seed(0))[:PUBLIC_IMAGES].tolist()
    stats = torch.stack([brightness(split[i][0][None])[0] for i in picked])
    return imprint_model(model, datamodule.image_shape, stats, bins, scale=scale)


def _block(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, ImprintBlock):
            return name
    return None


@ATTACKS.register("imprint")
@dataclass(frozen=True)
class Imprint(RowRatioAttack):
    """Robbing the Fed's closed-form recovery from a malicious imprint block (Fowl et al. 2022, section 3).

    Applies to FedSGD gradients under ``Case(server="malicious")`` of a model carrying an :class:`ImprintBlock`.

    Args:
        rtol: bins whose bias-gradient difference is at most ``rtol`` times the largest count as empty (1e-6).
        boxed: clamp the recovered images to the valid pixel range (True, as ``ImprintAttacker``).
        label_strategy: how labels absent from the payload are inferred ("auto", "idlg", "llg").
        restarts: 1 (nothing to restart).

    More nonempty bins than images (noise): the ``B`` with the largest ``|Δb|`` are kept; fewer (collisions, or none
    when a defense zeroed the block's gradients): every nonempty bin's ratio is returned and the rest of the batch
    is zeros (the data mean), as ``ImprintAttacker`` does; the attack never fails.
    ``final_loss`` is the share of the batch without a nonempty bin of its own, ``max(0, B − bins hit) / B``.

    Example:
        >>> Imprint().servers, Imprint().closed_form
        (('malicious',), True)
    """

    servers = ("malicious",)

    def applicable_model(self, model: nn.Module) -> str | None:
        if _block(model) is None:
            return f"imprint needs a model carrying an imprint block (Case(server='malicious')); {type(model).__name__}"
        return None

    def _solve(self, model: nn.Module, victims: list[Victim], box: Box | None) -> list[Outcome]:
        name = _block(model)
        prefix = f"{name}.encode." if name else "encode."
        slices = parameter_slices(model)
        outcomes = []
        for v in victims:
            batch, shape = v.inits.shape[1], v.inits.shape[2:]
            (w_start, w_shape), (b_start, b_shape) = slices[prefix + "weight"], slices[prefix + "bias"]
            dw = v.target[w_start : w_start + w_shape.numel()].reshape(w_shape)
            db = v.target[b_start : b_start + b_shape.numel()]
            dw_bins = torch.cat([dw[:-1] - dw[1:], dw[-1:]])  # row i minus row i+1: the images in bin i
            db_bins = torch.cat([db[:-1] - db[1:], db[-1:]])
            # every bin empty (a defense zeroed the block's gradients): no row is hit and the whole batch is the
            # data mean, as ImprintAttacker answers; a result (leakage about 0), not a failed attack
            hit = torch.nonzero(db_bins.abs() > self.rtol * db_bins.abs().max()).flatten()
            labels = v.labels if v.labels is not None else torch.zeros(batch, dtype=torch.long)
            if len(hit) > batch:
                hit = hit[db_bins[hit].abs().argsort(descending=True)[:batch]]
            images = dw_bins[hit] / db_bins[hit, None]
            missing = batch - len(hit)
            images = torch.cat([images, images.new_zeros(missing, images.shape[1])]).reshape(batch, *shape)
            if self.boxed and box is not None:
                images = torch.maximum(torch.minimum(images, box[1]), box[0])
            loss = max(0, missing) / batch
            outcomes.append(Outcome(images.detach(), labels, loss, 0, [loss]))
        return outcomes
