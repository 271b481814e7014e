"""``verify``: validates first, runs no code named by data without consent, and re-runs victims drawn at random.

The re-runs here are SYNTHETIC: ``verify._rerun`` is replaced by an honest re-runner that returns the
records as they were before an entry was edited, so the tests exercise the draw, the consent rule and
the comparison without running attacks (``test_submit.py`` re-runs real victims end to end).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from dglbench.cli import main
from dglbench.io import atomic_write_json
from dglbench.leaderboard import verify
from dglbench.leaderboard.render import render_all
from dglbench.leaderboard.schema import DefenseInfo, Hardware, Seconds, VictimsFile
from dglbench.leaderboard.store import entry_paths, load_entry
from dglbench.leaderboard.submit import build_entry
from dglbench.leaderboard.track import load_track
from dglbench.leaderboard.typed import to_dict
from dglbench.leaderboard.validate import untrusted_notes, validate_paths
from dglbench.leaderboard.verify import catch_probability, sample_victims
from scipy.stats import hypergeom


def _store(root, track, info, records, trial_ids):
    """Summarize ``records`` into an entry the way ``submit`` does (as a forger would) and store both files."""
    entry = build_entry(
        track, info, records, trial_ids, test_accuracy=80.0, undefended=80.0, test_images=359,
        hardware=Hardware("cpu", 1, "cpu: synthetic", 2), seconds=Seconds(1.0, 1.0, 2.0),
    )  # fmt: skip
    entry_path, victims_path = entry_paths(track.ref, info.name, entry.provenance.config_hash, root)
    atomic_write_json(victims_path, to_dict(VictimsFile(1, entry.entry_id, records)))
    atomic_write_json(entry_path, to_dict(entry))
    return entry_path


def _forge(root, synthetic_entry, spec, params):
    """A self-consistent entry whose defense is ``spec`` (a module path), built without importing it."""
    honest, path, vpath = synthetic_entry(root, "gaussian", {"sigma": 0.01})
    track = load_track("digits-convnet5", root)
    configs = track.trial_configs(spec, params)
    by_old = dict(zip(honest.provenance.trial_ids, configs))
    records = json.loads(vpath.read_text())["records"]
    for r in records:
        c = by_old[r["trial_id"]]
        r.update(trial_id=c.trial_id, config=c.to_dict(), defense={"name": spec, "params": params, "privacy": None})
    path.unlink()
    vpath.unlink()
    info = DefenseInfo(spec, spec, params, "module", None, None, None, None, None)
    return _store(root, track, info, records, [c.trial_id for c in configs])


# ------------------------------------------------------------------------------------- catch probability
def test_catch_probability_hand_worked():
    # n = 8 victims, m = 2 drawn, k = 6 edited: missed only when both draws are among the 2 unedited ones,
    # C(2, 2) / C(8, 2) = 1/28.
    assert catch_probability(n=8, k=6, m=2) == pytest.approx(1 - 1 / 28, abs=1e-15)
    # k = 1: the edited victim is one of the two drawn with probability 2/8.
    assert catch_probability(n=8, k=1, m=2) == pytest.approx(0.25, abs=1e-15)
    assert catch_probability(n=8, k=0, m=2) == 0.0 and catch_probability(n=8, k=3, m=8) == 1.0


@pytest.mark.parametrize(("n", "k", "m"), [(8, 1, 2), (8, 6, 2), (100, 5, 10), (50, 1, 49), (100, 30, 3)])
def test_catch_probability_is_the_hypergeometric_tail(n, k, m):
    # P(X >= 1) for X ~ Hypergeom(population n, k successes, m draws)
    assert catch_probability(n, k, m) == pytest.approx(hypergeom(n, k, m).sf(0), rel=1e-12, abs=1e-15)


def test_the_catch_table_in_submitting_md_states_each_tracks_victims_and_probabilities():
    # The table quotes P(caught) at m = 2 for the v2 CPU tracks; n must be each named track's victim count and
    # each P the count of draws that hold an edited victim, 1 - C(n-k, 2)/C(n, 2), to three decimals.
    text = (Path(__file__).resolve().parents[3] / "leaderboards" / "SUBMITTING.md").read_text()
    head, *rows = [line for line in text.splitlines() if line.startswith("| P(caught)") or " (n = " in line]
    ks = [c.strip().removeprefix("k = ") for c in head.split("|")[2:-1]]
    assert ks == ["1", "4", "n/4", "n/2"] and len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        n = int(re.search(r"\(n = (\d+)\)", cells[0]).group(1))
        for ref in re.findall(r"`([\w-]+)@2`", cells[0]):
            assert load_track(f"{ref}@2").num_victims == n, ref
        for k, stated in zip([1, 4, n // 4, n // 2], cells[1:], strict=True):
            assert f"{1 - math.comb(n - k, 2) / math.comb(n, 2):.3f}" == stated, (n, k)


def test_the_draw_is_uniform_distinct_and_repeatable():
    assert sample_victims(8, 2, seed=11) == sample_victims(8, 2, seed=11)
    draws = [tuple(sample_victims(8, 2, seed=s)) for s in range(5600)]
    assert all(len(set(d)) == 2 and all(0 <= j < 8 for j in d) for d in draws)
    counts = {pair: draws.count(pair) for pair in set(draws)}
    assert len(counts) == math.comb(8, 2)  # every pair occurs, about 200 times each
    assert all(120 < c < 280 for c in counts.values()), counts


# ------------------------------------------------------------------------------------- no code from data
def test_an_entry_naming_os_system_never_runs(lb_root, synthetic_entry, tmp_path, capsys):
    pwned = tmp_path / "pwned"
    path = _forge(lb_root, synthetic_entry, "os:system", {"command": f"touch {pwned}"})
    capsys.readouterr()

    assert validate_paths([], root=lb_root) == []  # reading it is fine: it is data
    (note,) = untrusted_notes([], root=lb_root)
    assert "untrusted code" in note and "'os:system'" in note and "--trust-code" in note
    assert main(["leaderboard", "validate", "--root", str(lb_root)]) == 0
    assert "untrusted code" in capsys.readouterr().err

    assert main(["leaderboard", "verify", str(path), "--root", str(lb_root), "--all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-code" in err[0] and "imports module 'os'" in err[0], err

    render_all(lb_root, tmp_path)
    assert "os:system" in (lb_root / "README.md").read_text()
    assert not pwned.exists()


def test_trust_code_names_the_package_before_running_it(lb_root, synthetic_entry, tmp_path, capsys, monkeypatch):
    path = _forge(lb_root, synthetic_entry, "os:system", {"command": f"touch {tmp_path / 'pwned'}"})
    ran = []

    def rerun(configs, victims, *args, **kwargs):
        ran.append(victims)
        return [[] for _ in configs]

    monkeypatch.setattr(verify, "_rerun", rerun)
    capsys.readouterr()
    assert main(["leaderboard", "verify", str(path), "--root", str(lb_root), "--trust-code", "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "--trust-code: re-running imports module path 'os:system': imports module 'os' " + (
        "(no installed distribution found)"
    )
    assert ran == [sample_victims(8, 2, seed=1)]


@pytest.mark.parametrize(
    ("version", "trust", "expected"),
    [
        ("1.0", False, "entry point 'clip' -> mypkg.defenses:Clip (mypkg 1.0); read that code, then allow it with "
                       "--trust-code"),
        ("0.9", True, "the entry names mypkg 0.9 (entry_point), but the installed entry point comes from mypkg 1.0; "
                      "install mypkg==0.9 to verify"),
    ],
)  # fmt: skip
def test_an_installed_entry_point_needs_consent_and_the_entrys_version(
    lb_root, synthetic_entry, monkeypatch, capsys, version, trust, expected
):
    from types import SimpleNamespace

    from dglbench.leaderboard import trust as trust_module

    path = _forge(lb_root, synthetic_entry, "clip", {"bound": 1.0})
    data = json.loads(path.read_text())
    data["defense"].update(source="entry_point", package="mypkg", package_version=version)
    path.write_text(json.dumps(data))
    installed = SimpleNamespace(
        name="clip", value="mypkg.defenses:Clip", dist=SimpleNamespace(name="mypkg", version="1.0")
    )
    monkeypatch.setattr(trust_module, "_entry_point", lambda name: installed if name == "clip" else None)
    monkeypatch.setattr(verify, "_rerun", lambda *a, **k: pytest.fail("third-party code was run"))
    capsys.readouterr()
    args = ["leaderboard", "verify", str(path), "--root", str(lb_root), "--all"] + (["--trust-code"] if trust else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(expected), err


def test_a_builtin_name_cannot_front_for_other_code(lb_root, synthetic_entry):
    _, path, _ = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})
    data = json.loads(path.read_text())
    data["defense"]["spec"] = "os:system"
    path.write_text(json.dumps(data))
    assert any("is a built-in name, but its spec 'os:system' is not built in" in p for p in validate_paths([], lb_root))


# ------------------------------------------------------------------------------------- random re-runs
def _edited_entry(lb_root, synthetic_entry, edited):
    """An entry whose victims ``edited`` were made to look more private, aggregates rebuilt to match.

    Returns the entry path and the honest records by (trial, victim), what an honest re-run reproduces.
    """
    honest, path, vpath = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})
    records = json.loads(vpath.read_text())["records"]
    truth = {(r["trial_id"], r["victim_id"]): json.loads(json.dumps(r)) for r in records}
    for r in records:
        if r["victim_id"] in edited and r["status"] == "ok":  # the trial's attack and the victim's worst case
            r["attacks"][0]["metrics"]["psnr"] -= 10.0
            r["worst"]["metrics"]["psnr"] -= 10.0
    track = load_track("digits-convnet5", lb_root)
    new_path = _store(lb_root, track, load_entry(path).defense, records, honest.provenance.trial_ids)
    assert new_path == path
    return path, truth


def _honest_rerun(truth):
    def rerun(configs, victims, stored, trial_ids, out, **kw):
        return [[truth[(t, j)] for j in victims] for t in trial_ids]

    return rerun


def _seed_for(sample):
    return next(s for s in range(10_000) if sample_victims(8, 2, s) == sample)


def test_edited_victims_pass_validate_and_a_draw_that_holds_one_catches_them(
    lb_root, synthetic_entry, monkeypatch, capsys
):
    path, truth = _edited_entry(lb_root, synthetic_entry, edited=range(2, 8))
    assert validate_paths([], root=lb_root) == []  # consistent: validate cannot see it
    monkeypatch.setattr(verify, "_rerun", _honest_rerun(truth))
    cli = ["leaderboard", "verify", str(path), "--root", str(lb_root)]

    seed = _seed_for([0, 5])
    capsys.readouterr()
    assert main([*cli, "--seed", str(seed)]) == 1
    out = capsys.readouterr().out
    assert f"victims: 0, 5 of 0..7 (seed {seed}; repeat with --seed {seed})" in out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert fails and all("victim 5 metrics.psnr" in line for line in fails)
    assert "k=1: 0.250, k=2: 0.464, k=4: 0.786" in out  # 1 - 21/28, 1 - 15/28, 1 - 6/28

    # the first two victims alone (what a fixed "first K" re-run would check) miss the edit
    assert main([*cli, "--seed", str(_seed_for([0, 1]))]) == 0
    assert main([*cli, "--all"]) == 1
    assert "victims: all 8" in capsys.readouterr().out


def test_without_a_seed_the_draw_is_fresh_and_printed_so_it_can_be_repeated(
    lb_root, synthetic_entry, monkeypatch, capsys
):
    _, path, vpath = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})
    truth = {(r["trial_id"], r["victim_id"]): r for r in json.loads(vpath.read_text())["records"]}
    monkeypatch.setattr(verify, "_rerun", _honest_rerun(truth))
    cli = ["leaderboard", "verify", str(path), "--root", str(lb_root), "--victims", "3"]
    capsys.readouterr()
    assert main(cli) == 0
    first = capsys.readouterr().out
    seed = int(re.search(r"\(seed (\d+);", first).group(1))
    assert main([*cli, "--seed", str(seed)]) == 0
    again = capsys.readouterr().out
    assert first.splitlines()[0] == again.splitlines()[0]
    assert len(re.search(r"victims: ([\d, ]+) of", first).group(1).split(", ")) == 3


def test_verify_validates_first(lb_root, synthetic_entry, capsys, monkeypatch):
    _, path, _ = synthetic_entry(lb_root, "gaussian", {"sigma": 0.01})
    data = json.loads(path.read_text())
    data["privacy"][0]["metrics"]["psnr"]["mean"] = 3.0
    path.write_text(json.dumps(data))
    monkeypatch.setattr(verify, "_rerun", lambda *a, **k: pytest.fail("an invalid entry was re-run"))
    capsys.readouterr()
    assert main(["leaderboard", "verify", str(path), "--root", str(lb_root), "--all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "privacy[0].metrics.psnr.mean" in err[0] and err[-1].startswith("dglbench: error: 1 problem(s)")


# ------------------------------------------------------------------------------------- a missing --root
@pytest.mark.parametrize(
    "command",
    [
        ["tracks"],
        ["validate"],
        ["render"],
        ["verify", "x.json"],
        ["submit", "--track", "digits-convnet5", "--defense", "none"],
    ],
)
def test_a_missing_root_is_one_line_and_exit_2(tmp_path, capsys, command):
    missing = tmp_path / "nowhere"
    assert main(["leaderboard", *command, "--root", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("dglbench: error: leaderboard folder") and str(missing) in line
    assert not missing.exists()
