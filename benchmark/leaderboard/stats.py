"""Summary statistics of per-victim values: mean, median, standard deviation, 95 % t-interval, n.

The interval is Student's t interval of the mean, ``mean ± t(0.975, n − 1) · s / √n`` (``s`` the
sample standard deviation): closed form, so anyone recomputes it exactly from the victims file.
Values are rounded to 6 significant digits when stored. Missing values (``None``: a failed victim or
an unavailable metric) are not averaged; the caller counts them as failures.

Example:
    >>> s = summarize([1.0, 2.0, 3.0, None])
    >>> s.n, s.mean, s.median, s.ci95_low < s.mean < s.ci95_high
    (3, 2.0, 2.0, True)
    >>> summarize([]).mean is None
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Stat", "round_sig", "spearman", "summarize"]


def round_sig(x: float | None, digits: int = 6) -> float | None:
    """``x`` rounded to ``digits`` significant digits (``None`` and non-finite values become ``None``)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


@dataclass(frozen=True)
class Stat:
    """Summary of one quantity over victims (values of failed victims are excluded and counted elsewhere).

    Attributes:
        n: number of values summarized.
        mean / median / std: of those values (``std`` with Bessel's correction; null when n < 2).
        ci95_low / ci95_high: Student's t 95 % interval of the mean (null when n < 2).
    """

    n: int
    mean: float | None
    median: float | None
    std: float | None
    ci95_low: float | None
    ci95_high: float | None


def summarize(values: Sequence[float | None]) -> Stat:
    """:class:`Stat` of the finite values in ``values`` (``None``/NaN/inf are skipped)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Stat(0, None, None, None, None, None)
    mean = math.fsum(xs) / n
    ordered = sorted(xs)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    if n < 2:
        return Stat(1, round_sig(mean), round_sig(median), None, None, None)
    from scipy.stats import t

    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Stat(n, round_sig(mean), round_sig(median), round_sig(std), round_sig(mean - half), round_sig(mean + half))


def spearman(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[float | None, int]:
    """Spearman rank correlation of the pairs where both values are finite, and the number of pairs.

    ``None`` when fewer than 3 pairs or one side is constant.

    Example:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
        (0.8, 4)
    """
    pairs = [
        (float(x), float(y))
        for x, y in zip(a, b)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return None, len(pairs)
    from scipy.stats import spearmanr

    return round_sig(float(spearmanr([x for x, _ in pairs], [y for _, y in pairs]).statistic)), len(pairs)
