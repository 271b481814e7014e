"""Plots of a sweep report (PNG and PDF, written atomically)."""

from __future__ import annotations

import io
import math
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from dglbench.io import atomic_write_bytes  # noqa: E402
from dglbench.metrics import METRICS  # noqa: E402

if TYPE_CHECKING:
    from dglbench.sweep.report import Row


def _save(fig: Any, stem: Path) -> Path:
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        atomic_write_bytes(stem.with_suffix(f".{ext}"), buf.getvalue())
    plt.close(fig)
    return stem.with_suffix(".png")


def _label(key: str) -> str:
    """An axis label: the metric's registered label, or an I2F term in words."""
    return METRICS[key].label if key in METRICS else f"I2F {key.replace('_', ' ')}"


def _log_scale(ax: Any, axis: str, values: list[float]) -> None:
    """A log axis when some value is positive (matplotlib refuses a log axis over no positive data)."""
    if any(math.isfinite(v) and v > 0 for v in values):
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def plot_scatter(rows: list[Row], stem: Path, predictor: str = "lower_bound", target: str = "l2_error") -> Path:
    """Log-log scatter of an I2F term against the attack error, per architecture, with a fit line each."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    by_model: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        x, y = r.predictors.get(predictor), r.targets.get(target)
        if r.status == "ok" and x is not None and y is not None and x > 0 and y > 0:
            by_model[r.model].append((x, y))
    lo, hi = math.inf, 0.0
    for model, pts in sorted(by_model.items()):
        xs, ys = np.array(pts).T
        dots = ax.scatter(xs, ys, s=18, alpha=0.75, label=model)
        lo, hi = min(lo, xs.min(), ys.min()), max(hi, xs.max(), ys.max())
        if len(pts) >= 2 and np.ptp(np.log10(xs)) > 0:
            slope, icpt = np.polyfit(np.log10(xs), np.log10(ys), 1)
            grid = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 50)
            ax.plot(grid, 10**icpt * grid**slope, color=dots.get_facecolor()[0], lw=1.2)
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"I2F {predictor.replace('_', ' ')}")
    ax.set_ylabel(f"attack error: {_label(target)}")
    ax.set_title("I2F vs attack error (one point per victim)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return _save(fig, stem)


def plot_strength(rows: list[Row], stem: Path, metrics: tuple[str, ...] = ("psnr", "l2_error")) -> Path:
    """Median metric (and I2F) against defense strength, per architecture and defense family."""
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 4))
    series: dict[tuple[str, str], dict[float, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.strength is not None and r.status == "ok":
            series[(r.model, r.defense)][r.strength].append(r)
    for ax, key in zip(axes, (*metrics, "lower_bound")):
        plotted: list[float] = []
        for (model, defense), by_level in sorted(series.items()):
            levels = sorted(by_level)
            values = []
            for s in levels:
                vals = [(x.targets.get(key) if key in x.targets else x.predictors.get(key)) for x in by_level[s]]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                values.append(median(vals) if vals else math.nan)
            ax.plot(levels, values, marker="o", label=f"{model} / {defense}")
            plotted += values
        _log_scale(ax, "x", [s for by_level in series.values() for s in by_level])
        if key not in METRICS or METRICS[key].scale == "log":  # I2F terms span decades too
            _log_scale(ax, "y", plotted)
        ax.set_xlabel("defense strength")
        ax.set_ylabel(_label(key))
        ax.grid(True, which="both", alpha=0.2)
    axes[0].legend(fontsize=7)
    fig.suptitle("Attack error and I2F vs defense strength (medians over victims)")
    return _save(fig, stem)


def plot_ranking(rank: list[dict[str, Any]], stem: Path) -> Path:
    """Horizontal bars: median I2F lower bound per architecture (the risk atlas)."""
    shown = [r for r in rank if r["median_i2f_lb"] is not None]
    fig, ax = plt.subplots(figsize=(6, 0.3 * max(len(shown), 3) + 1))
    ax.barh([r["architecture"] for r in shown][::-1], [r["median_i2f_lb"] for r in shown][::-1])
    _log_scale(ax, "x", [r["median_i2f_lb"] for r in shown])
    ax.set_xlabel("median I2F lower bound (lower = more leakage predicted)")
    ax.set_title("Predicted leakage by architecture")
    return _save(fig, stem)
