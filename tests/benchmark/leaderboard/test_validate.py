"""``validate``: a consistent entry passes; each kind of corruption is reported as one line; the CLI exits 2."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from dglbench.cli import main
from dglbench.leaderboard.validate import validate_paths


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_a_consistent_entry_is_valid_and_failed_victims_are_counted(lb_root, synthetic_entry):
    entry, _, _ = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01}, failed={2, 5})
    assert validate_paths([], root=lb_root) == []
    for summary in entry.privacy:
        assert (summary.victims, summary.failures, summary.metrics["psnr"].n) == (8, 2, 6)
    assert entry.i2f is not None and entry.i2f.lower_bound.n == 8  # the estimate does not depend on the attack


@pytest.mark.parametrize(
    ("where", "mutate", "expected"),
    [
        ("entry", lambda d: d["privacy"][0]["metrics"]["psnr"].update(mean=12.0), "privacy[0].metrics.psnr.mean"),
        ("entry", lambda d: d["privacy"][1].update(failures=1), "privacy[1].failures"),
        ("entry", lambda d: d["i2f"]["lower_bound"].update(median=1.0), "i2f.lower_bound.median"),
        ("entry", lambda d: d["utility"]["gradient_cosine"].update(n=3), "utility.gradient_cosine.n"),
        ("entry", lambda d: d["utility"]["fedsgd"].update(accuracy_drop=5.0), "accuracy_drop"),
        ("entry", lambda d: d["utility"]["fedsgd"].update(rounds=1), "utility protocol"),
        ("entry", lambda d: d["utility"]["fedsgd"].update(test_accuracy=150.0, accuracy_drop=-70.0), "[0, 100]"),
        ("entry", lambda d: d["privacy"][0]["metrics"]["psnr"].update(mean="30.0"), "expected a number"),
        ("entry", lambda d: d.update(leaderboard="main"), "leaderboard: unknown key"),
        ("entry", lambda d: d["provenance"].pop("seeds"), "provenance.seeds: missing"),
        ("entry", lambda d: d["provenance"].update(config_hash="000000000000"), "config_hash"),
        ("entry", lambda d: d["provenance"]["seeds"].update(init=7), "seeds"),
        ("entry", lambda d: d["provenance"].update(track_hash="0" * 16), "changed since the entry was measured"),
        ("entry", lambda d: d["defense"]["params"].update(sigma=0.02), "does not match its track, defense"),
        ("entry", lambda d: d.update(schema_version=9), "newer than this dglbench knows"),
        ("victims", lambda d: d["records"].pop(3), "exactly once"),
        ("victims", lambda d: d["records"].append(dict(d["records"][0])), "exactly once"),
        ("victims", lambda d: d["records"][0]["config"]["attack_params"].update(max_iterations=5), "configuration"),
        ("victims", lambda d: d["records"][0]["defense"]["params"].update(sigma=1.0), "defense's parameters"),
        ("victims", lambda d: d["records"][4].update(status="failed"), "failures"),
        ("victims", lambda d: d.update(entry_id="digits-convnet5@1/x-000000000000"), "entry_id"),
    ],
)
def test_corruptions_are_reported(lb_root, synthetic_entry, where, mutate, expected):
    _, entry_path, victims_path = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})
    _edit(entry_path if where == "entry" else victims_path, mutate)
    problems = validate_paths([], root=lb_root)
    assert problems, expected
    assert any(expected in p for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_a_changed_track_invalidates_its_entries(lb_root, synthetic_entry):
    synthetic_entry(lb_root, "none")
    track_file = lb_root / "v1" / "tracks" / "digits-convnet5.yaml"
    data = yaml.safe_load(track_file.read_text())
    data["ranking"]["max_accuracy_drop"] = 50.0
    track_file.write_text(yaml.safe_dump(data))
    assert any("publish the change as a new track version" in p for p in validate_paths([], root=lb_root))


def test_misplaced_duplicate_and_orphan_files_are_reported(lb_root, synthetic_entry):
    _, entry_path, victims_path = synthetic_entry(lb_root, "none")
    other = lb_root / "v1" / "entries" / "elsewhere"
    other.mkdir()
    shutil.copy(entry_path, other / entry_path.name)
    shutil.copy(victims_path, other / victims_path.name)
    problems = validate_paths([], root=lb_root)
    assert any("belongs in" in p for p in problems)
    assert any("duplicate entry_id" in p for p in problems)
    entry_path.unlink()
    assert any("victims file without an entry file" in p for p in validate_paths([], root=lb_root))


def test_missing_victims_file_and_unreadable_json(lb_root, synthetic_entry):
    _, entry_path, victims_path = synthetic_entry(lb_root, "none")
    victims_path.unlink()
    assert any("victims file" in p and "missing" in p for p in validate_paths([entry_path], root=lb_root))
    entry_path.write_text('{"schema_version": 1, "x": NaN}')
    assert any("cannot read JSON" in p for p in validate_paths([entry_path], root=lb_root))


def test_cli_exits_2_with_one_line_per_problem(lb_root, synthetic_entry, capsys):
    _, entry_path, _ = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})
    assert main(["leaderboard", "validate", "--root", str(lb_root)]) == 0
    assert "1 entry valid" in capsys.readouterr().out
    _edit(entry_path, lambda d: (d["utility"]["fedsgd"].update(accuracy_drop=3.0), d["defense"].update(x=1)))
    assert main(["leaderboard", "validate", "--root", str(lb_root), str(entry_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dglbench: error:") and len(err) == 2  # the first schema problem, then the count


# ------------------------------------------------------------------------------------- aggregates worked by hand
# A track of 3 victims, one attack (IG) and one metric (PSNR); every record is a stored v1 record with its numbers
# replaced. The entry's summaries are written out as literal numbers, worked by hand from:
#
#   victim  psnr  l2_error  mean-image psnr  I2F lower bound  ‖Kᵀδ‖  λ_max  exact (ε=0.1)  gradient cosine
#   0       10    0.3       11               0.1              1      2      0.3            0.5
#   1       20    0.2       11               0.2              1      2      0.6            0.5
#   2       30    0.1       11               0.3              1      2      0.9            0.5
#
# Mean ± t(0.975, n−1)·s/√n with t(0.975, 2) = 4.302653 (t table), s the sample standard deviation:
#   psnr     mean 20, s = 10:   half-width 4.302653·10/√3 = 24.84138  → [−4.84138, 44.8414]
#   lower b. mean 0.2, s = 0.1: half-width 2.484138                  → [−0.0484138, 0.448414]
#   exact    mean 0.6, s = 0.3: half-width 0.7452413                 → [−0.145241, 1.34524]
#   constant columns: s = 0, the interval is the mean itself.
# Spearman of I2F against l2 error: the ranks are exactly reversed, ρ = −1 for both.
# With victim 2 failed (second fixture): psnr over 10, 20: mean 15, s = √50 = 7.07107, t(0.975, 1) = 12.70620:
#   half-width 12.70620·7.07107/√2 = 63.5310 → [−48.5310, 78.5310]; Spearman needs 3 pairs: null, n = 2.
HAND_ROWS = [(10.0, 0.3, 0.1, 0.3), (20.0, 0.2, 0.2, 0.6), (30.0, 0.1, 0.3, 0.9)]


def _stat(n, mean, median, std, low, high):
    return {"n": n, "mean": mean, "median": median, "std": std, "ci95_low": low, "ci95_high": high}


def _hand_entry(lb_root, failed_victim=None):
    from dglbench.io import atomic_write_json
    from dglbench.leaderboard.schema import DefenseInfo, Hardware, Seconds
    from dglbench.leaderboard.store import entry_paths
    from dglbench.leaderboard.submit import build_entry
    from dglbench.leaderboard.track import default_root, load_track
    from dglbench.leaderboard.typed import to_dict

    track_file = lb_root / "v1" / "tracks" / "digits-convnet5.yaml"
    data = yaml.safe_load(track_file.read_text())
    data["data"]["params"]["num_victims"] = 3
    data["attacks"] = data["attacks"][:1]
    data["metrics"] = ["psnr"]
    data["ranking"]["tie_break"] = "psnr"
    data["estimate"]["eps"] = [0.1]
    track_file.write_text(yaml.safe_dump(data))
    track = load_track("digits-convnet5", lb_root)
    (config,) = track.trial_configs("gaussian", {"sigma": 0.01})

    stored = next((default_root() / "v1" / "entries" / "digits-convnet5").glob("gaussian-*.victims.json"))
    template = json.loads(stored.read_text())["records"][0]
    assert template["schema_version"] == 1  # the stored layout of v1 entries
    records = []
    for v, (psnr, l2, lower, exact) in enumerate(HAND_ROWS):
        r = json.loads(json.dumps(template))
        r.update(trial_id=config.trial_id, victim_id=v, indices=[v], config=config.to_dict())
        r["defense"] = {"name": "gaussian", "params": {"sigma": 0.01}, "privacy": None}
        r["metrics"].update(psnr=psnr, l2_error=l2)
        r["metrics"]["floors"]["mean_image"]["psnr"] = 11.0
        r["i2f"].update(lower_bound=lower, jt_delta=1.0, max_eigenvalue=2.0, exact={"0.1": exact},
                        exact_converged={"0.1": True}, lower_bound_converged=True)  # fmt: skip
        r["utility"]["gradient_cosine"] = 0.5
        if v == failed_victim:
            r.update(status="failed", reason="attack: hand-made failure", metrics=None)
        records.append(r)
    info = DefenseInfo("gaussian", "gaussian", {"sigma": 0.01}, "builtin", None, None, None, None, None)
    built = build_entry(track, info, records, [config.trial_id], test_accuracy=80.0, undefended=80.0,
                        test_images=359, hardware=Hardware("cpu", 1, "cpu", 2), seconds=Seconds(1, 1, 2))  # fmt: skip
    entry = to_dict(built)  # everything but the summaries, which are replaced by the hand-worked numbers
    if failed_victim is None:
        psnr, failures, agreement = _stat(3, 20.0, 20.0, 10.0, -4.84138, 44.8414), 0, (-1.0, -1.0, 3)
    else:
        psnr, failures, agreement = _stat(2, 15.0, 15.0, 7.07107, -48.531, 78.531), 1, (None, None, 2)
    entry["privacy"] = [{
        "attack": "inverting_gradients", "params": data["attacks"][0]["params"], "trial_id": config.trial_id,
        "victims": 3, "failures": failures, "metrics": {"psnr": psnr}, "mean_image_floor": {"psnr": 11.0},
        "i2f_agreement": dict(zip(("spearman_lower_bound", "spearman_exact", "n"), agreement)),
    }]  # fmt: skip
    entry["i2f"] = {
        "trial_id": config.trial_id, "victims": 3, "failures": 0, "not_converged": 0,
        "lower_bound": _stat(3, 0.2, 0.2, 0.1, -0.0484138, 0.448414),
        "jt_delta": _stat(3, 1.0, 1.0, 0.0, 1.0, 1.0),
        "max_eigenvalue": _stat(3, 2.0, 2.0, 0.0, 2.0, 2.0),
        "exact": {"0.1": _stat(3, 0.6, 0.6, 0.3, -0.145241, 1.34524)},
    }  # fmt: skip
    entry["utility"]["gradient_cosine"] = _stat(3, 0.5, 0.5, 0.0, 0.5, 0.5)
    entry_path, victims_path = entry_paths(track.ref, "gaussian", entry["provenance"]["config_hash"], lb_root)
    atomic_write_json(victims_path, {"schema_version": 1, "entry_id": entry["entry_id"], "records": records})
    atomic_write_json(entry_path, entry)
    return entry_path


@pytest.mark.parametrize("failed_victim", [None, 2])
def test_hand_worked_aggregates_are_exactly_what_validate_recomputes(lb_root, failed_victim):
    _hand_entry(lb_root, failed_victim)
    assert validate_paths([], root=lb_root) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["privacy"][0]["metrics"]["psnr"].update(ci95_high=44.85), "privacy[0].metrics.psnr.ci95_high"),
        (lambda d: d["privacy"][0]["metrics"]["psnr"].update(median=19.99), "privacy[0].metrics.psnr.median"),
        (lambda d: d["privacy"][0]["i2f_agreement"].update(spearman_exact=1.0), "i2f_agreement.spearman_exact"),
        (lambda d: d["i2f"]["exact"]["0.1"].update(std=0.31), "i2f.exact.0.1.std"),
        (lambda d: d["utility"]["gradient_cosine"].update(mean=0.51), "utility.gradient_cosine.mean"),
    ],
)
def test_a_hand_worked_number_off_by_a_little_is_reported(lb_root, mutate, expected):
    path = _hand_entry(lb_root)
    _edit(path, mutate)
    problems = validate_paths([], root=lb_root)
    assert len(problems) == 1 and expected in problems[0], problems
