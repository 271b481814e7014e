"""BENCHMARKS.md sections of the paper's experiments on embedded data: findings, tables and plots of a sweep.

Each section runs (or resumes) a shipped CPU spec into ``runs/bench/<spec>``, writes its report, copies the
plots the section shows to ``benchmark/findings/<spec>/`` and returns the report's findings with those plots.
A resumed sweep skips trials whose records exist, so a section can be rewritten from earlier records of the
same spec; the section says how many trials ran now and when the records were written.

The calibration section also splits the gap between the attack error and the I2F lower bound into its two
factors, ``error / I2F₀ × I2F₀ / lower bound`` (``I2F₀``: exact I2F at ε = 0): the first is how far the attack
is from the linearized prediction (attack convergence, nonlinearity), the second how loose the bound is for
this perturbation (the spread of the spectrum ``KᵀK`` that ``δ`` meets).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from dglbench.layout import RunLayout, read_trial_records
from dglbench.sweep.findings import calibration
from dglbench.sweep.report import Row, load_rows, write_report

__all__ = ["run_calibration", "run_exp3", "run_exp4", "run_spec", "gap_factors"]

RUNS = Path("runs/bench")
DOCS = Path("benchmark/findings")


def run_spec(spec: str, plots: tuple[str, ...], *, out: Path | None = None, docs: Path | None = None) -> dict[str, Any]:
    """Run (or resume) ``spec`` into ``runs/bench/<spec>``, report it, copy ``plots`` (stems) to the docs folder."""
    from dglbench.sweep.runner import run_sweep

    out = out or RUNS / spec
    docs = docs or DOCS / spec
    start = time.perf_counter()
    res = run_sweep(spec, out, progress=False)
    wall = time.perf_counter() - start
    rep = write_report(out, bootstrap=1000)
    docs.mkdir(parents=True, exist_ok=True)
    shown = []
    for stem in plots:
        png = RunLayout(out).report_file(f"{stem}.png")
        if png.exists():
            shutil.copyfile(png, docs / png.name)
            shown.append(docs / png.name)
    files = RunLayout(out).trial_records()
    stamps = sorted(dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc) for p in files)
    when = f"{stamps[0]:%Y-%m-%d %H:%M} to {stamps[-1]:%H:%M} UTC" if stamps else "–"
    head = (
        f"Spec `{spec}` (`dglbench sweep run {spec} --out {out}`; then `dglbench sweep report {out}`): "
        f"{res.trials} trials, {res.ran} run now in {wall:.0f} s, {res.skipped} kept from earlier runs of the spec; "
        f"records written {when}; {res.failed_victims} failed victims."
    )
    return {"report": rep, "plots": shown, "head": head, "rows": load_rows(out)}


def _section(run: dict[str, Any], note: str, tables: str = "") -> str:
    findings = "\n".join(f"- {t}" for t in run["report"]["headline"])
    images = "\n\n".join(f"![{p.stem}]({p.as_posix()})" for p in run["plots"])
    return f"{run['head']}\n\n{note}\n\nFindings (generated from the records):\n\n{findings}\n\n{tables}{images}\n"


def _slopes(run: dict[str, Any]) -> str:
    md = run["report"]["markdown"]
    if "## Slope" not in md:
        return ""
    block = md.split("## Slope", 1)[1].split("\n## ", 1)[0]
    return "Slope" + block.rstrip() + "\n\n"


def run_exp3() -> str:
    """Exp. 3: noise ``c·u_i`` along eigen-directions; the attack error against the predicted ``c/√λ_i``."""
    run = run_spec("exp3_eigen_cpu", ("error_vs_predicted", "groups"))
    note = (
        "Theory (DESIGN.md, eigen-directions): exact I2F at ε = 0 of `δ = c·u_i` is `c/√λ_i`, so the attack error "
        "against it has log-log slope 1 when I2F predicts the attack; the lower bound `c·√λ_i/λ_max` instead falls "
        "as `λ_i` falls, against the error."
    )
    return _section(run, note, _slopes(run))


def run_exp4() -> str:
    """Exp. 4: the I2F paper's initializations; does I2F order them as the attack does?"""
    run = run_spec("exp4_init_cpu", ("groups", "reconstructions"))
    note = (
        "The paper's initializations (`dglbench.models.init`: `uniform`, `normal`, `kaiming`, `xavier` as in its "
        "script `demos/codes/invert_initializations.py`). The question is the order within one architecture."
    )
    return _section(run, note)


def gap_factors(rows: list[Row], split: str | None = None, *, bootstrap: int = 1000) -> list[dict[str, Any]]:
    """Per architecture (and value of ``split``, a dotted config key): error / lower bound as two factors.

    Returns rows of ``{"architecture", "split", "n", "error_over_lb", "error_over_exact0", "exact0_over_lb",
    "lambda_max"}``; the ratios are :func:`dglbench.sweep.findings.calibration` dicts (median, interval).
    """
    groups: dict[tuple[str, Any], list[Row]] = defaultdict(list)
    for r in rows:
        if r.status == "ok":
            groups[(r.model, r.settings.get(split) if split else None)].append(r)
    out = []
    for (model, value), members in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        lb = [r.predictors.get("lower_bound") for r in members]
        exact0 = [r.predictors.get("exact@0.0") for r in members]
        err = [r.targets.get("l2_error") for r in members]
        lam = [r.settings.get("_lambda_max") for r in members]
        out.append({
            "architecture": model, "split": value, "n": len(members),
            "error_over_lb": calibration(lb, err, bootstrap=bootstrap),
            "error_over_exact0": calibration(exact0, err, bootstrap=bootstrap),
            "exact0_over_lb": calibration(lb, exact0, bootstrap=bootstrap),
            "lambda_max": statistics.median([v for v in lam if v is not None]) if any(lam) else None,
        })  # fmt: skip
    return out


def _ratio(c: dict[str, Any]) -> str:
    if c["ratio"] is None:
        return "–"
    ci = c["ratio_ci"]
    return f"{c['ratio']:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")


def _gap_sentences(gaps: list[dict[str, Any]]) -> str:
    """The calibration's answer in words: is the gap the attack's (budget) or the bound's (spectrum)?"""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for g in gaps:
        by_model[g["architecture"]].append(g)
    moves, attack, bound, lam = [], [], [], []
    for model, gs in by_model.items():
        gs = sorted(gs, key=lambda g: float(g["split"]) if g["split"] is not None else 0.0)
        ratios = [g["error_over_exact0"]["ratio"] for g in gs if g["error_over_exact0"]["ratio"] is not None]
        if len(ratios) > 1:
            moves.append(abs(ratios[-1] / ratios[0] - 1))
        attack += [(r, model) for r in ratios]
        bound += [(g["exact0_over_lb"]["ratio"], model) for g in gs if g["exact0_over_lb"]["ratio"] is not None]
        lam += [(g["lambda_max"], model) for g in gs[:1] if g["lambda_max"] is not None]
    text = []
    if moves:
        budgets = sorted({str(g["split"]) for g in gaps}, key=float)
        text.append(
            f"More attack iterations ({' → '.join(budgets)}) move the median error / I2F₀ by at most "
            f"{100 * max(moves):.1f}% on any architecture: the attack has converged at the smaller budget."
        )
    if attack and bound:
        (alo, am), (ahi, aM) = min(attack), max(attack)
        (blo, bm), (bhi, bM) = min(bound), max(bound)
        text.append(
            f"The attack sits within a small factor of exact I2F at ε = 0 (error / I2F₀ from {alo:.2g} on {am} to "
            f"{ahi:.2g} on {aM}), while the lower bound sits {blo:.3g}× ({bm}) to {bhi:.3g}× ({bM}) below I2F₀: "
            "the gap between the attack and the lower bound is the bound's looseness, not the attack's convergence."
        )
    if len(lam) > 1:
        (llo, lm), (lhi, lM) = min(lam), max(lam)
        text.append(
            f"I2F₀ / lower bound = λ_max / λ_eff with λ_eff = ‖Kᵀδ‖ / I2F₀, the eigenvalue δ effectively meets: "
            f"noise spread over all directions meets the small eigenvalues, so the bound, which divides by λ_max, "
            f"is loose by the spread of the spectrum; λ_max itself spans {llo:.3g} ({lm}) to {lhi:.3g} ({lM})."
        )
    return " ".join(text)


def run_calibration() -> str:
    """Calibration across architectures, and why the lower bound is loose where it is."""
    run = run_spec("calibration_cpu", ("i2f_vs_error", "risk_ranking"))
    rows = run["rows"]
    lam = {}
    for path in RunLayout(RUNS / "calibration_cpu").trial_records():
        for rec in read_trial_records(path):
            lam[(rec.trial_id, rec.victim_id)] = rec.estimate.max_eigenvalue if rec.estimate else None
    rows = [
        dataclasses.replace(r, settings={**r.settings, "_lambda_max": lam.get((r.trial_id, r.victim_id))}) for r in rows
    ]
    gaps = gap_factors(rows, "attack_params.max_iterations")
    lines = [
        _gap_sentences(gaps),
        "",
        "| architecture | attack iterations | n | error / lower bound | error / I2F₀ | I2F₀ / lower bound "
        "| median λ_max |",
        "|---|---:|---:|---|---|---|---:|",
    ]
    for g in gaps:
        lam_text = "–" if g["lambda_max"] is None else f"{g['lambda_max']:.3g}"
        lines.append(
            f"| {g['architecture']} | {g['split']} | {g['n']} | {_ratio(g['error_over_lb'])} "
            f"| {_ratio(g['error_over_exact0'])} | {_ratio(g['exact0_over_lb'])} | {lam_text} |"
        )
    note = (
        "How far I2F sits below the attack error, per architecture, as medians over victims with bootstrap 95% "
        "intervals; `I2F₀` is exact I2F at ε = 0 (the minimum-norm solution). error / lower bound = "
        "(error / I2F₀) × (I2F₀ / lower bound): the first factor is the attack's distance from the linearized "
        "prediction (it shrinks when more iterations help), the second the bound's looseness for this δ (the "
        "spread of the spectrum of KᵀK that δ meets). Images are the embedded 8×8 digits; at 28×28 the spectra, and "
        "so these factors, differ (not measured here)."
    )
    return _section(run, note, "\n".join(lines) + "\n\n")
