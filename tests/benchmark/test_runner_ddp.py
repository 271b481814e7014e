"""Several devices (DDP on CPU with gloo) give the same records as one device.

Lightning's default ``ddp`` strategy launches the other ranks by re-running the command line, which
cannot re-run a pytest session, so the two-device runs go through the ``dglbench`` command in a
subprocess, exactly as a user runs them.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dglbench.layout import RunLayout, read_trial_records
from dglbench.runner import run_trial
from dglbench.trial import TrialConfig

DGLBENCH = str(Path(sys.executable).parent / "dglbench")
OVERRIDES = {
    "dataset_params.num_victims": 4,
    "dataset_params.image_size": 8,
    "defense": "gaussian",
    "defense_params.sigma": 0.01,
    "attack_params.max_iterations": 20,
    "lpips": False,
}


def dglbench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WANDB_MODE="offline")
    return subprocess.run([DGLBENCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def close(a: float | None, b: float | None, rel: float = 1e-5) -> bool:
    return a == b or (a is not None and b is not None and abs(a - b) <= rel * max(abs(a), abs(b)))


def test_two_devices_give_the_records_of_one_device(tmp_path):
    args = [f"--{k}={v}" for k, v in OVERRIDES.items()]
    proc = dglbench("run", "--devices", "2", "--out", "d2", "--quiet", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = TrialConfig().with_overrides({**OVERRIDES, "lpips": False})
    # only rank 0 prints the table and the record path (rank 1 re-ran the same command line)
    assert proc.stdout.count("| victim |") == 1 and proc.stdout.count("records: ") == 1, proc.stdout
    assert f"records: d2/records/{cfg.trial_id}.json" in proc.stdout
    parts = tmp_path / "d2" / "parts" / cfg.trial_id
    assert sorted(p.name for p in parts.iterdir()) == [f"victim-{j:06d}.json" for j in range(4)]
    images = RunLayout(tmp_path / "d2").images(cfg.trial_id).directory  # each rank saves the victims it owns
    assert sorted(p.name for p in images.iterdir()) == [f"victim-{j:06d}.npz" for j in range(4)]
    two = read_trial_records(RunLayout(tmp_path / "d2").trial_record(cfg.trial_id))

    one = run_trial(cfg, devices=1, output_dir=tmp_path / "d1", progress=False)
    assert [r.victim_id for r in two] == [r.victim_id for r in one] == [0, 1, 2, 3]
    for a, b in zip(one, two):
        assert a.status == b.status == "ok"
        assert a.indices == b.indices and a.trial_id == b.trial_id and a.config == b.config
        for key in ("lower_bound", "jt_delta", "max_eigenvalue"):
            assert close(getattr(a.estimate, key), getattr(b.estimate, key)), (key, a.estimate, b.estimate)
        assert a.estimate.exact.keys() == b.estimate.exact.keys()
        for eps in a.estimate.exact:
            assert close(a.estimate.exact[eps], b.estimate.exact[eps])
        for key in ("l2_error", "rmse", "psnr", "ssim", "label_accuracy"):
            assert close(a.metric(key), b.metric(key)), (key, a.metric(key), b.metric(key))
        assert close(a.utility["gradient_cosine"], b.utility["gradient_cosine"])

    # the CSV logger (rank 0 only) has every victim, also those rank 1 ran
    (metrics_csv,) = (tmp_path / "d2" / "logs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    assert sorted(int(r["step"]) for r in rows) == [0, 1, 2, 3]
    by_step = {int(r["step"]): r for r in rows}
    for rec in two:
        assert float(by_step[rec.victim_id]["i2f/lower_bound"]) == pytest.approx(rec.estimate.lower_bound)


def test_sweep_of_two_trials_on_two_devices(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: ddp\nmethod: grid\nparameters:\n"
        "  defense: {value: gaussian}\n"
        "  defense_params.sigma: {values: [0.001, 0.01]}\n"
        "  dataset_params: {value: {num_victims: 4, image_size: 8}}\n"
        "  attack: {value: null}\n"
    )
    proc = dglbench("sweep", "run", str(spec), "--out", "sw", "--devices", "2", "--quiet", "--no-report", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("sweep: 2 trials, 2 ran, 0 already done, 0 failed victims") == 1, proc.stdout
    sweep = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    ids = [t["trial_id"] for t in sweep["trials"]]
    assert len(ids) == 2
    assert sorted(p.stem for p in (tmp_path / "sw" / "records").iterdir()) == sorted(ids)
    lbs = []
    for tid in ids:
        rec = json.loads((tmp_path / "sw" / "records" / f"{tid}.json").read_text())
        assert [v["victim_id"] for v in rec["victims"]] == [0, 1, 2, 3]
        assert all(v["status"] == "ok" and v["trial_id"] == tid for v in rec["victims"])
        lbs.append([v["estimate"]["lower_bound"] for v in rec["victims"]])
    # the second trial ran in the same DDP processes and its noise is 10x the first's
    for small, large in zip(*lbs):
        assert large == pytest.approx(10 * small, rel=1e-2)
    assert not any((tmp_path / "sw" / "parts").iterdir())  # finished trials leave no part files


def test_two_nodes_through_torchrun_match_one_device(tmp_path):
    """Two machines simulated on loopback with torchrun (Lightning's multi-node path) give the one-device records."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline")
    port = str(29500 + os.getpid() % 400)
    args = ["run", "--devices", "1", "--num-nodes", "2", "--out", str(tmp_path / "out"), "--logger", "none",
            "--quiet", "--attack=null", "--dataset_params.num_victims=4", "--defense=gaussian",
            "--defense_params.sigma=0.01"]  # fmt: skip
    procs = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(rank),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                port,
                "-m",
                "dglbench.cli",
                *args,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    (record_file,) = (tmp_path / "out" / "records").glob("*.json")
    multi = read_trial_records(record_file)
    config = TrialConfig.from_dict({}).with_overrides(
        {"attack": None, "dataset_params.num_victims": 4, "defense": "gaussian", "defense_params.sigma": 0.01}
    )
    single = run_trial(config, progress=False)
    assert [r.victim_id for r in multi] == [r.victim_id for r in single] == [0, 1, 2, 3]
    for a, b in zip(multi, single):
        assert close(a.estimate.lower_bound, b.estimate.lower_bound)
        assert a.estimate.exact.keys() == b.estimate.exact.keys() == {"0.0", "rel:0.001"}  # the default damping
        for eps in a.estimate.exact:
            assert close(a.estimate.exact[eps], b.estimate.exact[eps])
