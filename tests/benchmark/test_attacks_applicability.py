"""Attack applicability: each attack declares the cases and models it applies to; the suite skips the others."""

import pytest
import torch
from dglbench.attacks import create_attack, list_attacks
from dglbench.case import Case, make_payload
from dglbench.errors import ConfigError
from dglbench.gradients import flat_parameter_gradient
from dglbench.record import AttackOutcome, VictimRecord, worst_case
from dglbench.runner import run_trial
from dglbench.trial import TrialConfig

FEDSGD_ONLY = ["dlg", "idlg", "inverting_gradients", "ig_masked", "ig_sign", "ig_quantized", "ig_clipped", "ig_l2"]


@pytest.mark.parametrize("name", FEDSGD_ONLY + ["ig_l1"])
def test_fedsgd_attacks_apply_to_fedsgd_only(name):
    attack = create_attack(name)
    assert attack.applicable(Case()) is None
    reason = attack.applicable(Case(update="fedavg"))
    assert reason is not None and "update='fedavg'" in reason and name in reason


def test_ig_fedavg_applies_to_fedavg_only():
    attack = create_attack("ig_fedavg")
    assert attack.applicable(Case(update="fedavg")) is None
    assert "update='fedsgd'" in attack.applicable(Case())


def test_every_registered_attack_declares_its_cases():
    for name in list_attacks():
        attack = create_attack(name)
        assert set(attack.updates) <= {"fedsgd", "fedavg"} and attack.updates
        assert isinstance(attack.closed_form, bool)


def test_running_an_attack_on_a_case_it_does_not_apply_to_is_a_config_error():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x, y = torch.rand(1, 1, 2, 2), torch.tensor([1])
    payload = make_payload(Case(update="fedavg"), flat_parameter_gradient(model, x, y), y)
    with pytest.raises(ConfigError, match="does not apply.*update='fedavg'"):
        create_attack("dlg", max_iterations=1).run(model, payload, (1, 2, 2))


def test_worst_case_leaves_skipped_attacks_out_and_counts_them():
    """Worked by hand: one attack at 20 dB, one failed, one skipped -> 20 dB from 'a', counts 1 / 1 / 1."""
    outcomes = [
        AttackOutcome("a", status="ok", metrics={"psnr": 20.0, "l2_error": 3.0}),
        AttackOutcome("b", status="failed", reason="diverged"),
        AttackOutcome("c", status="skipped", reason="c applies to update in ('fedavg',)"),
    ]
    w = worst_case(outcomes)
    assert w.status == "ok" and (w.attacks, w.failed, w.skipped) == (1, 1, 1)
    assert w.metrics["psnr"] == 20.0 and w.source == {"psnr": "a", "l2_error": "a"}
    rec = VictimRecord(trial_id="t", victim_id=0, attacks=tuple(outcomes), worst=w)
    assert VictimRecord.from_dict(rec.to_dict()) == rec


def test_a_suite_all_skipped_fails_with_the_reasons():
    w = worst_case([AttackOutcome("c", status="skipped", reason="no ViT")])
    assert w.status == "failed" and (w.attacks, w.failed, w.skipped) == (0, 0, 1)
    assert w.reason == "every attack of the suite was skipped: c: no ViT"
    mixed = worst_case([AttackOutcome("c", status="skipped", reason="no ViT"), AttackOutcome("d", status="failed")])
    assert mixed.status == "failed" and (mixed.failed, mixed.skipped) == (1, 1)
    assert mixed.reason.startswith("every attack of the suite failed or was skipped")


def test_old_worst_case_without_a_skipped_count_reads_back():
    rec = VictimRecord(trial_id="t", victim_id=0, worst=worst_case([AttackOutcome("a", metrics={"psnr": 1.0})]))
    data = rec.to_dict()
    del data["worst"]["skipped"]
    assert VictimRecord.from_dict(data).worst.skipped == 0


def _trial(case: dict, attacks: list) -> TrialConfig:
    return TrialConfig.from_dict({
        "dataset_params": {"num_victims": 1, "image_size": 8}, "model": "mlp_1x256", "lpips": False,
        "estimate": False, "case": case, "attacks": attacks,
    })  # fmt: skip


def test_the_suite_skips_attacks_that_do_not_apply_and_records_why():
    suite = [{"name": "ig_fedavg", "params": {"max_iterations": 2}}, {"name": "dlg", "params": {"max_iterations": 2}}]
    (rec,) = run_trial(_trial({}, suite), progress=False)
    skipped, dlg = rec.attack("ig_fedavg"), rec.attack("dlg")
    assert skipped.status == "skipped" and "update='fedsgd'" in skipped.reason and skipped.metrics is None
    assert dlg.status == "ok" and rec.ok and (rec.worst.attacks, rec.worst.failed, rec.worst.skipped) == (1, 0, 1)
    assert set(rec.worst.source.values()) == {"dlg"}


def test_a_victim_whose_suite_is_all_skipped_fails_with_the_reasons():
    (rec,) = run_trial(_trial({"update": "fedavg"}, [{"name": "dlg", "params": {"max_iterations": 2}}]), progress=False)
    assert not rec.ok and rec.attack("dlg").status == "skipped"
    assert rec.reason.startswith("attack: every attack of the suite was skipped: dlg: dlg applies to update")
