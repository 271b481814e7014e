"""``dglbench sweep report DIR``: how well I2F predicts the real attack error.

For every architecture × defense family, and pooled over everything: Spearman ρ, Kendall τ and
Pearson r (on log values) between an I2F term (lower bound, exact at each ε) and an attack error
(``‖x̂ − x‖``, RMSE, PSNR, SSIM, LPIPS), with n, failures and bootstrap 95% confidence intervals.
Written as Markdown, CSV and LaTeX; plots as PNG and PDF.

PSNR and SSIM are already logarithmic / bounded, so their Pearson r is taken against ``log10(I2F)``
on the raw metric (a metric's scale comes from :data:`dglbench.metrics.METRICS`). Failed victims are
counted (``failed``) and never enter a correlation silently.

The attack error of a victim is, by default, the worst case over its trial's attack suite (per
metric, the attack best for the attacker); ``attack="<name>"`` selects one attack of the suite instead.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.io import atomic_write_text
from dglbench.layout import RunLayout, read_trial_records
from dglbench.metrics import METRICS, correlation

__all__ = ["WORST", "Row", "load_rows", "correlation_table", "write_report", "strength_of"]

#: The attack errors a report correlates with I2F (in this order).
TARGETS = ("l2_error", "rmse", "psnr", "ssim", "lpips_alex", "lpips_vgg")
#: The "attack" that stands for the worst case over a trial's suite.
WORST = "worst"
STRENGTH_KEYS = ("sigma", "scale", "ratio", "keep", "fraction", "bits", "clip", "c", "noise_multiplier")


@dataclass(frozen=True)
class Row:
    """One victim of one trial, flattened for tables."""

    trial_id: str
    victim_id: int
    model: str
    defense: str
    strength: float | None
    params: str
    status: str
    reason: str | None
    predictors: dict[str, float | None]
    targets: dict[str, float | None]
    attacks: int = 1


def strength_of(params: dict[str, Any]) -> float | None:
    """The defense's strength for plots: the first known numeric parameter (``sigma``, ``ratio``, ...)."""
    for key in STRENGTH_KEYS:
        if isinstance(params.get(key), (int, float)) and not isinstance(params.get(key), bool):
            return float(params[key])
    numeric = [v for v in params.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return float(numeric[0]) if numeric else None


def load_rows(sweep_dir: str | Path, attack: str = WORST) -> list[Row]:
    """All victims of all finished trials in a sweep folder.

    Args:
        sweep_dir: the sweep folder.
        attack: whose attack errors: ``"worst"`` (the worst case over each trial's suite; for a one-attack
            trial, that attack) or an attack of the suite by name (``None`` where a trial did not run it).
    """
    layout = RunLayout(sweep_dir)
    files = layout.trial_records()
    if not files:
        raise DglbenchError(
            f"no trial records in {layout.records}; run `dglbench sweep run SPEC --out {sweep_dir}` first"
        )
    rows = []
    for path in files:
        for rec in read_trial_records(path):
            cfg = rec.config
            est = rec.estimate
            preds: dict[str, float | None] = {"lower_bound": est.lower_bound if est else None}
            preds.update({f"exact@{k}": v for k, v in (est.exact if est else {}).items()})
            rows.append(Row(
                trial_id=rec.trial_id, victim_id=rec.victim_id, model=cfg["model"], defense=cfg["defense"],
                strength=strength_of(cfg["defense_params"]), params=json.dumps(cfg["defense_params"], sort_keys=True),
                status=rec.status, reason=rec.reason, predictors=preds,
                targets={t: rec.metric(t, attack) for t in TARGETS}, attacks=len(rec.attacks),
            ))  # fmt: skip
    return rows


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:+.3f}"
    return f"{text} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else text


def correlation_table(rows: list[Row], *, bootstrap: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Correlation rows per (architecture, defense) group and pooled ('all', 'all')."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r.model, r.defense)].append(r)
    if len(groups) > 1:
        groups[("all", "all")] = list(rows)
    predictors = sorted({k for r in rows for k, v in r.predictors.items() if v is not None})
    targets = [t for t in TARGETS if any(r.targets.get(t) is not None for r in rows)]
    out = []
    for (model, defense), members in groups.items():
        ok = [r for r in members if r.status == "ok"]
        for p in predictors:
            for t in targets:
                xs = [r.predictors.get(p) for r in ok]
                ys = [r.targets.get(t) for r in ok]
                pairs = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
                if METRICS[t].scale == "log":
                    c = correlation(
                        [x for x, _ in pairs], [y for _, y in pairs], log=True, bootstrap=bootstrap, seed=seed
                    )
                else:
                    logged = [(math.log10(x) if x > 0 else math.nan, y) for x, y in pairs]
                    c = correlation(
                        [x for x, _ in logged], [y for _, y in logged], log=False, bootstrap=bootstrap, seed=seed
                    )
                out.append({
                    "architecture": model, "defense": defense, "predictor": p, "target": t, "n": c["n"],
                    "dropped": c["n_dropped"] + (len(ok) - len(pairs)), "failed": len(members) - len(ok),
                    "spearman": c["spearman"], "spearman_ci": c["spearman_ci"], "kendall": c["kendall"],
                    "kendall_ci": c["kendall_ci"], "pearson_log": c["pearson"], "pearson_log_ci": c["pearson_ci"],
                    "note": c["reason"],
                })  # fmt: skip
    return out


def ranking(rows: list[Row]) -> list[dict[str, Any]]:
    """Architectures by median I2F lower bound, lowest (most leakage predicted) first."""
    by_model: dict[str, list[float]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    for r in rows:
        value = r.predictors.get("lower_bound")
        if r.status != "ok":
            failed[r.model] += 1
        elif value is not None:  # attack-only records have no I2F: neither ranked nor failed
            by_model[r.model].append(value)
    table = [
        {"architecture": m, "median_i2f_lb": statistics.median(v), "n": len(v), "failed": failed[m]}
        for m, v in by_model.items()
    ]
    table += [
        {"architecture": m, "median_i2f_lb": None, "n": 0, "failed": k} for m, k in failed.items() if m not in by_model
    ]
    return sorted(table, key=lambda r: (r["median_i2f_lb"] is None, r["median_i2f_lb"] or 0.0))


def _markdown(table: list[dict[str, Any]], rank: list[dict[str, Any]], main_targets: tuple[str, ...]) -> str:
    lines = [
        "| architecture | defense | I2F term | attack error | n | failed | Spearman ρ [95% CI] | Kendall τ [95% CI] "
        "| Pearson r (log) [95% CI] |",
        "|---|---|---|---|---:|---:|---|---|---|",
    ]
    for r in table:
        if r["target"] not in main_targets:
            continue
        lines.append(
            f"| {r['architecture']} | {r['defense']} | {r['predictor']} | {r['target']} | {r['n']} | {r['failed']} "
            f"| {_fmt(r['spearman'], r['spearman_ci'])} | {_fmt(r['kendall'], r['kendall_ci'])} "
            f"| {_fmt(r['pearson_log'], r['pearson_log_ci'])} |"
        )
    lines += ["", "Predicted leakage by architecture (lowest I2F lower bound = most leakage):", "",
              "| rank | architecture | median I2F lower bound | n | failed |", "|---:|---|---:|---:|---:|"]  # fmt: skip
    for i, r in enumerate(rank, 1):
        value = "–" if r["median_i2f_lb"] is None else f"{r['median_i2f_lb']:.4g}"
        lines.append(f"| {i} | {r['architecture']} | {value} | {r['n']} | {r['failed']} |")
    return "\n".join(lines)


def _latex(table: list[dict[str, Any]], main_targets: tuple[str, ...]) -> str:
    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("@", r"@").replace("%", r"\%")

    body = [
        r"\begin{tabular}{llllrrrrr}", r"\toprule",
        r"Architecture & Defense & I2F & Error & $n$ & Failed & Spearman $\rho$ & Kendall $\tau$ "
        r"& Pearson $r$ (log) \\",
        r"\midrule",
    ]  # fmt: skip
    for r in table:
        if r["target"] not in main_targets:
            continue
        vals = ["--" if r[k] is None else f"{r[k]:.3f}" for k in ("spearman", "kendall", "pearson_log")]
        body.append(
            f"{esc(r['architecture'])} & {esc(r['defense'])} & {esc(r['predictor'])} & {esc(r['target'])} & "
            f"{r['n']} & {r['failed']} & {vals[0]} & {vals[1]} & {vals[2]} \\\\"
        )
    body += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(body) + "\n"


def _csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["architecture", "defense", "predictor", "target", "n", "dropped", "failed", "spearman", "spearman_lo",
              "spearman_hi", "kendall", "kendall_lo", "kendall_hi", "pearson_log", "pearson_log_lo", "pearson_log_hi",
              "note"]  # fmt: skip
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in table:
        row = {k: r.get(k) for k in fields if k in r}
        for key in ("spearman", "kendall", "pearson_log"):
            ci = r.get(f"{key}_ci") or [None, None]
            row[f"{key}_lo"], row[f"{key}_hi"] = ci
        writer.writerow(row)
    return buf.getvalue()


def write_report(
    sweep_dir: str | Path, *, bootstrap: int = 1000, plots: bool = True, attack: str = WORST
) -> dict[str, Any]:
    """Write ``report/report.md``, ``correlations.csv``, ``correlations.tex`` and plots; return paths and tables.

    ``attack`` picks the attack errors (see :func:`load_rows`): the suite's worst case by default.
    """
    layout = RunLayout(sweep_dir)
    rows = load_rows(sweep_dir, attack)
    table = correlation_table(rows, bootstrap=bootstrap)
    rank = ranking(rows)
    has_attack = any(r.targets.get("l2_error") is not None for r in rows)
    main = ("l2_error", "psnr", "ssim", "lpips_alex")
    n_failed = sum(r.status != "ok" for r in rows)
    head = (f"# Sweep report: {Path(sweep_dir).name}\n\n{len(rows)} victims in "
            f"{len({r.trial_id for r in rows})} trials; {n_failed} failed.\n\n")  # fmt: skip
    if n_failed:
        reasons = sorted({r.reason or "" for r in rows if r.status != "ok"})
        head += "Failure reasons: " + "; ".join(reasons[:5]) + "\n\n"
    if attack != WORST:
        head += f"Attack errors of the attack {attack!r}.\n\n"
    elif any(r.attacks > 1 for r in rows):
        most = max(r.attacks for r in rows)
        head += (
            f"Attack errors are the worst case per victim over each trial's attack suite (up to {most} "
            "attacks): per metric, the attack best for the attacker.\n\n"
        )
    md = head + (_markdown(table, rank, main) if has_attack else _markdown([], rank, main))
    paths = {
        "markdown": atomic_write_text(layout.report_file("report.md"), md + "\n"),
        "csv": atomic_write_text(layout.report_file("correlations.csv"), _csv(table)),
        "latex": atomic_write_text(layout.report_file("correlations.tex"), _latex(table, main)),
    }
    if plots:
        from dglbench.sweep.plots import plot_ranking, plot_scatter, plot_strength

        if has_attack and any(r.predictors.get("lower_bound") is not None for r in rows):
            paths["scatter"] = plot_scatter(rows, layout.report_file("i2f_vs_error"))
        if has_attack:
            paths["strength"] = plot_strength(rows, layout.report_file("metric_vs_strength"))
        paths["ranking"] = plot_ranking(rank, layout.report_file("risk_ranking"))
    return {"paths": paths, "table": table, "ranking": rank, "markdown": md}
