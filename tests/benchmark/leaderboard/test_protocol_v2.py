"""Protocol 2: leakage score, diverged attacks, bootstrap interval, shared ranks, accounting, migration, citations."""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import yaml
from dglbench.errors import ConfigError
from dglbench.leaderboard.aggregate import suite_worst_case
from dglbench.leaderboard.migrate import migrate_entry
from dglbench.leaderboard.protocol import (
    accounting_params,
    bootstrap_interval,
    rank_ranges,
    relative,
    succeeded,
    victim_leakage,
)
from dglbench.leaderboard.ranking import rank_entries
from dglbench.leaderboard.schema import WorstCaseSummary, entry_digest
from dglbench.leaderboard.stats import summarize
from dglbench.leaderboard.store import entry_files, load_entry, read_json
from dglbench.leaderboard.track import Track, default_root, load_track
from dglbench.record import AttackOutcome, VictimRecord

ROOT = default_root()


def _psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / mse)


def test_psnr_leakage_is_the_fraction_of_the_blind_guess_error_removed():
    # images in [0, 1]: a reconstruction with mse 0.004 against a mean-image guess with mse 0.04 removes 90 %
    assert relative("psnr", _psnr(0.004), _psnr(0.04)) == pytest.approx(1 - 0.004 / 0.04)
    assert relative("psnr", _psnr(0.04), _psnr(0.04)) == pytest.approx(0.0)
    assert relative("ssim", 1.0, 0.2) == 1.0 and relative("ssim", 0.2, 0.2) == 0.0
    # the sigma=1.0 case of the issue: PSNR barely above its floor, SSIM far above: SSIM decides
    score = victim_leakage({"psnr": 11.9, "ssim": 0.876}, {"psnr": 11.3, "ssim": 0.18}, ["psnr", "ssim"])
    assert score == pytest.approx((0.876 - 0.18) / (1 - 0.18))
    assert victim_leakage({"psnr": 5.0, "ssim": 0.0}, {"psnr": 11.3, "ssim": 0.18}, ["psnr", "ssim"]) == 0.0
    assert victim_leakage({"psnr": None, "ssim": 0.5}, {"psnr": 11.3, "ssim": 0.18}, ["psnr", "ssim"]) is None


def _outcome(name: str, psnr: float, ssim: float, loss: float = 1e-4, status: str = "ok") -> AttackOutcome:
    metrics = {"psnr": psnr, "ssim": ssim, "l2_error": 1.0, "mse": 10 ** (-psnr / 10),
               "floors": {"mean_image": {"psnr": 10.0, "ssim": 0.2}}}  # fmt: skip
    return AttackOutcome(name, status=status, final_loss=loss, metrics=metrics if status == "ok" else None)


def test_a_diverged_attack_fails_on_that_victim_and_the_worst_case_is_over_the_others():
    track = load_track("natural-convnet5@2", ROOT)
    track = replace(track, data=replace(track.data, params={**track.data.params, "num_victims": 3}))
    records = [
        VictimRecord("t", 0, attacks=(_outcome("dlg", 40.0, 0.9), _outcome("inverting_gradients", 20.0, 0.95))),
        VictimRecord(
            "t",
            1,
            attacks=(_outcome("dlg", float("nan"), 0.1, loss=float("nan")), _outcome("inverting_gradients", 15.0, 0.4)),
        ),  # fmt: skip
        VictimRecord(
            "t",
            2,
            attacks=(
                _outcome("dlg", 30.0, 0.5, loss=float("inf")),
                _outcome("inverting_gradients", 0.0, 0.0, status="failed"),
            ),
        ),  # fmt: skip
    ]
    assert not succeeded(records[1].attacks[0], ["psnr", "ssim"])
    w = suite_worst_case(track, records)
    assert (w.victims, w.failures) == (3, 1)  # victim 2: DLG diverged, IG failed
    assert w.attack_failures == {"dlg": 2, "inverting_gradients": 1}
    # victim 0: PSNR from DLG (40), SSIM from IG (0.95); victim 1: IG alone
    assert w.metrics["psnr"].mean == pytest.approx((40.0 + 15.0) / 2)
    assert w.metrics["ssim"].mean == pytest.approx((0.95 + 0.4) / 2)
    v0 = max(1 - 10 ** (-(40 - 10) / 10), (0.95 - 0.2) / 0.8)
    v1 = max(1 - 10 ** (-(15 - 10) / 10), (0.4 - 0.2) / 0.8)
    assert w.leakage.n == 2 and w.leakage.mean == pytest.approx((v0 + v1) / 2, rel=1e-5)
    assert w.source["psnr"] == {"dlg": 1, "inverting_gradients": 1}


def test_bootstrap_interval_matches_a_plain_percentile_bootstrap():
    rng = np.random.default_rng(1)
    xs = rng.beta(2, 5, size=64)
    low, high = bootstrap_interval(list(xs), 10000, 0)
    means = xs[rng.integers(0, xs.size, size=(20000, xs.size))].mean(axis=1)  # written out here
    assert low == pytest.approx(np.quantile(means, 0.025), abs=0.004)
    assert high == pytest.approx(np.quantile(means, 0.975), abs=0.004)
    assert bootstrap_interval(list(xs), 10000, 0) == (low, high)  # seeded: the page does not churn
    assert bootstrap_interval([0.3, 0.3, 0.3], 1000, 0) == (0.3, 0.3)


def test_overlapping_intervals_share_a_rank_range():
    assert rank_ranges([(0.1, 0.2), (0.15, 0.3), (0.25, 0.35), (0.5, 0.6)]) == [(1, 2), (1, 3), (2, 3), (4, 4)]
    assert rank_ranges([(0.0, 1.0)] * 3) == [(1, 3)] * 3


def _entry_on(track: Track, base, name: str, leakage: float, low: float, high: float, accuracy: float):
    stat = summarize([leakage, leakage])
    w = WorstCaseSummary(64, 0, {}, {"ssim": stat, "psnr": stat}, {"psnr": 13.6, "ssim": 0.33}, {}, ["psnr", "ssim"],
                         stat, low, high)  # fmt: skip
    fed = replace(base.utility.fedsgd, test_accuracy=accuracy, undefended_test_accuracy=60.0)
    return replace(base, track=track.ref, entry_id=f"{track.ref}/{name}-0123456789ab", worst_case=w,
                   utility=replace(base.utility, fedsgd=fed))  # fmt: skip


def test_v2_ranks_by_mean_leakage_with_shared_ranks_and_the_utility_bar():
    track = load_track("natural-convnet5@2", ROOT)
    base = load_entry(entry_files(ROOT)[0])
    entries = [
        _entry_on(track, base, "a", 0.30, 0.25, 0.35, 58.0),
        _entry_on(track, base, "b", 0.20, 0.15, 0.28, 55.0),
        _entry_on(track, base, "c", 0.60, 0.55, 0.65, 59.0),
        _entry_on(track, base, "d", 0.01, 0.00, 0.02, 20.0),  # private, but 40 points of accuracy lost
    ]
    rows = rank_entries(track, entries)
    assert [r.entry.entry_id.split("/")[1][0] for r in rows] == ["b", "a", "c", "d"]
    assert [r.rank_text for r in rows] == ["1-2", "1-2", "3", "–"]
    assert "accuracy drop 40.0 > 10 points" in rows[3].note


def _toy(protocol: int) -> Track:
    """Digits 8x8 through softmax regression, victims of one train image; only the utility clients differ.

    Both protocols see 16 images per round (so the undefended runs are the same updates); v1's clients hold 8
    images each, v2's exactly the victims' one.
    """
    d = yaml.safe_load((ROOT / "v1" / "tracks" / "digits-convnet5.yaml").read_text())
    d["model"]["name"] = "linear"
    d["data"]["params"].update(num_victims=2, split="train")
    d["attacks"] = [{"name": "dlg", "params": {"max_iterations": 20, "lr": 1.0, "restarts": 1}}]
    d["ranking"]["max_accuracy_drop"] = 15.0
    if protocol == 1:  # v1: clients of 8 images against victims of 1
        d["utility"] = {"rounds": 100, "clients": 2, "batch_size": 8, "lr": 0.5, "seed": 0}
    else:  # v2: clients of exactly the victims' batch
        d["utility"] = {"rounds": 100, "clients": 16, "batch_size": 1, "lr": 0.5, "seed": 0}
        d["protocol"] = 2
        d["ranking"] = {"attack": "worst_case", "metric": "psnr", "tie_break": "ssim", "max_accuracy_drop": 15.0,
                        "leakage": ["psnr", "ssim"], "bootstrap": 1000, "bootstrap_seed": 0}  # fmt: skip
    d["id"] = f"toy-p{protocol}"
    return Track.from_dict(d)


def test_protocol_2_refuses_a_utility_batch_other_than_the_victims():
    d = json.loads(json.dumps(yaml.safe_load((ROOT / "v2" / "tracks" / "natural-convnet5.yaml").read_text())))
    d["utility"]["batch_size"] = 32
    with pytest.raises(ConfigError, match="must equal data.params.images_per_victim 1"):
        Track.from_dict(d)
    d = yaml.safe_load((ROOT / "v2" / "tracks" / "natural-convnet5.yaml").read_text())
    d["data"]["params"]["split"] = "test"
    with pytest.raises(ConfigError, match="split must be 'train'"):
        Track.from_dict(d)


def test_the_accountant_gets_the_sampling_rate_and_steps_of_the_same_fedsgd_run():
    from dglbench.defenses import DEFENSES

    track = load_track("natural-convnet5@2", ROOT)
    params = accounting_params(track, DEFENSES.get("dp_sgd"), {"clip": 1.0, "sigma": 1.0})
    assert params["steps"] == 200 and params["sample_rate"] == pytest.approx(32 * 1 / 1168)  # 1168 train patches
    with pytest.raises(ConfigError, match="differs from the track's FedSGD run"):
        accounting_params(track, DEFENSES.get("dp_sgd"), {"clip": 1.0, "sigma": 1.0, "steps": 5})
    assert accounting_params(track, DEFENSES.get("gaussian"), {"sigma": 0.1}) == {"sigma": 0.1}


def test_every_v1_entry_migrates_with_what_v1_did_not_record_left_null():
    files = [p for p in entry_files(ROOT) if p.parts[-4] == "v1"]
    assert files
    for p in files:
        raw = read_json(p)
        frozen = copy.deepcopy(raw)
        migrated = migrate_entry(raw)
        assert raw == frozen and raw["schema_version"] == 1  # the file's data is not changed
        assert migrated["schema_version"] == 2 and migrated["worst_case"] is None
        assert migrated["defense"]["code_hash"] is None
        assert {k: v for k, v in migrated.items() if k not in ("schema_version", "worst_case", "defense")} == {
            k: v for k, v in raw.items() if k not in ("schema_version", "defense")
        }
        entry = load_entry(p)
        assert entry_digest(entry.track, entry.defense) == entry.provenance.config_hash  # v1 ids stay as published


def test_a_changed_defense_gets_a_new_entry_id(tmp_path, monkeypatch):
    from dglbench.leaderboard.submit import defense_info

    source = """
from dataclasses import dataclass
from dglbench.defenses.base import Defense

@dataclass(frozen=True)
class Halve(Defense):
    factor: float = 0.5

    def __call__(self, gradients, context):
        return [g * self.factor for g in gradients]
"""
    (tmp_path / "halving_defense.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    first = defense_info("halving_defense:Halve", {"factor": 0.5})
    (tmp_path / "halving_defense.py").write_text(source.replace("g * self.factor", "self.factor * g"))
    sys.modules.pop("halving_defense", None)
    second = defense_info("halving_defense:Halve", {"factor": 0.5})
    assert first.params == second.params and first.code_hash != second.code_hash
    assert entry_digest("natural-convnet5@2", first) != entry_digest("natural-convnet5@2", second)


def test_bibtex_parses_with_pybtex_and_citation_names_the_repository(tmp_path):
    pybtex_database = pytest.importorskip("pybtex.database")
    from dglbench.leaderboard.cite import REPOSITORY_URL, bibtex, citation_cff

    track = load_track("natural-convnet5@2", ROOT)
    base = load_entry(entry_files(ROOT)[0])
    submitted = replace(base, defense=replace(base.defense, reference="https://doi.org/10.1000/xyz{1}"))
    text = bibtex(version="0.1.0", year="2026", tracks=[track], entries=[submitted])
    data = pybtex_database.parse_string(text, "bibtex")
    sw = data.entries["dglbench"]
    assert sw.fields["version"] == "0.1.0" and sw.fields["url"] == REPOSITORY_URL
    assert "dglbench-natural-convnet5-v2" in data.entries
    assert any(k.startswith("dglbench-entry-") for k in data.entries)
    stored = pybtex_database.parse_file(str(ROOT / "references.bib"), "bibtex")
    assert stored.entries["dglbench"].fields["version"]
    cff = yaml.safe_load(citation_cff("0.1.0", None))
    assert cff["repository-code"] == REPOSITORY_URL and "date-released" not in cff


@pytest.mark.slow
def test_v1_protocol_ranks_batch_calibrated_noise_first_only_because_of_the_batch_mismatch(tmp_path, capsys):
    """dp_sgd adds sigma*clip/B to the mean gradient: v1 charges it at B=8 in utility and B=1 in privacy."""
    from dglbench.leaderboard.strip import strip_path
    from dglbench.leaderboard.submit import submit

    ranked, drops = {}, {}
    for protocol in (1, 2):
        track = _toy(protocol)
        entries = []
        for defense, params in (("gaussian", {"sigma": 0.01}), ("dp_sgd", {"clip": 1.0, "sigma": 0.5})):
            out = submit(track, defense, params, root=tmp_path / f"p{protocol}", work_dir=tmp_path / "runs")
            notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
            assert len(notes) == (protocol == 1) and all("superseded by protocol 2" in n for n in notes), notes
            entries.append(out.entry)
            assert strip_path(out.entry_path).exists() == (protocol == 2)  # the page's reconstructions
        ranked[protocol] = [(r.entry.defense.name, r.rank) for r in rank_entries(track, entries)]
        drops[protocol] = {e.defense.name: e.utility.fedsgd.accuracy_drop for e in entries}
    assert ranked[1][0] == ("dp_sgd", 1), ranked  # v1: first, with the privacy of B=1 and the utility of B=8
    assert drops[1]["dp_sgd"] <= 15.0 < drops[2]["dp_sgd"], drops  # the same noise on the same clients costs more
    assert dict(ranked[2])["dp_sgd"] is None and dict(ranked[2])["gaussian"] == 1, ranked


def test_dglbench_defenses_lists_installed_entry_points_by_name(monkeypatch, capsys):
    import dglbench.defenses as defenses
    from dglbench.cli import main

    monkeypatch.setattr(defenses, "_entry_points", lambda: {"clipnoise": object()})
    main(["defenses"])
    listed = capsys.readouterr().out.split()
    assert "clipnoise" in listed and "gaussian" in listed


def test_verify_compares_which_attacks_succeeded_and_the_worst_case_over_them():
    from dglbench.leaderboard.verify import _values

    track = load_track("natural-convnet5@2", ROOT)
    diverged = VictimRecord("t", 0, attacks=(_outcome("dlg", 40.0, 0.9, loss=float("nan")),
                                             _outcome("inverting_gradients", 20.0, 0.5)))  # fmt: skip
    fine = VictimRecord("t", 0, attacks=(_outcome("dlg", 40.0, 0.9), _outcome("inverting_gradients", 20.0, 0.5)))
    a, b = _values(diverged, track), _values(fine, track)
    assert a["succeeded"] == "inverting_gradients" and b["succeeded"] == "dlg,inverting_gradients"
    assert (a["worst.psnr"], a["worst.ssim"]) == (20.0, 0.5) and (b["worst.psnr"], b["worst.ssim"]) == (40.0, 0.9)


def _run_baselines_with_a_fake_dglbench(tmp_path, **env_extra: str) -> list[list[str]]:
    """Run ``v2/baselines.sh`` with a ``dglbench`` that only logs its arguments; one list per call."""
    import os
    import shlex
    import shutil
    import subprocess

    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    fake = tmp_path / "dglbench"
    fake.write_text('#!/usr/bin/env bash\nprintf "%q " "$@" >> "$LOG"; echo >> "$LOG"\n')
    fake.chmod(0o755)
    repo = tmp_path / "repo"
    (repo / "leaderboards" / "v2").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "v2" / "baselines.sh", repo / "leaderboards" / "v2")
    env = {**os.environ, "DGLBENCH": str(fake), "WORK_DIR": str(tmp_path / "w"), "LOG": str(log), **env_extra}
    subprocess.run(["bash", "leaderboards/v2/baselines.sh"], cwd=repo, env=env, check=True, capture_output=True)
    return [shlex.split(line) for line in log.read_text().splitlines()]


def test_the_v2_baseline_script_covers_every_builtin_defense_at_two_strengths(tmp_path):
    from dglbench.defenses import DEFENSES

    calls = _run_baselines_with_a_fake_dglbench(tmp_path, TRACKS="toy@2")
    submits = [c for c in calls if c[:2] == ["leaderboard", "submit"]]
    assert all("--skip-existing" in c and c[c.index("--track") + 1] == "toy@2" for c in submits)  # resumable
    settings: dict[str, set[str]] = {}
    for c in submits:
        i = c.index("--defense")
        settings.setdefault(c[i + 1], set()).add(" ".join(c[i + 2 :]))
    assert set(settings) == set(DEFENSES.list())
    assert all(name == "none" or len(s) >= 2 for name, s in settings.items()), settings
    assert calls[len(submits) :] == [["leaderboard", "validate"], ["leaderboard", "render", "--repo-root", "."]]
    # a second process on the same track walks the same list from its end
    reverse = _run_baselines_with_a_fake_dglbench(tmp_path, TRACKS="toy@2", ORDER="reverse")
    assert reverse[: len(submits)] == submits[::-1]


def test_sigterm_to_the_baseline_script_reaches_the_running_submit(tmp_path):
    """A scheduler stops the script, not its child: the running submit must hear it (and keep its victims)."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    fake = tmp_path / "dglbench"
    fake.write_text('#!/usr/bin/env bash\ntrap \'echo "submit stopped"; exit 143\' TERM\n'
                    'touch "$STARTED"\nfor i in $(seq 600); do sleep 0.1; done\necho "submit ran on"\n')  # fmt: skip
    fake.chmod(0o755)
    repo = tmp_path / "repo"
    (repo / "leaderboards" / "v2").mkdir(parents=True)
    shutil.copy(ROOT / "v2" / "baselines.sh", repo / "leaderboards" / "v2")
    started = tmp_path / "started"
    env = {**os.environ, "DGLBENCH": str(fake), "TRACKS": "toy@2", "WORK_DIR": str(tmp_path / "w"),
           "STARTED": str(started)}  # fmt: skip
    proc = subprocess.Popen(["bash", "leaderboards/v2/baselines.sh"], cwd=repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "submit stopped" in out and "submit ran on" not in out, out
