"""Run a sweep: expand the spec, skip finished trials, run the rest on Lightning, one record file each.

A sweep folder is a run folder (:class:`~dglbench.layout.RunLayout`): the spec as given, the trial
ids in order, one record file per finished trial, and the per-victim records of a trial in flight.

A killed sweep loses at most the victims in flight; re-running the same command resumes it.
Failed victims are recorded with ``status: failed`` and their reason, never dropped.

Pending trials that differ only in the defense (a noise sweep's levels) form a group: each victim's
I2F is computed once for the whole group (:class:`~dglbench.modules.I2FShare`: one linearization and
one Lanczos run per victim, every member's perturbation a right-hand side); records stay one per trial.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dglbench.checks import is_valid_record, set_aside_invalid
from dglbench.io import atomic_write_json, atomic_write_text, check_output_dir
from dglbench.layout import RunLayout
from dglbench.params import YamlDumper
from dglbench.runner import is_global_zero, run_trial
from dglbench.sweep.guard import FolderLock, check_same_spec
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
    force: bool = False,
    share_i2f: bool = True,
) -> SweepResult:
    """Run every trial of ``spec`` that has no valid record file in ``out_dir`` yet.

    The folder is locked while the sweep runs (a second sweep into it stops with one line naming the
    pid that holds it; a lock left by a dead process is taken over). A record file that cannot be read
    back is moved aside (``*.invalid``) with a warning and its trial re-run.

    Args:
        spec: a spec path, shipped spec name, dict, or parsed :class:`SweepSpec`.
        out_dir: the sweep folder.
        devices / accelerator: Lightning devices for each trial (victims are sharded across them).
        progress: a progress bar over trials.
        max_trials: stop after running this many trials (for smoke runs; the rest stay pending).
        force: run a spec other than the one the folder already holds (its spec.yaml and sweep.json are
            replaced; the report then covers both sweeps' records).
        share_i2f: compute each victim's I2F once per group of trials that differ only in the defense (the
            default); ``False``: every trial computes its own, as before grouping (records are equal either way;
            ``python -m dglbench.bench --only sweep-share`` measures the difference).
    """
    sweep = spec if isinstance(spec, SweepSpec) else load_spec(spec)
    out = check_output_dir(out_dir)
    with FolderLock(out):
        check_same_spec(RunLayout(out).spec, sweep.source, force)
        return _run_sweep(sweep, out, devices, accelerator, progress, max_trials, num_nodes, force, share_i2f)


def _run_sweep(
    sweep: SweepSpec,
    out: Path,
    devices: int,
    accelerator: str,
    progress: bool,
    max_trials: int | None,
    num_nodes: int,
    force: bool,
    share_i2f: bool = True,
) -> SweepResult:
    layout = RunLayout(out)
    trials = sweep.trials()
    if force or not layout.spec.exists():
        atomic_write_text(layout.spec, yaml.dump(sweep.source, Dumper=YamlDumper, sort_keys=False))  # reads back equal
    atomic_write_json(
        layout.sweep_index,
        {
            "schema_version": 1,
            "name": sweep.name,
            "trials": [{"trial_id": t.trial_id, "config": t.to_dict()} for t in trials],
        },
    )
    ran = skipped = failed = 0
    pending = [t for t in trials if not is_valid_record(layout.trial_record(t.trial_id))]
    shares = _i2f_shares(pending) if share_i2f else {}
    bar = tqdm(trials, desc=f"sweep {sweep.name}", unit="trial", disable=not (progress and is_global_zero()))
    for cfg in bar:
        if is_global_zero():  # a record cut short or edited by hand is not done: moved aside, re-run
            set_aside_invalid(layout.trial_record(cfg.trial_id))
        if is_valid_record(layout.trial_record(cfg.trial_id)):
            skipped += 1
            if is_global_zero():  # a run killed between the record and the clean-up leaves part files
                shutil.rmtree(layout.parts(cfg.trial_id).directory, ignore_errors=True)
            continue
        if max_trials is not None and ran >= max_trials:
            break
        bar.set_postfix_str(f"{cfg.model} {cfg.defense} {cfg.defense_params}"[:60])
        records = run_trial(
            cfg, devices=devices, accelerator=accelerator, output_dir=out, progress=False, num_nodes=num_nodes,
            i2f_share=shares.get(cfg.trial_id),
        )  # fmt: skip
        failed += sum(not r.ok for r in records)
        ran += 1
        if is_global_zero():  # other ranks return at once; rank 0 may still be merging this trial's parts
            shutil.rmtree(layout.parts(cfg.trial_id).directory, ignore_errors=True)
    return SweepResult(out, len(trials), ran, skipped, failed)


def _i2f_shares(pending: list[Any]) -> dict[str, Any]:
    """One :class:`~dglbench.modules.I2FShare` per group of pending trials that differ only in the defense, by id."""
    from dglbench.modules import I2FShare

    groups: dict[str, list[Any]] = {}
    for cfg in pending:
        if cfg.estimate:
            groups.setdefault(I2FShare.key(cfg), []).append(cfg)
    shares: dict[str, Any] = {}
    for group in groups.values():
        if len(group) > 1:
            share = I2FShare(group)
            shares.update(dict.fromkeys((c.trial_id for c in group), share))
    return shares
