"""``dglbench sweep report DIR``: how well I2F predicts the real attack error, finding first.

Groups are what the sweep varied: every trial setting with more than one value across the sweep's trials
(architecture, initialization, eigen rank, image size, case, ...) is a grouping column, except the defense's
strength axis, which each defense class declares (``strength = "sigma"``, see
:class:`dglbench.defenses.Defense`) and seeds (replicates). For every group, pooled over all victims, and
within one strength level: Spearman ρ, Kendall τ and Pearson r (on log values) between an I2F term
(lower bound, exact at each ε, and any other term the record's estimate holds) and an attack error
(``‖x̂ − x‖``, RMSE, PSNR, SSIM, LPIPS), with n, failures and bootstrap 95% confidence intervals.

The report opens with its findings in words (:func:`findings`): pooled and per-group ρ with intervals,
the range within one strength level, the log-log slope of the error on I2F, whether I2F orders the groups
as the attack does, and how far I2F sits below the error per architecture (calibration). Then the main
table (I2F vs ``‖x̂ − x‖`` and LPIPS); RMSE, PSNR and SSIM mirror ``‖x̂ − x‖`` (a monotone map of the same
distance, or nearly so) and go to ``correlations.csv`` only. Written as Markdown, CSV and LaTeX; plots as
PNG and PDF.

PSNR and SSIM are already logarithmic / bounded, so their Pearson r is taken against ``log10(I2F)`` on the
raw metric (a metric's scale comes from :data:`dglbench.metrics.METRICS`). Failed victims are counted
(``failed``) and never enter a correlation silently.

The attack error of a victim is, by default, the worst case over its trial's optimization attacks (per
metric, the attack best for the attacker); ``attack="<name>"`` selects one attack of the suite instead.
Closed-form attacks (registry flag ``closed_form``: ``analytic_linear``, ``imprint``, ``april``) rebuild images by
algebra, which I2F does not model: they are left out of the worst case that is correlated, and naming one is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.io import atomic_write_text
from dglbench.layout import RunLayout, read_trial_records
from dglbench.metrics import METRICS, correlation
from dglbench.record import worst_case
from dglbench.sweep.findings import (
    calibration,
    display,
    flatten,
    group_label,
    loglog_slope,
    ranking_agreement,
    strength_key,
    swept_keys,
)

__all__ = ["WORST", "Row", "correlation_table", "findings", "load_rows", "ranking", "strength_of", "write_report"]

#: The attack errors a report correlates with I2F (in this order).
TARGETS = ("l2_error", "rmse", "psnr", "ssim", "lpips_alex", "lpips_vgg")
#: Targets in the Markdown and LaTeX tables; the others mirror ``l2_error`` and are in the CSV only.
MAIN_TARGETS = ("l2_error", "lpips_alex", "lpips_vgg")
#: The "attack" that stands for the worst case over a trial's suite.
WORST = "worst"
#: Estimate fields that are not I2F predictions of the error (exact names, and parts of names).
_NOT_PREDICTORS = ("jt_delta", "max_eigenvalue", "products", "rescale", "eps_used", "eps_relative")
_NOT_PREDICTOR_PARTS = ("converged", "residual", "ill_conditioned", "seconds", "iterations")


@dataclass(frozen=True)
class Row:
    """One victim of one trial, flattened for tables.

    ``settings`` is the trial's configuration as dotted keys; ``group`` names the victim's group (its values of
    the sweep's grouping keys, ``group_keys``); ``strength`` is the value of its defense's declared strength
    parameter (``strength_name``); ``floor`` is the mean-image ``‖x̂ − x‖`` (a chance floor); ``attacks`` counts
    the optimization attacks of the suite and ``closed_form`` names its closed-form ones (left out of ``targets``).
    """

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
    settings: dict[str, Any] = field(default_factory=dict)
    group: str = "all"
    group_keys: tuple[str, ...] = ()
    strength_name: str | None = None
    floor: float | None = None
    closed_form: tuple[str, ...] = ()


def strength_of(defense: str, params: dict[str, Any]) -> float | None:
    """The value of ``defense``'s declared strength parameter in ``params`` (None: none declared or not numeric).

    Example:
        >>> strength_of("gaussian", {"sigma": 0.1}), strength_of("eigen_noise", {"scale": 1e-3, "ranks": 3})
        (0.1, 0.001)
    """
    key = strength_key(defense)
    value = params.get(key.removeprefix("defense_params.")) if key else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _predictors(estimate: Any) -> dict[str, float | None]:
    """Every I2F term of an estimate: float fields by name, dict fields as ``name@key`` (``exact@0.1``)."""
    if estimate is None:
        return {"lower_bound": None}
    out: dict[str, float | None] = {}
    for f in dataclasses.fields(estimate):
        if f.name in _NOT_PREDICTORS or any(part in f.name for part in _NOT_PREDICTOR_PARTS):
            continue
        value = getattr(estimate, f.name)
        if isinstance(value, dict):
            for key, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None:
                    out[f"{f.name}@{key}"] = None if v is None else float(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
            out[f.name] = None if value is None else float(value)
    return out


def closed_form(name: str) -> bool:
    """Whether the registered attack ``name`` is closed-form (an attack not registered here counts as not)."""
    from dglbench.attacks import ATTACKS

    try:
        return bool(getattr(ATTACKS.get(name), "closed_form", False))
    except DglbenchError:
        return False


def _targets(rec: Any, attack: str) -> tuple[dict[str, float | None], str, str | None]:
    """Attack errors, status and reason of one record: of ``attack``, or the worst case over its optimization
    attacks (a victim whose optimization attacks all failed fails here, even if a closed-form attack succeeded)."""
    if attack != WORST or not any(closed_form(a.name) for a in rec.attacks):
        return {t: rec.metric(t, attack) for t in TARGETS}, rec.status, rec.reason
    if rec.status != "ok":
        return dict.fromkeys(TARGETS), rec.status, rec.reason
    worst = worst_case([a for a in rec.attacks if not closed_form(a.name)])
    if worst.status != "ok":
        reason = f"no optimization attack in the suite succeeded: {worst.reason}"
        return dict.fromkeys(TARGETS), "failed", reason
    return {t: _finite(worst.metrics.get(t)) for t in TARGETS}, "ok", None


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def load_rows(sweep_dir: str | Path, attack: str = WORST) -> list[Row]:
    """All victims of all finished trials in a sweep folder, each with its group.

    Args:
        sweep_dir: the sweep folder.
        attack: whose attack errors: ``"worst"`` (the worst case over each trial's optimization attacks, closed-form
            attacks left out; for a one-attack trial, that attack) or an optimization attack of the suite by name
            (``None`` where a trial did not run it). A closed-form attack is refused: I2F does not model it.
    """
    if attack != WORST and closed_form(attack):
        raise DglbenchError(
            f"attack {attack!r} is closed-form: I2F models optimization attacks, so a report makes no correlation "
            "claim for it; pick an optimization attack of the suite or the worst case (default)"
        )
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
            targets, status, reason = _targets(rec, attack)
            floor = (rec.floors.get("mean_image") or {}).get("l2_error")
            rows.append(Row(
                trial_id=rec.trial_id, victim_id=rec.victim_id, model=cfg["model"], defense=cfg["defense"],
                strength=strength_of(cfg["defense"], cfg["defense_params"]),
                params=json.dumps(cfg["defense_params"], sort_keys=True), status=status, reason=reason,
                predictors=_predictors(rec.estimate), targets=targets,
                attacks=sum(not closed_form(a.name) for a in rec.attacks),
                closed_form=tuple(sorted({a.name for a in rec.attacks if closed_form(a.name)})),
                settings=flatten(cfg), strength_name=strength_key(cfg["defense"]), floor=floor,
            ))  # fmt: skip
    return assign_groups(rows)


def assign_groups(rows: list[Row]) -> list[Row]:
    """``rows`` with ``group`` and ``group_keys`` set from what varies across them (:func:`swept_keys`)."""
    keys = tuple(swept_keys([r.settings for r in rows], {r.strength_name for r in rows if r.strength_name}))
    return [dataclasses.replace(r, group=group_label(r.settings, keys), group_keys=keys) for r in rows]


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:+.3f}"
    return f"{text} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else text


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _ok(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.status == "ok"]


def _correlate(members: list[Row], predictor: str, target: str, bootstrap: int, seed: int) -> dict[str, Any]:
    ok = _ok(members)
    pairs = [(r.predictors.get(predictor), r.targets.get(target)) for r in ok]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if METRICS[target].scale == "log":
        c = correlation([x for x, _ in pairs], [y for _, y in pairs], log=True, bootstrap=bootstrap, seed=seed)
    else:
        logged = [(math.log10(x) if x > 0 else math.nan, y) for x, y in pairs]
        c = correlation([x for x, _ in logged], [y for _, y in logged], log=False, bootstrap=bootstrap, seed=seed)
    return {
        "predictor": predictor, "target": target, "n": c["n"], "dropped": c["n_dropped"] + (len(ok) - len(pairs)),
        "failed": len(members) - len(ok), "spearman": c["spearman"], "spearman_ci": c["spearman_ci"],
        "kendall": c["kendall"], "kendall_ci": c["kendall_ci"], "pearson_log": c["pearson"],
        "pearson_log_ci": c["pearson_ci"], "note": c["reason"],
    }  # fmt: skip


def predictors_of(rows: list[Row]) -> list[str]:
    """The I2F terms some ok victim has a value for: the lower bound first, then the others sorted."""
    names = {k for r in rows for k, v in r.predictors.items() if v is not None}
    return sorted(names, key=lambda k: (k != "lower_bound", k))


def targets_of(rows: list[Row]) -> list[str]:
    """The attack errors some victim has a value for, in :data:`TARGETS` order."""
    return [t for t in TARGETS if any(r.targets.get(t) is not None for r in rows)]


def _by(rows: list[Row], key: Any) -> dict[Any, list[Row]]:
    out: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        out[key(r)].append(r)
    return dict(sorted(out.items(), key=lambda kv: (kv[0] is None, kv[0])))


def correlation_table(rows: list[Row], *, bootstrap: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Correlation rows, each with a ``scope``.

    * ``group``: one per group (what the sweep varied, strength aside), every target; only when there are
      several groups.
    * ``pooled``: all victims (group ``"all"``), every target.
    * ``marginal``: one value of one grouping key, pooled over the other keys (``architecture=convnet5``), for
      ``‖x̂ − x‖``; only with two grouping keys or more.
    * ``level``: one strength level, all groups pooled; ``group@level``: one group at one level (``‖x̂ − x‖``).
    """
    predictors, targets = predictors_of(rows), targets_of(rows)
    main = "l2_error" if "l2_error" in targets else (targets[0] if targets else None)
    keys = rows[0].group_keys if rows else ()
    scopes: list[tuple[str, str, float | None, list[Row], list[str]]] = []
    groups = _by(rows, lambda r: r.group)
    if len(groups) > 1:
        scopes += [("group", g, None, members, targets) for g, members in groups.items()]
    scopes.append(("pooled", "all", None, list(rows), targets))
    if main and len(keys) > 1:
        for key in keys:
            for value, members in _by(rows, lambda r, k=key: group_label(r.settings, [k])).items():
                scopes.append(("marginal", value, None, members, [main]))
    levels = _by([r for r in rows if r.strength is not None], lambda r: r.strength)
    if main and len(levels) > 1:
        for level, members in levels.items():
            scopes.append(("level", "all", level, members, [main]))
            if len(groups) > 1:
                for g, sub in _by(members, lambda r: r.group).items():
                    scopes.append(("group@level", g, level, sub, [main]))
    headline = set(headline_predictors(rows))
    out = []
    for scope, label, level, members, wanted in scopes:
        for p in predictors:
            these = wanted
            if p not in headline:  # the other terms (damped bounds, attack-aware I2F): CSV, vs the main error
                these = [t for t in wanted if t == main] if scope in ("group", "pooled") else []
            for t in these:
                out.append({"scope": scope, "group": label, "level": level,
                            **_correlate(members, p, t, bootstrap, seed)})  # fmt: skip
    return out


def ranking(rows: list[Row]) -> list[dict[str, Any]]:
    """Architectures by median I2F lower bound, lowest (most leakage predicted) first, with the median error."""
    by_model: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[float]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    for r in rows:
        value = r.predictors.get("lower_bound")
        if r.status != "ok":
            failed[r.model] += 1
        elif value is not None:  # attack-only records have no I2F: neither ranked nor failed
            by_model[r.model].append(value)
            if r.targets.get("l2_error") is not None:
                errors[r.model].append(r.targets["l2_error"])
    table = [
        {"architecture": m, "median_i2f_lb": statistics.median(v), "n": len(v), "failed": failed[m],
         "median_l2_error": statistics.median(errors[m]) if errors[m] else None}
        for m, v in by_model.items()
    ]  # fmt: skip
    table += [
        {"architecture": m, "median_i2f_lb": None, "n": 0, "failed": k, "median_l2_error": None}
        for m, k in failed.items()
        if m not in by_model
    ]
    return sorted(table, key=lambda r: (r["median_i2f_lb"] is None, r["median_i2f_lb"] or 0.0))


# ------------------------------------------------------------------------------------------------ findings
def _rho_text(r: dict[str, Any]) -> str:
    ci = r["spearman_ci"]
    interval = f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else ""
    return f"ρ = {r['spearman']:+.2f}{interval} (n = {r['n']})"


def _sign(r: dict[str, Any]) -> int:
    """+1 / −1 when the group's ρ is clearly positive / negative (interval excludes 0, or |ρ| ≥ 0.5 without one)."""
    rho, ci = r["spearman"], r["spearman_ci"]
    if rho is None:
        return 0
    if ci:
        return 1 if ci[0] > 0 else (-1 if ci[1] < 0 else 0)
    return 1 if rho >= 0.5 else (-1 if rho <= -0.5 else 0)


def headline_predictors(rows: list[Row]) -> list[str]:
    """The I2F terms the findings speak of: the lower bound and the exact terms (all of them, in order)."""
    return [p for p in predictors_of(rows) if p == "lower_bound" or p.startswith("exact@")] or predictors_of(rows)


def _eps(predictor: str) -> float | None:
    """The absolute damping of an ``exact@<eps>`` term (None for relative ``exact@rel:<r>`` or other terms)."""
    try:
        return float(predictor.partition("@")[2])
    except ValueError:
        return None


def slope_predictor(rows: list[Row]) -> str | None:
    """The term the slope is fitted on: exact I2F at ε = 0 (exp. 3's c/√λ_i) when recorded, else the lower bound."""
    names = predictors_of(rows)
    exact0 = [p for p in names if p.startswith("exact@") and _eps(p) == 0.0]
    return exact0[0] if exact0 else ("lower_bound" if "lower_bound" in names else (names[0] if names else None))


def _architectures(rows: list[Row]) -> dict[str, list[Row]]:
    return _by(_ok(rows), lambda r: r.model)


def findings(rows: list[Row], table: list[dict[str, Any]], *, bootstrap: int = 1000) -> dict[str, Any]:
    """The report's findings: sentences (``text``) and the numbers behind them (slopes, rankings, calibration)."""
    ok = _ok(rows)
    main = "l2_error" if any(r.targets.get("l2_error") is not None for r in ok) else None
    out: dict[str, Any] = {"text": [], "slopes": [], "rankings": [], "calibration": []}
    keys = rows[0].group_keys if rows else ()
    strength = next((display(r.strength_name) for r in rows if r.strength_name), "strength")
    swept = ", ".join(display(k) for k in keys) or "nothing besides the strength"
    out["text"].append(
        f"{len(rows)} victims in {len({r.trial_id for r in rows})} trials ({len(rows) - len(ok)} failed). "
        f"Grouped by what the sweep varied: {swept}; strength axis: "
        f"{strength if any(r.strength_name for r in rows) else 'none (no defense declares one)'}."
    )
    if main is None:
        return out
    label = METRICS[main].label
    for p in headline_predictors(rows):
        pooled = next(r for r in table if (r["scope"], r["predictor"], r["target"]) == ("pooled", p, main))
        if pooled["spearman"] is None:
            continue
        groups = [r for r in table if (r["scope"], r["predictor"], r["target"]) == ("group", p, main)]
        groups = [r for r in groups if r["spearman"] is not None]
        text = f"I2F {p} vs attack {label}: pooled over all victims {_rho_text(pooled)}."
        if groups:
            lo, hi = min(groups, key=lambda r: r["spearman"]), max(groups, key=lambda r: r["spearman"])
            text += (f" Per group ρ runs from {lo['spearman']:+.2f} ({lo['group']}) to {hi['spearman']:+.2f} "
                     f"({hi['group']}).")  # fmt: skip
            up = [r["group"] for r in groups if _sign(r) > 0]
            down = [r["group"] for r in groups if _sign(r) < 0]
            if up and down:
                text += (f" The pooled ρ hides opposite trends: ρ > 0 in {', '.join(up)} and ρ < 0 in "
                         f"{', '.join(down)}; read the groups, not the pooled value.")  # fmt: skip
            elif (up or down) and _sign(pooled) and _sign(pooled) != (1 if up else -1) and not (up and down):
                text += " The pooled ρ has the opposite sign of the groups': read the groups."
        levels = [r for r in table if (r["scope"], r["predictor"], r["target"]) == ("level", p, main)]
        levels = [r for r in levels if r["spearman"] is not None]
        if levels:
            lo, hi = min(r["spearman"] for r in levels), max(r["spearman"] for r in levels)
            text += (f" Within one {strength} level (groups pooled) ρ runs from {lo:+.2f} to {hi:+.2f} "
                     f"(n = {min(r['n'] for r in levels)} to {max(r['n'] for r in levels)}).")  # fmt: skip
        out["text"].append(text)
    # slope of the error on the prediction, per architecture
    sp = slope_predictor(rows)
    if sp is not None:
        parts = []
        for model, members in _architectures(rows).items():
            fit = loglog_slope([r.predictors.get(sp) for r in members], [r.targets.get(main) for r in members])
            out["slopes"].append({"architecture": model, "level": None, "predictor": sp, "target": main, **fit})
            if fit["slope"] is not None:
                ci = fit["slope_ci"]
                parts.append(f"{model} {fit['slope']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] (n = {fit['n']})")
            levels = _by([r for r in members if r.strength is not None], lambda r: r.strength)
            if len(levels) > 1:  # at one strength, only what the groups vary moves the prediction (exp. 3: λ_i)
                for level, sub in levels.items():
                    at = loglog_slope([r.predictors.get(sp) for r in sub], [r.targets.get(main) for r in sub])
                    out["slopes"].append({"architecture": model, "level": level, "predictor": sp, "target": main, **at})
        if parts:
            out["text"].append(
                f"Log-log slope of the attack {label} on I2F {sp} (1 when the error is the prediction times a "
                f"constant): {'; '.join(parts)}."
            )
    # do the groups rank the same by I2F and by the attack?
    if len({r.group for r in ok}) > 1:
        for p in headline_predictors(rows):
            entry = {"predictor": p, "scope": "all levels", **_ranking(ok, p, main)}
            out["rankings"].append(entry)
            per_level = []
            for level, members in _by([r for r in ok if r.strength is not None], lambda r: r.strength).items():
                lv = {"predictor": p, "scope": f"{strength}={level:g}", **_ranking(members, p, main)}
                out["rankings"].append(lv)
                if lv["kendall"] is not None:
                    per_level.append(f"{level:g}: {lv['kendall']:+.2f}")
            if entry["kendall"] is None:
                continue
            text = (f"Ranking the {len(entry['by_i2f'])} groups by median I2F {p} and by median attack {label} "
                    f"(most leakage first): Kendall τ = {entry['kendall']:+.2f}; I2F puts {entry['by_i2f'][0]} "
                    f"first, the attack {entry['by_attack'][0]}.")  # fmt: skip
            if entry["agree"]:
                text = text[:-1] + " (the same order)."
            if len(per_level) > 1:
                text += f" Per {strength} level τ = {', '.join(per_level)}."
            if "model" in keys and len(keys) > 1:  # the other keys' order within each architecture
                within = []
                for model, members in _architectures(rows).items():
                    arch = {"predictor": p, "scope": f"architecture={model}", **_ranking(members, p, main)}
                    out["rankings"].append(arch)
                    if arch["kendall"] is not None:
                        same = " (the same order)" if arch["agree"] else ""
                        within.append(
                            f"{model} τ = {arch['kendall']:+.2f}{same}, by I2F "
                            f"{' < '.join(_short_label(g, model) for g in arch['by_i2f'])}, by the attack "
                            f"{' < '.join(_short_label(g, model) for g in arch['by_attack'])}"
                        )
                if within:
                    text += f" Within one architecture: {'; '.join(within)}."
            out["text"].append(text)
    # groups where the attack recovered nothing: error at or above the mean-image floor
    floored = []
    for g, members in _by(ok, lambda r: r.group).items():
        errs = [r.targets.get(main) for r in members if r.targets.get(main) is not None]
        floors = [r.floor for r in members if r.floor is not None]
        if errs and floors and statistics.median(errs) >= 0.8 * statistics.median(floors):
            floored.append(f"{g} ({statistics.median(errs):.3g} against {statistics.median(floors):.3g})")
    if floored:
        out["text"].append(
            f"Median attack {label} within 20% of the mean-image floor or above it (the attack recovered about "
            f"nothing; these groups' order is the floor's, not leakage): {'; '.join(floored)}."
        )
    # calibration: how far each I2F term sits below the error, per architecture (lower bound, exact at ε = 0)
    names = predictors_of(rows)
    for term in dict.fromkeys(p for p in ("lower_bound", slope_predictor(rows)) if p in names):
        words = "the I2F lower bound" if term == "lower_bound" else f"I2F {term}"
        parts, cals = [], []
        for model, members in _architectures(rows).items():
            cal = calibration(
                [r.predictors.get(term) for r in members], [r.targets.get(main) for r in members],
                bootstrap=bootstrap,
            )  # fmt: skip
            out["calibration"].append({"architecture": model, "predictor": term, **cal})
            if cal["ratio"] is not None:
                cals.append(cal)
                ci = cal["ratio_ci"]
                interval = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
                parts.append(f"{model} {cal['ratio']:.3g}×{interval} ({cal['at_least']}/{cal['n']} at or above it)")
        if parts:
            text = f"Attack {label} over {words} (median per architecture): {'; '.join(parts)}."
            if len(cals) > 1:
                spread = max(c["ratio"] for c in cals) / min(c["ratio"] for c in cals)
                text += (f" The ratio differs {spread:.3g}× between architectures: a cross-architecture ranking by "
                         f"{words} holds for the attack only where two architectures' values differ by more than "
                         "that factor.")  # fmt: skip
            out["text"].append(text)
    return out


def _ranking(members: list[Row], predictor: str, target: str) -> dict[str, Any]:
    groups = {
        g: ([r.predictors.get(predictor) for r in rs], [r.targets.get(target) for r in rs])
        for g, rs in _by(members, lambda r: r.group).items()
    }
    return ranking_agreement(groups)


# ------------------------------------------------------------------------------------------------ writers
def _markdown(table: list[dict[str, Any]], rank: list[dict[str, Any]], found: dict[str, Any], title: str) -> str:
    lines = [f"# Sweep report: {title}", "", "## Findings", ""]
    lines += [f"- {t}" for t in found["text"]]
    shown = {r["predictor"] for r in table if r["predictor"] == "lower_bound" or r["predictor"].startswith("exact@")}
    main = [
        r
        for r in table
        if r["target"] in MAIN_TARGETS and r["scope"] in ("group", "pooled", "marginal") and r["predictor"] in shown
    ]
    if main:
        lines += ["", "## I2F vs attack error", "",
                  "RMSE, PSNR and SSIM mirror ‖x̂ − x‖ and are in `correlations.csv`, with the rows per strength "
                  "level and the other I2F terms (damped lower bounds, attack-aware I2F).", "",
                  "| group | I2F term | attack error | n | failed | Spearman ρ [95% CI] | Kendall τ [95% CI] "
                  "| Pearson r (log) [95% CI] |",
                  "|---|---|---|---:|---:|---|---|---|"]  # fmt: skip
        for r in main:
            lines.append(
                f"| {r['group']} | {r['predictor']} | {r['target']} | {r['n']} | {r['failed']} "
                f"| {_fmt(r['spearman'], r['spearman_ci'])} | {_fmt(r['kendall'], r['kendall_ci'])} "
                f"| {_fmt(r['pearson_log'], r['pearson_log_ci'])} |"
            )
    if found["slopes"]:
        lines += ["", "## Slope of the attack error on I2F (log-log)", "",
                  "| architecture | strength level | I2F term | n | slope [95% CI] |",
                  "|---|---|---|---:|---|"]  # fmt: skip
        for s in found["slopes"]:
            ci = s["slope_ci"]
            text = "–" if s["slope"] is None else f"{s['slope']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
            level = "all" if s["level"] is None else f"{s['level']:g}"
            lines.append(f"| {s['architecture']} | {level} | {s['predictor']} | {s['n']} | {text} |")
    if found["rankings"]:
        lines += ["", "## Groups ranked by I2F and by the attack (most leakage first)", "",
                  "| I2F term | scope | by I2F | by attack | Kendall τ |", "|---|---|---|---|---:|"]  # fmt: skip
        for r in found["rankings"]:
            model = r["scope"].removeprefix("architecture=") if r["scope"].startswith("architecture=") else None
            by_i2f, by_attack = (" < ".join(_short_label(g, model) for g in r[k]) for k in ("by_i2f", "by_attack"))
            lines.append(f"| {r['predictor']} | {r['scope']} | {by_i2f} | {by_attack} | {_num(r['kendall'])} |")
    if found["calibration"]:
        lines += ["", "## Calibration: attack error over I2F, per architecture", "",
                  "| architecture | I2F term | n | median error / I2F [95% CI] | error ≥ I2F |",
                  "|---|---|---:|---|---:|"]  # fmt: skip
        for c in found["calibration"]:
            ci = c["ratio_ci"]
            text = _num(c["ratio"]) + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
            lines.append(f"| {c['architecture']} | {c['predictor']} | {c['n']} | {text} | {c['at_least']}/{c['n']} |")
    lines += ["", "Predicted leakage by architecture (lowest I2F lower bound = most leakage):", "",
              "| rank | architecture | median I2F lower bound | median attack ‖x̂ − x‖ | n | failed |",
              "|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for i, r in enumerate(rank, 1):
        lines.append(f"| {i} | {r['architecture']} | {_num(r['median_i2f_lb'])} | {_num(r['median_l2_error'])} "
                     f"| {r['n']} | {r['failed']} |")  # fmt: skip
    return "\n".join(lines)


def _short_label(group: str, model: str | None = None) -> str:
    """``architecture=convnet5`` → ``convnet5`` (one key); with ``model``, that architecture's part is dropped."""
    if model is not None:
        group = ", ".join(p for p in group.split(", ") if p != f"architecture={model}") or group
    return group.split("=", 1)[1] if group.count("=") == 1 else group


def _latex(table: list[dict[str, Any]]) -> str:
    def esc(s: str) -> str:
        return s.replace("_", r"\_").replace("%", r"\%")

    body = [
        r"\begin{tabular}{lllrrrrr}", r"\toprule",
        r"Group & I2F & Error & $n$ & Failed & Spearman $\rho$ & Kendall $\tau$ & Pearson $r$ (log) \\",
        r"\midrule",
    ]  # fmt: skip
    for r in table:
        if r["target"] not in MAIN_TARGETS or r["scope"] not in ("group", "pooled"):
            continue
        vals = ["--" if r[k] is None else f"{r[k]:.3f}" for k in ("spearman", "kendall", "pearson_log")]
        body.append(
            f"{esc(r['group'])} & {esc(r['predictor'])} & {esc(r['target'])} & "
            f"{r['n']} & {r['failed']} & {vals[0]} & {vals[1]} & {vals[2]} \\\\"
        )
    body += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(body) + "\n"


def _csv(table: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["scope", "group", "level", "predictor", "target", "n", "dropped", "failed", "spearman", "spearman_lo",
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

    ``attack`` picks the attack errors (see :func:`load_rows`): the suite's worst case by default. The returned
    ``headline`` is the findings' sentences (what ``dglbench demo`` prints).
    """
    layout = RunLayout(sweep_dir)
    rows = load_rows(sweep_dir, attack)
    table = correlation_table(rows, bootstrap=bootstrap)
    rank = ranking(rows)
    found = findings(rows, table, bootstrap=bootstrap)
    has_attack = any(r.targets.get("l2_error") is not None for r in rows)
    n_failed = sum(r.status != "ok" for r in rows)
    if n_failed:
        reasons = sorted({r.reason or "" for r in rows if r.status != "ok"})
        found["text"].append("Failure reasons: " + "; ".join(reasons[:5]) + ".")
    if attack != WORST:
        found["text"].append(f"Attack errors of the attack {attack!r}.")
    elif any(r.attacks > 1 for r in rows):
        most = max(r.attacks for r in rows)
        found["text"].append(
            f"Attack errors are the worst case per victim over each trial's optimization attacks (up to {most} "
            "attacks): per metric, the attack best for the attacker."
        )
    left_out = sorted({name for r in rows for name in r.closed_form})
    if attack == WORST and left_out:
        found["text"].append(
            f"Closed-form attacks ({', '.join(left_out)}) are left out of the attack errors: they rebuild images by "
            "algebra, which I2F does not model, so no correlation is claimed for them (their metrics are in the "
            "trial records)."
        )
    md = _markdown(table, rank, found, Path(sweep_dir).name)
    paths = {
        "markdown": atomic_write_text(layout.report_file("report.md"), md + "\n"),
        "csv": atomic_write_text(layout.report_file("correlations.csv"), _csv(table)),
        "latex": atomic_write_text(layout.report_file("correlations.tex"), _latex(table)),
    }
    if plots:
        from dglbench.sweep import plots as p

        predictors = predictors_of(rows)
        if has_attack and predictors:
            paths["scatter"] = p.plot_scatter(rows, layout.report_file("i2f_vs_error"), predictors[0])
            sp = slope_predictor(rows)
            if sp and sp != predictors[0]:
                paths["predicted"] = p.plot_scatter(rows, layout.report_file("error_vs_predicted"), sp, by="group")
            if len({r.group for r in rows}) > 1:
                paths["groups"] = p.plot_groups(rows, layout.report_file("groups"), headline_predictors(rows)[0])
        if has_attack:
            paths["strength"] = p.plot_strength(rows, layout.report_file("metric_vs_strength"))
        paths["ranking"] = p.plot_ranking(rows, layout.report_file("risk_ranking"))
        recon = p.plot_reconstructions(rows, sweep_dir, layout.report_file("reconstructions"), attack=attack)
        if recon is not None:  # the trials saved their images
            paths["reconstructions"] = recon
    return {"paths": paths, "table": table, "ranking": rank, "markdown": md, "findings": found,
            "headline": found["text"]}  # fmt: skip
