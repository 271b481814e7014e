"""Sweep specs (validation, grid and random expansion, shipped specs) and the resumable sweep runner."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from dglbench.errors import ConfigError, DglbenchError, UnknownNameError
from dglbench.sweep import load_spec, run_sweep
from dglbench.sweep.spec import _CONFIG_DIR, resolve_spec_path

DGLBENCH = str(Path(sys.executable).parent / "dglbench")
SHIPPED = sorted(p.stem for p in _CONFIG_DIR.glob("*.yaml"))


def spec(**parameters) -> dict:
    base = {
        "defense": {"value": "gaussian"},
        "attack": {"value": None},
        "dataset_params": {"value": {"num_victims": 2, "image_size": 8}},
    }
    return {"name": "t", "method": "grid", "parameters": {**base, **parameters}}


# ------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "data, error, match",
    [
        ({**spec(), "paramters": {}}, ConfigError, "unknown top-level key 'paramters'"),
        (spec(sigma={"value": 0.1}), ConfigError, "unknown parameter key 'sigma'"),
        (spec(**{"defense_params.sigma": {"value": "abc"}}), ConfigError, "defense_params.sigma: expected a number"),
        (spec(**{"defense_params.sigmaa": {"value": 0.1}}), ConfigError, "'sigmaa'"),
        (spec(defense={"values": ["gaussian", "gausian"]}), UnknownNameError, "'gausian'"),
        (spec(attack={"value": "dlgg"}), UnknownNameError, "'dlgg'"),
        (spec(model={"value": "resnet_nope"}), ConfigError, "'resnet_nope'"),
        (spec(seed={"value": "zero"}), ConfigError, "seed"),
        (spec(seed={"values": 3}), ConfigError, "'seed'"),
        (spec(seed={"values": []}), ConfigError, "'seed'"),
        (spec(seed={"vals": [1]}), ConfigError, "'vals'"),
        (spec(seed={"min": 0}), ConfigError, "'seed'"),
        (spec(seed=[1, 2]), ConfigError, "'seed'"),
        ({**spec(), "method": "bayes"}, ConfigError, "method"),
        ({**spec(), "parameters": {}}, ConfigError, "parameters"),
        ({**spec(), "method": "random"}, ConfigError, "run_cap"),
        ({**spec(seed={"min": 0, "max": 3}), "method": "grid"}, ConfigError, "'seed'"),
        (
            {**spec(seed={"values": [1, 2], "probabilities": [0.5]}), "method": "random", "run_cap": 2},
            ConfigError,
            "probabilities",
        ),
        (
            {
                **spec(cg_tol={"min": 0, "max": 1, "distribution": "log_uniform_values"}),
                "method": "random",
                "run_cap": 2,
            },
            ConfigError,
            "'cg_tol'",
        ),
        (
            {**spec(cg_tol={"min": 1, "max": 0}), "method": "random", "run_cap": 2},
            ConfigError,
            "'cg_tol'",
        ),
    ],
)
def test_bad_specs_are_rejected_before_anything_runs(tmp_path, data, error, match):
    with pytest.raises(error, match=match):
        load_spec(data)
    with pytest.raises(error, match=match):
        run_sweep(data, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written
    # the same spec as a YAML file
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(error, match=match):
        load_spec(path)


def test_spec_files_errors(tmp_path):
    with pytest.raises(ConfigError, match="no sweep spec 'nope'"):
        load_spec("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grid\nparameters: {seed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_spec(bad)


# ------------------------------------------------------------------------------------------- expansion
def test_grid_expansion_count_and_order():
    sweep = load_spec(
        spec(model={"values": ["convnet5", "mlp_1x256"]}, **{"defense_params.sigma": {"values": [0.1, 0.2, 0.3]}})
    )
    trials = sweep.trials()
    assert len(trials) == 6
    # row-major over the axes as written: the last axis varies fastest
    assert [(t.model, t.defense_params["sigma"]) for t in trials] == [
        (m, s) for m in ("convnet5", "mlp_1x256") for s in (0.1, 0.2, 0.3)
    ]
    assert all(t.defense == "gaussian" and t.attack is None for t in trials)  # fixed values in every trial
    assert all(t.dataset_params == {"num_victims": 2, "image_size": 8} for t in trials)
    assert len({t.trial_id for t in trials}) == 6
    assert [t.trial_id for t in load_spec(spec(**sweep.parameters)).trials()] == [t.trial_id for t in trials]


def test_random_expansion_with_run_cap():
    data = {
        **spec(
            **{
                "defense_params.sigma": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                "seed": {"distribution": "int_uniform", "min": 0, "max": 10**6},
                "cg_tol": {"min": 1e-5, "max": 1e-3},
                "model": {"values": ["convnet5", "mlp_1x256"], "probabilities": [0.0, 1.0]},
            }
        ),
        "method": "random",
        "run_cap": 7,
    }
    sweep = load_spec(data)
    trials = sweep.trials()
    assert len(trials) == 7 and len({t.trial_id for t in trials}) == 7
    assert all(1e-4 <= t.defense_params["sigma"] <= 1e-1 for t in trials)
    assert all(isinstance(t.seed, int) and 0 <= t.seed <= 10**6 for t in trials)
    assert all(1e-5 <= t.cg_tol <= 1e-3 for t in trials)
    assert {t.model for t in trials} == {"mlp_1x256"}  # probability 0 is never drawn
    # log-uniform: the draws spread over the decades, not bunched near the top
    assert min(t.defense_params["sigma"] for t in trials) < 1e-2
    assert [t.trial_id for t in sweep.trials()] == [t.trial_id for t in trials]  # reproducible
    assert [t.trial_id for t in sweep.trials(seed=1)] != [t.trial_id for t in trials]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_load_and_validate(name):
    assert resolve_spec_path(name).parent == _CONFIG_DIR
    sweep = load_spec(name)  # builds every trial and resolves every name
    trials = sweep.trials()
    assert trials and len({t.trial_id for t in trials}) == len(trials)
    data = yaml.safe_load(resolve_spec_path(name).read_text())
    if sweep.method == "grid":
        expected = 1
        for p in data["parameters"].values():
            expected *= len(p["values"]) if "value" not in p else 1
        assert len(trials) == expected


def test_shipped_specs_exist():
    assert "demo" in SHIPPED


# ------------------------------------------------------------------------------------------- running
NAN_DEFENSE = """
from dataclasses import dataclass


@dataclass(frozen=True)
class NanForVictim:
    first_label: int = 0

    def __call__(self, gradients, context):
        out = [g.clone() for g in gradients]
        if int(context.labels[0]) == self.first_label:
            out[-1] = out[-1] + float("inf")
        return out
"""


def test_failures_are_kept_as_failures_and_not_retried(tmp_path, monkeypatch):
    (tmp_path / "dglbench_test_sweep_defense.py").write_text(textwrap.dedent(NAN_DEFENSE))
    monkeypatch.syspath_prepend(str(tmp_path))
    from dglbench.datamodules import create_datamodule

    dm = create_datamodule("digits", num_victims=3, image_size=8, victims_per_step=3)
    dm.setup("predict")
    labels = next(iter(dm.predict_dataloader()))["labels"][:, 0].tolist()
    data = spec(
        defense={"value": "dglbench_test_sweep_defense:NanForVictim"},
        dataset_params={"value": {"num_victims": 3, "image_size": 8}},
        **{"defense_params.first_label": {"values": [labels[0], 99]}},
    )
    res = run_sweep(data, tmp_path / "out", progress=False)
    assert (res.trials, res.ran, res.skipped) == (2, 2, 0)
    assert res.failed_victims == labels.count(labels[0])
    statuses = {}
    for path in (tmp_path / "out" / "records").glob("*.json"):
        trial = json.loads(path.read_text())
        statuses[trial["config"]["defense_params"]["first_label"]] = [v["status"] for v in trial["victims"]]
        for v in trial["victims"]:
            assert (v["status"] == "failed") == ("inf" in (v["reason"] or ""))
    assert statuses[99] == ["ok"] * 3
    assert statuses[labels[0]] == ["failed" if lab == labels[0] else "ok" for lab in labels]
    again = run_sweep(data, tmp_path / "out", progress=False)  # failed victims are results: nothing re-runs
    assert (again.ran, again.skipped, again.failed_victims) == (0, 2, 0)


def test_max_trials_and_corrupt_record(tmp_path):
    data = spec(**{"defense_params.sigma": {"values": [0.01, 0.02]}})
    first = run_sweep(data, tmp_path, progress=False, max_trials=1)
    assert (first.trials, first.ran, first.skipped) == (2, 1, 0)
    assert len(list((tmp_path / "records").glob("*.json"))) == 1
    # a run killed after writing a record but before removing the trial's part files
    stale = tmp_path / "parts" / next((tmp_path / "records").glob("*.json")).stem
    stale.mkdir(parents=True)
    (stale / "victim-000000.json").write_text("{}")
    second = run_sweep(data, tmp_path, progress=False)
    assert (second.ran, second.skipped) == (1, 1)
    assert not stale.exists() and not any((tmp_path / "parts").iterdir())
    from dglbench.sweep.report import load_rows

    (next((tmp_path / "records").glob("*.json"))).write_text("{not json")
    with pytest.raises(DglbenchError, match="corrupt record file"):
        load_rows(tmp_path)


def test_killed_sweep_resumes_and_runs_every_trial_exactly_once(tmp_path):
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump(
            spec(
                **{"defense_params.sigma": {"values": [0.001, 0.003, 0.01, 0.03]}},
                dataset_params={"value": {"num_victims": 3, "image_size": 8}},
                victims_per_step={"value": 1},
            )
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [DGLBENCH, "sweep", "run", "spec.yaml", "--out", "sw", "--quiet", "--no-report"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = tmp_path / "sw" / "records"
    deadline = time.monotonic() + 240
    while not (records.exists() and any(records.glob("*.json"))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done_before = {p.name: p.stat().st_mtime_ns for p in records.glob("*.json")}
    assert 0 < len(done_before) < 4, done_before

    resumed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"sweep: 4 trials, {4 - len(done_before)} ran, {len(done_before)} already done" in resumed.stdout

    ids = [t["trial_id"] for t in json.loads((tmp_path / "sw" / "sweep.json").read_text())["trials"]]
    assert len(ids) == len(set(ids)) == 4
    assert sorted(p.name for p in records.iterdir()) == sorted(f"{i}.json" for i in ids)  # no temp files left
    for name, mtime in done_before.items():  # finished trials were not run again
        assert (records / name).stat().st_mtime_ns == mtime
    for i in ids:
        trial = json.loads((records / f"{i}.json").read_text())
        assert trial["trial_id"] == i
        assert [v["victim_id"] for v in trial["victims"]] == [0, 1, 2]  # each victim exactly once
        assert all(v["status"] == "ok" and v["trial_id"] == i for v in trial["victims"])
    assert not any((tmp_path / "sw" / "parts").iterdir())
