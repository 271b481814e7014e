"""The layout of a run folder, in one place: where trials, victim records, metadata and reports live.

A run folder (``dglbench run --out DIR``, a sweep folder, a leaderboard submission's work folder)::

    spec.yaml                        a sweep's spec as given (copied once)
    sweep.json                       a sweep's trial ids in order, with their configurations
    records/<trial_id>.json          one trial file per finished trial (written atomically)
    parts/<trial_id>/victim-<id>.json  per-victim records of a trial in flight (resume inside a trial)
    logs/                            Lightning's CSV logs
    report/                          ``dglbench sweep report``: report.md, correlations.csv / .tex, plots

A trial file holds ``{"schema_version", "trial_id", "config", "victims": [record, ...]}``; each record
is a :class:`~dglbench.record.VictimRecord` dict and carries its own schema version.

Example:
    >>> layout = RunLayout("runs/demo")
    >>> str(layout.trial_record("0123abcd")), str(layout.parts("0123abcd").victim(7))
    ('runs/demo/records/0123abcd.json', 'runs/demo/parts/0123abcd/victim-000007.json')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.io import atomic_write_json
from dglbench.record import SCHEMA_VERSION, RecordError, VictimRecord

__all__ = ["RunLayout", "TrialLayout", "read_trial_records", "write_trial_records"]


@dataclass(frozen=True)
class TrialLayout:
    """The part folder of one trial in flight: one record file per finished victim."""

    directory: Path

    def victim(self, victim_id: int) -> Path:
        """The record file of victim ``victim_id``."""
        return Path(self.directory) / f"victim-{int(victim_id):06d}.json"


@dataclass(frozen=True)
class RunLayout:
    """The paths of a run folder (see the module docstring)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def sweep_index(self) -> Path:
        return self.root / "sweep.json"

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def trial_record(self, trial_id: str) -> Path:
        """The trial file of a finished trial."""
        return self.records / f"{trial_id}.json"

    def parts(self, trial_id: str) -> TrialLayout:
        """The part folder of a trial in flight."""
        return TrialLayout(self.root / "parts" / trial_id)

    def trial_records(self) -> list[Path]:
        """Every finished trial's file, sorted by name."""
        return sorted(self.records.glob("*.json"))

    def report_file(self, name: str) -> Path:
        """A report output (``report.md``, ``correlations.csv``, a plot's stem...)."""
        return self.report / name


def write_trial_records(path: Path, trial_id: str, config: dict[str, Any], records: list[VictimRecord]) -> Path:
    """Write a trial file atomically."""
    data = {"schema_version": SCHEMA_VERSION, "trial_id": trial_id, "config": config,
            "victims": [r.to_dict() for r in records]}  # fmt: skip
    return atomic_write_json(path, data)


def read_trial_records(path: str | Path) -> list[VictimRecord]:
    """The records of a trial file (older schema versions converted); a corrupt file is one :class:`DglbenchError`."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DglbenchError(f"cannot read trial record {path}: {exc}; delete it to re-run that trial") from None
    except json.JSONDecodeError as exc:
        raise DglbenchError(f"corrupt record file {path}: {exc}; delete it to re-run that trial") from None
    if not isinstance(data, dict) or not isinstance(data.get("victims"), list):
        raise DglbenchError(f"{path} is not a dglbench trial record (no 'victims'); delete it to re-run that trial")
    try:
        return [VictimRecord.from_dict(v) for v in data["victims"]]
    except RecordError as exc:
        raise DglbenchError(f"{path}: {exc}") from None
