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
from dglbench.runner import load_trial_records, make_trainer, record_path, run_trial
from dglbench.trial import TrialConfig

VICTIMS = 4
DATA = {"num_victims": VICTIMS, "image_size": 8}
ATTACK = {"max_iterations": 200}  # 8x8 digits, convnet5: enough to recover undefended images
RECORD_KEYS = {
    "schema_version", "trial_id", "victim_id", "indices", "protocol", "config", "mode", "status", "reason", "i2f",
    "attack", "metrics", "utility", "defense", "seconds", "peak_memory_mb", "provenance",
}  # fmt: skip
I2F_KEYS = {
    "lower_bound", "jt_delta", "max_eigenvalue", "lower_bound_converged", "exact", "exact_converged",
    "exact_residual", "products",
}  # fmt: skip
ATTACK_KEYS = {"name", "iterations", "restarts", "final_loss", "seconds", "label_source", "status", "reason"}
METRIC_KEYS = {"mse", "rmse", "l2_error", "psnr", "ssim", "lpips_alex", "lpips_vgg", "label_accuracy"}
PROVENANCE_KEYS = {"dglbench", "torch", "timm", "lightning", "python", "git_commit", "hostname", "device", "dtype"}


def config(**kw) -> TrialConfig:
    return TrialConfig.from_dict({"dataset_params": DATA, "lpips": False, "attack_params": ATTACK, **kw})


def victims(num_victims: int = VICTIMS) -> dict:
    """The private victims straight from the data module (all in one step)."""
    dm = create_datamodule("digits", num_victims=num_victims, image_size=8, victims_per_step=num_victims)
    dm.setup("predict")
    return next(iter(dm.predict_dataloader()))


@pytest.fixture(scope="module")
def undefended() -> tuple[TrialConfig, list[dict]]:
    cfg = config()
    return cfg, run_trial(cfg, progress=False)


def check_common(records: list[dict], cfg: TrialConfig, mode: str) -> None:
    truth = victims()
    assert [r["victim_id"] for r in records] == list(range(VICTIMS))
    for r in records:
        assert set(r) == RECORD_KEYS
        json.dumps(r, allow_nan=False)  # plain JSON
        assert r["schema_version"] == 1 and r["trial_id"] == cfg.trial_id and r["config"] == cfg.to_dict()
        assert r["mode"] == mode and r["status"] == "ok" and r["reason"] is None
        assert r["indices"] == truth["indices"][r["victim_id"]].tolist()
        assert r["protocol"]["dataset"] == "digits" and r["protocol"]["image_size"] == 8
        assert r["protocol"]["num_victims"] == VICTIMS
        assert set(r["seconds"]) == {"defense", "i2f", "attack", "metrics", "total"}
        assert all(v >= 0 for v in r["seconds"].values()) and r["seconds"]["total"] > 0
        assert r["peak_memory_mb"] > 0
        assert set(r["provenance"]) >= PROVENANCE_KEYS and r["provenance"]["dtype"] == "float32"
        assert r["defense"]["name"] == cfg.defense and set(r["utility"]) == {"gradient_cosine"}


def test_both_mode_records_and_undefended_attack_recovers_every_victim(undefended):
    cfg, records = undefended
    check_common(records, cfg, "both")
    for r in records:
        assert set(r["i2f"]) == I2F_KEYS and set(r["i2f"]["exact"]) == {"0.1"}
        assert set(r["attack"]) == ATTACK_KEYS and r["attack"]["status"] == "ok"
        assert r["attack"]["name"] == "inverting_gradients" and r["attack"]["iterations"] == 200
        assert set(r["metrics"]) >= METRIC_KEYS
        # no defense: the shared gradient is the clean one, so δ = 0 and every I2F term is exactly 0
        assert r["i2f"]["jt_delta"] == 0 and r["i2f"]["lower_bound"] == 0 and r["i2f"]["exact"]["0.1"] == 0
        assert r["utility"]["gradient_cosine"] == pytest.approx(1, abs=1e-5)
        assert r["metrics"]["psnr"] >= 30, r["metrics"]
        # the recorded error terms agree with each other: RMSE = ‖x̂ − x‖ / √d_x
        assert r["metrics"]["rmse"] == pytest.approx(r["metrics"]["l2_error"] / 8, rel=1e-4)
        assert r["metrics"]["lpips_alex"] is None  # lpips: false


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
        assert records[j]["i2f"]["max_eigenvalue"] == pytest.approx(lam, rel=1e-2)


def test_estimate_only_mode():
    cfg = config(attack=None, defense="gaussian", defense_params={"sigma": 0.01})
    records = run_trial(cfg, progress=False)
    check_common(records, cfg, "estimate")
    for r in records:
        assert r["attack"] is None and r["metrics"] is None
        assert set(r["i2f"]) == I2F_KEYS
        i = r["i2f"]
        assert i["lower_bound"] > 0 and i["lower_bound_converged"]
        assert i["lower_bound"] == pytest.approx(i["jt_delta"] / i["max_eigenvalue"], rel=1e-5)
        # damped exact I2F with ε = 0.1 is at most ‖Kᵀδ‖ / ε (the smallest eigenvalue of KᵀK + εI is ≥ ε)
        assert 0 < i["exact"]["0.1"] <= i["jt_delta"] / 0.1 * (1 + 1e-3)
        assert r["utility"]["gradient_cosine"] < 1


def test_attack_only_mode():
    cfg = config(estimate=False, attack_params={"max_iterations": 20})
    records = run_trial(cfg, progress=False)
    check_common(records, cfg, "attack")
    for r in records:
        assert r["i2f"] is None and r["attack"]["iterations"] == 20 and set(r["metrics"]) >= METRIC_KEYS


def test_module_mode_argument(tmp_path):
    cfg = config(attack_params={"max_iterations": 5})
    dm = create_datamodule("digits", num_victims=2, image_size=8, victims_per_step=2)
    for mode in ("estimate", "attack"):
        module = LeakageModule(cfg.to_dict(), mode=mode)
        trainer = make_trainer(1, "cpu", False, [RecordWriter(tmp_path / mode)])
        (batch,) = trainer.predict(module, datamodule=dm)
        assert [r["mode"] for r in batch] == [mode, mode]
        assert all((r["i2f"] is None) == (mode == "attack") for r in batch)
        assert all((r["metrics"] is None) == (mode == "estimate") for r in batch)
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
        assert all(r["status"] == "ok" for r in records)
        l2.append(statistics.mean(r["metrics"]["l2_error"] for r in records))
        lb.append(statistics.mean(r["i2f"]["lower_bound"] for r in records))
        exact.append(statistics.mean(r["i2f"]["exact"]["0.1"] for r in records))
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
    assert [r["victim_id"] for r in records] == list(range(VICTIMS))
    for r in records:
        if r["victim_id"] == bad:
            assert r["status"] == "failed"
            assert r["reason"].startswith("defense: ") and expected in r["reason"], r["reason"]
            assert f"'dglbench_test_nan_defense:{name}'" in r["reason"]  # the defense is named
            assert r["i2f"] is None and r["metrics"] is None and r["attack"] is None
        else:
            assert r["status"] == "ok" and r["reason"] is None
            assert r["i2f"]["max_eigenvalue"] > 0 and r["metrics"]["psnr"] is not None
    # the failure is kept in the trial's record file
    stored = load_trial_records(record_path(tmp_path / "out", cfg))["victims"]
    assert [r["status"] for r in stored] == [r["status"] for r in records]


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
    rec["sentinel"] = "not recomputed"
    kept.write_text(json.dumps(rec))
    for p in parts.glob("victim-*.json"):
        if p != kept:
            p.unlink()
    second = run_trial(cfg, output_dir=tmp_path, progress=False)
    assert [r["victim_id"] for r in second] == list(range(VICTIMS))
    assert [("sentinel" in r) for r in second] == [False, True, False, False]
    for a, b in zip(first, second):  # recomputed victims reproduce the first run (seeded per victim)
        assert b["i2f"]["lower_bound"] == pytest.approx(a["i2f"]["lower_bound"], rel=1e-6)
    # a finished trial is not run again: its record file is returned as it is
    stored = json.loads(final.read_text())
    stored["victims"][0]["sentinel"] = "from the record file"
    final.write_text(json.dumps(stored))
    third = run_trial(cfg, output_dir=tmp_path, progress=False)
    assert third[0]["sentinel"] == "from the record file"


def test_record_writer_writes_only_owned_victims(tmp_path):
    class FakeTrainer:
        global_rank, world_size = 1, 2

    records = [{"victim_id": j, "status": "ok", "value": math.pi} for j in range(5)]
    RecordWriter(tmp_path).write_records(FakeTrainer(), records + records[:1])  # a padding repeat of victim 0
    written = sorted(p.name for p in Path(tmp_path).iterdir())
    assert written == ["victim-000001.json", "victim-000003.json"]
    assert json.loads((tmp_path / "victim-000003.json").read_text())["value"] == math.pi


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
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    assert "non-finite I2F" in records[1]["reason"]
    assert records[1]["i2f"]["lower_bound"] is None  # stored as null: JSON has no NaN
    assert records[0]["i2f"]["lower_bound"] > 0
