"""Threat models through the whole trial path: FedAvg trials, trained model states, batches with BatchNorm.

Truths are computed here, independently of the code under test: the client's update written out as plain
autograd steps, its Jacobian built column by column, BatchNorm's batch statistics by hand, the train loss on
the training split.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from dglbench.case import Case
from dglbench.datamodules import create_datamodule
from dglbench.errors import ConfigError, DglbenchError
from dglbench.model_state import load_trained_state, victim_checkpoint, weights_sha256
from dglbench.modules import build_victim_model, initialized_model
from dglbench.runner import run_trial
from dglbench.sweep.spec import load_spec
from dglbench.trial import TrialConfig
from torch import nn


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DGLBENCH_CACHE", str(tmp_path / "cache"))


def unrolled_update(model, x, y, lr, steps):
    """Δθ = θ_τ − θ_0 after ``steps`` full-batch SGD steps, written with plain autograd (differentiable in x)."""
    names = [n for n, p in model.named_parameters()]
    theta = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    start = [t.clone() for t in theta]
    for _ in range(steps):
        out = torch.func.functional_call(model, dict(zip(names, theta)), (x,))
        grads = torch.autograd.grad(F.cross_entropy(out, y), theta, create_graph=True)
        theta = [t - lr * g for t, g in zip(theta, grads)]
    return torch.cat([(t - s).reshape(-1) for t, s in zip(theta, start)])


def explicit_max_eigenvalue(fn, x):
    """λ_max(KᵀK) with K = ∂fn/∂x built row by row (one reverse pass per output entry)."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    rows = [torch.autograd.grad(out[i], x, retain_graph=True)[0].reshape(-1) for i in range(out.numel())]
    k = torch.stack(rows)
    return float(torch.linalg.svdvals(k)[0] ** 2)


FEDAVG = {"update": "fedavg", "local_steps": 2, "local_lr": 0.1}


def test_fedavg_trial_records_the_update_i2f_and_the_attack():
    cfg = TrialConfig.from_dict({
        "dataset_params": {"num_victims": 1}, "model": "mlp_1x256", "model_params": {"hidden": [16]},
        "defense": "gaussian", "defense_params": {"sigma": 1e-4}, "attack": "ig_fedavg",
        "attack_params": {"max_iterations": 20, "tv_weight": 0.0}, "case": FEDAVG, "dtype": "float64",
        "lower_bound_tol": 1e-6, "lpips": False, "adaptive": False,
    })  # fmt: skip
    (rec,) = run_trial(cfg, progress=False)
    assert rec.status == "ok", rec.reason
    assert rec.config["case"] == FEDAVG and rec.provenance["case"]["update"] == "fedavg"
    assert rec.provenance["case"]["local_steps"] == 2 and rec.provenance["model_state"] == {"state": "init"}
    (outcome,) = rec.attacks
    assert outcome.name == "ig_fedavg" and outcome.status == "ok" and outcome.iterations == 20
    assert rec.metric("psnr") is not None and rec.metric("l2_error") > 0
    # λ_max of the FedAvg update map x -> Δθ, against the Jacobian of the steps written out here
    model = build_victim_model(cfg, 10, (1, 8, 8))
    dm = create_datamodule("digits", num_victims=1)
    victim = dm.victim(0)
    x, y = victim["images"].double(), victim["labels"]
    lam = explicit_max_eigenvalue(lambda z: unrolled_update(model, z, y, 0.1, 2), x)
    assert rec.estimate.max_eigenvalue == pytest.approx(lam, rel=1e-4)
    # and it is not FedSGD's: one step would give η² λ_max of the gradient map, τ = 2 is a different map
    lam_sgd = explicit_max_eigenvalue(lambda z: unrolled_update(model, z, y, 1.0, 1), x)
    assert abs(rec.estimate.max_eigenvalue - 0.01 * lam_sgd) > 1e-3 * lam


def test_sweeps_over_the_update_rule_and_local_steps_with_dotted_keys():
    spec = load_spec({
        "method": "grid",
        "parameters": {
            "attack": {"value": None}, "case": {"value": {"local_lr": 0.1}},
            "case.update": {"values": ["fedsgd", "fedavg"]}, "case.local_steps": {"values": [1, 5]},
        },
    })  # fmt: skip
    trials = spec.trials()
    cases = [t.case_obj for t in trials]
    assert [(c.update, c.local_steps) for c in cases] == [("fedsgd", 1), ("fedsgd", 5), ("fedavg", 1), ("fedavg", 5)]
    assert all(c.local_lr == 0.1 for c in cases) and len({t.trial_id for t in trials}) == 4


# -------------------------------------------------------------------------------------------- training state
TRAINED = {"trained_steps": 30, "lr": 0.05, "batch_size": 16, "seed": 3}
SMALL = {"model": "mlp_1x256", "model_params": {"hidden": [16]}, "attack": None}


def trained_config(**state):
    return TrialConfig.from_dict({**SMALL, "model_state": {**TRAINED, **state}})


def test_init_state_leaves_the_trial_dict_and_id_as_before():
    cfg = TrialConfig.from_dict(SMALL)
    assert cfg.model_state == "init" and "model_state" not in cfg.to_dict()
    assert TrialConfig.from_dict({**SMALL, "model_state": "init"}).trial_id == cfg.trial_id
    assert victim_checkpoint(cfg) is None


def test_trained_state_is_seeded_cached_and_learns_on_the_training_split(tmp_path, monkeypatch):
    cfg = trained_config()
    first = victim_checkpoint(cfg)
    assert first.split == "train"  # digits victims come from the test split
    # a second cache folder trains again from scratch: same seed, same weights, same hash
    monkeypatch.setenv("DGLBENCH_CACHE", str(tmp_path / "other"))
    import dglbench.model_state as ms

    monkeypatch.setattr(ms, "_MEMO", {})
    again = victim_checkpoint(cfg)
    assert again.path != first.path and again.sha256 == first.sha256
    a = torch.load(first.path, weights_only=True)
    b = torch.load(again.path, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a) and weights_sha256(a) == first.sha256
    # the trial id carries the recipe's key: a different k or seed, or a changed recipe (its source), is a new trial
    assert cfg.trial_id == trained_config().trial_id
    ids = {cfg.trial_id, TrialConfig.from_dict(SMALL).trial_id}
    ids |= {trained_config(trained_steps=31).trial_id, trained_config(seed=4).trial_id}
    source = ms._recipe_source_sha
    monkeypatch.setattr(ms, "_recipe_source_sha", lambda: "an edited training recipe")
    ids.add(cfg.trial_id)
    monkeypatch.setattr(ms, "_recipe_source_sha", source)
    assert len(ids) == 5
    # cached: the next use loads, it does not train
    monkeypatch.setattr(ms, "_MEMO", {})
    monkeypatch.setattr(ms, "train_model", lambda *a, **k: pytest.fail("trained again despite the cache"))
    assert victim_checkpoint(cfg).sha256 == first.sha256
    # the train loss, measured here on the whole training split, is lower than at init
    dm = create_datamodule("digits")
    data = dm.train_dataset()
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([data[i][1] for i in range(len(data))])
    init = initialized_model(cfg, 10, (1, 8, 8)).eval()
    trained = build_victim_model(cfg, 10, (1, 8, 8))
    with torch.no_grad():
        loss_init, loss_trained = F.cross_entropy(init(x), y).item(), F.cross_entropy(trained(x), y).item()
    assert loss_trained < loss_init - 0.05, (loss_init, loss_trained)


def test_trained_state_reaches_the_record_and_a_corrupt_cache_is_one_clear_error(monkeypatch):
    cfg = TrialConfig.from_dict({**trained_config().to_dict(), "dataset_params": {"num_victims": 1}})
    (rec,) = run_trial(cfg, progress=False)
    state = rec.provenance["model_state"]
    assert rec.status == "ok" and rec.trial_id == cfg.trial_id and rec.config["model_state"] == TRAINED
    assert state["state"] == "trained" and state["sha256"] == victim_checkpoint(cfg).sha256
    assert state["train_loss_trained"] < state["train_loss_init"]
    path = victim_checkpoint(cfg).path
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DglbenchError, match="delete it to retrain"):
        load_trained_state(initialized_model(cfg, 10, (1, 8, 8)), victim_checkpoint(cfg))


@pytest.mark.parametrize(
    "state, match",
    [("trained", "must be 'init' or a mapping"), ({"lr": 0.1}, "trained_steps"), ({"trained_steps": 0}, ">= 1")],
)
def test_bad_model_state_is_one_config_error(state, match):
    with pytest.raises(ConfigError, match=match):
        TrialConfig.from_dict({"model_state": state})


# -------------------------------------------------------------------------------------------- BatchNorm, batches
BN_TRIAL = {
    "dataset_params": {"num_victims": 1, "images_per_victim": 4, "image_size": 9},
    "model": "ig_convnet",
    "model_params": {"width": 2},
    "defense": "gaussian",
    "defense_params": {"sigma": 1e-3},
    "dtype": "float64",
    "lower_bound_tol": 1e-6,
    "lpips": False,
    "adaptive": False,
    "attack": "inverting_gradients",
    "attack_params": {"max_iterations": 5, "tv_weight": 0.0},
    "cg_max_iter": 5,
}  # fmt: skip  (exact I2F is not checked here: a few CG steps keep the run short)


def test_batch_of_four_with_train_mode_batchnorm_through_the_module_path():
    """I2F on the whole [4, 1, 9, 9] input: batch statistics couple the images, and K is the full Jacobian."""
    cfg = TrialConfig.from_dict({**BN_TRIAL, "case": {"model_mode": "train", "labels": "inferred"}})
    (rec,) = run_trial(cfg, progress=False)
    assert rec.status == "ok", rec.reason
    assert rec.provenance["case"]["model_mode"] == "train" and rec.provenance["case"]["labels"] == "inferred"
    assert rec.attacks[0].label_source != "given"
    model = build_victim_model(cfg, 10, (1, 9, 9))
    assert model.training
    params = {n: p.detach() for n, p in model.named_parameters()}
    dm = create_datamodule("digits", num_victims=1, images_per_victim=4, image_size=9)
    victim = dm.victim(0)
    x, y = victim["images"].double(), victim["labels"]

    def gradient(z, train=True):  # the gradient of the whole batch's loss; train-mode BatchNorm on buffer copies
        def loss(p):
            buffers = {k: v.clone() for k, v in model.named_buffers()}
            model.train(train)
            return F.cross_entropy(torch.func.functional_call(model, {**p, **buffers}, (z,)), y)

        return torch.cat([g.reshape(-1) for g in torch.func.grad(loss)(params).values()])

    def jacobian(z, train=True, columns=None):  # K column by column: forward mode over the gradient, one per pixel
        basis = torch.eye(z.numel(), dtype=z.dtype)[: columns or z.numel()].reshape(-1, *z.shape)
        return torch.func.vmap(lambda e: torch.func.jvp(lambda v: gradient(v, train), (z,), (e,))[1])(basis).T

    k = jacobian(x)
    assert rec.estimate.max_eigenvalue == pytest.approx(float(torch.linalg.svdvals(k)[0] ** 2), rel=1e-4)
    # batch statistics couple the images: image 0's columns of K move when image 1 changes (not in eval mode)
    x2 = x.clone()
    x2[1] += 0.5
    assert not torch.allclose(jacobian(x2, columns=81), k[:, :81], rtol=1e-3, atol=0)
    torch.testing.assert_close(jacobian(x2, False, 81), jacobian(x, False, 81))
    model.train()


def bn_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
        net[1].running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    return net.eval()


def test_bn_stats_sets_what_the_attackers_model_normalizes_with():
    net, x = bn_net(), torch.randn(4, 1, 6, 6, dtype=torch.float64)
    h = net[0](x)
    bn = net[1]

    def normalized(mean, var):  # BatchNorm written out: (h − μ) / √(σ² + eps) · γ + β
        shape = (1, -1, 1, 1)
        return (h - mean.view(shape)) / (var.view(shape) + bn.eps).sqrt() * bn.weight.view(shape) + bn.bias.view(shape)

    def features(model):
        return model[1](model[0](x))

    assert Case().attacker_model(net) is net
    running = normalized(bn.running_mean, bn.running_var)
    batch = normalized(h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False))
    fresh = normalized(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(features(Case().attacker_model(net)), running)
    torch.testing.assert_close(features(Case(bn_stats="batch").attacker_model(net)), batch)
    torch.testing.assert_close(features(Case(bn_stats="unknown").attacker_model(net)), fresh)
    assert bn.running_mean.tolist() == pytest.approx([0.3, -0.2, 0.1])  # the client's model is left as it was
    # in train mode the client normalizes with its batch: the attacker's candidate batch does too, whatever it knows
    train_net = bn_net().train()
    assert Case(model_mode="train", bn_stats="unknown").attacker_model(train_net) is train_net
    with pytest.raises(ConfigError, match="bn_stats"):
        Case(bn_stats="running")


def test_bn_stats_reaches_the_record_and_changes_only_the_attack():
    base = {**BN_TRIAL, "dataset_params": {"num_victims": 1, "images_per_victim": 2, "image_size": 9}}
    base |= {"dtype": "float32", "model_state": {"trained_steps": 5, "batch_size": 16}}  # running statistics ≠ 0, 1
    records = {
        stats: run_trial(TrialConfig.from_dict({**base, "case": {"bn_stats": stats}}), progress=False)[0]
        for stats in ("known", "unknown")
    }
    known, unknown = records["known"], records["unknown"]
    assert known.status == unknown.status == "ok"
    assert unknown.config["case"] == {"bn_stats": "unknown"} and unknown.provenance["case"]["bn_stats"] == "unknown"
    assert known.estimate.lower_bound == pytest.approx(unknown.estimate.lower_bound, rel=1e-6)  # the client's K
    assert known.attacks[0].final_loss != unknown.attacks[0].final_loss  # the attacker's model differs


def test_case_fields_round_trip_through_the_trial():
    case = {"update": "fedavg", "local_steps": 3, "bn_stats": "batch", "labels": "inferred", "model_mode": "train"}
    cfg = TrialConfig.from_dict({"case": case})
    assert dataclasses.asdict(cfg.case_obj) | case == dataclasses.asdict(cfg.case_obj)
    assert TrialConfig.from_dict(cfg.to_dict()).trial_id == cfg.trial_id


def test_dglbench_run_with_a_fedavg_case_and_a_trained_model_writes_records(tmp_path, capsys):
    """The command line end to end: `dglbench run --config` with a FedAvg case, ig_fedavg and a trained model."""
    import json

    from dglbench.cli import main
    from dglbench.layout import RunLayout, read_trial_records

    config = tmp_path / "trial.yaml"
    config.write_text(
        "model: mlp_1x256\nmodel_params: {hidden: [16]}\ndataset_params: {num_victims: 1}\n"
        "case: {update: fedavg, local_steps: 2, local_lr: 0.1}\nattack: ig_fedavg\n"
        "attack_params: {max_iterations: 5}\nlpips: false\nmodel_state: {trained_steps: 5}\n"
        "defense: gaussian\ndefense_params: {sigma: 0.0001}\nadaptive: false\n"
    )
    out = tmp_path / "run"
    assert main(["run", "--config", str(config), "--out", str(out), "--logger", "none", "--quiet"]) == 0
    (path,) = RunLayout(out).trial_records()
    (rec,) = read_trial_records(path)
    assert rec.status == "ok" and rec.attacks[0].name == "ig_fedavg" and rec.estimate.lower_bound > 0
    assert rec.provenance["case"]["update"] == "fedavg" and rec.provenance["model_state"]["state"] == "trained"
    assert json.loads(path.read_text())  # a readable trial file
    # the same command again resumes: the record is kept, nothing is re-run
    assert main(["run", "--config", str(config), "--out", str(out), "--logger", "none", "--quiet"]) == 0
    assert RunLayout(out).trial_records() == [path]


def test_exp7_settings_and_verdicts_by_hand():
    from types import SimpleNamespace

    from dglbench.bench_threat_models import _verdict, setting_of

    fedavg = SimpleNamespace(
        provenance={"case": {"update": "fedavg", "local_steps": 5}},
        config={"model_state": {"trained_steps": 200, "lr": 0.1}},
        indices=(3, 9, 11, 20),
    )
    fedsgd = SimpleNamespace(provenance={}, config={"case": {}}, indices=(4,))
    assert setting_of(fedavg) == ("FedAvg τ=5", "trained 200 steps", 4)
    assert setting_of(fedsgd) == ("FedSGD", "init", 1)
    assert _verdict({"spearman": 0.8, "spearman_ci": [0.1, 0.95]}) == "tracks"
    assert _verdict({"spearman": 0.6, "spearman_ci": [-0.2, 1.0]}) == "no evidence"
    assert _verdict({"spearman": -0.7, "spearman_ci": [-0.9, -0.3]}) == "inverted"
    assert _verdict({"spearman": None, "spearman_ci": None}) == "too few victims"
