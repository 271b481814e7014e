"""``make bench``: run the benchmarks and write their sections of BENCHMARKS.md (atomically).

Each section records the command, the machine and the date. Sections are replaced between
markers, so one benchmark can be re-run alone: ``python -m dglbench.bench --only i2f``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import torch
from dglbench.io import atomic_write_text, replace_between_markers


def machine() -> str:
    from dglbench.hardware import device_name

    cpu = device_name("cpu")
    gpu = f", GPU {device_name('cuda')}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def _sections() -> dict[str, tuple[str, Callable[[], str]]]:
    from dglbench import bench_adaptive, bench_attacks, bench_attacks_more, bench_i2f
    from dglbench.sweep import bench_demo

    return {
        "i2f": ("I2F engine vs the paper's reference", bench_i2f.run),
        "i2f-scale": ("I2F at sweep scale: many perturbations per victim, preconditioned CG", bench_i2f.run_scale),
        "attacks": ("Attacks", bench_attacks.run),
        "adaptive": ("Adaptive attacks vs plain attacks, per defense family", bench_adaptive.run),
        "attacks-more": ("Closed-form attacks and a malicious server", bench_attacks_more.run),
        "attacks-prior": ("GradInversion vs Inverting Gradients through BatchNorm", bench_attacks_more.run_prior),
        "attacks-prior-long": ("GradInversion vs IG at 8× the budget", bench_attacks_more.run_prior_long),
        "imprint-noise": ("A noise-aware malicious server", bench_attacks_more.run_imprint_noise),
        "demo": ("Demo (experiment 1 on embedded data)", bench_demo.run),
        "sweep-share": ("Exp. 1 sweep wall time: I2F once per victim vs once per trial", _sweep_share),
        "i2f-terms": ("I2F terms: their cost, and which one tracks a layer-wise cosine attack", _i2f_terms),
        "fedavg": ("FedAvg: I2F cost against the local steps τ, and the FedAvg attack", _fedavg),
        "exp7": ("Exp. 7: does I2F still track the attack beyond one FedSGD gradient at init?", _exp7),
        "exp3-eigen": ("Exp. 3: eigen-directions, the attack error against the predicted c/√λ_i", _findings("exp3")),
        "exp4-init": ("Exp. 4: the paper's initializations, ordered by I2F and by the attack", _findings("exp4")),
        "calibration": ("Calibration: how far I2F sits below the attack error", _findings("calibration")),
    }


def _findings(which: str) -> Callable[[], str]:
    """A section of :mod:`dglbench.sweep.bench_findings` (``run_exp3``, ``run_exp4``, ``run_calibration``)."""

    def run() -> str:
        from dglbench.sweep import bench_findings

        return getattr(bench_findings, f"run_{which}")()

    return run


def _sweep_share() -> str:
    from dglbench.sweep import bench_share

    return bench_share.run()


def _fedavg() -> str:
    from dglbench import bench_fedavg

    return bench_fedavg.run()


def _exp7() -> str:
    from dglbench import bench_threat_models

    return bench_threat_models.run()


def _i2f_terms() -> str:
    from dglbench import bench_i2f_terms

    return bench_i2f_terms.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated section names (default: all)")
    parser.add_argument("--output", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    sections = _sections()
    wanted = [s for s in args.only.split(",") if s] or list(sections)
    path = Path(args.output)
    for name in wanted:
        title, fn = sections[name]
        print(f"[bench] {name} ...", flush=True)
        body = fn()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        cmd = f"python -m dglbench.bench --only {name}"
        section = (
            f"## {title}\n\nCommand: `{cmd}` (part of `make bench`). Machine: {machine()}. Date: {stamp}.\n\n{body}"
        )
        text = (  # read again: another section may have been written while this one ran
            path.read_text()
            if path.exists()
            else "# Benchmarks\n\nWritten by `make bench`; each section says how it was made.\n"
        )
        # after every section: a later failure keeps earlier results
        atomic_write_text(path, replace_between_markers(text, name, section))
        print(body, flush=True)


if __name__ == "__main__":
    main()
