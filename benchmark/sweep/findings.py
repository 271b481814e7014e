"""What a sweep found, in numbers a sentence can carry: what was swept, slopes, rankings, calibration.

* :func:`swept_keys`: the trial settings with more than one value across a sweep become grouping columns,
  except the defense's strength axis (declared by each defense class as ``strength``) and seeds (replicates).
* :func:`loglog_slope`: the least-squares slope of ``log10(error)`` on ``log10(I2F)`` with its 95% t-interval
  (exp. 3: the attack error against the predicted ``c/√λ_i`` has slope 1 when I2F is exact).
* :func:`ranking_agreement`: groups ranked by median I2F and by median attack error, and Kendall's τ between
  the two orders (exp. 4's question: does I2F order the initializations as the attack does?).
* :func:`calibration`: per group, how far the I2F term sits below the attack error (median of
  ``error / I2F`` with a bootstrap interval, and how often the error is at least the term).

Example:
    >>> s = loglog_slope([1, 10, 100, 1000], [2, 20, 200, 2000])
    >>> round(s["slope"], 6), s["n"]
    (1.0, 4)
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "REPLICATE_KEYS",
    "calibration",
    "flatten",
    "group_label",
    "loglog_slope",
    "ranking_agreement",
    "strength_key",
    "swept_keys",
]

#: Settings that vary between replicates, never grouping columns.
REPLICATE_KEYS = ("seed", "init_seed", "dataset_params.seed")
#: Display names of grouping keys (a ``<part>_params.`` prefix is dropped).
DISPLAY = {"model": "architecture"}


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A trial config as dotted keys (``defense_params.sigma``); lists stay values.

    Example:
        >>> flatten({"model": "mlp", "defense_params": {"sigma": 0.1}, "eps": [0.1]})
        {'model': 'mlp', 'defense_params.sigma': 0.1, 'eps': [0.1]}
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def strength_key(defense: str) -> str | None:
    """The dotted config key of a registered defense's strength parameter (``defense_params.sigma``), or None."""
    from dglbench.defenses import DEFENSES

    try:
        cls = DEFENSES.get(defense)
    except Exception:  # an unregistered (third-party) defense declares nothing here
        return None
    name = getattr(cls, "strength", None)
    return f"defense_params.{name}" if name else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def swept_keys(settings: Sequence[Mapping[str, Any]], strength_keys: Iterable[str] = ()) -> list[str]:
    """Keys with more than one value across ``settings`` (flattened configs), minus strength and replicate keys.

    A key missing from some configs counts as one more value (``None``). Sorted with ``model`` first.

    Example:
        >>> swept_keys([{"model": "a", "init": "u", "defense_params.sigma": 1, "seed": 0},
        ...             {"model": "a", "init": "n", "defense_params.sigma": 2, "seed": 1}],
        ...            strength_keys=["defense_params.sigma"])
        ['init']
    """
    skip = set(strength_keys) | set(REPLICATE_KEYS)
    keys = sorted({k for s in settings for k in s} - skip)
    varied = [k for k in keys if len({_text(s.get(k)) for s in settings}) > 1]
    return sorted(varied, key=lambda k: (k != "model", k))


def group_label(settings: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``"architecture=convnet5, init=normal"``: a group's name from its grouping keys."""
    if not keys:
        return "all"
    return ", ".join(f"{display(k)}={_text(settings.get(k)).strip(chr(34))}" for k in keys)


def display(key: str) -> str:
    """How a report names a config key: ``defense_params.ranks`` → ``ranks``, ``model`` → ``architecture``.

    A ``<part>_params.`` prefix (defense, attack, dataset, model) is dropped.

    Example:
        >>> display("attack_params.max_iterations"), display("model"), display("case.loss")
        ('max_iterations', 'architecture', 'case.loss')
    """
    head, dot, rest = key.partition(".")
    return DISPLAY.get(key, rest if dot and head.endswith("_params") else key)


def _finite_positive(xs: Sequence[float | None], ys: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None and x > 0 and y > 0]
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    arr = np.array(pairs, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def loglog_slope(xs: Sequence[float | None], ys: Sequence[float | None]) -> dict[str, Any]:
    """Least-squares fit ``log10 y = a + b log10 x`` over the positive finite pairs, with b's 95% t-interval.

    Returns ``{"slope", "slope_ci", "intercept", "n", "note"}``; ``slope`` is None with fewer than 3 pairs or
    no spread in ``x``.

    Example:
        >>> s = loglog_slope([1, 2, 4, 8], [3, 3 * 2**0.5, 6, 6 * 2**0.5])
        >>> round(s["slope"], 6), [round(v, 6) for v in s["slope_ci"]]
        (0.5, [0.5, 0.5])
    """
    from scipy import stats

    x, y = _finite_positive(xs, ys)
    out: dict[str, Any] = {"slope": None, "slope_ci": None, "intercept": None, "n": int(x.size), "note": None}
    if x.size < 3 or np.ptp(np.log10(x)) == 0:
        out["note"] = f"{x.size} positive pairs, need 3 with distinct x"
        return out
    fit = stats.linregress(np.log10(x), np.log10(y))
    half = float(stats.t.ppf(0.975, x.size - 2) * fit.stderr)
    out.update(slope=float(fit.slope), slope_ci=[float(fit.slope - half), float(fit.slope + half)])
    out["intercept"] = float(fit.intercept)
    return out


def ranking_agreement(groups: Mapping[str, tuple[Sequence[float | None], Sequence[float | None]]]) -> dict[str, Any]:
    """Order groups by median I2F and by median attack error (both: lowest first = most leakage).

    Args:
        groups: per group label, ``(I2F values, attack errors)`` of its ok victims.

    Returns:
        ``{"by_i2f", "by_attack", "kendall", "agree"}``: the two orders (labels), Kendall's τ between the
        groups' median I2F and median error (None for fewer than 2 groups), and whether the orders are equal.

    Example:
        >>> r = ranking_agreement({"a": ([1, 2], [5, 6]), "b": ([3, 4], [1, 2]), "c": ([5], [9])})
        >>> r["by_i2f"], r["by_attack"], round(r["kendall"], 3)
        (['a', 'b', 'c'], ['b', 'a', 'c'], 0.333)
    """
    from scipy import stats

    medians = {}
    for label, (i2f, err) in groups.items():
        a = [v for v in i2f if v is not None and math.isfinite(v)]
        b = [v for v in err if v is not None and math.isfinite(v)]
        if a and b:
            medians[label] = (statistics.median(a), statistics.median(b))
    by_i2f = sorted(medians, key=lambda g: medians[g][0])
    by_attack = sorted(medians, key=lambda g: medians[g][1])
    tau = None
    if len(medians) >= 2:
        value = stats.kendalltau([m[0] for m in medians.values()], [m[1] for m in medians.values()]).statistic
        tau = float(value) if math.isfinite(value) else None
    return {"by_i2f": by_i2f, "by_attack": by_attack, "kendall": tau, "agree": by_i2f == by_attack, "medians": medians}


def calibration(
    i2f: Sequence[float | None], errors: Sequence[float | None], *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """How far an I2F term sits below the attack error: median ``error / I2F``, its bootstrap 95% interval.

    Returns ``{"n", "ratio", "ratio_ci", "at_least"}``; ``at_least`` counts victims whose error is at least
    the term (the lower bound's promise).

    Example:
        >>> c = calibration([1, 1, 1], [2, 4, 8], bootstrap=0)
        >>> c["ratio"], c["at_least"], c["n"]
        (4.0, 3, 3)
    """
    x, y = _finite_positive(i2f, errors)
    ratios = y / x if x.size else np.array([])
    out: dict[str, Any] = {"n": int(x.size), "ratio": None, "ratio_ci": None, "at_least": int((y >= x).sum())}
    if not x.size:
        return out
    out["ratio"] = float(np.median(ratios))
    if bootstrap > 0 and x.size >= 3:
        idx = np.random.default_rng(seed).integers(0, x.size, size=(bootstrap, x.size))
        draws = np.median(ratios[idx], axis=1)
        out["ratio_ci"] = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]
    return out
