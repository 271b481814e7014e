"""Protocol v2 of the leaderboard: privacy and utility on the same clients, ranked by a worst-case leakage score.

A protocol-2 track (``protocol: 2`` in its YAML) fixes:

1. **Same clients.** A victim is a FedSGD client: it holds ``B = images_per_victim`` images of the *train*
   split, and the FedSGD utility run uses clients of exactly ``B`` images (``utility.batch_size == B``), the
   defense applied per client. A defense with a privacy accountant (``steps`` and ``sample_rate``
   parameters, e.g. ``dp_sgd``) gets them from that same run: ``steps = rounds`` and
   ``sample_rate = clients · B / n_train`` (:func:`accounting_params`); other values are refused.
2. **One trial, the whole suite.** Every victim is attacked by every attack of the track's suite plus the
   adaptive attacks the defense declares (:func:`trial_configs`).
3. **Diverged attacks.** An attack whose final loss or whose metrics are not finite has *failed* on that
   victim (:func:`succeeded`); the victim's worst case is over the attacks that succeeded; a victim that no
   attack reconstructed counts as a failure of the whole suite and is reported, never dropped.
4. **Leakage score.** Per victim, for each metric ``m`` of ``ranking.leakage`` the worst case over the
   attacks that succeeded is put on one scale, the fraction of the way from a blind guess (the data set's
   mean image, whose score each record holds as its floor) to a perfect reconstruction (:func:`relative`):
   PSNR ``1 − 10^(−(psnr − floor)/10)`` (that is ``1 − mse / mse_floor``) and SSIM
   ``(ssim − floor) / (1 − floor)``. The victim's leakage is the largest of them, and at least 0 (an
   attacker can always answer the mean image): 0 = nothing beyond the blind guess, 1 = the image itself.
5. **Ranking.** Entries are ordered by mean leakage (lower first); its 95 % interval is a percentile
   bootstrap over victims (``ranking.bootstrap`` resamples, seed ``ranking.bootstrap_seed``;
   :func:`bootstrap_interval`). Entries whose intervals overlap share a rank, shown as a range
   (:func:`rank_ranges`), compared at the board's precision (:func:`shown_interval`, three decimals: entries
   whose cells read alike share a rank); the utility rule of v1 (``max_accuracy_drop``) still decides who is
   ranked.

Example:
    >>> round(relative("psnr", 20.0, 10.0), 4), round(relative("ssim", 0.6, 0.2), 4)
    (0.9, 0.5)
    >>> rank_ranges([(0.1, 0.2), (0.15, 0.3), (0.5, 0.6)])
    [(1, 2), (1, 2), (3, 3)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dglbench.errors import ConfigError

if TYPE_CHECKING:
    from dglbench.leaderboard.track import Track
    from dglbench.record import AttackOutcome

__all__ = [
    "ACCOUNTING_KEYS",
    "LEAKAGE_DECIMALS",
    "LEAKAGE_METRICS",
    "accounting_params",
    "bootstrap_interval",
    "check_track",
    "leakage_value",
    "rank_ranges",
    "relative",
    "shown_interval",
    "succeeded",
    "trial_configs",
    "victim_leakage",
]

#: Metrics the leakage score can combine (each has a blind-guess floor and a perfect value).
LEAKAGE_METRICS = ("psnr", "ssim")

#: Defense parameters that protocol 2 sets from the utility run (a privacy accountant's inputs).
ACCOUNTING_KEYS = ("steps", "sample_rate")


def check_track(track: Track) -> None:
    """Raise :class:`ConfigError` unless ``track`` satisfies protocol 2 (see the module docstring)."""
    r, u = track.ranking, track.utility
    where = f"track {track.id} (protocol 2)"
    if r.attack != "worst_case":
        raise ConfigError(f"{where}: ranking.attack must be 'worst_case' (the per-victim worst over the suite)")
    bad = [m for m in r.leakage if m not in LEAKAGE_METRICS or m not in track.metrics]
    if not r.leakage or bad:
        raise ConfigError(
            f"{where}: ranking.leakage must list metrics of {LEAKAGE_METRICS} that the track measures, got {r.leakage}"
        )
    if r.bootstrap < 1000:
        raise ConfigError(f"{where}: ranking.bootstrap must be at least 1000 resamples, got {r.bootstrap}")
    batch = track.data.params.get("images_per_victim", 1)
    if u.batch_size != batch:
        raise ConfigError(
            f"{where}: utility.batch_size {u.batch_size} must equal data.params.images_per_victim {batch}: "
            "privacy and utility are measured on the same clients"
        )
    if track.data.params.get("split") != "train":
        raise ConfigError(f"{where}: data.params.split must be 'train': victims are clients holding training data")


def trial_configs(track: Track, defense: str, params: dict[str, Any], data_root: str | None = None) -> list[Any]:
    """The one trial of a protocol-2 entry: the track's suite plus the defense's adaptive attacks, with I2F
    unless the track has no ``estimate`` block."""
    from dglbench.trial import TrialConfig

    data_params = dict(track.data.params)
    if data_root is not None:
        data_params["root"] = str(data_root)
    data = {
        "dataset": track.data.dataset, "dataset_params": data_params,
        "model": track.model.name, "model_params": dict(track.model.params),
        "init": track.model.init, "init_seed": track.model.init_seed, "model_state": track.model.state,
        "defense": defense, "defense_params": dict(params),
        "attacks": [{"name": a.name, "params": dict(a.params)} for a in track.attacks], "adaptive": True,
        "estimate": track.estimate is not None, "case": dict(track.case), "seed": track.seed,
        "victims_per_step": track.victims_per_step, "lpips": track.lpips, "dtype": track.dtype,
    }  # fmt: skip
    if track.estimate is not None:  # else the trial's default I2F settings, unused
        est = track.estimate
        data.update(eps=list(est.eps), lower_bound_tol=est.lower_bound_tol, cg_tol=est.cg_tol,
                    cg_max_iter=est.cg_max_iter)  # fmt: skip
    return [TrialConfig.from_dict(data)]


def train_size(track: Track) -> int:
    """Images in the track's train split (what FedSGD samples clients from)."""
    from dglbench.datamodules import create_datamodule

    params = {k: v for k, v in track.data.params.items() if k != "num_victims"}
    return len(create_datamodule(track.data.dataset, num_victims=1, **params).train_dataset())


def accounting_params(track: Track, defense_cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with a privacy accountant's ``steps`` and ``sample_rate`` set from the track's FedSGD run.

    Only for defenses that take both parameters; a value given that differs is refused (one line).
    """
    import dataclasses

    names = {f.name for f in dataclasses.fields(defense_cls)} if dataclasses.is_dataclass(defense_cls) else set()
    if track.protocol != 2 or not set(ACCOUNTING_KEYS) <= names:
        return dict(params)
    u = track.utility
    wanted = {"steps": u.rounds, "sample_rate": round(u.clients * u.batch_size / train_size(track), 12)}
    for key, value in wanted.items():
        given = params.get(key)
        if given is not None and not math.isclose(float(given), float(value), rel_tol=1e-9):
            raise ConfigError(
                f"defense parameter {key}={given} differs from the track's FedSGD run ({key}={value}); "
                f"leave it out: track {track.ref} sets it"
            )
    return {**params, **wanted}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def leakage_value(metrics: Mapping[str, Any], metric: str) -> float | None:
    """An attack's ``metric`` for the leakage score: its value, ``+inf`` for an exact copy, ``None`` if not measured.

    A batch's PSNR is the mean over its images, so it is ``+inf`` as soon as one image is copied exactly, as the
    closed-form attacks do (imprint, analytic recovery), and records store a non-finite number as null. A PSNR that
    is null (or ``+inf``) beside a finite MSE of the same images is that exact copy: PSNR is finite or ``+inf``
    whenever the images are finite, and a diverged attack's MSE is not finite.

    Example:
        >>> leakage_value({"psnr": None, "mse": 0.1}, "psnr"), leakage_value({"psnr": None, "mse": None}, "psnr")
        (inf, None)
    """
    value = metrics.get(metric)
    if metric == "psnr" and (value is None or value == math.inf) and _finite(metrics.get("mse")):
        return math.inf
    return float(value) if _finite(value) else None


def succeeded(outcome: AttackOutcome, metrics: Sequence[str]) -> bool:
    """The attack ran on the victim, did not diverge (finite final loss) and gave ``metrics``
    (finite, or a PSNR of ``+inf`` for an exact copy: :func:`leakage_value`)."""
    if not outcome.ok:
        return False
    if outcome.final_loss is not None and not _finite(outcome.final_loss):
        return False
    values = outcome.metrics or {}
    return all(leakage_value(values, m) is not None for m in metrics)


def relative(metric: str, value: float, floor: float) -> float:
    """``value`` as the fraction of the way from the blind-guess ``floor`` (0) to a perfect reconstruction (1)."""
    if metric == "psnr":
        return 1.0 - 10.0 ** (-(value - floor) / 10.0)
    if metric == "ssim":
        return (value - floor) / (1.0 - floor)
    raise ConfigError(f"no leakage scale for metric {metric!r}; use one of {LEAKAGE_METRICS}")


def victim_leakage(worst: dict[str, float | None], floors: dict[str, Any], metrics: Sequence[str]) -> float | None:
    """One victim's leakage: the largest :func:`relative` score over ``metrics``, at least 0 (``None``: no value).

    A PSNR of ``+inf`` (an exact copy, :func:`leakage_value`) scores 1.
    """
    scores = []
    for m in metrics:
        value, floor = worst.get(m), floors.get(m)
        if not ((_finite(value) or (m == "psnr" and value == math.inf)) and _finite(floor)):
            return None
        scores.append(relative(m, float(value), float(floor)))
    return max(0.0, *scores)


def bootstrap_interval(values: Sequence[float], resamples: int, seed: int) -> tuple[float | None, float | None]:
    """95 % percentile bootstrap interval of the mean of ``values`` (``scipy.stats.bootstrap``, seeded)."""
    import numpy as np
    from scipy.stats import bootstrap

    xs = np.asarray([v for v in values if _finite(v)], dtype=float)
    if xs.size < 2:
        return None, None
    if np.ptp(xs) == 0.0:
        return float(xs[0]), float(xs[0])
    res = bootstrap(
        (xs,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
        random_state=np.random.default_rng(seed), vectorized=True,
    )  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


#: Decimals of the leakage score on the board; ranks are shared where the intervals *as shown* overlap, so that
#: entries whose cells read alike ("1.000 [1.000, 1.000]") never get different ranks.
LEAKAGE_DECIMALS = 3


def shown_interval(low: float, high: float, decimals: int = LEAKAGE_DECIMALS) -> tuple[float, float]:
    """An interval at the board's precision: ``(0.99993, 0.99998)`` → ``(1.0, 1.0)``.

    Example:
        >>> shown_interval(0.999925, 0.99998), shown_interval(0.0010575, 0.0019125)
        ((1.0, 1.0), (0.001, 0.002))
    """
    return float(f"{low:.{decimals}f}"), float(f"{high:.{decimals}f}")


def rank_ranges(intervals: Sequence[tuple[float, float]]) -> list[tuple[int, int]]:
    """Shared ranks from intervals of a lower-is-better score: ``(best, worst)`` possible rank of each.

    Entry ``i`` is certainly behind every ``j`` whose interval lies wholly below its own (``high_j < low_i``)
    and certainly ahead of every ``j`` whose interval lies wholly above (``low_j > high_i``); it may take any
    rank in between. Entries whose intervals overlap therefore share a range, e.g. ``(2, 4)`` shown "2-4".
    """
    n = len(intervals)
    out = []
    for lo, hi in intervals:
        ahead = sum(1 for lo_j, hi_j in intervals if hi_j < lo)
        behind = sum(1 for lo_j, hi_j in intervals if lo_j > hi)
        out.append((ahead + 1, n - behind))
    return out
