"""End to end on the embedded track with a tiny budget: submit → validate → verify, through the CLI."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml
from dglbench.cli import main
from dglbench.errors import UnknownNameError
from dglbench.leaderboard.store import entry_files, load_entry
from dglbench.leaderboard.submit import submit
from dglbench.leaderboard.validate import validate_paths
from dglbench.leaderboard.verify import sample_victims, verify_entry


@pytest.fixture
def tiny_root(lb_root):
    """The embedded track cut down to 2 victims, 20 IG steps, 2 DLG steps and 3 FedSGD rounds."""
    path = lb_root / "v1" / "tracks" / "digits-convnet5.yaml"
    data = yaml.safe_load(path.read_text())
    data["data"]["params"]["num_victims"] = 2
    data["victims_per_step"] = 2
    data["attacks"][0]["params"]["max_iterations"] = 20
    data["attacks"][1]["params"]["max_iterations"] = 2
    data["utility"]["rounds"] = 3
    path.write_text(yaml.safe_dump(data))
    return lb_root


def test_submit_validate_verify(tiny_root, tmp_path, capsys):
    torch.set_num_threads(1)
    args = ["leaderboard", "submit", "--track", "digits-convnet5", "--defense", "gaussian", "--param", "sigma=0.001",
            "--out", str(tiny_root), "--work-dir", str(tmp_path / "runs")]  # fmt: skip
    assert main(args) == 0
    (path,) = entry_files(tiny_root)
    entry = load_entry(path)
    assert entry.defense.params == {"sigma": 0.001} and entry.defense.source == "builtin"
    assert [s.attack for s in entry.privacy] == ["inverting_gradients", "dlg"]
    assert all(s.victims == 2 for s in entry.privacy)
    assert entry.i2f is not None and entry.i2f.lower_bound.n + entry.i2f.failures == 2
    fed = entry.utility.fedsgd
    assert fed.rounds == 3 and 0 <= fed.test_accuracy <= 100
    assert fed.accuracy_drop == pytest.approx(fed.undefended_test_accuracy - fed.test_accuracy, abs=1e-6)
    assert (tiny_root / "v1" / "utility" / "digits-convnet5.json").exists()  # undefended accuracy cached
    records = json.loads(path.with_name(path.name.replace(".json", ".victims.json")).read_text())["records"]
    assert len(records) == 2 * 2 and {r["status"] for r in records} <= {"ok", "failed"}
    assert validate_paths([], root=tiny_root) == []
    # the summary names the damping of each exact I2F value, so that two of them never read as an interval
    out = capsys.readouterr().out.splitlines()
    (line,) = [ln for ln in out if "I2F lower bound" in ln]
    # a v1 track is superseded: the submitter is told before anything runs (its board is kept for comparison)
    assert out[1].startswith("note: digits-convnet5@1 follows protocol 1, superseded by protocol 2"), out[:2]
    assert entry.i2f.exact
    for eps, stat in entry.i2f.exact.items():
        assert f"{stat.mean:.4g} (ε={eps})" in line

    # victim 1 alone: victim 0 is marked done from its stored record and not computed
    seed = next(s for s in range(100) if sample_victims(2, 1, s) == [1])
    result = verify_entry(path, victims=1, seed=seed, root=tiny_root, utility=True)
    checks = result.checks
    assert result.victims == [1] and result.seed == seed and result.code.kind == "builtin"
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert {c.victim for c in checks} == {1, None}
    assert {c.quantity for c in checks} >= {"status", "i2f.lower_bound", "metrics.psnr", "test_accuracy"}


def test_submit_rejects_unknown_defense_and_parameter(tiny_root):
    with pytest.raises(UnknownNameError, match="did you mean 'gaussian'"):
        submit("digits-convnet5", "gausian", {}, root=tiny_root)
    assert main(["leaderboard", "submit", "--track", "digits-convnet5", "--defense", "gaussian", "--param",
                 "sigmaa=1", "--out", str(tiny_root)]) == 2  # fmt: skip
    assert entry_files(tiny_root) == []


def test_submit_and_verify_run_the_trials_on_one_thread_whatever_the_callers_count(tiny_root, tmp_path, monkeypatch):
    """Entries must not depend on OMP_NUM_THREADS: the trials of submit and verify see one thread, and the
    caller's count comes back after."""
    import dglbench.runner

    seen = []
    real = dglbench.runner.run_trial

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(dglbench.runner, "run_trial", spy)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the runner then leaves the count alone
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sub = submit("digits-convnet5", "none", root=tiny_root, work_dir=tmp_path / "runs")
        assert torch.get_num_threads() == 2
        verify_entry(sub.entry_path, victims=1, seed=0, root=tiny_root)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_a_resumed_entry_counts_the_earlier_runs_time_on_the_records_it_reused(tiny_root, tmp_path):
    """A baseline resumed across sessions reported only its last run (a 3651 s entry said 247 s): the records
    written before the run started add their step's wall time over its victim count."""
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from dglbench.leaderboard.submit import reused_seconds

    def rec(time: str | None, total: float, step_victims: int | None):
        return SimpleNamespace(provenance={} if time is None else {"time": time},
                               timings=SimpleNamespace(total=total, step_victims=step_victims))  # fmt: skip

    started = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
    records = [rec("2026-12-01T10:00:00+00:00", 80.0, 8), rec("2026-12-01T10:00:00+00:00", 80.0, 8),  # 10 + 10
               rec("2026-11-30T23:59:59+00:00", 7.0, None),  # 7: no victim count, its own time
               rec("2026-12-01T12:00:00+00:00", 500.0, 8),  # written by this run: in its wall time already
               rec(None, 99.0, 1)]  # fmt: skip
    assert reused_seconds(records, started) == 27.0

    sub = submit("digits-convnet5", "none", root=tiny_root, work_dir=tmp_path / "runs")
    shares = sum(r["timings"]["total"] / r["timings"]["step_victims"]
                 for r in json.loads(sub.victims_path.read_text())["records"])  # fmt: skip
    sub.entry_path.unlink()
    time.sleep(1.1)  # records carry whole seconds: the next run starts after the second they were written in
    again = submit("digits-convnet5", "none", root=tiny_root, work_dir=tmp_path / "runs")  # reuses every record
    seconds = json.loads(again.entry_path.read_text())["provenance"]["seconds"]
    assert seconds["privacy"] >= shares > 0
    assert seconds["total"] == pytest.approx(seconds["privacy"] + seconds["utility"], abs=0.02)


def test_a_utility_run_resumed_across_sessions_reports_its_whole_cost(tiny_root, tmp_path, monkeypatch):
    """Soteria's FedSGD run on natural-imprint@2 spanned three sessions (19852 s in its record) and its entry
    said 4815 s, the last session's share: the entry must carry the run's own count, as a reusing entry does."""
    import dglbench.leaderboard.submit as submit_module
    from dglbench.leaderboard.utility import FedSGDOutcome

    real = submit_module.shared_fedsgd_accuracy
    earlier = 5000.0  # seconds the checkpoint says earlier sessions spent

    def resumed(*args, **kwargs):
        outcome, on = real(*args, **kwargs)
        return FedSGDOutcome(outcome.test_accuracy, outcome.test_images, outcome.rounds, outcome.seconds + earlier), on

    monkeypatch.setattr(submit_module, "shared_fedsgd_accuracy", resumed)
    t0 = time.perf_counter()
    sub = submit("digits-convnet5", "gaussian", {"sigma": 0.01}, root=tiny_root, work_dir=tmp_path / "runs")
    wall = time.perf_counter() - t0
    seconds = json.loads(sub.entry_path.read_text())["provenance"]["seconds"]
    assert earlier <= seconds["utility"] <= earlier + wall


def test_a_second_submission_of_the_same_entry_stops_with_one_line_while_the_first_runs(tiny_root, tmp_path, capsys):
    """Two baseline processes on one track (``ORDER=reverse``) met on the same entry and both computed it; the
    second must stop before it touches the records, and the entry must run once the first is gone."""
    import socket
    import subprocess

    from dglbench.leaderboard.submit import defense_info, entry_digest, entry_slug
    from dglbench.leaderboard.track import load_track

    track = load_track("digits-convnet5", tiny_root)
    info = defense_info("none", {}, track=track)
    folder = tmp_path / "runs" / track.id / f"{entry_slug(info.name)}-{entry_digest(track.ref, info)}"
    folder.mkdir(parents=True)
    first = subprocess.Popen(["sleep", "60"])  # stands for the first submission: a live process on this host
    try:
        (folder / "submit.lock").write_text(json.dumps({"pid": first.pid, "host": socket.gethostname()}))
        args = ["leaderboard", "submit", "--track", "digits-convnet5", "--defense", "none",
                "--out", str(tiny_root), "--work-dir", str(tmp_path / "runs"), "--skip-existing"]  # fmt: skip
        capsys.readouterr()
        assert main(args) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"locked by pid {first.pid}" in err[0] and "(submitting none-" in err[0], err
        assert sorted(p.name for p in folder.iterdir()) == ["submit.lock"] and entry_files(tiny_root) == []
    finally:
        first.kill()
        first.wait()
    assert main(args) == 0  # the holder is gone: its lock is taken over
    assert len(entry_files(tiny_root)) == 1 and not (folder / "submit.lock").exists()
