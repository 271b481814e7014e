"""Ranking: privacy at matched utility, and the privacy–utility Pareto frontier.

The rule is the track's (:class:`~dglbench.leaderboard.track.RankingSpec`):

1. An entry is *eligible* when its FedSGD test accuracy is at most ``max_accuracy_drop`` percentage
   points below the undefended accuracy, and its ranking attack has a value (not every victim failed).
2. Eligible entries are ordered by the mean ranking ``metric`` of the ranking ``attack`` — less
   leakage first (lower PSNR/SSIM/label accuracy, higher l2 error/LPIPS) — then by ``tie_break``,
   then by entry id; ranks are 1, 2, ... in that order.
3. Other entries are listed unranked, after the ranked ones: "add infinite noise" protects
   perfectly and destroys the model, so it never wins.
4. Independently, an entry is on the *Pareto frontier* when no other entry has at least its
   accuracy and at most its leakage, one of them strictly.

Protocol-2 tracks (:mod:`dglbench.leaderboard.protocol`) rank by the mean per-victim leakage score of the
suite's worst case instead (``attack`` is ``worst_case``, ``value`` the mean leakage, ``tie_value`` the mean
worst-case ranking metric); eligible entries are listed by mean leakage, then the tie-break, then entry id,
and entries whose 95 % bootstrap intervals overlap share a rank range (``rank_range``, shown "2-4").

Example:
    >>> leak(30.0, "psnr"), leak(2.0, "l2_error")
    (30.0, -2.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from dglbench.leaderboard.schema import Entry
from dglbench.leaderboard.track import METRICS, Track

__all__ = ["Board", "Row", "leak", "rank_entries"]


def leak(value: float, metric: str) -> float:
    """``value`` oriented so that larger always means more leakage."""
    return value if METRICS[metric] else -value


@dataclass(frozen=True)
class Row:
    """One entry's place on its track's leaderboard.

    Attributes:
        entry: the entry.
        rank: 1, 2, ... for eligible entries; ``None`` for unranked ones.
        attack: the attack the ranking value comes from (the strongest one under ``attack: strongest``).
        value / tie_value: mean ranking metric and tie-break metric of that attack (``None``: no value).
        accuracy / drop: FedSGD test accuracy and its drop from the undefended accuracy (points).
        eligible: whether the utility rule admits the entry.
        pareto: whether the entry is on the privacy–utility frontier.
        note: why an entry is unranked, else ``""``.
        rank_range: protocol 2: the (best, worst) rank the entry's interval allows; ``None`` otherwise.
        low / high: protocol 2: the 95 % bootstrap interval of the mean leakage.
        image_share: protocol 2 with several images per victim: the mean share of a victim's images recovered
            at 40 dB or more, with its bootstrap interval (:func:`~dglbench.leaderboard.aggregate.image_share`;
            shown, not ranked); ``None`` otherwise.
    """

    entry: Entry
    rank: int | None
    attack: str | None
    value: float | None
    tie_value: float | None
    accuracy: float
    drop: float
    eligible: bool
    pareto: bool
    note: str
    rank_range: tuple[int, int] | None = None
    low: float | None = None
    high: float | None = None
    image_share: tuple[float | None, float | None, float | None] | None = None

    @property
    def rank_text(self) -> str:
        """``"3"``, a shared range ``"2-4"``, or ``"–"`` when unranked."""
        if self.rank is None:
            return "–"
        if self.rank_range and self.rank_range[0] != self.rank_range[1]:
            return f"{self.rank_range[0]}-{self.rank_range[1]}"
        return str(self.rank_range[0] if self.rank_range else self.rank)


@dataclass(frozen=True)
class Board:
    """A track and its ranked rows (:func:`rank_entries`)."""

    track: Track
    rows: list[Row]


def _attack_value(track: Track, entry: Entry) -> tuple[str | None, float | None, float | None]:
    metric, tie = track.ranking.metric, track.ranking.tie_break
    candidates = []
    for summary in entry.privacy:
        if track.ranking.attack not in ("strongest", summary.attack):
            continue
        value = summary.metrics[metric].mean if metric in summary.metrics else None
        tie_value = summary.metrics[tie].mean if tie in summary.metrics else None
        if value is not None:
            candidates.append((summary.attack, value, tie_value))
    if not candidates:
        return (None if track.ranking.attack == "strongest" else track.ranking.attack), None, None
    return max(candidates, key=lambda c: (leak(c[1], metric), leak(c[2], tie) if c[2] is not None else 0.0))


def _pareto(points: list[tuple[float, float] | None]) -> list[bool]:
    """Points ``(accuracy, leakage)``: non-dominated when no other has >= accuracy and <= leakage, one strict."""
    out = []
    for i, p in enumerate(points):
        if p is None:
            out.append(False)
            continue
        dominated = any(
            q is not None and q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1])
            for j, q in enumerate(points)
            if j != i
        )
        out.append(not dominated)
    return out


def rank_entries(track: Track, entries: Sequence[Entry]) -> list[Row]:
    """The track's leaderboard: ranked entries first (rank 1 = best privacy at matched utility), then unranked.

    Entries of other tracks are ignored.
    """
    metric, tie = track.ranking.metric, track.ranking.tie_break
    mine = [e for e in entries if e.track == track.ref]
    if track.protocol == 2:
        return _rank_v2(track, mine)
    values = [_attack_value(track, e) for e in mine]
    points = [
        (e.utility.fedsgd.test_accuracy, leak(v, metric)) if v is not None else None
        for e, (_, v, _) in zip(mine, values)
    ]
    frontier = _pareto(points)
    rows = []
    for e, (attack, value, tie_value), pareto in zip(mine, values, frontier):
        fed = e.utility.fedsgd
        drop = fed.undefended_test_accuracy - fed.test_accuracy
        utility_ok = drop <= track.ranking.max_accuracy_drop + 1e-9
        note = ""
        if not utility_ok:
            note = f"accuracy drop {drop:.1f} > {track.ranking.max_accuracy_drop:g} points"
        elif value is None:
            note = "no successful attack run to rank by"
        rows.append(Row(e, None, attack, value, tie_value, fed.test_accuracy, drop, utility_ok and value is not None,
                        pareto, note))  # fmt: skip

    def order(row: Row) -> tuple:
        tie_key = leak(row.tie_value, tie) if row.tie_value is not None else float("inf")
        return (leak(row.value, metric) if row.value is not None else float("inf"), tie_key, row.entry.entry_id)

    ranked = sorted((r for r in rows if r.eligible), key=order)
    unranked = sorted((r for r in rows if not r.eligible), key=lambda r: (-r.accuracy, order(r)))
    out = [replace(r, rank=i + 1) for i, r in enumerate(ranked)]
    return out + unranked


def _rank_v2(track: Track, mine: list[Entry]) -> list[Row]:
    """Protocol 2: mean worst-case leakage (lower first), shared ranks where bootstrap intervals overlap."""
    from dglbench.leaderboard.protocol import rank_ranges, shown_interval

    tie = track.ranking.tie_break
    rows = []
    for e in mine:
        w = e.worst_case
        value = w.leakage.mean if w is not None else None
        tie_stat = w.metrics.get(tie) if w is not None else None
        fed = e.utility.fedsgd
        drop = fed.undefended_test_accuracy - fed.test_accuracy
        utility_ok = drop <= track.ranking.max_accuracy_drop + 1e-9
        note = "" if utility_ok else f"accuracy drop {drop:.1f} > {track.ranking.max_accuracy_drop:g} points"
        if utility_ok and value is None:
            note = "no victim reconstructed by any attack of the suite: no leakage to rank by"
        rows.append(Row(e, None, "worst_case", value, tie_stat.mean if tie_stat else None, fed.test_accuracy, drop,
                        utility_ok and value is not None, False, note, None,
                        w.leakage_ci95_low if w else None, w.leakage_ci95_high if w else None))  # fmt: skip
    frontier = _pareto([(r.accuracy, r.value) if r.value is not None else None for r in rows])
    rows = [replace(r, pareto=p) for r, p in zip(rows, frontier)]

    def order(row: Row) -> tuple:
        tie_key = leak(row.tie_value, tie) if row.tie_value is not None else float("inf")
        return (row.value if row.value is not None else float("inf"), tie_key, row.entry.entry_id)

    ranked = sorted((r for r in rows if r.eligible), key=order)
    intervals = [(r.low if r.low is not None else r.value, r.high if r.high is not None else r.value) for r in ranked]
    ranges = rank_ranges([shown_interval(lo, hi) for lo, hi in intervals])  # as the table shows them
    unranked = sorted((r for r in rows if not r.eligible), key=lambda r: (-r.accuracy, order(r)))
    return [replace(r, rank=i + 1, rank_range=rg) for i, (r, rg) in enumerate(zip(ranked, ranges))] + unranked
