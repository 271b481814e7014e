"""Run a sweep: expand the spec, skip finished trials, run the rest on Lightning, one record file each.

Layout of a sweep folder::

    spec.yaml                     the spec as given (copied once)
    sweep.json                    trial ids in order, with their configurations
    records/<trial_id>.json       one record file per finished trial (written atomically)
    parts/<trial_id>/victim-*.json  per-victim records of a trial in flight (resume inside a trial)

A killed sweep loses at most the victims in flight; re-running the same command resumes it.
Failed victims are recorded with ``status: failed`` and their reason, never dropped.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dglbench.io import atomic_write_json, atomic_write_text
from dglbench.runner import is_global_zero, record_path, run_trial
from dglbench.sweep.spec import SweepSpec, load_spec
from tqdm.auto import tqdm

__all__ = ["SweepResult", "run_sweep"]


@dataclass(frozen=True)
class SweepResult:
    out_dir: Path
    trials: int
    ran: int
    skipped: int
    failed_victims: int


def run_sweep(
    spec: str | Path | dict[str, Any] | SweepSpec,
    out_dir: str | Path,
    *,
    devices: int = 1,
    accelerator: str = "cpu",
    progress: bool = True,
    max_trials: int | None = None,
    num_nodes: int = 1,
) -> SweepResult:
    """Run every trial of ``spec`` that has no record file in ``out_dir`` yet.

    Args:
        spec: a spec path, shipped spec name, dict, or parsed :class:`SweepSpec`.
        out_dir: the sweep folder.
        devices / accelerator: Lightning devices for each trial (victims are sharded across them).
        progress: a progress bar over trials.
        max_trials: stop after running this many trials (for smoke runs; the rest stay pending).
    """
    sweep = spec if isinstance(spec, SweepSpec) else load_spec(spec)
    out = Path(out_dir)
    trials = sweep.trials()
    spec_copy = out / "spec.yaml"
    if not spec_copy.exists():
        atomic_write_text(spec_copy, yaml.safe_dump(sweep.source, sort_keys=False))
    atomic_write_json(
        out / "sweep.json",
        {
            "schema_version": 1,
            "name": sweep.name,
            "trials": [{"trial_id": t.trial_id, "config": t.to_dict()} for t in trials],
        },
    )
    ran = skipped = failed = 0
    bar = tqdm(trials, desc=f"sweep {sweep.name}", unit="trial", disable=not (progress and is_global_zero()))
    for cfg in bar:
        if record_path(out, cfg).exists():
            skipped += 1
            if is_global_zero():  # a run killed between the record and the clean-up leaves part files
                shutil.rmtree(out / "parts" / cfg.trial_id, ignore_errors=True)
            continue
        if max_trials is not None and ran >= max_trials:
            break
        bar.set_postfix_str(f"{cfg.model} {cfg.defense} {cfg.defense_params}"[:60])
        records = run_trial(
            cfg, devices=devices, accelerator=accelerator, output_dir=out, progress=False, num_nodes=num_nodes
        )
        failed += sum(r["status"] != "ok" for r in records)
        ran += 1
        if is_global_zero():  # other ranks return at once; rank 0 may still be merging this trial's parts
            shutil.rmtree(out / "parts" / cfg.trial_id, ignore_errors=True)
    return SweepResult(out, len(trials), ran, skipped, failed)
