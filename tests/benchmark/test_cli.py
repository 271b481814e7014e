"""The ``dglbench`` command: listings, one-line errors, i2f and run (CSV and offline W&B loggers), sweeps."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dglbench.cli import main

DGLBENCH = str(Path(sys.executable).parent / "dglbench")
TINY = ["--dataset_params.num_victims=2", "--dataset_params.image_size=8", "--attack=null"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true", **extra}


def test_models_lists_the_cifar_resnets(capsys):
    assert main(["models", "cifar*"]) == 0
    resnets = ["cifar_resnet18", "cifar_resnet20", "cifar_resnet32_10", "cifar_resnet56"]
    assert capsys.readouterr().out.split() == resnets


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["datasets"], {"digits", "faces", "mnist", "cifar10"}),
        (["inits"], {"uniform", "default"}),
        (["attacks"], {"dlg", "idlg", "inverting_gradients"}),
        (["defenses"], {"none", "gaussian", "laplace", "dp_sgd", "pruning", "soteria"}),
        (["defenses", "g*"], {"gaussian"}),
        (["models", "mlp_*"], {"mlp_1x256", "mlp_2x256"}),
        (["sweep", "list"], {"demo"}),
    ],
)
def test_listings(capsys, argv, expected):
    assert main(argv) == 0
    out = capsys.readouterr().out.split("\n")
    names = {line.split()[0] for line in out if line.strip()}
    assert expected <= names
    if argv[-1] == "g*":
        assert names == expected


BAD_INPUT = {
    "unknown defense": (["run", "--defense=nope", *TINY], "unknown defense 'nope'"),
    "unknown trial key": (["run", "--sigma=0.1", *TINY], "unknown trial key 'sigma'"),
    "unknown case key": (["run", "--case.label=given", *TINY], "unknown case key 'label'"),
    "bad value": (["run", "--defense=gaussian", "--defense_params.sigma=abc", *TINY], "defense_params.sigma"),
    "bad type": (["run", "--seed=zero", *TINY], "seed: expected an integer"),
    "missing config": (["run", "--config", "missing.yaml"], "cannot read config missing.yaml"),
    "malformed YAML": (["run", "--config", "bad.yaml"], "is not valid YAML"),
    "config not a mapping": (["run", "--config", "list.yaml"], "must be a mapping"),
    "stray argument": (["run", "extra"], "unexpected argument 'extra'"),
    "unknown defense, 2 devices": (["run", "--devices", "2", "--defense=nope", *TINY], "unknown defense 'nope'"),
    "too few victims for the devices": (
        ["run", "--devices", "2", "--dataset_params.num_victims=1", "--attack=null"],
        "num_victims=1 < 2 processes",
    ),
    "unknown sweep spec": (["sweep", "run", "no_such_spec", "--out", "sw"], "no sweep spec 'no_such_spec'"),
    "bad sweep spec": (["sweep", "run", "bad.yaml", "--out", "sw"], "is not valid YAML"),
    "empty sweep folder": (["sweep", "report", "."], "no trial records"),
    "empty config": (["run", "--config", "empty.yaml"], "config empty.yaml is empty"),
    "no devices": (["run", "--devices", "0", *TINY], "--devices must be an integer >= 1"),
    "unknown accelerator": (["run", "--accelerator", "tpux", *TINY], "unknown accelerator 'tpux'"),
    "negative bootstrap": (["sweep", "report", ".", "--bootstrap", "-5"], "--bootstrap must be >= 0"),
}


@pytest.fixture
def bad_files(tmp_path, monkeypatch):
    (tmp_path / "bad.yaml").write_text("defense: [gaussian\nseed: 1\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "empty.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def argv_of(case: str) -> list[str]:
    argv = BAD_INPUT[case][0]
    return [*argv, "--out", "o"] if argv[0] == "run" else argv


def check_one_error_line(case: str, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dglbench: error: "), (case, stderr)
    assert BAD_INPUT[case][1] in lines[0], (case, lines[0])
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_status_2(bad_files, capsys, case):
    assert main(argv_of(case)) == 2
    captured = capsys.readouterr()
    check_one_error_line(case, captured.err)
    assert captured.out == ""
    assert sorted(p.name for p in bad_files.iterdir()) == ["bad.yaml", "empty.yaml", "list.yaml"]  # nothing written


def test_bad_input_from_the_installed_command(bad_files):
    """The same through the console script: no warnings, log lines or tracebacks on stderr."""
    cases = ("unknown defense", "malformed YAML", "unknown sweep spec")
    procs = {
        case: subprocess.Popen(
            [DGLBENCH, *argv_of(case)],
            cwd=bad_files,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for case in cases
    }
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2 and stdout == "", (case, stdout, stderr)
        check_one_error_line(case, stderr)


def test_i2f_prints_a_table(capsys):
    assert main(["i2f", "--victims", "2", "--image-size", "8", "--param", "sigma=0.01", "--eps", "0.1", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # each exact term beside the lower bound of the same damped quantity
    assert header == [
        "victim", "status", "JtDelta", "MaxEigenValue", "lb(eps=0.1)", "I2F(eps=0.1)", "lb(eps=1.0)", "I2F(eps=1.0)"
    ]  # fmt: skip
    assert "lower bound of I2F(eps=e)" in out  # the table says what lb means
    body = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert [r["victim"] for r in body] == ["0", "1"] and {r["status"] for r in body} == {"ok"}
    for r in body:
        jt, lam = float(r["JtDelta"]), float(r["MaxEigenValue"])
        for eps in (0.1, 1.0):
            lb = float(r[f"lb(eps={eps})"])
            assert jt > 0 and lam > 0 and lb == pytest.approx(jt / (lam + eps), rel=2e-3)  # from 4-digit columns
            assert lb <= float(r[f"I2F(eps={eps})"])
        assert float(r["I2F(eps=1.0)"]) < float(r["I2F(eps=0.1)"])  # more damping, smaller I2F


def test_run_with_the_csv_logger_writes_metrics_csv(tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["run", "--out", str(out), "--quiet", "--defense=gaussian", "--defense_params.sigma=0.01", *TINY]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| victim |" in printed and "records: " in printed
    (metrics_csv,) = out.glob("logs/*/metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    assert [int(r["step"]) for r in rows] == [0, 1]
    assert all(float(r["i2f/lower_bound"]) > 0 and float(r["status_ok"]) == 1 for r in rows)
    # the same command again finds the record and runs nothing
    assert main(argv) == 0
    assert len(list(out.glob("records/*.json"))) == 1


def test_run_with_wandb_offline_needs_no_account(tmp_path):
    argv = [DGLBENCH, "run", "--out", "w", "--logger", "wandb", "--quiet", *TINY]
    home = tmp_path / "home"  # no ~/.netrc, no API key
    proc = subprocess.run(
        argv, cwd=tmp_path, env=env(HOME=str(home), WANDB_API_KEY=""), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| victim |" in proc.stdout
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_sweep_run_and_report_commands(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: cli\nmethod: grid\nparameters:\n"
        "  defense: {value: gaussian}\n"
        "  defense_params.sigma: {values: [0.001, 0.01]}\n"
        "  dataset_params: {value: {num_victims: 2, image_size: 8}}\n"
        "  attack: {value: null}\n"
    )
    out = tmp_path / "sw"
    assert main(["sweep", "run", str(spec), "--out", str(out), "--quiet", "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    assert "sweep: 2 trials, 2 ran, 0 already done, 0 failed victims" in printed
    assert "| rank | architecture |" in printed and (out / "report" / "report.md").exists()
    assert main(["sweep", "run", str(spec), "--out", str(out), "--quiet", "--no-report"]) == 0
    assert "2 trials, 0 ran, 2 already done" in capsys.readouterr().out
    assert main(["sweep", "report", str(out), "--bootstrap", "0"]) == 0
    assert "risk_ranking.png" in capsys.readouterr().out
