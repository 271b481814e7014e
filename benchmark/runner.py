"""Run one trial on Lightning's Trainer and collect its records.

Victims are sharded across devices by Lightning (``devices=N``: DDP; on CPU with gloo), each rank
writes its victims' records to the trial's part folder, and rank 0 then writes the trial's single
record file atomically (paths: :class:`~dglbench.layout.RunLayout`). Victims whose part file exists
are skipped, so a killed run resumes where it stopped.

Example:
    >>> from dglbench.runner import run_trial
    >>> from dglbench.trial import TrialConfig
    >>> cfg = TrialConfig(attack=None, dataset_params={"num_victims": 2, "image_size": 8})
    >>> records = run_trial(cfg, progress=False)
    >>> [r.status for r in records]
    ['ok', 'ok']
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from dglbench.checks import check_model_accepts, is_valid_record, set_aside_invalid
from dglbench.errors import ConfigError, DglbenchError
from dglbench.hardware import check_hardware, is_global_zero
from dglbench.io import check_output_dir
from dglbench.layout import RunLayout, read_trial_records, write_trial_records
from dglbench.record import VictimRecord
from dglbench.trial import TrialConfig

__all__ = ["run_trial", "record_path", "load_trial_records", "make_trainer", "is_global_zero"]


def record_path(output_dir: str | Path, config: TrialConfig) -> Path:
    """Where a finished trial's record file lives."""
    return RunLayout(output_dir).trial_record(config.trial_id)


def load_trial_records(path: str | Path) -> list[VictimRecord]:
    """Read a trial record file (older record versions converted); a corrupt file is one :class:`DglbenchError`."""
    return read_trial_records(path)


def make_trainer(devices: int, accelerator: str, progress: bool, callbacks: list, logger: Any = False, **kw: Any):
    """A Trainer for evaluation: no checkpoints, gradients enabled, DDP when ``devices > 1``."""
    import lightning.pytorch as pl

    for name in (
        "lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning",
        "lightning.pytorch.trainer.connectors.signal_connector",  # "Received SIGTERM": the command says it
    ):  # fmt: skip
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
    check_hardware(devices, accelerator, kw.get("num_nodes", 1))
    strategy = kw.pop("strategy", None) or ("ddp" if devices > 1 or kw.get("num_nodes", 1) > 1 else "auto")
    return pl.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, inference_mode=False, logger=logger,
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False, callbacks=callbacks,
        **kw,
    )  # fmt: skip


def run_trial(
    config: TrialConfig | dict[str, Any],
    *,
    devices: int = 1,
    accelerator: str = "cpu",
    output_dir: str | Path | None = None,
    progress: bool = True,
    logger: Any = False,
    strategy: str | None = None,
    num_nodes: int = 1,
    i2f_share: Any = None,
    log_progress: bool = False,
) -> list[VictimRecord]:
    """Run a trial over its victims and return one record per victim (sorted by victim id).

    Args:
        config: the trial.
        devices: Lightning devices (processes under DDP).
        accelerator: ``"cpu"``, ``"gpu"``, ``"auto"``...
        output_dir: where part files and the trial record go (``None``: a temporary folder, removed on return;
            one device only, as every rank must see the same folder).
        progress: show Lightning's progress bar over victim batches.
        logger: a Lightning logger (CSV, W&B) or ``False``.
        strategy: Lightning strategy (default: ``ddp`` when ``devices > 1`` or ``num_nodes > 1``).
        num_nodes: machines, for Lightning's multi-node launchers (torchrun, SLURM).
        i2f_share: a :class:`~dglbench.modules.I2FShare` holding this trial's group (trials that differ only
            in the defense): each victim's I2F is computed once for the group (what a sweep passes).
        log_progress: print a plain line on stderr every 30 s or so (victim steps done, time spent and left),
            for logs where a progress bar cannot draw (:class:`dglbench.progress.TextProgress`).

    Returns:
        The records on rank 0 (every victim, failed ones included); ``[]`` on other ranks.
    """
    config = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    config.validate()  # unknown names and bad parameters fail here, before anything is written
    check_hardware(devices, accelerator, num_nodes)
    if output_dir is not None:
        check_output_dir(output_dir)
        return _run_trial(
            config, Path(output_dir), devices, accelerator, progress, logger, strategy, num_nodes, i2f_share,
            log_progress,
        )  # fmt: skip
    if devices != 1 or num_nodes != 1:
        raise ConfigError("a trial on several devices needs an output_dir that every rank can write to")
    with tempfile.TemporaryDirectory(prefix="dglbench-") as tmp:
        return _run_trial(
            config, Path(tmp), devices, accelerator, progress, logger, strategy, num_nodes, i2f_share, log_progress
        )


def _run_trial(
    config: TrialConfig,
    out: Path,
    devices: int,
    accelerator: str,
    progress: bool,
    logger: Any,
    strategy: str | None,
    num_nodes: int = 1,
    i2f_share: Any = None,
    log_progress: bool = False,
) -> list[VictimRecord]:
    from dglbench.datamodules import create_datamodule
    from dglbench.modules import LeakageModule, RecordWriter, log_record
    from dglbench.progress import TextProgress

    if accelerator == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Victims are small: intra-op threads cost more than they give (a trial measured 7x slower with 2
        # threads on 2 cores). Set OMP_NUM_THREADS to choose another number.
        torch.set_num_threads(1)
    layout = RunLayout(out)
    final = layout.trial_record(config.trial_id)
    if is_valid_record(final):
        return read_trial_records(final)
    parts = layout.parts(config.trial_id)
    dm = create_datamodule(config.dataset, **{"victims_per_step": config.victims_per_step, **config.dataset_params})
    if dm.num_victims < devices * num_nodes:  # fail once here, not on every rank
        raise ConfigError(f"{dm.name}: num_victims={dm.num_victims} < {devices * num_nodes} processes; add victims")
    if not dm.download:  # load the victims now: a missing or corrupt dataset fails before anything is written
        dm.setup("predict")  # (idempotent: the Trainer's own setup reuses them; downloads wait for prepare_data)
    check_model_accepts(config, dm.num_classes, dm.image_shape)  # one forward pass, before any victim runs
    if is_global_zero():  # a record cut short by a kill, or edited by hand, is re-run, not counted as done
        set_aside_invalid(final)
        for path in sorted(Path(parts.directory).glob("victim-*.json")):
            set_aside_invalid(path)
    module = LeakageModule(
        config, records_dir=str(parts.directory), i2f_share=i2f_share,
        images_dir=str(layout.images(config.trial_id).directory),
    )  # fmt: skip
    callbacks: list[Any] = [RecordWriter(parts.directory)]
    if log_progress:
        callbacks.append(TextProgress(f"trial {config.trial_id}"))
    trainer = make_trainer(
        devices, accelerator, progress, callbacks, logger=logger, strategy=strategy, num_nodes=num_nodes
    )
    try:
        trainer.predict(module, datamodule=dm, return_predictions=False)
    except SystemExit as exc:  # Lightning turns Ctrl-C into a graceful shutdown and exit(1): say what it was
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise DglbenchError(f"trial {config.trial_id} stopped (exit status {exc.code}); re-run to resume") from None
    trainer.strategy.barrier()
    if trainer.global_rank != 0:
        return []
    ids = dm.victim_ids()
    records = []
    for vid in ids:
        path = parts.victim(vid)
        if not path.exists():
            raise DglbenchError(
                f"victim {vid} of trial {config.trial_id} has no record in {parts.directory}; re-run to resume"
            )
        records.append(_read_part(path))
    write_trial_records(final, config.trial_id, config.to_dict(), records)
    if trainer.world_size > 1:  # loggers live on rank 0 only: log every rank's victims here, in victim order
        for rec in records:
            log_record(trainer.loggers, rec)
        for lg in trainer.loggers:
            lg.save()
    return records


def _read_part(path: Path) -> VictimRecord:
    import json

    from dglbench.record import RecordError

    try:
        return VictimRecord.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, RecordError) as exc:
        raise DglbenchError(f"cannot read victim record {path}: {exc}; delete it to re-run that victim") from None
