"""Plots of a sweep report (PNG and PDF, written atomically), each drawn to show one finding.

* :func:`plot_scatter`: attack error against an I2F term, one panel per architecture, coloured by strength
  level (exp. 1) or by group (exp. 3's ranks), with the fitted log-log slope and its interval, ``y = x`` and
  the mean-image floor (the error of guessing the data set's mean image).
* :func:`plot_groups`: I2F and the attack error per group side by side (exp. 4's initializations).
* :func:`plot_strength`: medians against the defense's strength, per group.
* :func:`plot_ranking`: the risk ranking as points (median) with interquartile bars, per strength level.
"""

from __future__ import annotations

import io
import math
import re
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
from dglbench.sweep.findings import display, loglog_slope  # noqa: E402

if TYPE_CHECKING:
    from dglbench.sweep.report import Row

__all__ = ["plot_groups", "plot_ranking", "plot_scatter", "plot_strength"]


def _save(fig: Any, stem: Path) -> Path:
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, bbox_inches="tight")
        atomic_write_bytes(stem.with_suffix(f".{ext}"), buf.getvalue())
    plt.close(fig)
    return stem.with_suffix(".png")


def _label(key: str) -> str:
    """An axis label: the metric's registered label, or an I2F term in words."""
    if key in METRICS:
        return METRICS[key].label
    if key == "lower_bound":
        return "I2F lower bound ‖Kᵀδ‖ / λ_max"
    name, _, eps = key.partition("@")
    if name == "exact" and eps.startswith("rel:"):
        return f"exact I2F at ε = {eps.removeprefix('rel:')}·λ_max"
    if name == "exact" and eps:
        try:
            return f"exact I2F at ε = {float(eps):g}"
        except ValueError:
            return f"exact I2F at ε = {eps}"
    return f"I2F {name.replace('_', ' ')}" + (f" at {eps}" if eps else "")


def _natural(label: str) -> list[Any]:
    """Sort key that orders ``ranks=3`` before ``ranks=15``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]


def _log_scale(ax: Any, axis: str, values: list[float]) -> None:
    """A log axis when some value is positive (matplotlib refuses a log axis over no positive data)."""
    if any(math.isfinite(v) and v > 0 for v in values):
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _short(group: str, drop: str = "architecture") -> str:
    """A group label without the key every panel already names, one setting per line."""
    parts = [p for p in group.split(", ") if not p.startswith(f"{drop}=")]
    return "\n".join(parts) or "all"


def _ok_pairs(rows: list[Row], x: str, y: str) -> list[tuple[Row, float, float]]:
    out = []
    for r in rows:
        a, b = r.predictors.get(x), r.targets.get(y)
        if r.status == "ok" and a is not None and b is not None and a > 0 and b > 0:
            out.append((r, a, b))
    return out


def plot_scatter(
    rows: list[Row], stem: Path, predictor: str = "lower_bound", target: str = "l2_error", by: str = "strength"
) -> Path:
    """Log-log attack error against an I2F term: a panel per architecture, colours by strength level or group.

    Each panel shows the least-squares log-log fit with its slope and 95% interval, the line ``y = x`` and the
    median mean-image floor (dotted): an error above the floor is no better than guessing the mean image.
    """
    by_model: dict[str, list[tuple[Row, float, float]]] = defaultdict(list)
    for item in _ok_pairs(rows, predictor, target):
        by_model[item[0].model].append(item)
    models = sorted(by_model) or ["(no data)"]
    ncols = len(models) if len(models) <= 3 else math.ceil(len(models) / 2)
    nrows = math.ceil(len(models) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 5.0 * nrows), squeeze=False)
    axes = [list(grid.reshape(-1))]
    for ax in axes[0][len(models) :]:
        ax.set_axis_off()
    levels = sorted({r.strength for r in rows if r.strength is not None})
    groups = sorted({_short(r.group) for r in rows}, key=_natural)
    cmap = plt.get_cmap("viridis")
    norm = (
        matplotlib.colors.LogNorm(min(levels), max(levels))
        if levels and min(levels) > 0 and max(levels) > min(levels)
        else None
    )
    for ax, model in zip(axes[0], models):
        pts = by_model.get(model, [])
        if not pts:
            ax.set_axis_off()
            continue
        xs, ys = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
        if by == "group" and len(groups) > 1:
            colours = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
            for i, g in enumerate(groups):
                sel = [j for j, p in enumerate(pts) if _short(p[0].group) == g]
                if sel:
                    ax.scatter(xs[sel], ys[sel], s=16, alpha=0.8, color=colours(i % colours.N),
                               label=g.replace("\n", ", "))  # fmt: skip
        elif norm is not None:
            c = [p[0].strength if p[0].strength is not None else np.nan for p in pts]
            sc = ax.scatter(xs, ys, s=16, alpha=0.85, c=c, cmap=cmap, norm=norm)
            strength = next((display(r.strength_name) for r in rows if r.strength_name), "strength")
            fig.colorbar(sc, ax=ax, label=f"defense {strength}", pad=0.01)
        else:
            ax.scatter(xs, ys, s=16, alpha=0.8)
        lo, hi = xs.min(), xs.max()  # y = x over the data's x range
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        fit = loglog_slope(xs.tolist(), ys.tolist())
        if fit["slope"] is not None:
            span = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 50)
            ci = fit["slope_ci"]
            ax.plot(span, 10 ** fit["intercept"] * span ** fit["slope"], color="C3", lw=1.4,
                    label=f"fit: slope {fit['slope']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")  # fmt: skip
        floors = [p[0].floor for p in pts if p[0].floor is not None]
        if floors and target == "l2_error":
            ax.axhline(median(floors), color="grey", ls=":", lw=1.2, label="mean-image floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # minor tick labels collide on short log ranges
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{model} (n = {len(pts)})", fontsize=10)
        ax.set_xlabel(_label(predictor))
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for row in grid:
        row[0].set_ylabel(f"attack error: {_label(target)}")
    fig.suptitle(f"Attack error vs {_label(predictor)} (one point per victim)", fontsize=11)
    fig.tight_layout()
    if nrows > 1:  # room for the legends below the upper panels
        fig.subplots_adjust(hspace=0.6)
    return _save(fig, stem)


def _tick(group: str) -> str:
    """A group's tick label: the value alone for one grouping key, else one ``key=value`` per line."""
    return group.split("=", 1)[1] if group.count("=") == 1 else group.replace(", ", "\n")


def _architecture(group: str) -> str:
    return next((p for p in group.split(", ") if p.startswith("architecture=")), "").removeprefix("architecture=")


def _group_axis(ax: Any, groups: list[str]) -> None:
    """Ticks per group without the architecture; architectures named above their blocks, blocks separated."""
    archs = [_architecture(g) for g in groups]
    split = any(archs) and len(set(archs)) > 1 and any(_short(g) != "all" for g in groups)
    ticks = [_short(g) if split else _tick(g) for g in groups]
    many = len(groups) > 6 or max(len(t) for t in ticks) > 12
    ax.set_xticks(range(len(groups)), ticks, fontsize=7, rotation=45 if many else 0, ha="right" if many else "center")
    if not split:
        return
    start = 0
    for i in range(1, len(groups) + 1):
        if i == len(groups) or archs[i] != archs[start]:
            ax.text((start + i - 1) / 2, 1.01, archs[start], transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8, fontweight="bold")  # fmt: skip
            if i < len(groups):
                ax.axvline(i - 0.5, color="grey", lw=0.8)
            start = i


def _iqr(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def plot_groups(rows: list[Row], stem: Path, predictor: str = "lower_bound", target: str = "l2_error") -> Path:
    """I2F and attack error per group, side by side: each victim a dot, the median a bar with its IQR."""
    groups = sorted({r.group for r in rows}, key=lambda g: (_architecture(g), _natural(g)))
    levels = sorted({r.strength for r in rows if r.strength is not None}) or [None]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.1 * len(groups) + 3), 4.6))
    strength = next((display(r.strength_name) for r in rows if r.strength_name), "strength")
    width = 0.7 / len(levels)
    for ax, key, kind in ((axes[0], predictor, "predictors"), (axes[1], target, "targets")):
        plotted = []
        for li, level in enumerate(levels):
            for gi, g in enumerate(groups):
                sel = [
                    getattr(r, kind).get(key)
                    for r in rows
                    if r.group == g and r.status == "ok" and (level is None or r.strength == level)
                ]
                sel = [v for v in sel if v is not None and v > 0 and math.isfinite(v)]
                if not sel:
                    continue
                x = gi + (li - (len(levels) - 1) / 2) * width
                jitter = np.linspace(-width / 4, width / 4, len(sel)) if len(sel) > 1 else [0.0]
                name = None if gi or level is None else f"{strength} = {level:g}"
                ax.scatter(x + np.asarray(jitter), sel, s=9, alpha=0.5, color=f"C{li}", label=name)
                q1, q2, q3 = _iqr(sel)
                ax.errorbar([x], [q2], yerr=[[q2 - q1], [q3 - q2]], fmt="_", color="k", ms=14, capsize=3, lw=1)
                plotted += sel
        _log_scale(ax, "y", plotted)
        _group_axis(ax, groups)
        ax.set_ylabel(_label(key) if kind == "predictors" else f"attack error: {_label(key)}")
        ax.grid(True, axis="y", which="both", alpha=0.2)
    axes[0].set_title(f"predicted: {_label(predictor)}", fontsize=10, pad=16)
    axes[1].set_title("measured: the attack", fontsize=10, pad=16)
    if levels != [None]:
        axes[1].legend(fontsize=7, title="dots: victims\nbar: median, IQR", title_fontsize=7,
                       bbox_to_anchor=(1.02, 1), loc="upper left")  # fmt: skip
    fig.suptitle("I2F and the attack error per group (lower = more leakage)", fontsize=11)
    fig.tight_layout()
    return _save(fig, stem)


def plot_strength(rows: list[Row], stem: Path, metrics: tuple[str, ...] = ("psnr", "l2_error")) -> Path:
    """Median metric (and I2F lower bound) against defense strength, per group."""
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 4))
    series: dict[str, dict[float, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.strength is not None and r.status == "ok":
            series[r.group if r.group != "all" else f"{r.model} / {r.defense}"][r.strength].append(r)
    strength = next((display(r.strength_name) for r in rows if r.strength_name), "strength")
    for ax, key in zip(axes, (*metrics, "lower_bound")):
        plotted: list[float] = []
        for label, by_level in sorted(series.items()):
            levels = sorted(by_level)
            values = []
            for s in levels:
                vals = [(x.targets.get(key) if key in x.targets else x.predictors.get(key)) for x in by_level[s]]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                values.append(median(vals) if vals else math.nan)
            ax.plot(levels, values, marker="o", label=label.replace(", ", " / "))
            plotted += values
        _log_scale(ax, "x", [s for by_level in series.values() for s in by_level])
        if key not in METRICS or METRICS[key].scale == "log":  # I2F terms span decades too
            _log_scale(ax, "y", plotted)
        ax.set_xlabel(f"defense strength ({strength})")
        ax.set_ylabel(_label(key))
        ax.grid(True, which="both", alpha=0.2)
    axes[0].legend(fontsize=7)
    fig.suptitle("Attack error and I2F vs defense strength (medians over victims)")
    fig.tight_layout()
    return _save(fig, stem)


def plot_ranking(rows: list[Row], stem: Path, target: str = "l2_error") -> Path:
    """Risk ranking: per architecture, the median I2F lower bound and attack error with IQR bars, per strength level.

    Points on a log axis (a bar's length on a log axis depends on where the axis starts); architectures
    sorted by median lower bound, most leakage predicted at the top.
    """
    ok = [r for r in rows if r.status == "ok" and r.predictors.get("lower_bound") is not None]
    levels = sorted({r.strength for r in ok if r.strength is not None}) or [None]
    models = sorted(
        {r.model for r in ok}, key=lambda m: median([r.predictors["lower_bound"] for r in ok if r.model == m])
    )
    has_attack = any(r.targets.get(target) is not None for r in ok)
    panels = [("lower_bound", "predictors")] + ([(target, "targets")] if has_attack else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.55 * max(len(models), 3) + 1.6),
                             squeeze=False)  # fmt: skip
    strength = next((display(r.strength_name) for r in rows if r.strength_name), "strength")
    step = 0.7 / len(levels)
    for ax, (key, kind) in zip(axes[0], panels):
        plotted = []
        for li, level in enumerate(levels):
            for mi, model in enumerate(models):
                members = [r for r in ok if r.model == model and (level is None or r.strength == level)]
                vals = [getattr(r, kind).get(key) for r in members]
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                if not vals:
                    continue
                q1, q2, q3 = _iqr(vals)
                y = mi + (li - (len(levels) - 1) / 2) * step
                name = None if mi else (f"{strength} = {level:g}" if level is not None else "all")
                ax.errorbar(
                    [q2], [y], xerr=[[q2 - q1], [q3 - q2]], fmt="o", color=f"C{li}", ms=4, capsize=2, label=name
                )
                plotted += [q1, q2, q3]
        _log_scale(ax, "x", plotted)
        ax.set_yticks(range(len(models)), models)
        ax.invert_yaxis()
        ax.set_xlabel(_label(key) if kind == "predictors" else f"attack error: {_label(key)}")
        ax.grid(True, axis="x", which="both", alpha=0.2)
    axes[0][0].set_title("predicted (lower = more leakage)", fontsize=10)
    if has_attack:
        axes[0][1].set_title("measured by the attack", fontsize=10)
    axes[0][-1].legend(fontsize=7, title="median, IQR", title_fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.suptitle("Leakage by architecture", fontsize=11)
    fig.tight_layout()
    return _save(fig, stem)


# ------------------------------------------------------------------------------------------- reconstructions
def reconstruction_mosaic(
    rows: list[Row], sweep_dir: str | Path, *, max_victims: int = 8, pad: int = 1, attack: str = "worst"
) -> dict[str, Any] | None:
    """The saved reconstructions as one image: per architecture, the originals, then one row per group and level.

    Columns are the victims every trial shares (the first ``max_victims`` ids; each victim's first image).
    Rows, per architecture: ``original``, then one row per (group, strength level) in sorted order. Cell
    ``(r, c)`` starts at pixel ``(pad + r·(H + pad), pad + c·(W + pad))``; the background is white.

    Returns:
        ``{"mosaic" [H', W'] or [H', W', 3] in [0, 1], "labels" (one per row), "victims", "cell" (H, W)}``,
        or None when the sweep saved no images.
    """
    from dglbench.errors import DglbenchError
    from dglbench.layout import RunLayout, load_reconstructions

    layout = RunLayout(sweep_dir)
    ok = [r for r in rows if r.status == "ok"]
    trials: dict[tuple[str, str, float | None], str] = {}
    for r in ok:
        trials.setdefault((r.model, r.group, r.strength), r.trial_id)
    if not trials:
        return None
    ids_per_trial: dict[str, set[int]] = defaultdict(set)
    for r in ok:
        ids_per_trial[r.trial_id].add(r.victim_id)
    shared = sorted(set.intersection(*ids_per_trial.values()))[:max_victims]
    strength = next((display(r.strength_name) for r in rows if r.strength_name), "strength")

    def load(trial_id: str, victim_id: int) -> dict[str, Any] | None:
        try:
            return load_reconstructions(layout.images(trial_id).directory, victim_id)
        except DglbenchError:
            return None

    grid: list[tuple[str, list[np.ndarray | None]]] = []
    for model in sorted({k[0] for k in trials}):
        keys = sorted((k for k in trials if k[0] == model), key=lambda k: (_natural(k[1]), k[2] or 0.0))
        first = [load(trials[keys[0]], v) for v in shared]
        grid.append((f"{model}: original", [None if f is None else _cell(f["original"]) for f in first]))
        for key in keys:
            name = _short(key[1]).replace("\n", ", ")
            level = "" if key[2] is None else f"{strength} = {key[2]:g}"
            label = ", ".join(p for p in (name if name != "all" else "", level) if p) or "all"
            saved = [load(trials[key], v) for v in shared]
            grid.append((label, [None if s is None else _cell(s.get(attack, s.get("worst"))) for s in saved]))
    cells = [c for _, row in grid for c in row if c is not None]
    if not cells:
        return None
    h, w = cells[0].shape[:2]
    channels = cells[0].shape[2:]
    mosaic = np.ones((pad + len(grid) * (h + pad), pad + len(shared) * (w + pad), *channels))
    for r, (_, row) in enumerate(grid):
        for c, cell in enumerate(row):
            if cell is not None:
                y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
                mosaic[y0 : y0 + h, x0 : x0 + w] = cell
    return {"mosaic": mosaic, "labels": [label for label, _ in grid], "victims": shared, "cell": (h, w), "pad": pad}


def _cell(images: Any) -> np.ndarray | None:
    """A victim's first image as [H, W] (grey) or [H, W, 3]."""
    if images is None:
        return None
    x = np.asarray(images[0], dtype=float)  # [C, H, W]
    return x[0] if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def plot_reconstructions(rows: list[Row], sweep_dir: str | Path, stem: Path, **kwargs: Any) -> Path | None:
    """Originals on top, worst-case reconstructions per group and strength level below (see reconstruction_mosaic)."""
    found = reconstruction_mosaic(rows, sweep_dir, **kwargs)
    if found is None:
        return None
    mosaic, labels, (h, w), pad = found["mosaic"], found["labels"], found["cell"], found["pad"]
    height = max(2.5, 0.28 * len(labels) * max(h, 8) / 8)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.55 * len(found["victims"]) + 2.5), height))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([pad + r * (h + pad) + (h - 1) / 2 for r in range(len(labels))], labels, fontsize=7)
    ax.set_xticks([pad + c * (w + pad) + (w - 1) / 2 for c in range(len(found["victims"]))],
                  [str(v) for v in found["victims"]], fontsize=7)  # fmt: skip
    ax.set_xlabel("victim")
    ax.tick_params(length=0)
    ax.set_title("Private images (top of each block) and the attack's reconstructions", fontsize=9)
    fig.tight_layout()
    return _save(fig, stem)
