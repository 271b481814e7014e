"""A sweep computes each victim's I2F once for the trials that differ only in the defense (an I2FShare)."""

import pytest
import torch
from dglbench import influence, modules
from dglbench.layout import RunLayout, read_trial_records
from dglbench.modules import I2FShare
from dglbench.runner import run_trial
from dglbench.sweep import load_spec, run_sweep
from dglbench.sweep.runner import _i2f_shares
from dglbench.trial import TrialConfig

SIGMAS = [0.01, 0.03, 0.1]


def spec(sigmas=SIGMAS, **parameters) -> dict:
    return {
        "name": "g",
        "method": "grid",
        "parameters": {
            "defense": {"value": "gaussian"},
            "defense_params.sigma": {"values": list(sigmas)},
            "attack": {"value": None},
            "dataset": {"value": "digits"},
            "dataset_params": {"value": {"num_victims": 2}},
            "model": {"value": "convnet5"},
            "lpips": {"value": False},
            **parameters,
        },
    }


@pytest.fixture
def counted(monkeypatch):
    """Counts the linearizations (operators built) and Lanczos runs of I2F estimates."""
    calls = {"operators": 0, "lanczos": 0}
    operator, lanczos_of = influence._operator, influence._lanczos_of

    def counting_operator(*args, **kwargs):
        calls["operators"] += 1
        return operator(*args, **kwargs)

    def counting_lanczos(*args, **kwargs):
        calls["lanczos"] += 1
        return lanczos_of(*args, **kwargs)

    monkeypatch.setattr(influence, "_operator", counting_operator)
    monkeypatch.setattr(influence, "_lanczos_of", counting_lanczos)
    return calls


def read(out, trial_id):
    return read_trial_records(RunLayout(out).trial_record(trial_id))


def assert_same_estimates(grouped, alone):
    assert len(grouped) == len(alone)
    for g, a in zip(grouped, alone):
        assert (
            (g.trial_id, g.victim_id, g.status)
            == (a.trial_id, a.victim_id, a.status)
            == (g.trial_id, a.victim_id, "ok")
        )
        ge, ae = g.estimate, a.estimate
        for key in ("lower_bound", "jt_delta", "max_eigenvalue"):
            assert getattr(ge, key) == pytest.approx(getattr(ae, key), rel=1e-5), key
        for eps, value in ae.exact.items():
            assert ge.exact[eps] == pytest.approx(value, rel=1e-5), eps


def test_sigma_sweep_builds_each_victims_operator_once_and_equals_trials_run_alone(tmp_path, counted):
    trials = load_spec(spec()).trials()
    assert len(trials) == 3 and len({I2FShare.key(t) for t in trials}) == 1
    result = run_sweep(spec(), tmp_path / "sw", progress=False)
    assert (result.ran, result.failed_victims) == (3, 0)
    assert counted == {"operators": 2, "lanczos": 2}  # one per victim for the whole group, not one per trial
    grouped = {t.trial_id: read(tmp_path / "sw", t.trial_id) for t in trials}
    counted.update(operators=0, lanczos=0)
    for t in trials:  # each trial alone: same ids, same values (to solver tolerance)
        alone = run_trial(t, progress=False)
        assert [r.trial_id for r in alone] == [t.trial_id] * 2
        assert_same_estimates(grouped[t.trial_id], alone)
    assert counted["lanczos"] == 3  # alone: once per trial (its 2 victims vectorized together)


def test_sweep_with_an_attack_runs_the_attack_per_trial(tmp_path, counted):
    attack = {"attack": {"value": "dlg"}, "attack_params": {"value": {"max_iterations": 2}}}
    result = run_sweep(spec(sigmas=[0.01, 0.1], **attack), tmp_path / "sw", progress=False)
    assert (result.ran, result.failed_victims) == (2, 0)
    assert counted["lanczos"] == 2
    for t in load_spec(spec(sigmas=[0.01, 0.1], **attack)).trials():
        records = read(tmp_path / "sw", t.trial_id)
        assert all(r.attacks and r.attacks[0].status == "ok" for r in records)
        assert_same_estimates(records, run_trial(t, progress=False))


def test_resume_groups_only_the_pending_trials(tmp_path, counted):
    out = tmp_path / "sw"
    run_sweep(spec(), out, progress=False, max_trials=1)
    assert counted["lanczos"] == 2  # the first trial estimated the whole group's victims
    counted.update(operators=0, lanczos=0)
    result = run_sweep(spec(), out, progress=False)  # a new process would lose the share: re-grouped
    assert (result.ran, result.skipped) == (2, 1)
    assert counted["lanczos"] == 2  # the two pending trials share one run per victim
    trials = load_spec(spec()).trials()
    shares = _i2f_shares(trials[1:])
    assert shares[trials[1].trial_id] is shares[trials[2].trial_id]
    assert [c.trial_id for c in shares[trials[1].trial_id].configs] == [t.trial_id for t in trials[1:]]
    for t in trials:
        assert_same_estimates(read(out, t.trial_id), run_trial(t, progress=False))


def test_trials_that_differ_in_more_than_the_defense_are_not_grouped():
    trials = [
        TrialConfig(attack=None, defense="gaussian", defense_params={"sigma": 0.1}),
        TrialConfig(attack=None, defense="gaussian", defense_params={"sigma": 0.1}, seed=1),
        TrialConfig(attack=None, defense="none"),
        TrialConfig(attack="dlg", estimate=False, defense="gaussian", defense_params={"sigma": 0.2}),
        TrialConfig(attack="dlg", estimate=False, defense="none"),
    ]
    shares = _i2f_shares(trials)
    assert set(shares) == {trials[0].trial_id, trials[2].trial_id}  # estimate-free trials have nothing to share
    with pytest.raises(Exception, match="differ only in the defense"):
        I2FShare(trials[:2])


def test_a_member_whose_defense_fails_fails_alone(tmp_path, monkeypatch, counted):
    import dglbench.defenses as defenses

    run_defense = defenses.run_defense

    def failing_for_one_level(defense, context):
        if getattr(defense, "sigma", None) == 0.03:
            raise RuntimeError("this level breaks")
        return run_defense(defense, context)

    monkeypatch.setattr(defenses, "run_defense", failing_for_one_level)
    result = run_sweep(spec(), tmp_path / "sw", progress=False)
    assert (result.ran, result.failed_victims) == (3, 2)
    assert counted["lanczos"] == 2  # the other two levels still share one run per victim
    for t in load_spec(spec()).trials():
        records = read(tmp_path / "sw", t.trial_id)
        if t.defense_params["sigma"] == 0.03:
            assert all(r.status == "failed" and "this level breaks" in r.reason for r in records)
        else:
            monkeypatch.setattr(defenses, "run_defense", run_defense)
            assert_same_estimates(records, run_trial(t, progress=False))
            monkeypatch.setattr(defenses, "run_defense", failing_for_one_level)


def test_a_failing_group_estimate_falls_back_to_each_trial(tmp_path, monkeypatch, counted):
    estimate_i2f = modules.estimate_i2f

    def refusing_matrices(model, images, labels, deltas, *args, **kwargs):
        if isinstance(deltas, torch.Tensor) and deltas.dim() == 2:
            raise RuntimeError("out of memory")
        return estimate_i2f(model, images, labels, deltas, *args, **kwargs)

    monkeypatch.setattr(modules, "estimate_i2f", refusing_matrices)
    result = run_sweep(spec(), tmp_path / "sw", progress=False)
    assert (result.ran, result.failed_victims) == (3, 0)
    monkeypatch.setattr(modules, "estimate_i2f", estimate_i2f)
    for t in load_spec(spec()).trials():
        assert_same_estimates(read(tmp_path / "sw", t.trial_id), run_trial(t, progress=False))


def test_share_i2f_off_estimates_every_trial_on_its_own_with_the_same_numbers(tmp_path, counted):
    """What the sweep-share benchmark compares: one Lanczos run per trial (3 trials, 2 victims vectorized)."""
    trials = load_spec(spec()).trials()
    run_sweep(spec(), tmp_path / "alone", progress=False, share_i2f=False)
    assert counted["lanczos"] == 3
    counted.update(operators=0, lanczos=0)
    run_sweep(spec(), tmp_path / "shared", progress=False)
    assert counted["lanczos"] == 2
    for t in trials:
        assert_same_estimates(read(tmp_path / "shared", t.trial_id), read(tmp_path / "alone", t.trial_id))
