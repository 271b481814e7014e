"""From per-victim records to an entry's summaries: the one computation ``submit`` and ``validate`` share.

Records are the runner's per-victim dicts (:func:`dglbench.runner.run_trial`). Every victim of
every trial counts: a victim whose record has ``status: "failed"`` adds to ``failures`` and its
values are left out of the means, never silently dropped. The suite's first trial carries the I2F
estimate; the other attacks are compared with it victim by victim.

Example:
    >>> records = [{"trial_id": "t", "victim_id": 0, "status": "failed", "utility": None, "i2f": None,
    ...             "metrics": None}]
    >>> by_trial(records, ["t"], 1)["t"][0]["status"]
    'failed'
"""

from __future__ import annotations

import math
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.leaderboard.schema import AttackSummary, I2FAgreement, I2FSummary
from dglbench.leaderboard.stats import Stat, round_sig, spearman, summarize
from dglbench.leaderboard.track import Track

__all__ = ["RecordError", "accuracy_drop", "by_trial", "gradient_cosine", "i2f_summary", "privacy_summaries"]

_REQUIRED = ("trial_id", "victim_id", "status", "i2f", "metrics", "utility")


class RecordError(DglbenchError, ValueError):
    """The per-victim records do not cover the track's victims exactly once per trial."""


def by_trial(records: list[dict[str, Any]], trial_ids: list[str], num_victims: int) -> dict[str, list[dict]]:
    """Records grouped by trial, each list sorted by victim id; every trial must have victims ``0..n-1`` once."""
    groups: dict[str, list[dict]] = {t: [] for t in trial_ids}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise RecordError(f"records[{i}] is not a mapping")
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            raise RecordError(f"records[{i}] has no {missing[0]!r}")
        if rec["trial_id"] not in groups:
            raise RecordError(f"records[{i}] belongs to trial {rec['trial_id']!r}, not one of the entry's trials")
        if rec["status"] not in ("ok", "failed"):
            raise RecordError(f"records[{i}].status must be 'ok' or 'failed', got {rec['status']!r}")
        groups[rec["trial_id"]].append(rec)
    for trial, recs in groups.items():
        recs.sort(key=lambda r: r["victim_id"])
        ids = [r["victim_id"] for r in recs]
        if ids != list(range(num_victims)):
            raise RecordError(
                f"trial {trial} has records for victims {ids[:8]}{'...' if len(ids) > 8 else ''}; "
                f"expected each of 0..{num_victims - 1} exactly once (failed victims are kept, never dropped)"
            )
    return groups


def _get(rec: dict[str, Any], *path: str) -> float | None:
    value: Any = rec
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _ok(rec: dict[str, Any]) -> bool:
    return rec["status"] == "ok"


def i2f_summary(trial_id: str, records: list[dict[str, Any]]) -> I2FSummary:
    """Summary of the I2F values of one trial's records (victims without an estimate count as failures)."""
    with_i2f = [r for r in records if isinstance(r.get("i2f"), dict)]
    eps_keys = sorted({k for r in with_i2f for k in (r["i2f"].get("exact") or {})}, key=float)
    not_converged = sum(
        1
        for r in with_i2f
        if r["i2f"].get("lower_bound_converged") is False
        or any(v is False for v in (r["i2f"].get("exact_converged") or {}).values())
    )
    return I2FSummary(
        trial_id=trial_id,
        victims=len(records),
        failures=len(records) - len(with_i2f),
        lower_bound=summarize([_get(r, "i2f", "lower_bound") for r in with_i2f]),
        jt_delta=summarize([_get(r, "i2f", "jt_delta") for r in with_i2f]),
        max_eigenvalue=summarize([_get(r, "i2f", "max_eigenvalue") for r in with_i2f]),
        exact={k: summarize([_get(r, "i2f", "exact", k) for r in with_i2f]) for k in eps_keys},
        not_converged=not_converged,
    )


def privacy_summaries(track: Track, trial_ids: list[str], groups: dict[str, list[dict]]) -> list[AttackSummary]:
    """One :class:`AttackSummary` per attack of the track, in suite order."""
    estimate = groups[trial_ids[0]]
    eps0 = repr(float(track.estimate.eps[0]))
    lower = [_get(r, "i2f", "lower_bound") for r in estimate]
    exact = [_get(r, "i2f", "exact", eps0) for r in estimate]
    out = []
    for spec, trial in zip(track.attacks, trial_ids):
        recs = groups[trial]
        metrics = {m: summarize([_get(r, "metrics", m) if _ok(r) else None for r in recs]) for m in track.metrics}
        floors = {
            m: summarize([_get(r, "metrics", "floors", "mean_image", m) if _ok(r) else None for r in recs]).mean
            for m in track.metrics
        }
        l2 = [_get(r, "metrics", "l2_error") if _ok(r) else None for r in recs]
        rho_lb, n_lb = spearman(lower, l2)
        rho_ex, n_ex = spearman(exact, l2)
        out.append(
            AttackSummary(
                attack=spec.name,
                params=dict(spec.params),
                trial_id=trial,
                victims=len(recs),
                failures=sum(not _ok(r) for r in recs),
                metrics=metrics,
                mean_image_floor=floors,
                i2f_agreement=I2FAgreement(rho_lb, rho_ex, max(n_lb, n_ex)),
            )
        )
    return out


def gradient_cosine(records: list[dict[str, Any]]) -> Stat:
    """Summary of the cosine between each victim's defended and clean gradient."""
    return summarize([_get(r, "utility", "gradient_cosine") for r in records])


def accuracy_drop(undefended: float, defended: float) -> float:
    """Percentage points lost to the defense (rounded like every stored number)."""
    value = round_sig(undefended - defended)
    return 0.0 if value is None else value
