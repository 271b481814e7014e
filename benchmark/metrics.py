"""Reconstruction metrics, one-to-one pairing, chance floors, and correlation statistics.

* In the attack's normalized input space (the space of I2F): ``l2_error = ‖x̂ − x‖`` per image
  (whole-image norm), ``mse = ‖x̂ − x‖² / d_x`` and ``rmse = l2_error / √d_x``.
* On de-normalized images clamped to ``[0, 1]`` (``data_range = 1``): PSNR and SSIM (torchmetrics)
  and LPIPS (torchmetrics' network with torchvision AlexNet / VGG16 / SqueezeNet backbones).
* A batch of reconstructions is paired ONE-TO-ONE with the private images by the Hungarian
  algorithm on the pairwise normalized-space MSE (never best-match, which can use one private
  image twice); every metric is computed after pairing and averaged over the victim's batch.
* Floors per victim: the same metrics for the data set's mean image and for a uniformly random
  image, so that a PSNR of 12 can be told from chance.
* :func:`correlation`: Spearman, Kendall and Pearson (on log values) with bootstrap CIs.

SSIM is Wang et al. (2004) as in ``skimage.metrics.structural_similarity(gaussian_weights=True,
use_sample_covariance=False)``: a Gaussian window of σ = 1.5 (radius 5), averaged over the pixels
whose window lies inside the image. Images with a side below 11 px use the largest radius that
fits, ``r = (min(H, W) − 1) // 2`` with σ = 1.5·(2r + 1)/11; below 3 px SSIM is unavailable.
PSNR and SSIM are averaged over images; an exact reconstruction has PSNR ``+inf``.

LPIPS needs torchvision's ImageNet backbone weights in ``<torch.hub.get_dir()>/checkpoints``
(the linear layers ship with torchmetrics). Nothing is ever downloaded: without the file the
metric is ``None`` and ``unavailable`` says why. Grey images are repeated to three channels, and
images whose shorter side is below 64 px are upsampled bilinearly to 64 px (LPIPS was calibrated
on 64×64 patches; AlexNet's LPIPS layers need about 32 px at least).

Example:
    >>> import torch
    >>> from dglbench.metrics import reconstruction_metrics
    >>> x = torch.rand(2, 1, 8, 8)
    >>> m = reconstruction_metrics(x.flip(0) + 0.01, x, denormalize=lambda t: t)
    >>> m.assignment, round(m.rmse, 4)
    ((1, 0), 0.01)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from dglbench.errors import ConfigError, ShapeError
from torch import Tensor

__all__ = [
    "IMAGE_METRICS",
    "LPIPS_MIN_SIZE",
    "METRICS",
    "LpipsScorer",
    "MetricInfo",
    "ReconstructionMetrics",
    "correlation",
    "pair_reconstructions",
    "reconstruction_metrics",
    "ssim_per_image",
]

LPIPS_NETS = {
    "alex": ("alexnet", "AlexNet_Weights"),
    "vgg": ("vgg16", "VGG16_Weights"),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights"),
}
LPIPS_MIN_SIZE = 64
IMAGE_METRICS = ("mse", "rmse", "l2_error", "psnr", "ssim", "lpips_alex", "lpips_vgg", "lpips_squeeze")


# ------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MetricInfo:
    """What a reader needs to know about a reconstruction metric, declared once.

    Attributes:
        name: the key in records (``psnr``).
        label: how tables and axes name it (``PSNR (dB)``).
        higher_is_better: a higher value is a better reconstruction, so more leakage (torchmetrics' flag,
            seen from the attacker): the worst case over an attack suite takes the max of such a metric,
            the min of the others.
        scale: ``"log"`` for errors spanning decades (plot axes, Pearson on log values), else ``"linear"``.
        floor: the record holds its chance floors (the same metric for the data set's mean image and a
            uniformly random image).

    Example:
        >>> METRICS["psnr"].higher_is_better, METRICS["l2_error"].scale
        (True, 'log')
        >>> METRICS["lpips_alex"].best([0.4, 0.1, None])
        0.1
    """

    name: str
    label: str
    higher_is_better: bool
    scale: Literal["log", "linear"]
    floor: bool = True

    def best(self, values: Sequence[float | None]) -> float | None:
        """The value best for the attacker among ``values`` (``None`` and NaN skipped; ``None`` if none is left)."""
        finite = [v for v in values if v is not None and v == v]
        if not finite:
            return None
        return max(finite) if self.higher_is_better else min(finite)

    def leak(self, value: float) -> float:
        """``value`` oriented so that larger always means more leakage."""
        return value if self.higher_is_better else -value


#: Every reconstruction metric a record can hold, by name (read by reports, plots, tracks and pages).
METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("l2_error", "l2 error", higher_is_better=False, scale="log"),
        MetricInfo("rmse", "RMSE", higher_is_better=False, scale="log"),
        MetricInfo("mse", "MSE", higher_is_better=False, scale="log"),
        MetricInfo("psnr", "PSNR (dB)", higher_is_better=True, scale="linear"),
        MetricInfo("ssim", "SSIM", higher_is_better=True, scale="linear"),
        MetricInfo("lpips_alex", "LPIPS (Alex)", higher_is_better=False, scale="log"),
        MetricInfo("lpips_vgg", "LPIPS (VGG)", higher_is_better=False, scale="log"),
        MetricInfo("lpips_squeeze", "LPIPS (Squeeze)", higher_is_better=False, scale="log"),
        MetricInfo("label_accuracy", "label acc.", higher_is_better=True, scale="linear", floor=False),
        MetricInfo("label_accuracy_paired", "paired label acc.", higher_is_better=True, scale="linear", floor=False),
    )
}


# ------------------------------------------------------------------------------------------------ LPIPS
class LpipsScorer:
    """LPIPS with a torchvision backbone read from disk only; lazy, caches the network.

    Args:
        net: ``"alex"``, ``"vgg"`` or ``"squeeze"``.
        weights_path: the torchvision backbone checkpoint (default: where torchvision caches it).
        device: where to run the network (default: the images' device).

    Example:
        >>> scorer = LpipsScorer("alex", weights_path="/nonexistent/alexnet.pth")
        >>> scorer.available, scorer.reason.startswith("LPIPS (alex) needs")
        (False, True)
    """

    def __init__(
        self,
        net: Literal["alex", "vgg", "squeeze"] = "alex",
        *,
        weights_path: str | Path | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if net not in LPIPS_NETS:
            raise ConfigError(f"unknown LPIPS net {net!r}; use one of {sorted(LPIPS_NETS)}")
        self.net = net
        self._weights_path = Path(weights_path) if weights_path is not None else None
        self.device = device
        self._network: torch.nn.Module | None = None
        self._error: str | None = None

    @property
    def weights_path(self) -> Path:
        """The backbone checkpoint this scorer reads (torchvision's cache file name by default)."""
        if self._weights_path is not None:
            return self._weights_path
        import torchvision

        url = getattr(torchvision.models, LPIPS_NETS[self.net][1]).DEFAULT.url
        return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]

    @property
    def available(self) -> bool:
        """Whether the backbone weights are on disk (and, once loaded, whether they loaded)."""
        return self._error is None and self.weights_path.is_file()

    @property
    def reason(self) -> str | None:
        """Why the metric is unavailable, or ``None``."""
        if self._error is not None:
            return self._error
        if not self.weights_path.is_file():
            return (
                f"LPIPS ({self.net}) needs torchvision's {LPIPS_NETS[self.net][1]} backbone at {self.weights_path}, "
                f"which is not on disk (no download is attempted); copy the file there to enable it"
            )
        return None

    def network(self) -> torch.nn.Module:
        """The LPIPS network (built on first use: torchmetrics' linear layers + the backbone read from disk)."""
        if self._network is None:
            if not self.available:
                raise ConfigError(self.reason or "LPIPS unavailable")
            import torchvision
            from torchmetrics.functional.image.lpips import _NoTrainLpips

            try:
                backbone = getattr(torchvision.models, LPIPS_NETS[self.net][0])(weights=None)
                backbone.load_state_dict(torch.load(self.weights_path, map_location="cpu", weights_only=True))
                network = _NoTrainLpips(net=self.net, pretrained=True, pnet_rand=True)  # random trunk: no download
                source, target = list(backbone.features.parameters()), list(network.net.parameters())
                if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source, target)):
                    raise ValueError("backbone layout differs from the LPIPS trunk")
                with torch.no_grad():
                    for s, t in zip(source, target):
                        t.copy_(s)
            except Exception as exc:  # a corrupt or mismatched file: unavailable, with the reason
                self._error = f"LPIPS ({self.net}) could not load {self.weights_path}: {type(exc).__name__}: {exc}"
                raise ConfigError(self._error) from None
            self._network = network.eval()
        return self._network

    @torch.no_grad()
    def __call__(self, images: Tensor, reference: Tensor) -> Tensor:
        """LPIPS distance per image, ``[B]``, for images in ``[0, 1]`` of shape ``[B, C, H, W]`` (C = 1 or 3)."""
        if images.shape[1] not in (1, 3):
            raise ShapeError(f"LPIPS needs 1 or 3 channels, got {images.shape[1]}")
        pair = [t.float().expand(-1, 3, -1, -1) if t.shape[1] == 1 else t.float() for t in (images, reference)]
        side = min(pair[0].shape[-2:])
        if side < LPIPS_MIN_SIZE:
            size = [math.ceil(s * LPIPS_MIN_SIZE / side) for s in pair[0].shape[-2:]]
            pair = [torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in pair]
        device = self.device or images.device
        network = self.network().to(device)
        return network(pair[0].to(device), pair[1].to(device), normalize=True).reshape(-1).to(images.device)


# ------------------------------------------------------------------------------------ per-image metrics
def ssim_per_image(images: Tensor, reference: Tensor) -> Tensor:
    """SSIM per image (see the module docstring) for ``[B, C, H, W]`` images in ``[0, 1]``."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    radius = min(5, (min(images.shape[-2:]) - 1) // 2)
    if radius < 1:
        raise ShapeError(f"SSIM needs images of at least 3x3 pixels, got {tuple(images.shape[-2:])}")
    sigma = 1.5 * (2 * radius + 1) / 11
    _, full = structural_similarity_index_measure(
        images, reference, data_range=1.0, sigma=sigma, reduction="none", return_full_image=True
    )
    return full[..., radius:-radius, radius:-radius].mean(dim=(1, 2, 3))


def _as_batch(x: Tensor, name: str) -> Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ShapeError(f"{name} must be [B, C, H, W] or [C, H, W], got {tuple(x.shape)}")
    return x.detach()


def pair_reconstructions(reconstruction: Tensor, target: Tensor) -> Tensor:
    """One-to-one pairing by the Hungarian algorithm on the pairwise MSE (normalized space).

    Returns ``assignment`` (``[B]``, long): target ``i`` is paired with ``reconstruction[assignment[i]]``.

    Example:
        >>> x = torch.eye(3).view(3, 1, 1, 3)
        >>> pair_reconstructions(x[[2, 0, 1]], x).tolist()
        [1, 2, 0]
    """
    from scipy.optimize import linear_sum_assignment

    reconstruction, target = _as_batch(reconstruction, "reconstruction"), _as_batch(target, "target")
    if reconstruction.shape != target.shape:
        raise ShapeError(f"reconstruction {tuple(reconstruction.shape)} and target {tuple(target.shape)} differ")
    cost = torch.cdist(target.flatten(1).double(), reconstruction.flatten(1).double()) ** 2 / target[0].numel()
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    assignment = torch.empty(len(rows), dtype=torch.long)
    assignment[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return assignment.to(target.device)


def _image_metrics(
    images: Tensor, target: Tensor, denormalize: Callable[[Tensor], Tensor], scorers: Sequence[LpipsScorer]
) -> tuple[dict[str, Tensor | None], dict[str, str]]:
    """Per-image metrics of already paired ``images`` against ``target`` (both normalized)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    diff = (images.double() - target.double()).flatten(1)
    l2 = diff.norm(dim=1)
    values: dict[str, Tensor | None] = {
        "mse": l2**2 / diff.shape[1],
        "rmse": l2 / math.sqrt(diff.shape[1]),
        "l2_error": l2,
    }
    unavailable: dict[str, str] = {}
    pixels, reference = denormalize(images).clamp(0, 1), denormalize(target).clamp(0, 1)
    values["psnr"] = peak_signal_noise_ratio(pixels, reference, data_range=1.0, reduction="none", dim=(1, 2, 3))
    try:
        values["ssim"] = ssim_per_image(pixels, reference)
    except ShapeError as exc:
        values["ssim"], unavailable["ssim"] = None, str(exc)
    requested = {s.net: s for s in scorers}
    for net in LPIPS_NETS:
        key, scorer = f"lpips_{net}", requested.get(net)
        values[key] = None
        if scorer is None:
            unavailable[key] = "not requested (pass an LpipsScorer for this net)"
        elif not scorer.available:
            unavailable[key] = scorer.reason or "unavailable"
        else:
            try:
                values[key] = scorer(pixels, reference)
            except (ConfigError, ShapeError) as exc:
                unavailable[key] = str(exc)
    return values, unavailable


def _affine_inverse(denormalize: Callable[[Tensor], Tensor], like: Tensor) -> Callable[[Tensor], Tensor] | None:
    """``normalize`` for an affine per-pixel ``denormalize`` (x·std + mean), or ``None`` if it is not affine."""
    offset = denormalize(torch.zeros_like(like))
    slope = denormalize(torch.ones_like(like)) - offset
    if not bool((slope.abs() > 1e-12).all()):
        return None
    return lambda y: (y - offset) / slope


# ---------------------------------------------------------------------------------------------- results
def _mean(values: Tensor | None) -> float | None:
    return None if values is None else float(values.double().mean())


def _list(values: Tensor | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


@dataclass(frozen=True)
class ReconstructionMetrics:
    """Metrics of one victim's reconstruction, after one-to-one pairing, averaged over its images.

    ``None`` marks a metric that could not be computed; ``unavailable`` maps its name to the reason.
    ``per_image`` holds the same metrics per private image (in the target's order), ``floors`` the
    averages for the mean-image and random-image baselines, ``assignment[i]`` the reconstruction
    paired with private image ``i``. ``label_accuracy`` compares labels as multisets;
    ``label_accuracy_paired`` compares each private image's label with its paired reconstruction's.
    """

    mse: float
    rmse: float
    l2_error: float
    psnr: float
    ssim: float | None
    lpips_alex: float | None
    lpips_vgg: float | None
    lpips_squeeze: float | None
    label_accuracy: float | None
    label_accuracy_paired: float | None
    assignment: tuple[int, ...]
    per_image: dict[str, list[float] | None] = field(default_factory=dict)
    floors: dict[str, dict[str, float | None] | None] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: numbers as floats, ``None`` where unavailable (PSNR of an exact copy is ``inf``)."""
        out = asdict(self)
        out["assignment"] = list(self.assignment)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReconstructionMetrics:
        """Inverse of :meth:`to_dict` (a stored ``null`` stays ``None``; keys it does not know are an error)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown reconstruction metric {unknown[0]!r}")
        values = {k: data.get(k) for k in known if k in data}
        values["assignment"] = tuple(int(i) for i in data.get("assignment") or ())
        for key in ("per_image", "floors", "unavailable"):
            values[key] = dict(data.get(key) or {})
        for key in known - set(values):
            values[key] = None
        return cls(**values)


def _label_accuracies(
    labels_hat: Tensor | None, labels: Tensor | None, assignment: Tensor, unavailable: dict[str, str]
) -> tuple[float | None, float | None]:
    if labels_hat is None or labels is None:
        unavailable["label_accuracy"] = unavailable["label_accuracy_paired"] = "no recovered or true labels given"
        return None, None
    labels_hat, labels = labels_hat.reshape(-1).cpu(), labels.reshape(-1).cpu()
    if labels_hat.shape != labels.shape or labels.numel() != assignment.numel():
        raise ShapeError(
            f"got {labels_hat.numel()} recovered labels for {labels.numel()} labels of {assignment.numel()} images"
        )
    classes = int(max(labels_hat.max(), labels.max())) + 1
    overlap = torch.minimum(torch.bincount(labels_hat, minlength=classes), torch.bincount(labels, minlength=classes))
    paired = (labels_hat[assignment.cpu()] == labels).double().mean()
    return float(overlap.sum()) / labels.numel(), float(paired)


@torch.no_grad()
def reconstruction_metrics(
    reconstruction: Tensor,
    target: Tensor,
    *,
    denormalize: Callable[[Tensor], Tensor],
    normalize: Callable[[Tensor], Tensor] | None = None,
    mean_image: Tensor | None = None,
    lpips: LpipsScorer | Sequence[LpipsScorer] | None = None,
    generator: torch.Generator | None = None,
    labels_hat: Tensor | None = None,
    labels: Tensor | None = None,
) -> ReconstructionMetrics:
    """All reconstruction metrics of one victim, with one-to-one pairing and chance floors.

    Args:
        reconstruction: the attack's images ``[B, C, H, W]`` in normalized space (any order).
        target: the private images ``[B, C, H, W]``, normalized.
        denormalize: normalized → pixel space (e.g. ``datamodule.denormalize``); results are clamped to [0, 1].
        normalize: pixel → normalized space, for the random-image floor (default: inverted from ``denormalize``,
            which must then be affine per pixel).
        mean_image: the data set's mean image ``[C, H, W]`` (normalized), for the mean-image floor.
        lpips: one or more :class:`LpipsScorer` (``None``: no LPIPS).
        generator: seeds the random-image floor (default: seed 0).
        labels_hat: recovered labels ``[B]`` (aligned with ``reconstruction``), with ``labels`` the true ones.

    Returns:
        :class:`ReconstructionMetrics`.
    """
    reconstruction, target = _as_batch(reconstruction, "reconstruction"), _as_batch(target, "target")
    assignment = pair_reconstructions(reconstruction, target)
    scorers = [] if lpips is None else [lpips] if isinstance(lpips, LpipsScorer) else list(lpips)
    values, unavailable = _image_metrics(reconstruction[assignment], target, denormalize, scorers)

    floors: dict[str, dict[str, float | None] | None] = {"mean_image": None, "random_image": None}
    if mean_image is None:
        unavailable["floors.mean_image"] = "no mean image given"
    else:
        floor, _ = _image_metrics(mean_image.to(target).expand_as(target), target, denormalize, scorers)
        floors["mean_image"] = {k: _mean(v) for k, v in floor.items()}
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    uniform = torch.rand(target.shape, generator=gen, device=gen.device).to(target)
    inverse = normalize or _affine_inverse(denormalize, target)
    if inverse is None or not torch.allclose(denormalize(inverse(uniform)), uniform, atol=1e-4):
        unavailable["floors.random_image"] = "denormalize is not affine per pixel; pass normalize="
    else:
        floor, _ = _image_metrics(inverse(uniform), target, denormalize, scorers)
        floors["random_image"] = {k: _mean(v) for k, v in floor.items()}
    label_accuracy, label_paired = _label_accuracies(labels_hat, labels, assignment, unavailable)
    return ReconstructionMetrics(
        **{k: _mean(values[k]) for k in IMAGE_METRICS},  # type: ignore[arg-type]
        label_accuracy=label_accuracy,
        label_accuracy_paired=label_paired,
        assignment=tuple(int(i) for i in assignment),
        per_image={k: _list(values[k]) for k in IMAGE_METRICS},
        floors=floors,
        unavailable=unavailable,
    )


# ---------------------------------------------------------------------------------------------- correlation
def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def _rowwise_kendall(a: np.ndarray, b: np.ndarray, max_elements: int = 4_000_000) -> np.ndarray:
    """Kendall's tau-b of each row pair (ties handled as ``scipy.stats.kendalltau``), in memory-bounded chunks."""
    n = a.shape[-1]
    out = np.empty(a.shape[0])
    step = max(1, max_elements // max(n * n, 1))
    for start in range(0, a.shape[0], step):
        sa = np.sign(a[start : start + step, :, None] - a[start : start + step, None, :]).astype(np.int8)
        sb = np.sign(b[start : start + step, :, None] - b[start : start + step, None, :]).astype(np.int8)
        concordance = (sa * sb).sum(axis=(1, 2), dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = concordance / np.sqrt(
                np.count_nonzero(sa, axis=(1, 2)).astype(float) * np.count_nonzero(sb, axis=(1, 2))
            )
    return out


def correlation(
    x: Sequence[float] | np.ndarray | Tensor,
    y: Sequence[float] | np.ndarray | Tensor,
    *,
    log: bool = True,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Rank and linear correlation of paired values, with percentile-bootstrap 95 % confidence intervals.

    Rows with a NaN/inf value (and, with ``log=True``, a value ≤ 0) are dropped and counted in
    ``n_dropped``. Spearman's rho and Kendall's tau do not depend on ``log``; Pearson's r is taken
    on ``log10`` values when ``log=True``. With fewer than 3 rows left every value is ``None`` and
    ``reason`` says why.

    Example:
        >>> c = correlation([1, 2, 3, 4, 5], [2, 4, 8, 16, 32], bootstrap=100)
        >>> round(c["spearman"], 6), round(c["kendall"], 6), c["n"], c["n_dropped"]
        (1.0, 1.0, 5, 0)
    """
    from scipy import stats

    xs = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=float).reshape(-1)
    ys = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=float).reshape(-1)
    if xs.shape != ys.shape:
        raise ShapeError(f"correlation needs paired values, got {xs.size} and {ys.size}")
    keep = np.isfinite(xs) & np.isfinite(ys)
    if log:
        keep &= (xs > 0) & (ys > 0)
    xs, ys = xs[keep], ys[keep]
    n = int(xs.size)
    result: dict[str, Any] = {
        "n": n,
        "n_dropped": int((~keep).sum()),
        "log": log,
        "bootstrap": bootstrap,
        "reason": None,
    }
    for key in ("spearman", "kendall", "pearson"):
        result[key] = result[f"{key}_ci"] = None
    if n < 3:
        result["reason"] = f"only {n} finite pairs (need at least 3)"
        return result
    lx, ly = (np.log10(xs), np.log10(ys)) if log else (xs, ys)

    def estimates(a: np.ndarray, b: np.ndarray, la: np.ndarray, lb: np.ndarray) -> tuple[float, float, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return (
                float(stats.spearmanr(a, b).statistic),
                float(stats.kendalltau(a, b).statistic),
                float(stats.pearsonr(la, lb).statistic) if np.ptp(la) > 0 and np.ptp(lb) > 0 else math.nan,
            )

    point = estimates(xs, ys, lx, ly)
    for key, value in zip(("spearman", "kendall", "pearson"), point):
        result[key] = value if math.isfinite(value) else None
    if any(v is None for v in (result["spearman"], result["kendall"], result["pearson"])):
        result["reason"] = "a column is constant: its correlations are undefined"
    if bootstrap > 0:
        idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))
        bx, by = xs[idx], ys[idx]
        spearman = _rowwise_pearson(stats.rankdata(bx, axis=1), stats.rankdata(by, axis=1))
        pearson = _rowwise_pearson(lx[idx], ly[idx])
        kendall = _rowwise_kendall(bx, by)
        for key, draws in (("spearman", spearman), ("kendall", kendall), ("pearson", pearson)):
            draws = draws[np.isfinite(draws)]
            if result[key] is not None and draws.size:
                result[f"{key}_ci"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    return result
