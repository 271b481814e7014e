"""From per-victim records to an entry's summaries: the one computation ``submit`` and ``validate`` share.

Records are :class:`~dglbench.record.VictimRecord` objects or their stored dicts (any readable schema
version; the victims files of entries made before attack suites hold version 1). Every victim of every
trial counts: a victim whose record failed, or whose trial's attack failed, adds to ``failures`` and its
values are left out of the means, never silently dropped. The suite's first trial carries the I2F
estimate; the other attacks are compared with it victim by victim. Each trial of a track is measured by
the track's attack for it (the first attack of the trial's suite); :func:`worst_case_summary` takes, per
victim, the best value for the attacker over every attack that ran on it, in every trial.

Example:
    >>> records = [{"schema_version": 2, "trial_id": "t", "victim_id": 0, "status": "failed"}]
    >>> by_trial(records, ["t"], 1)["t"][0].status
    'failed'
"""

from __future__ import annotations

import math
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.leaderboard.schema import AttackSummary, I2FAgreement, I2FSummary, WorstCaseSummary
from dglbench.leaderboard.stats import Stat, round_sig, spearman, summarize
from dglbench.leaderboard.track import Track
from dglbench.record import AttackOutcome, VictimRecord, as_record, worst_case

__all__ = [
    "RecordError",
    "accuracy_drop",
    "by_trial",
    "gradient_cosine",
    "i2f_summary",
    "image_share",
    "privacy_summaries",
    "suite_summaries",
    "suite_worst_case",
    "worst_case_summary",
]


class RecordError(DglbenchError, ValueError):
    """The per-victim records do not cover the track's victims exactly once per trial."""


def by_trial(
    records: list[VictimRecord | dict[str, Any]], trial_ids: list[str], num_victims: int
) -> dict[str, list[VictimRecord]]:
    """Records grouped by trial, each list sorted by victim id; every trial must have victims ``0..n-1`` once."""
    groups: dict[str, list[VictimRecord]] = {t: [] for t in trial_ids}
    for i, raw in enumerate(records):
        try:
            rec = as_record(raw)
        except DglbenchError as exc:
            raise RecordError(f"records[{i}]: {exc}") from None
        if rec.trial_id not in groups:
            raise RecordError(f"records[{i}] belongs to trial {rec.trial_id!r}, not one of the entry's trials")
        groups[rec.trial_id].append(rec)
    for trial, recs in groups.items():
        recs.sort(key=lambda r: r.victim_id)
        ids = [r.victim_id for r in recs]
        if ids != list(range(num_victims)):
            raise RecordError(
                f"trial {trial} has records for victims {ids[:8]}{'...' if len(ids) > 8 else ''}; "
                f"expected each of 0..{num_victims - 1} exactly once (failed victims are kept, never dropped)"
            )
    return groups


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        return None
    return float(value)


def _tracked(rec: VictimRecord) -> str | None:
    """The key of the track's attack in a record (the first of its trial's suite)."""
    return rec.attacks[0].key if rec.attacks else None


def _measured(rec: VictimRecord) -> bool:
    """The record is ok and the track's attack for its trial produced metrics."""
    first = rec.attack(_tracked(rec) or "")
    return rec.ok and first is not None and first.ok


def i2f_summary(trial_id: str, records: list[VictimRecord | dict[str, Any]]) -> I2FSummary:
    """Summary of the I2F values of one trial's records (victims without an estimate count as failures)."""
    recs = [as_record(r) for r in records]
    with_i2f = [r.estimate for r in recs if r.estimate is not None]
    eps_keys = sorted({k for e in with_i2f for k in e.exact}, key=float)
    not_converged = sum(
        1 for e in with_i2f if e.lower_bound_converged is False or any(v is False for v in e.exact_converged.values())
    )
    return I2FSummary(
        trial_id=trial_id,
        victims=len(recs),
        failures=len(recs) - len(with_i2f),
        lower_bound=summarize([_finite(e.lower_bound) for e in with_i2f]),
        jt_delta=summarize([_finite(e.jt_delta) for e in with_i2f]),
        max_eigenvalue=summarize([_finite(e.max_eigenvalue) for e in with_i2f]),
        exact={k: summarize([_finite(e.exact.get(k)) for e in with_i2f]) for k in eps_keys},
        not_converged=not_converged,
    )


def privacy_summaries(track: Track, trial_ids: list[str], groups: dict[str, list[VictimRecord]]) -> list[AttackSummary]:
    """One :class:`AttackSummary` per attack of the track, in suite order."""
    estimate = [as_record(r) for r in groups[trial_ids[0]]]
    eps0 = repr(float(track.estimate.eps[0]))
    lower = [_finite(r.estimate.lower_bound) if r.estimate else None for r in estimate]
    exact = [_finite(r.estimate.exact.get(eps0)) if r.estimate else None for r in estimate]
    out = []
    for spec, trial in zip(track.attacks, trial_ids):
        recs = [as_record(r) for r in groups[trial]]
        metrics = {m: summarize([r.metric(m, _tracked(r)) for r in recs]) for m in track.metrics}
        floors = {m: summarize([_floor(r, m) for r in recs]).mean for m in track.metrics}
        l2 = [r.metric("l2_error", _tracked(r)) for r in recs]
        rho_lb, n_lb = spearman(lower, l2)
        rho_ex, n_ex = spearman(exact, l2)
        out.append(
            AttackSummary(
                attack=spec.name,
                params=dict(spec.params),
                trial_id=trial,
                victims=len(recs),
                failures=sum(not _measured(r) for r in recs),
                metrics=metrics,
                mean_image_floor=floors,
                i2f_agreement=I2FAgreement(rho_lb, rho_ex, max(n_lb, n_ex)),
            )
        )
    return out


def _floor(rec: VictimRecord, metric: str) -> float | None:
    if not _measured(rec):
        return None
    return _finite((rec.floors.get("mean_image") or {}).get(metric))


def worst_case_summary(track: Track, trial_ids: list[str], groups: dict[str, list[VictimRecord]]) -> dict[str, Any]:
    """Per victim, the worst case over every attack that ran on it in any trial of the entry; then summaries.

    Returns ``{"victims", "failures", "metrics": {metric: Stat}, "source": {metric: {attack: victims}}}``:
    a victim counts as failed only when no attack produced metrics for it.
    """
    per_victim = []
    for j in range(track.num_victims):
        outcomes = [o for t in trial_ids for o in as_record(groups[t][j]).attacks]
        per_victim.append(worst_case(outcomes))
    source: dict[str, dict[str, int]] = {m: {} for m in track.metrics}
    for w in per_victim:
        for m in track.metrics:
            if m in w.source:
                source[m][w.source[m]] = source[m].get(w.source[m], 0) + 1
    return {
        "victims": len(per_victim),
        "failures": sum(w.status != "ok" for w in per_victim),
        "metrics": {m: summarize([_finite(w.metrics.get(m)) for w in per_victim]) for m in track.metrics},
        "source": source,
    }


def gradient_cosine(records: list[VictimRecord | dict[str, Any]]) -> Stat:
    """Summary of the cosine between each victim's defended and clean gradient."""
    return summarize([_finite((as_record(r).utility or {}).get("gradient_cosine")) for r in records])


def accuracy_drop(undefended: float, defended: float) -> float:
    """Percentage points lost to the defense (rounded like every stored number)."""
    value = round_sig(undefended - defended)
    return 0.0 if value is None else value


# ------------------------------------------------------------------------------------- protocol 2 (one trial)
def _attack_keys(recs: list[VictimRecord]) -> list[str]:
    """Attack keys of the trial in suite order (the union over victims, first seen first), without the attacks
    skipped on every victim: they do not apply to the track's case or model, and are neither failures nor entries."""
    keys: list[str] = []
    for r in recs:
        for o in r.attacks:
            if o.key not in keys:
                keys.append(o.key)
    return [k for k in keys if any(not _skipped(r.attack(k)) for r in recs)]


def _skipped(outcome: Any) -> bool:
    return outcome is not None and outcome.status == "skipped"


def _mean_image_floors(rec: VictimRecord) -> dict[str, Any]:
    """The victim's blind-guess scores, from any attack that measured them (they do not depend on the attack)."""
    for o in rec.attacks:
        floors = ((o.metrics or {}).get("floors") or {}).get("mean_image")
        if floors:
            return dict(floors)
    return {}


def _mean_floor(recs: list[VictimRecord], metric: str) -> float | None:
    return summarize([_finite(_mean_image_floors(r).get(metric)) for r in recs]).mean


def suite_summaries(track: Track, trial_id: str, records: list[VictimRecord | dict[str, Any]]) -> list[AttackSummary]:
    """Protocol 2: one :class:`AttackSummary` per attack of the trial (suite and adaptive attacks).

    An attack that failed or diverged on a victim (:func:`~dglbench.leaderboard.protocol.succeeded`) counts as a
    failure there and its values are left out.
    """
    from dglbench.leaderboard.protocol import succeeded

    recs = [as_record(r) for r in records]
    eps0 = repr(float(track.estimate.eps[0])) if track.estimate is not None else ""
    lower = [_finite(r.estimate.lower_bound) if r.estimate else None for r in recs]
    exact = [_finite(r.estimate.exact.get(eps0)) if r.estimate else None for r in recs]
    out = []
    for key in _attack_keys(recs):
        outcomes = [r.attack(key) if r.ok else None for r in recs]
        good = [o if o is not None and succeeded(o, track.ranking.leakage) else None for o in outcomes]
        metrics = {
            m: summarize([_finite((o.metrics or {}).get(m)) if o else None for o in good]) for m in track.metrics
        }
        l2 = [_finite((o.metrics or {}).get("l2_error")) if o else None for o in good]
        rho_lb, n_lb = spearman(lower, l2)
        rho_ex, n_ex = spearman(exact, l2)
        first = next(o for o in outcomes if o is not None) if any(outcomes) else None
        out.append(
            AttackSummary(
                attack=key,
                params=dict(first.params) if first else {},
                trial_id=trial_id,
                victims=len(recs),
                failures=sum(g is None and not _skipped(o) for g, o in zip(good, outcomes)),
                metrics=metrics,
                mean_image_floor={m: _mean_floor(recs, m) for m in track.metrics},
                i2f_agreement=I2FAgreement(rho_lb, rho_ex, max(n_lb, n_ex)),
            )
        )
    return out


def _attack_outcomes(
    r: VictimRecord, keys: list[str], leak_metrics: list[str]
) -> tuple[list[AttackOutcome], list[str]]:
    """Protocol 2 on one victim: the outcomes of the attacks that succeeded on it, and the keys of those that
    failed (a skipped attack did not apply there and is neither)."""
    from dglbench.leaderboard.protocol import succeeded

    ok, failed = [], []
    for key in keys:
        o = r.attack(key)
        if r.ok and o is not None and succeeded(o, leak_metrics):
            ok.append(o)
        elif not (r.ok and _skipped(o)):
            failed.append(key)
    return ok, failed


def suite_worst_case(track: Track, records: list[VictimRecord | dict[str, Any]]) -> WorstCaseSummary:
    """Protocol 2: per victim the worst case over the attacks that succeeded on it, its leakage, and summaries."""
    from dglbench.leaderboard.protocol import bootstrap_interval, leakage_value, victim_leakage

    recs = [as_record(r) for r in records]
    keys = _attack_keys(recs)
    leak_metrics = list(track.ranking.leakage)
    attack_failures = {k: 0 for k in keys}
    per_victim, leakage = [], []
    for r in recs:
        ok, failed = _attack_outcomes(r, keys, leak_metrics)
        for key in failed:
            attack_failures[key] += 1
        w = worst_case(ok) if ok else None
        per_victim.append(w)
        floors = _mean_image_floors(r)
        # the worst value of each leakage metric, an exact copy's PSNR (+inf; null in records) included
        worst = {m: max(leakage_value(o.metrics or {}, m) for o in ok) for m in leak_metrics} if ok else {}
        leakage.append(victim_leakage(worst, floors, leak_metrics) if w else None)
    source: dict[str, dict[str, int]] = {m: {} for m in track.metrics}
    for w in per_victim:
        for m in track.metrics:
            if w is not None and m in w.source:
                source[m][w.source[m]] = source[m].get(w.source[m], 0) + 1
    low, high = bootstrap_interval(
        [v for v in leakage if v is not None], track.ranking.bootstrap, track.ranking.bootstrap_seed
    )
    return WorstCaseSummary(
        victims=len(recs),
        failures=sum(w is None for w in per_victim),
        attack_failures=attack_failures,
        metrics={m: summarize([_finite(w.metrics.get(m)) if w else None for w in per_victim]) for m in track.metrics},
        floors={m: _mean_floor(recs, m) for m in track.metrics},
        source={m: dict(sorted(s.items())) for m, s in source.items()},
        leakage_metrics=leak_metrics,
        leakage=summarize(leakage),
        leakage_ci95_low=round_sig(low),
        leakage_ci95_high=round_sig(high),
    )


def image_share(
    track: Track, records: list[VictimRecord | dict[str, Any]], threshold: float = 40.0
) -> tuple[float | None, float | None, float | None]:
    """Protocol 2 with several images per victim: the mean over victims of the share of a victim's images that
    some attack which succeeded on it reconstructed at ``threshold`` dB PSNR or more (an exact copy, PSNR +inf,
    counts), with the track's 95 % percentile bootstrap over victims; ``(None, None, None)`` when no record holds
    per-image values. Victims on which every attack failed are left out, as in the leakage mean.

    Example:
        >>> from dglbench.leaderboard.track import load_track
        >>> def rec(psnrs):
        ...     per = {"psnr": psnrs, "mse": [1e-16 if p is None else 1.0 for p in psnrs], "ssim": [0.5] * len(psnrs)}
        ...     m = {"psnr": 50.0, "mse": 0.1, "ssim": 0.5, "per_image": per}
        ...     return {"schema_version": 2, "trial_id": "t", "victim_id": 0, "status": "ok",
        ...             "attacks": [{"key": "imprint", "name": "imprint", "status": "ok", "final_loss": 0.0,
        ...                          "metrics": m}]}
        >>> image_share(load_track("natural-imprint@2"), [rec([45.0, None, 12.0, 39.9])])[0]
        0.5
    """
    from dglbench.leaderboard.protocol import bootstrap_interval

    recs = [as_record(r) for r in records]
    keys, leak_metrics = _attack_keys(recs), list(track.ranking.leakage)
    shares = []
    for r in recs:
        best: list[float] | None = None
        for o in _attack_outcomes(r, keys, leak_metrics)[0]:
            per = (o.metrics or {}).get("per_image") or {}
            psnr, mse = per.get("psnr"), per.get("mse") or []
            if not psnr:
                continue
            # as leakage_value: a null PSNR with a finite error is an exact copy (+inf), else not measured
            values = [p if p is not None else (math.inf if i < len(mse) and _finite(mse[i]) is not None else -math.inf)
                      for i, p in enumerate(psnr)]  # fmt: skip
            best = values if best is None else [max(a, b) for a, b in zip(best, values)]
        if best:
            shares.append(sum(v >= threshold for v in best) / len(best))
    if not shares:
        return None, None, None
    low, high = bootstrap_interval(shares, track.ranking.bootstrap, track.ranking.bootstrap_seed)
    return sum(shares) / len(shares), low, high
