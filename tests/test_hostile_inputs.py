"""Hostile inputs: each bad input is one line on stderr naming the thing and the fix, exit status 2, nothing written.

Every case runs the real command (in-process through :func:`dglbench.cli.main`, or as a subprocess where the
process itself is what is tested: Ctrl-C, a closed pipe) on tiny settings: embedded digits, one victim,
estimate only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from dglbench.cli import main

TINY = ["--attack=null", "--dataset_params.num_victims=1", "--logger", "none", "--quiet"]
SPEC = """name: tiny
method: grid
parameters:
  attack: {value: null}
  dataset_params: {value: {num_victims: 1}}
  defense: {value: gaussian}
  defense_params.sigma: {values: [0.01]}
"""
OTHER_SPEC = SPEC.replace("name: tiny", "name: other").replace("[0.01]", "[0.1]")


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (an absent folder is empty)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith("dglbench: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------- files on disk
def write_idx(path: Path, dims: list[int], payload: int | None = None) -> None:
    """An IDX file with header ``dims`` and ``payload`` data bytes (default: as many as the header says)."""
    import math

    ndim = len(dims)
    header = bytes([0, 0, 0x08, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + bytes(math.prod(dims) if payload is None else payload))


def mnist_root(tmp_path: Path, broken: str) -> Path:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", [n, 28, 28])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", [n])
    target = raw / "t10k-images-idx3-ubyte"
    if broken == "empty":
        target.write_bytes(b"")
    else:
        write_idx(target, [10, 28, 28], payload=100)
    return tmp_path / "data"


@pytest.mark.parametrize("broken, needle", [("empty", "is empty (0 bytes)"), ("truncated", "(cut short)")])
def test_mnist_files_empty_or_truncated(tmp_path, capsys, broken, needle):
    root = mnist_root(tmp_path, broken)
    out = tmp_path / "out"
    argv = ["run", "--dataset=mnist", f"--dataset_params.root={root}", *TINY, "--out", str(out)]
    assert main(argv) == 2
    one_error_line(capsys, "t10k-images-idx3-ubyte", needle, "gunzip")
    assert snapshot(out) == {}


def test_leaderboard_submit_with_truncated_mnist(tmp_path, capsys):
    root = mnist_root(tmp_path, "truncated")
    lb = tmp_path / "lb"
    shutil.copytree(Path(__file__).resolve().parents[1] / "leaderboards", lb)
    before = snapshot(lb)
    argv = ["leaderboard", "submit", "--track", "mnist-convnet5@1", "--defense", "none", "--root", str(lb),
            "--data-root", str(root), "--work-dir", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 2
    one_error_line(capsys, "t10k-images-idx3-ubyte", "cut short")
    assert snapshot(lb) == before
    assert snapshot(tmp_path / "work") == {}


# ---------------------------------------------------------------------------------------------- one-line errors
def _non_utf8(tmp: Path) -> Path:
    p = tmp / "latin1.yaml"
    p.write_bytes("defense: gaussian  # \xe9t\xe9\n".encode("latin-1"))
    return p


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.yaml"
    p.write_text("")
    return p


def _a_file(tmp: Path) -> Path:
    p = tmp / "taken"
    p.write_text("not a folder\n")
    return p


CASES = {
    "config not UTF-8": (lambda t: ["run", "--config", str(_non_utf8(t)), *TINY], ["not UTF-8", "latin1.yaml"]),
    "empty config": (lambda t: ["run", "--config", str(_empty(t)), *TINY], ["empty.yaml is empty"]),
    "devices 0": (lambda t: ["run", "--devices", "0", *TINY], ["--devices must be an integer >= 1, got 0"]),
    "devices -1": (lambda t: ["run", "--devices", "-1", *TINY], ["--devices must be an integer >= 1, got -1"]),
    "accelerator nosuch": (lambda t: ["run", "--accelerator", "nosuch", *TINY], ["unknown accelerator 'nosuch'"]),
    "out is /dev/null": (lambda t: ["run", *TINY, "--out", "/dev/null"], ["/dev/null is not a folder"]),
    "sweep out is a file": (
        lambda t: ["sweep", "run", "demo", "--out", str(_a_file(t)), "--quiet"],
        ["taken is not a folder"],
    ),
    "i2f image size": (lambda t: ["i2f", "--image-size", "100000", "--victims", "1"], ["image_size=100000", "<= 2048"]),
    "vit on digits": (
        lambda t: ["run", "--model=vit_small_patch16_224", *TINY],
        ["model 'vit_small_patch16_224' does not accept inputs of shape (1, 8, 8)", "image_size=224"],
    ),
    "report bootstrap -5": (lambda t: ["sweep", "report", str(t), "--bootstrap", "-5"], ["--bootstrap must be >= 0"]),
    "leaderboard tracks, missing root": (
        lambda t: ["leaderboard", "tracks", "--root", str(t / "missing")],
        ["missing does not exist"],
    ),
    "leaderboard validate, missing root": (
        lambda t: ["leaderboard", "validate", "--root", str(t / "missing")],
        ["missing does not exist"],
    ),
}
if not torch.cuda.is_available():
    CASES["accelerator gpu without a GPU"] = (
        lambda t: ["run", "--accelerator", "gpu", *TINY],
        ["needs a CUDA GPU, but torch sees none"],
    )


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, monkeypatch, capsys, case):
    make_argv, needles = CASES[case]
    argv = make_argv(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default --out (runs/) would land here
    before = snapshot(tmp_path)
    assert main(argv) == 2
    one_error_line(capsys, *needles)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------------- sweep folders
@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A finished one-trial sweep (estimate only, one victim), copied by each test that changes it."""
    folder = tmp_path_factory.mktemp("sweep")
    spec = folder.parent / "tiny.yaml"
    spec.write_text(SPEC)
    assert main(["sweep", "run", str(spec), "--out", str(folder / "run"), "--quiet", "--no-report"]) == 0
    return folder / "run"


def copy_of(sweep: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "run"
    shutil.copytree(sweep, folder)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    return folder, spec


def only_record(folder: Path) -> Path:
    (path,) = sorted((folder / "records").glob("*.json"))
    return path


def _number_as_text(data: dict) -> None:
    victim = data["victims"][0]
    part = "estimate" if "estimate" in victim else "i2f"
    victim[part]["lower_bound"] = str(victim[part]["lower_bound"])


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p: p.write_text("{}"), "not a trial record"),
        (lambda p: p.write_text("[]"), "not a trial record"),
        (lambda p: p.write_text(p.read_text()[:200]), "not valid JSON"),
        (lambda p: (d := json.loads(p.read_text()), _number_as_text(d), p.write_text(json.dumps(d))), "is text"),
    ],
    ids=["{}", "[]", "truncated", "number as text"],
)
def test_sweep_report_on_a_malformed_record(finished_sweep, tmp_path, capsys, damage, needle):
    folder, _ = copy_of(finished_sweep, tmp_path)
    record = only_record(folder)
    damage(record)
    before = snapshot(folder)
    assert main(["sweep", "report", str(folder), "--bootstrap", "0"]) == 2
    one_error_line(capsys, str(record), needle)
    assert snapshot(folder) == before


@pytest.mark.parametrize("content", ["{}", "truncated"])
def test_sweep_resume_reruns_an_invalid_record_with_a_warning(finished_sweep, tmp_path, capsys, content):
    folder, spec = copy_of(finished_sweep, tmp_path)
    record = only_record(folder)
    good = record.read_text()
    record.write_text("{}" if content == "{}" else good[:150])
    assert main(["sweep", "run", str(spec), "--out", str(folder), "--quiet", "--no-report"]) == 0
    err, out = capsys.readouterr()[::-1]
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.strip()] == [ln for ln in err.splitlines() if "warning" in ln]
    assert f"{record} is not a valid record" in err
    assert "1 ran, 0 already done" in out
    assert json.loads(record.read_text())["victims"]  # re-run and rewritten
    assert (record.parent / (record.name + ".invalid")).exists()  # the bad file is kept aside, not deleted


def test_run_resume_reruns_a_truncated_part_file(tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", *TINY, "--dataset_params.num_victims=2", "--out", str(out)]
    assert main(argv) == 0
    (record,) = (out / "records").glob("*.json")
    trial_id = record.stem
    parts = out / "parts" / trial_id
    parts.mkdir(parents=True, exist_ok=True)
    record.unlink()  # as if killed before the merge: victim 0's part is there but cut short
    (parts / "victim-000000.json").write_text('{"victim_id": 0, "sta')
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "victim-000000.json is not a valid record" in err
    assert len(json.loads(record.read_text())["victims"]) == 2


def test_a_different_spec_into_a_used_folder_needs_force(finished_sweep, tmp_path, capsys):
    folder, _ = copy_of(finished_sweep, tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(OTHER_SPEC)
    before = snapshot(folder)
    assert main(["sweep", "run", str(other), "--out", str(folder), "--quiet", "--no-report"]) == 2
    one_error_line(capsys, "already holds sweep 'tiny' with a different spec", "--force")
    assert snapshot(folder) == before


def test_a_second_sweep_into_a_locked_folder_is_refused(finished_sweep, tmp_path, capsys):
    folder, spec = copy_of(finished_sweep, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (folder / "sweep.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        before = snapshot(folder)
        assert main(["sweep", "run", str(spec), "--out", str(folder), "--quiet", "--no-report"]) == 2
        one_error_line(capsys, f"locked by pid {holder.pid}")
        assert snapshot(folder) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over; the finished sweep resumes with nothing to do
    assert main(["sweep", "run", str(spec), "--out", str(folder), "--quiet", "--no-report"]) == 0
    assert "0 ran, 1 already done" in capsys.readouterr().out
    assert not (folder / "sweep.lock").exists()


# ---------------------------------------------------------------------------------------------- the process
def test_models_into_a_closed_pipe_is_quiet():
    proc = subprocess.Popen([sys.executable, "-m", "dglbench.cli", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env())  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # like `| head -1`: read one line, then leave
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 128 + signal.SIGPIPE)
    assert err == "", err


@pytest.mark.parametrize(
    ("command", "signum", "said", "status"),
    [
        ("run", signal.SIGINT, "interrupted", 130),
        ("sweep", signal.SIGINT, "interrupted", 130),
        # a batch scheduler's pre-emption; Lightning alone logs it and runs on
        ("run", signal.SIGTERM, "terminated", 143),
    ],
)
def test_ctrl_c_and_sigterm_say_how_to_resume(tmp_path, command, signum, said, status):
    out = tmp_path / "out"
    slow = ["--attack=inverting_gradients", "--attack_params.max_iterations=100000", "--dataset_params.num_victims=1"]
    if command == "run":
        argv = ["run", *slow, "--logger", "csv", "--quiet", "--out", str(out)]
        ready = out / "logs"  # the Trainer has started
    else:
        spec = tmp_path / "slow.yaml"
        slow_spec = SPEC.replace("{value: null}", "{value: inverting_gradients}")
        spec.write_text(slow_spec + "  attack_params.max_iterations: {value: 100000}\n")
        argv = ["sweep", "run", str(spec), "--out", str(out), "--quiet", "--no-report"]
        ready = out / "sweep.json"  # the spec is checked and the folder locked
    # a shell starts background jobs with SIGINT ignored, and a child inherits that (Python then installs no
    # KeyboardInterrupt handler): give the command the default disposition a terminal user's command has
    proc = subprocess.Popen([sys.executable, "-m", "dglbench.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env(), cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 300  # a loaded 2-core machine can take minutes to import and start
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not ready.exists():  # a signal during start-up tests something else: fail here, not after a hang
        proc.kill()
        pytest.fail(f"{command} did not start within 300 s: {proc.communicate()[1].decode()[-500:]}")
    time.sleep(2.0)  # well inside the work
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    err = stderr.decode()
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.strip()] == [f"dglbench: {said}; re-run the same command to resume"]
    assert not (out / "sweep.lock").exists()
