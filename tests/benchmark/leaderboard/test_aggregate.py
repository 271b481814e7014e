"""Aggregation of per-victim records: per-attack summaries and the per-victim worst case, worked out by hand."""

from dglbench.leaderboard.aggregate import by_trial, privacy_summaries, worst_case_summary
from dglbench.leaderboard.track import load_track
from dglbench.record import AttackOutcome, VictimRecord

# digits-convnet5@1: 8 victims, trials [inverting_gradients, dlg]. PSNR (dB) per victim; None: the attack failed.
#   victim:              0     1     2     3     4     5     6     7
IG = [30.0, 10.0, 12.0, 25.0, None, 8.0, 11.0, 14.0]
DLG = [9.0, 28.0, 13.0, 20.0, 16.0, None, 10.0, None]
# Worst case (the higher PSNR), by hand:  30 (ig), 28 (dlg), 13 (dlg), 25 (ig), 16 (dlg), 8 (ig), 11 (ig), 14 (ig)
WORST = [30.0, 28.0, 13.0, 25.0, 16.0, 8.0, 11.0, 14.0]
# Broken (>= 20 dB): ig alone victims 0, 3 (2 of 8); dlg alone 1, 3 (2 of 8); the worst case 0, 1, 3 (3 of 8).


def records(track):
    configs = track.trial_configs("gaussian", {"sigma": 0.01})
    out = []
    for config, psnrs in zip(configs, (IG, DLG)):
        for j, psnr in enumerate(psnrs):
            ok = psnr is not None
            outcome = AttackOutcome(
                config.attack, status="ok" if ok else "failed", reason=None if ok else "attack: synthetic failure",
                metrics={"psnr": psnr, "l2_error": 10 ** (-psnr / 20) * 8} if ok else None,
            )  # fmt: skip
            rec = VictimRecord(
                trial_id=config.trial_id, victim_id=j, config=config.to_dict(), status="ok" if ok else "failed",
                reason=outcome.reason, utility={"gradient_cosine": 0.9},
            ).with_attacks([outcome])  # fmt: skip
            out.append(rec)
    return out, [c.trial_id for c in configs]


def test_per_attack_summaries_and_the_per_victim_worst_case(lb_root):
    track = load_track("digits-convnet5", lb_root)
    recs, trial_ids = records(track)
    groups = by_trial([r.to_dict() for r in recs], trial_ids, track.num_victims)  # stored dicts read back
    ig, dlg = privacy_summaries(track, trial_ids, groups)
    assert (ig.attack, ig.failures, ig.metrics["psnr"].n) == ("inverting_gradients", 1, 7)
    assert abs(ig.metrics["psnr"].mean - 110 / 7) < 1e-4  # the 7 measured victims: 110 dB in all
    assert (dlg.attack, dlg.failures, dlg.metrics["psnr"].n) == ("dlg", 2, 6)
    worst = worst_case_summary(track, trial_ids, groups)
    assert (worst["victims"], worst["failures"]) == (8, 0)  # every victim was measured by some attack
    assert worst["metrics"]["psnr"].n == 8
    assert abs(worst["metrics"]["psnr"].mean - sum(WORST) / 8) < 1e-4  # 145 / 8 = 18.125
    assert worst["source"]["psnr"] == {"inverting_gradients": 5, "dlg": 3}
    broken = {
        "ig": sum(p is not None and p >= 20 for p in IG),
        "dlg": sum(p is not None and p >= 20 for p in DLG),
        "worst": sum(p >= 20 for p in WORST),
    }
    assert broken == {"ig": 2, "dlg": 2, "worst": 3}
