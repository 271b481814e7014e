"""LeakageModule and run_trial: record schema, modes, attack quality, noise trend, failures, resume."""

import json
import math
import statistics
import textwrap
from pathlib import Path

import pytest
import torch
from dglbench.datamodules import create_datamodule
from dglbench.errors import ConfigError, UnknownNameError
from dglbench.gradients import flat_parameter_gradient
from dglbench.modules import LeakageModule, RecordWriter, build_victim_model
from dglbench.record import SCHEMA_VERSION, VictimRecord
from dglbench.runner import load_trial_records, make_trainer, record_path, run_trial
from dglbench.trial import TrialConfig

VICTIMS = 4
DATA = {"num_victims": VICTIMS, "image_size": 8}
ATTACK = {"max_iterations": 200, "cosine_scope": "layer"}  # 8x8 digits, convnet5: recovers undefended images
RECORD_KEYS = {
    "schema_version", "trial_id", "victim_id", "indices", "protocol", "config", "mode", "status", "reason",
    "estimate", "attacks", "worst", "utility", "defense", "timings", "provenance",
}  # fmt: skip
OUTCOME_KEYS = {
    "name", "params", "key", "adaptive", "status", "reason", "iterations", "restarts", "final_loss", "seconds",
    "label_source", "metrics",
}  # fmt: skip
METRIC_KEYS = {"mse", "rmse", "l2_error", "psnr", "ssim", "lpips_alex", "lpips_vgg", "label_accuracy"}
PROVENANCE_KEYS = {"dglbench", "torch", "timm", "lightning", "python", "git_commit", "hostname", "device", "dtype"}


def config(**kw) -> TrialConfig:
    attack = {} if "attacks" in kw else {"attack_params": ATTACK}
    return TrialConfig.from_dict({"dataset_params": DATA, "lpips": False, **attack, **kw})


def victims(num_victims: int = VICTIMS) -> dict:
    """The private victims straight from the data module (all in one step)."""
    dm = create_datamodule("digits", num_victims=num_victims, image_size=8, victims_per_step=num_victims)
    dm.setup("predict")
    return next(iter(dm.predict_dataloader()))


@pytest.fixture(scope="module")
def undefended() -> tuple[TrialConfig, list[VictimRecord]]:
    cfg = config()
    return cfg, run_trial(cfg, progress=False)


def check_common(records: list[VictimRecord], cfg: TrialConfig, mode: str) -> None:
    truth = victims()
    assert [r.victim_id for r in records] == list(range(VICTIMS))
    for r in records:
        stored = r.to_dict()
        assert set(stored) == RECORD_KEYS
        json.dumps(stored, allow_nan=False)  # plain JSON
        assert VictimRecord.from_dict(stored) == r
        assert r.schema_version == SCHEMA_VERSION and r.trial_id == cfg.trial_id and r.config == cfg.to_dict()
        assert r.mode == mode and r.status == "ok" and r.reason is None
        assert list(r.indices) == truth["indices"][r.victim_id].tolist()
        assert r.protocol["dataset"] == "digits" and r.protocol["image_size"] == 8
        assert r.protocol["num_victims"] == VICTIMS
        t = r.timings
        assert min(t.defense, t.i2f, t.attack, t.metrics) >= 0 and t.total > 0 and t.peak_memory_mb > 0
        assert set(r.provenance) >= PROVENANCE_KEYS and r.provenance["dtype"] == "float32"
        assert r.defense["name"] == cfg.defense and set(r.utility) == {"gradient_cosine"}


def test_both_mode_records_and_undefended_attack_recovers_every_victim(undefended):
    cfg, records = undefended
    check_common(records, cfg, "both")
    for r in records:
        # the default damping: ε = 0 (the minimum-norm solution) and ε = 10⁻³ λ_max
        assert set(r.estimate.exact) == {"0.0", "rel:0.001"} == set(r.estimate.exact_residual)
        (outcome,) = r.attacks  # no defense: no adaptive attack
        assert set(r.to_dict()["attacks"][0]) == OUTCOME_KEYS and outcome.status == "ok" and not outcome.adaptive
        assert outcome.name == outcome.key == "inverting_gradients" and outcome.iterations == 200
        assert outcome.params == ATTACK and set(outcome.metrics) >= METRIC_KEYS
        # one attack: the worst case is that attack
        assert r.worst.status == "ok" and (r.worst.attacks, r.worst.failed) == (1, 0)
        assert set(r.worst.source.values()) == {"inverting_gradients"}
        assert all(r.metrics[m] == outcome.metrics[m] for m in METRIC_KEYS)
        # no defense: the shared gradient is the clean one, so δ = 0 and every I2F term is exactly 0
        assert r.estimate.jt_delta == 0 and r.estimate.lower_bound == 0 and set(r.estimate.exact.values()) == {0}
        assert r.utility["gradient_cosine"] == pytest.approx(1, abs=1e-5)
        assert r.metric("psnr") >= 30, r.metrics
        # the recorded error terms agree with each other: RMSE = ‖x̂ − x‖ / √d_x
        assert r.metric("rmse") == pytest.approx(r.metric("l2_error") / 8, rel=1e-4)
        assert r.metrics["lpips_alex"] is None  # lpips: false


def test_recorded_max_eigenvalue_matches_a_finite_difference_jacobian(undefended):
    """λ_max(KᵀK) from the record vs. K built column by column by central differences (float64)."""
    cfg, records = undefended
    model = build_victim_model(TrialConfig.from_dict({**cfg.to_dict(), "dtype": "float64"}), 10, (1, 8, 8))
    truth = victims()
    h = 1e-5
    for j in (0, 1):
        x, y = truth["images"][j].double(), truth["labels"][j]
        cols = []
        for i in range(x.numel()):
            e = torch.zeros_like(x).view(-1)
            e[i] = h
            e = e.view_as(x)
            cols.append((flat_parameter_gradient(model, x + e, y) - flat_parameter_gradient(model, x - e, y)) / (2 * h))
        k = torch.stack(cols, dim=1)  # [d_θ, d_x]
        lam = torch.linalg.eigvalsh(k.T @ k)[-1].item()
        assert records[j].estimate.max_eigenvalue == pytest.approx(lam, rel=1e-2)


def test_estimate_only_mode():
    cfg = config(attack=None, defense="gaussian", defense_params={"sigma": 0.01}, eps=[0.1], eps_relative=[1e-3])
    records = run_trial(cfg, progress=False)
    check_common(records, cfg, "estimate")
    for r in records:
        assert r.attacks == () and r.worst is None and r.metrics is None
        i = r.estimate
        assert i.lower_bound > 0 and i.lower_bound_converged
        assert i.lower_bound == pytest.approx(i.jt_delta / i.max_eigenvalue, rel=1e-5)
        # damped exact I2F with ε = 0.1 is at most ‖Kᵀδ‖ / ε (the smallest eigenvalue of KᵀK + εI is ≥ ε)
        assert 0 < i.exact["0.1"] <= i.jt_delta / 0.1 * (1 + 1e-3)
        # every term records the absolute ε it used and ε / λ_max, and the bound of its own damped quantity
        assert i.eps_used == pytest.approx({"0.1": 0.1, "rel:0.001": 1e-3 * i.max_eigenvalue})
        assert i.eps_relative == pytest.approx({"0.1": 0.1 / i.max_eigenvalue, "rel:0.001": 1e-3})
        for key, eps in i.eps_used.items():
            assert i.exact_lower_bound[key] == pytest.approx(i.jt_delta / (i.max_eigenvalue + eps), rel=1e-5)
            assert i.exact_lower_bound[key] <= i.exact[key] and not i.exact_ill_conditioned[key]
        assert r.utility["gradient_cosine"] < 1


def test_attack_only_mode():
    cfg = config(estimate=False, attack_params={"max_iterations": 20})
    records = run_trial(cfg, progress=False)
    check_common(records, cfg, "attack")
    for r in records:
        assert r.estimate is None and r.attacks[0].iterations == 20 and set(r.metrics) >= METRIC_KEYS


def test_module_mode_argument(tmp_path):
    cfg = config(attack_params={"max_iterations": 5})
    dm = create_datamodule("digits", num_victims=2, image_size=8, victims_per_step=2)
    for mode in ("estimate", "attack"):
        module = LeakageModule(cfg.to_dict(), mode=mode)
        trainer = make_trainer(1, "cpu", False, [RecordWriter(tmp_path / mode)])
        (batch,) = trainer.predict(module, datamodule=dm)
        assert [r.mode for r in batch] == [mode, mode]
        assert all((r.estimate is None) == (mode == "attack") for r in batch)
        assert all((r.metrics is None) == (mode == "estimate") for r in batch)
        assert sorted(p.name for p in (tmp_path / mode).iterdir()) == ["victim-000000.json", "victim-000001.json"]
    assert LeakageModule(config(attack=None)).mode == "estimate"
    with pytest.raises(ConfigError, match="mode"):
        LeakageModule(cfg, mode="everything")
    with pytest.raises(ConfigError, match="needs an attack"):
        LeakageModule(config(attack=None), mode="attack")


def test_stronger_noise_gives_worse_reconstructions_and_larger_i2f():
    sigmas = (1e-4, 1e-2, 1e-1)  # two decades apart: the attack error and I2F each grow about 10x per decade
    l2, lb, exact = [], [], []
    for sigma in sigmas:
        records = run_trial(config(defense="gaussian", defense_params={"sigma": sigma}), progress=False)
        assert all(r.ok for r in records)
        l2.append(statistics.mean(r.metric("l2_error") for r in records))
        lb.append(statistics.mean(r.estimate.lower_bound for r in records))
        exact.append(statistics.mean(r.estimate.exact["rel:0.001"] for r in records))
    assert l2 == sorted(l2) and len(set(l2)) == 3, l2
    assert lb == sorted(lb) and len(set(lb)) == 3, lb
    assert exact == sorted(exact) and len(set(exact)) == 3, exact
    # with the same seed the noise direction is the same and only its scale changes: I2F is linear in δ
    assert lb[2] / lb[1] == pytest.approx(sigmas[2] / sigmas[1], rel=1e-2)


NAN_DEFENSE = """
from dataclasses import dataclass


@dataclass(frozen=True)
class NanForLabel:
    label: int = 0

    def __call__(self, gradients, context):
        out = [g.clone() for g in gradients]
        if int(context.labels[0]) == self.label:
            out[0] = out[0] * float("nan")
        return out


@dataclass(frozen=True)
class RaiseForLabel:
    label: int = 0

    def __call__(self, gradients, context):
        if int(context.labels[0]) == self.label:
            return {}["no such key"]
        return [g.clone() for g in gradients]
"""


@pytest.mark.parametrize(
    "name, expected", [("NanForLabel", "returned NaN or inf values"), ("RaiseForLabel", "KeyError: 'no such key'")]
)
def test_a_failing_victim_is_recorded_and_the_others_go_on(tmp_path, monkeypatch, name, expected):
    (tmp_path / "dglbench_test_nan_defense.py").write_text(textwrap.dedent(NAN_DEFENSE))
    monkeypatch.syspath_prepend(str(tmp_path))
    labels = victims()["labels"][:, 0].tolist()
    unique = [j for j, lab in enumerate(labels) if labels.count(lab) == 1]
    assert unique, labels
    bad = unique[-1]
    cfg = config(
        defense=f"dglbench_test_nan_defense:{name}",
        defense_params={"label": labels[bad]},
        attack_params={"max_iterations": 10},
    )
    records = run_trial(cfg, output_dir=tmp_path / "out", progress=False)
    assert [r.victim_id for r in records] == list(range(VICTIMS))
    for r in records:
        if r.victim_id == bad:
            assert r.status == "failed"
            assert r.reason.startswith("defense: ") and expected in r.reason, r.reason
            assert f"'dglbench_test_nan_defense:{name}'" in r.reason  # the defense is named
            assert r.estimate is None and r.metrics is None and r.attacks == ()
        else:
            assert r.status == "ok" and r.reason is None
            assert r.estimate.max_eigenvalue > 0 and r.metric("psnr") is not None
    # the failure is kept in the trial's record file
    stored = load_trial_records(record_path(tmp_path / "out", cfg))
    assert [r.status for r in stored] == [r.status for r in records]


@pytest.mark.parametrize(
    "change, match",
    [({"defense": "gausian"}, "did you mean 'gaussian'"), ({"attack": "inverting"}, "unknown attack 'inverting'")],
)
def test_unknown_names_fail_before_anything_runs(tmp_path, change, match):
    with pytest.raises(UnknownNameError, match=match):
        run_trial(config(**change), output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_resume_within_a_trial_skips_finished_victims(tmp_path):
    cfg = config(attack=None, defense="gaussian", defense_params={"sigma": 0.01}, dataset_params={**DATA})
    first = run_trial(cfg, output_dir=tmp_path, progress=False)
    final = record_path(tmp_path, cfg)
    parts = tmp_path / "parts" / cfg.trial_id
    assert final.exists() and len(list(parts.glob("victim-*.json"))) == VICTIMS
    # simulate a run killed after victim 1: only its part file is left, marked with a sentinel
    final.unlink()
    kept = parts / "victim-000001.json"
    rec = json.loads(kept.read_text())
    rec["provenance"]["sentinel"] = "not recomputed"
    kept.write_text(json.dumps(rec))
    for p in parts.glob("victim-*.json"):
        if p != kept:
            p.unlink()
    second = run_trial(cfg, output_dir=tmp_path, progress=False)
    assert [r.victim_id for r in second] == list(range(VICTIMS))
    assert [("sentinel" in r.provenance) for r in second] == [False, True, False, False]
    for a, b in zip(first, second):  # recomputed victims reproduce the first run (seeded per victim)
        assert b.estimate.lower_bound == pytest.approx(a.estimate.lower_bound, rel=1e-6)
    # a finished trial is not run again: its record file is returned as it is
    stored = json.loads(final.read_text())
    stored["victims"][0]["provenance"]["sentinel"] = "from the record file"
    final.write_text(json.dumps(stored))
    third = run_trial(cfg, output_dir=tmp_path, progress=False)
    assert third[0].provenance["sentinel"] == "from the record file"


def test_record_writer_writes_only_owned_victims(tmp_path):
    class FakeTrainer:
        global_rank, world_size = 1, 2

    records = [VictimRecord(trial_id="t", victim_id=j, utility={"value": math.pi}) for j in range(5)]
    RecordWriter(tmp_path).write_records(FakeTrainer(), records + records[:1])  # a padding repeat of victim 0
    written = sorted(p.name for p in Path(tmp_path).iterdir())
    assert written == ["victim-000001.json", "victim-000003.json"]
    assert VictimRecord.from_dict(json.loads((tmp_path / "victim-000003.json").read_text())) == records[3]


def test_non_finite_i2f_fails_only_that_victim_and_the_record_is_still_written(monkeypatch, tmp_path):
    """An overflowing estimate (NaN) is a failed victim with a reason, never a crash of the record writer."""
    import dataclasses

    import dglbench.modules as modules_mod

    real = modules_mod.estimate_i2f

    def nan_for_victim_1(model, xs, ys, deltas, *args, **kwargs):
        est = real(model, xs, ys, deltas, *args, **kwargs)
        if len(xs) > 1:  # the group call: make the second victim overflow
            value = est.lower_bound.value.clone()
            value[1] = float("nan")
            return dataclasses.replace(est, lower_bound=dataclasses.replace(est.lower_bound, value=value))
        return est

    monkeypatch.setattr(modules_mod, "estimate_i2f", nan_for_victim_1)
    config = TrialConfig(attack=None, defense="gaussian", defense_params={"sigma": 0.01},
                         dataset_params={"num_victims": 3}, victims_per_step=3)  # fmt: skip
    records = run_trial(config, progress=False, output_dir=tmp_path)
    assert [r.status for r in records] == ["ok", "failed", "ok"]
    assert "non-finite I2F" in records[1].reason
    assert records[1].estimate.lower_bound is None  # stored as null: JSON has no NaN
    assert records[0].estimate.lower_bound > 0


SUITE = [
    {"name": "inverting_gradients", "params": {"max_iterations": 20}},
    {"name": "dlg", "params": {"max_iterations": 3}},
]
TWO = {"num_victims": 2, "image_size": 8}


def test_attack_suite_with_the_defenses_adaptive_attack_and_its_worst_case():
    """Two listed attacks plus the adaptive one 1-bit quantization declares; the worst case worked out here."""
    cfg = config(attacks=SUITE, defense="quantization", defense_params={"bits": 1}, dataset_params=TWO,
                 estimate=False)  # fmt: skip
    records = run_trial(cfg, progress=False)
    for r in records:
        assert r.ok and [a.key for a in r.attacks] == ["inverting_gradients", "dlg", "ig_sign"]
        assert [a.adaptive for a in r.attacks] == [False, False, True]
        assert r.attacks[2].params["max_iterations"] == 20  # the budget of the attack it extends (IG's)
        assert all(a.status == "ok" for a in r.attacks) and (r.worst.attacks, r.worst.failed) == (3, 0)
        for metric, pick in (("psnr", max), ("ssim", max), ("l2_error", min), ("rmse", min)):
            values = {a.key: a.metrics[metric] for a in r.attacks}
            best = pick(values.values())
            assert r.metric(metric) == best and values[r.worst.source[metric]] == best
    # the first attack draws what it drew in a one-attack trial: adding attacks changes none of its numbers
    alone = run_trial(config(attack_params=SUITE[0]["params"], defense="quantization", defense_params={"bits": 1},
                             dataset_params=TWO, estimate=False, adaptive=False), progress=False)  # fmt: skip
    for a, r in zip(alone, records):
        assert [o.key for o in a.attacks] == ["inverting_gradients"]
        assert a.attacks[0].metrics["psnr"] == pytest.approx(r.attacks[0].metrics["psnr"], rel=1e-6)
    assert config(adaptive=False).trial_id != config().trial_id


def test_an_adaptive_attack_takes_the_settings_of_the_suite_attack_it_extends():
    """DLG listed first must not hand its 300 L-BFGS steps to Gaussian noise's adaptive IG: ig_l2 extends IG."""
    from dglbench.defenses import create_defense
    from dglbench.modules import attack_suite

    ig = {"max_iterations": 4000, "lr": 0.1, "tv_weight": 1e-4, "restarts": 2, "cosine_scope": "global"}
    suite = [{"name": "dlg", "params": {"max_iterations": 300, "lr": 1.0, "restarts": 1}},
             {"name": "inverting_gradients", "params": ig}]  # fmt: skip
    (adaptive,) = [a for a in attack_suite(config(attacks=suite), create_defense("gaussian", sigma=0.1)) if a.adaptive]
    assert adaptive.name == "ig_l2" and adaptive.params == ig
    assert (adaptive.attack.max_iterations, adaptive.attack.tv_weight, adaptive.attack.restarts) == (4000, 1e-4, 2)
    # no suite attack it extends: nothing to take its budget from, so it is skipped with the reason
    only_dlg = attack_suite(config(attacks=suite[:1] + [{"name": "idlg", "params": {}}]), create_defense("gaussian"))
    (skipped,) = [a for a in only_dlg if a.adaptive]
    assert skipped.skip == (
        "adaptive attack ig_l2 extends inverting_gradients, which the suite does not list: it has no budget to take"
    )
    assert all(a.skip is None for a in only_dlg if not a.adaptive)


@pytest.mark.parametrize("suite", ["two", "one"])
def test_a_failed_attack_is_recorded_and_left_out_of_the_worst_case(monkeypatch, suite):
    from dglbench.attacks import DLG

    def boom(self, *args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(DLG, "run_many", boom)
    attacks = SUITE if suite == "two" else SUITE[1:]
    records = run_trial(config(attacks=attacks, dataset_params=TWO, estimate=False), progress=False)
    for r in records:
        dlg = r.attack("dlg")
        assert dlg.status == "failed" and dlg.reason == "attack: ValueError: boom" and dlg.metrics is None
        if suite == "two":  # the other attack still measures the victim; the failure is counted, not dropped
            assert r.ok and (r.worst.attacks, r.worst.failed) == (1, 1)
            assert r.metric("psnr") == r.attack("inverting_gradients").metrics["psnr"]
            assert set(r.worst.source.values()) == {"inverting_gradients"}
        else:  # every attack failed: the victim's worst case failed, and so did the victim
            assert not r.ok and r.reason == "attack: ValueError: boom" and r.metrics is None
            assert r.worst.status == "failed" and (r.worst.attacks, r.worst.failed) == (0, 1)


def test_the_architectures_own_initialization_follows_init_seed_and_leaves_the_global_generator_alone():
    """A ViT's position embedding and timm's own init come from the constructor's draws: seeded by init_seed."""
    from dglbench.modules import initialized_model

    vit = {"model": "vit_tiny_patch16_224", "model_params": {"patch_size": 4, "depth": 1}, "init": "default"}

    def build(seed):
        return initialized_model(TrialConfig.from_dict({**vit, "init_seed": seed}), 3, (3, 16, 16)).state_dict()

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = build(0), build(0), build(1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator did not move
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pos_embed"], c["pos_embed"]) and not torch.equal(a["head.weight"], c["head.weight"])
