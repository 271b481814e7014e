"""VictimRecord: the worst case over an attack suite (a hand-worked example), JSON round trip, migration."""

import json
import math
from pathlib import Path

import pytest
from dglbench.layout import RunLayout, read_trial_records
from dglbench.leaderboard.render import METRIC_LABELS
from dglbench.leaderboard.track import METRICS as TRACK_METRICS
from dglbench.metrics import METRICS
from dglbench.record import SCHEMA_VERSION, AttackOutcome, RecordError, VictimRecord, migrate, worst_case

REPO = Path(__file__).resolve().parents[2]

# Two attacks on three victims. "Broken" means PSNR >= 20 dB. Per victim (psnr, ssim, l2_error, lpips_alex):
#   victim 0: dlg (31.2, 0.90, 0.8, 0.10) breaks it;  inverting_gradients (9.5, 0.20, 6.0, 0.60) misses.
#   victim 1: dlg (8.0, 0.10, 7.5, 0.70) misses;      inverting_gradients (27.4, 0.80, 1.2, 0.20) breaks it.
#   victim 2: dlg (10.1, 0.20, 5.0, 0.50) misses;     inverting_gradients (11.3, 0.15, 5.5, 0.55) misses.
# Worst case (highest PSNR and SSIM, lowest l2 error and LPIPS), worked out by hand:
#   victim 0: (31.2 dlg, 0.90 dlg, 0.8 dlg, 0.10 dlg)
#   victim 1: (27.4 ig, 0.80 ig, 1.2 ig, 0.20 ig)
#   victim 2: (11.3 ig, 0.20 dlg, 5.0 dlg, 0.50 dlg)   <- the metrics' best values come from different attacks
# Broken: dlg alone 1 of 3, inverting_gradients alone 1 of 3, the worst case 2 of 3.
DLG = [(31.2, 0.90, 0.8, 0.10), (8.0, 0.10, 7.5, 0.70), (10.1, 0.20, 5.0, 0.50)]
IG = [(9.5, 0.20, 6.0, 0.60), (27.4, 0.80, 1.2, 0.20), (11.3, 0.15, 5.5, 0.55)]
WORST = [
    ({"psnr": 31.2, "ssim": 0.90, "l2_error": 0.8, "lpips_alex": 0.10}, ["dlg"] * 4),
    ({"psnr": 27.4, "ssim": 0.80, "l2_error": 1.2, "lpips_alex": 0.20}, ["inverting_gradients"] * 4),
    ({"psnr": 11.3, "ssim": 0.20, "l2_error": 5.0, "lpips_alex": 0.50}, ["inverting_gradients", "dlg", "dlg", "dlg"]),
]


def outcome(name: str, values: tuple[float, ...]) -> AttackOutcome:
    psnr, ssim, l2, lpips = values
    return AttackOutcome(name, status="ok", metrics={"psnr": psnr, "ssim": ssim, "l2_error": l2, "lpips_alex": lpips})


def test_a_victim_one_attack_breaks_and_another_misses_is_broken_in_the_worst_case():
    broken = {"dlg": 0, "inverting_gradients": 0, "worst": 0}
    for j in range(3):
        a, b = outcome("dlg", DLG[j]), outcome("inverting_gradients", IG[j])
        rec = VictimRecord(trial_id="t", victim_id=j).with_attacks([a, b])
        expected, sources = WORST[j]
        assert rec.worst.status == "ok" and (rec.worst.attacks, rec.worst.failed) == (2, 0)
        for (metric, value), source in zip(expected.items(), sources):
            assert rec.metric(metric) == value and rec.worst.source[metric] == source, (j, metric)
        assert rec.metric("psnr", "dlg") == DLG[j][0] and rec.metric("psnr", "inverting_gradients") == IG[j][0]
        broken["dlg"] += rec.metric("psnr", "dlg") >= 20
        broken["inverting_gradients"] += rec.metric("psnr", "inverting_gradients") >= 20
        broken["worst"] += rec.metric("psnr") >= 20
    assert broken == {"dlg": 1, "inverting_gradients": 1, "worst": 2}


def test_failed_attacks_are_counted_and_left_out_and_all_failed_fails_the_worst_case():
    failed = AttackOutcome("ig_sign", adaptive=True, status="failed", reason="attack: diverged")
    w = worst_case([outcome("dlg", DLG[2]), failed, outcome("inverting_gradients", IG[2])])
    assert (w.status, w.attacks, w.failed) == ("ok", 2, 1)
    assert w.metrics["psnr"] == 11.3 and w.metrics["l2_error"] == 5.0 and "ig_sign" not in w.source.values()
    none = worst_case([failed, AttackOutcome("dlg", status="failed", reason="attack: NaN loss")])
    assert (none.status, none.attacks, none.failed, none.metrics) == ("failed", 0, 2, {})
    assert none.reason == "every attack of the suite failed: ig_sign: attack: diverged; dlg: attack: NaN loss"
    rec = VictimRecord(trial_id="t", victim_id=0).with_attacks([failed])
    assert rec.metrics is None and rec.metric("psnr") is None


def test_metric_without_values_and_an_exact_copy():
    w = worst_case([outcome("a", (math.inf, 1.0, 0.0, 0.0)), outcome("b", (40.0, 0.99, 0.01, 0.01))])
    assert w.metrics["psnr"] == math.inf and w.source["psnr"] == "a"  # an exact copy wins
    assert w.metrics["lpips_vgg"] is None and "lpips_vgg" not in w.source  # measured by no attack


def test_json_round_trip_stores_non_finite_values_as_null():
    rec = VictimRecord(trial_id="t", victim_id=3, indices=(5, 6)).with_attacks(
        [outcome("a", (math.inf, 1.0, 0.0, math.nan)), outcome("b", (12.0, 0.5, 2.0, 0.3))]
    )
    stored = rec.to_dict()
    text = json.dumps(stored, allow_nan=False)
    back = VictimRecord.from_dict(json.loads(text))
    assert back.schema_version == SCHEMA_VERSION and back.indices == (5, 6)
    assert back.attacks[0].metrics["psnr"] is None and back.worst.metrics["psnr"] is None
    assert back.worst.metrics["lpips_alex"] == 0.3 and back.worst.source["lpips_alex"] == "b"
    assert VictimRecord.from_dict(back.to_dict()) == back


def test_unknown_schema_version_and_unknown_keys_are_clear_errors():
    with pytest.raises(RecordError, match="schema version 99: this dglbench reads versions 1 and 2"):
        VictimRecord.from_dict({"schema_version": 99, "trial_id": "t", "victim_id": 0})
    with pytest.raises(RecordError, match="unknown key 'sentinel'"):
        VictimRecord.from_dict({"schema_version": SCHEMA_VERSION, "trial_id": "t", "victim_id": 0, "sentinel": 1})


V1 = {
    "schema_version": 1, "trial_id": "abc", "victim_id": 2, "indices": [7], "protocol": {"dataset": "digits"},
    "config": {"attack": "dlg", "attack_params": {"max_iterations": 3}}, "mode": "both", "status": "ok",
    "reason": None,
    "i2f": {"lower_bound": 0.5, "jt_delta": 0.01, "max_eigenvalue": 0.02, "lower_bound_converged": True,
            "exact": {"0.1": 1.5}, "exact_converged": {"0.1": True}, "exact_residual": {"0.1": 1e-5}, "products": 40},
    "attack": {"name": "dlg", "iterations": 3, "restarts": 1, "final_loss": 0.2, "seconds": 0.5,
               "label_source": "given", "status": "ok", "reason": None},
    "metrics": {"psnr": 14.0, "l2_error": 3.0, "floors": {"mean_image": {"psnr": 11.0}}},
    "utility": {"gradient_cosine": 0.9}, "defense": {"name": "gaussian"},
    "seconds": {"defense": 0.1, "i2f": 0.2, "attack": 0.5, "metrics": 0.05, "total": 1.0}, "peak_memory_mb": 300.0,
    "provenance": {"dglbench": "0.1.0"},
}  # fmt: skip


def test_a_schema_1_record_reads_as_a_one_attack_suite():
    rec = VictimRecord.from_dict(V1)
    assert rec.schema_version == SCHEMA_VERSION and rec.estimate.exact == {"0.1": 1.5}
    (a,) = rec.attacks
    assert (a.name, a.key, a.params, a.iterations, a.label_source, a.adaptive) == (
        "dlg", "dlg", {"max_iterations": 3}, 3, "given", False
    )  # fmt: skip
    assert rec.metric("psnr") == 14.0 and rec.worst.source["psnr"] == "dlg" and rec.floors["mean_image"]["psnr"] == 11
    assert rec.timings.total == 1.0 and rec.timings.peak_memory_mb == 300.0
    # failed at the metrics stage: the attack ran, the outcome is failed with the record's reason
    broken = {**V1, "status": "failed", "reason": "metrics: ShapeError: too small", "metrics": None}
    rec = VictimRecord.from_dict(broken)
    assert rec.attacks[0].status == "failed" and rec.attacks[0].reason == "metrics: ShapeError: too small"
    assert rec.worst.status == "failed" and not rec.ok
    estimate_only = VictimRecord.from_dict({**V1, "attack": None, "metrics": None, "mode": "estimate"})
    assert estimate_only.attacks == () and estimate_only.worst is None and estimate_only.metrics is None
    assert migrate(V1)["schema_version"] == SCHEMA_VERSION


def test_old_trial_files_and_the_stored_leaderboard_victims_still_load(tmp_path):
    layout = RunLayout(tmp_path)
    layout.records.mkdir(parents=True)
    layout.trial_record("abc").write_text(json.dumps({"schema_version": 1, "trial_id": "abc", "victims": [V1]}))
    (rec,) = read_trial_records(layout.trial_record("abc"))
    assert rec.victim_id == 2 and rec.metric("l2_error") == 3.0
    files = sorted((REPO / "leaderboards").glob("v*/entries/*/*.victims.json"))
    assert files
    loaded = 0
    for path in files:
        records = [VictimRecord.from_dict(r) for r in json.loads(path.read_text())["records"]]
        assert records and all(r.ok or r.reason for r in records), path  # a failed victim keeps its reason
        ok = [r for r in records if r.ok]
        loaded += len(ok)
        for r in ok:  # v1: one attack per record; v2: the suite (with skipped attacks)
            assert r.attacks and ("v1" not in path.parts or len(r.attacks) == 1), path
            # an exact copy's PSNR (+inf) is stored null beside its finite MSE
            assert r.metric("psnr") is not None or r.metric("mse") is not None, path
    assert loaded  # an entry may have every victim failed (a defense the attack cannot run against), not all


def test_the_metric_registry_is_what_tracks_and_pages_read():
    assert {m: METRICS[m].higher_is_better for m in TRACK_METRICS} == TRACK_METRICS
    assert TRACK_METRICS["psnr"] and not TRACK_METRICS["l2_error"] and not TRACK_METRICS["lpips_alex"]
    assert METRIC_LABELS["psnr"] == METRICS["psnr"].label == "PSNR (dB)"
    assert {m for m, info in METRICS.items() if info.scale == "log"} >= {"l2_error", "rmse", "lpips_alex"}
    assert not METRICS["label_accuracy"].floor and METRICS["ssim"].floor
