"""Ranking: privacy at matched utility; destroying utility never wins; the Pareto frontier.

Checked against a leaderboard of six entries worked out by hand (below), not against the ranking code's
own sort key or dominance test.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from dglbench.leaderboard.ranking import leak, rank_entries
from dglbench.leaderboard.schema import Stat
from dglbench.leaderboard.store import load_entry
from dglbench.leaderboard.track import load_track

# digits-convnet5@1: rank by the mean PSNR of the strongest attack (higher PSNR = more leakage), ties by that
# attack's l2 error (higher = less leakage), eligible when the accuracy is at most 10 points below 80.0.
#
#  entry  IG psnr (l2)  DLG psnr (l2)  accuracy | strongest    value  eligible (drop)   frontier (acc, psnr)
#  a      20 (0.4)      25 (0.3)       78       | dlg          25     yes (2)           yes: only c is more accurate
#  b      18 (0.5)      12 (0.6)       75       | IG           18     yes (5)           yes
#  c      30 (0.2)      10 (0.7)       80       | IG           30     yes (0)           yes: the most accurate
#  d      18 (0.9)      17 (0.8)       72       | IG           18     yes (8)           no: b has 75 >= 72 and 18 <= 18
#  e       5 (1.5)       6 (1.4)       60       | dlg           6     no (20 > 10)      yes: nothing leaks less
#  f      15 (0.6)      14 (0.7)       70       | IG           15     yes (10, the bar) yes
#
# Ranked, least leakage first: f (15), then d and b tie at 18 and d's l2 error 0.9 > b's 0.5 puts d first,
# then a (25), c (30); e is listed unranked after them.
TABLE = {
    "a": ((20.0, 0.4), (25.0, 0.3), 78.0),
    "b": ((18.0, 0.5), (12.0, 0.6), 75.0),
    "c": ((30.0, 0.2), (10.0, 0.7), 80.0),
    "d": ((18.0, 0.9), (17.0, 0.8), 72.0),
    "e": ((5.0, 1.5), (6.0, 1.4), 60.0),
    "f": ((15.0, 0.6), (14.0, 0.7), 70.0),
}
ORDER = ["f", "d", "b", "a", "c", "e"]
RANKS = [1, 2, 3, 4, 5, None]
FRONTIER = {"a", "b", "c", "e", "f"}
STRONGEST = {"a": ("dlg", 25.0), "b": ("inverting_gradients", 18.0), "c": ("inverting_gradients", 30.0),
             "d": ("inverting_gradients", 18.0), "e": ("dlg", 6.0), "f": ("inverting_gradients", 15.0)}  # fmt: skip


def _stat(mean: float) -> Stat:
    return Stat(8, mean, mean, None, None, None)


@pytest.fixture
def board(lb_root, synthetic_entry):
    """The track and the six hand-made entries (one stored entry as a template, every ranked number replaced)."""
    template = load_entry(synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})[1])
    entries = {}
    for i, (name, (ig, dlg, accuracy)) in enumerate(TABLE.items()):
        privacy = [
            replace(s, metrics={"psnr": _stat(psnr), "l2_error": _stat(l2)})
            for s, (psnr, l2) in zip(template.privacy, (ig, dlg))
        ]
        fed = replace(template.utility.fedsgd, test_accuracy=accuracy, undefended_test_accuracy=80.0)
        entries[name] = replace(
            template,
            entry_id=f"digits-convnet5@1/{name}-{i:012x}",
            privacy=privacy,
            utility=replace(template.utility, fedsgd=fed),
        )
    assert [s.attack for s in template.privacy] == ["inverting_gradients", "dlg"]
    return load_track("digits-convnet5", lb_root), entries


def _names(rows, entries):
    by_id = {e.entry_id: n for n, e in entries.items()}
    return [by_id[r.entry.entry_id] for r in rows]


def test_order_ranks_and_frontier_match_the_hand_worked_table(board):
    track, entries = board
    rows = rank_entries(track, list(entries.values()))
    assert _names(rows, entries) == ORDER
    assert [r.rank for r in rows] == RANKS
    assert {n for n, r in zip(ORDER, rows) if r.pareto} == FRONTIER
    for name, row in zip(ORDER, rows):
        assert (row.attack, row.value) == STRONGEST[name], name
        assert row.drop == 80.0 - TABLE[name][2]


def test_the_order_does_not_depend_on_the_input_order(board):
    track, entries = board
    shuffled = [entries[n] for n in ("c", "e", "a", "f", "b", "d")]
    assert _names(rank_entries(track, shuffled), entries) == ORDER


def test_huge_noise_that_destroys_utility_is_listed_unranked_but_on_the_frontier(board):
    track, entries = board
    e = next(r for r in rank_entries(track, list(entries.values())) if r.entry is entries["e"])
    assert e.rank is None and not e.eligible and e.pareto
    assert e.note == "accuracy drop 20.0 > 10 points"


def test_ties_break_on_the_tie_metric_and_then_on_the_entry_id(board):
    track, entries = board
    b, d = entries["b"], entries["d"]
    assert _names(rank_entries(track, [b, d]), entries) == ["d", "b"]  # equal PSNR 18: l2 0.9 leaks less than 0.5
    same_l2 = replace(d, privacy=[replace(s, metrics={**s.metrics, "l2_error": _stat(0.5)}) for s in d.privacy])
    entries["d"] = same_l2
    assert _names(rank_entries(track, [same_l2, b]), entries) == ["b", "d"]  # full tie: "…/b-…" < "…/d-…"


def test_entries_of_other_tracks_are_ignored(board):
    _, entries = board
    assert rank_entries(load_track("mnist-convnet5"), list(entries.values())) == []


def test_leak_orients_every_metric_so_that_larger_leaks_more():
    assert leak(30.0, "psnr") == 30.0 and leak(0.9, "ssim") == 0.9 and leak(1.0, "label_accuracy") == 1.0
    assert leak(2.0, "l2_error") == -2.0 and leak(0.2, "lpips_alex") == -0.2
