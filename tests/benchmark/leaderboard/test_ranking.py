"""Ranking: privacy at matched utility; destroying utility never wins; the Pareto frontier."""

from __future__ import annotations

import itertools
import random

from dglbench.leaderboard.ranking import leak, rank_entries
from dglbench.leaderboard.store import load_entry
from dglbench.leaderboard.track import load_track


def _board(lb_root, synthetic_entry, specs):
    entries = [
        load_entry(synthetic_entry(lb_root, name, params, psnr=psnr, accuracy=acc, seed=i)[1])
        for i, (name, params, psnr, acc) in enumerate(specs)
    ]
    return load_track("digits-convnet5", lb_root), entries


def test_huge_noise_that_destroys_utility_is_not_ranked_first(lb_root, synthetic_entry):
    track, entries = _board(
        lb_root,
        synthetic_entry,
        [
            ("none", {}, 75.0, 80.0),
            ("gaussian", {"sigma": 1e-3}, 30.0, 79.0),
            ("gaussian", {"sigma": 1e3}, 4.0, 10.0),  # perfect privacy, model destroyed
            ("pruning", {"ratio": 0.5}, 50.0, 78.0),
        ],
    )
    rows = rank_entries(track, entries)
    by_params = {(r.entry.defense.name, r.entry.defense.params.get("sigma")): r for r in rows}
    huge = by_params[("gaussian", 1e3)]
    assert rows[0].entry.defense.params == {"sigma": 1e-3} and rows[0].rank == 1
    assert huge.rank is None and not huge.eligible and "accuracy drop" in huge.note
    assert rows[-1] is huge  # unranked entries come last
    assert [r.rank for r in rows] == [1, 2, 3, None]
    assert [r.entry.defense.name for r in rows[:3]] == ["gaussian", "pruning", "none"]
    assert huge.pareto  # it is on the frontier (nothing is more private), just not rankable


def test_the_rank_comes_from_the_strongest_attack(lb_root, synthetic_entry):
    track, entries = _board(lb_root, synthetic_entry, [("gaussian", {"sigma": 0.01}, 30.0, 80.0)])
    (row,) = rank_entries(track, entries)
    means = {s.attack: s.metrics["psnr"].mean for s in entries[0].privacy}
    assert row.attack == max(means, key=means.get) and row.value == max(means.values())


def test_ranking_order_and_frontier_agree_with_brute_force(lb_root, synthetic_entry):
    rng = random.Random(3)
    specs = [("gaussian", {"sigma": 10.0**-k}, rng.uniform(10, 70), rng.uniform(60, 80)) for k in range(1, 7)]
    track, entries = _board(lb_root, synthetic_entry, specs)
    rows = rank_entries(track, entries)
    undefended = 80.0
    eligible = [r for r in rows if undefended - r.accuracy <= track.ranking.max_accuracy_drop]
    assert [r.rank for r in eligible] == list(range(1, len(eligible) + 1))
    assert [r.value for r in eligible] == sorted(r.value for r in eligible)  # lower PSNR = more private first
    for a in rows:  # a is on the frontier iff no b is at least as good on both axes and better on one
        dominated = any(
            b.accuracy >= a.accuracy and b.value <= a.value and (b.accuracy > a.accuracy or b.value < a.value)
            for b in rows
            if b is not a
        )
        assert a.pareto == (not dominated)
    assert leak(3.0, "l2_error") < leak(2.0, "l2_error") and leak(3.0, "psnr") > leak(2.0, "psnr")


def test_ties_break_on_the_tie_metric_and_other_tracks_are_ignored(lb_root, synthetic_entry):
    track, entries = _board(
        lb_root, synthetic_entry, [("gaussian", {"sigma": 0.1}, 30.0, 80.0), ("laplace", {"scale": 0.1}, 30.0, 80.0)]
    )
    rows = rank_entries(track, entries)
    assert len(rows) == 2 and all(r.rank for r in rows)
    for a, b in itertools.pairwise(rows):
        assert (leak(a.value, "psnr"), leak(a.tie_value, "l2_error")) <= (
            leak(b.value, "psnr"),
            leak(b.tie_value, "l2_error"),
        )
    other = rank_entries(load_track("mnist-convnet5"), entries)
    assert other == []
