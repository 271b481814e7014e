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
