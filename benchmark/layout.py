"""The layout of a run folder, in one place: where trials, victim records, metadata and reports live.

A run folder (``dglbench run --out DIR``, a sweep folder, a leaderboard submission's work folder)::

    spec.yaml                        a sweep's spec as given (copied once)
    sweep.json                       a sweep's trial ids in order, with their configurations
    records/<trial_id>.json          one trial file per finished trial (written atomically)
    parts/<trial_id>/victim-<id>.json  per-victim records of a trial in flight (resume inside a trial)
    images/<trial_id>/victim-<id>.npz  per-victim originals and reconstructions, uint8 (:func:`load_reconstructions`)
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

__all__ = [
    "IMAGES_SCHEMA_VERSION",
    "RunLayout",
    "TrialImages",
    "TrialLayout",
    "load_reconstructions",
    "read_trial_records",
    "save_reconstructions",
    "write_trial_records",
]

#: Version of a victim's image file (``images/<trial_id>/victim-<id>.npz``).
IMAGES_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrialLayout:
    """The part folder of one trial in flight: one record file per finished victim."""

    directory: Path

    def victim(self, victim_id: int) -> Path:
        """The record file of victim ``victim_id``."""
        return Path(self.directory) / f"victim-{int(victim_id):06d}.json"


@dataclass(frozen=True)
class TrialImages:
    """The image folder of one trial: one ``.npz`` per victim (:func:`save_reconstructions`)."""

    directory: Path

    def victim(self, victim_id: int) -> Path:
        """The image file of victim ``victim_id``."""
        return Path(self.directory) / f"victim-{int(victim_id):06d}.npz"


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

    def images(self, trial_id: str) -> TrialImages:
        """The image folder of a trial: each victim's originals and reconstructions (kept after the trial ends)."""
        return TrialImages(self.root / "images" / trial_id)

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


def _to_uint8(images: Any) -> Any:
    import numpy as np
    import torch

    pixels = torch.as_tensor(images).detach().to("cpu", torch.float64).clamp(0, 1)
    return np.asarray((pixels * 255).round().to(torch.uint8))


def save_reconstructions(
    path: str | Path,
    original: Any,
    reconstructions: dict[str, Any],
    worst: str | None = None,
    indices: Any = (),
) -> Path:
    """Write one victim's images as uint8 (pixels in [0, 1] rounded to /255) into one ``.npz``, atomically.

    Args:
        path: the file (:meth:`TrialImages.victim`).
        original: the private batch ``[B, C, H, W]`` in pixel space ([0, 1]; clamped).
        reconstructions: per attack key, its reconstruction ``[B, C, H, W]`` in pixel space, in the attack's
            order (the metrics pair images before comparing; these are as the attack returned them).
        worst: the attack key of the suite's worst case (the one the record's worst PSNR came from).
        indices: the victim's dataset indices.

    Returns:
        ``path``.
    """
    import io

    import numpy as np
    from dglbench.io import atomic_write_bytes

    arrays = {"schema_version": np.array(IMAGES_SCHEMA_VERSION), "original": _to_uint8(original),
              "indices": np.asarray(list(indices), dtype=np.int64), "worst": np.array(worst or "")}  # fmt: skip
    keys = list(reconstructions)
    arrays["attack_keys"] = np.array(keys if keys else [""])[: len(keys)]
    for i, key in enumerate(keys):
        arrays[f"attack_{i}"] = _to_uint8(reconstructions[key])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_reconstructions(path: str | Path, victim_id: int | None = None) -> dict[str, Any]:
    """One victim's saved images as float tensors in [0, 1], ``[B, C, H, W]`` each.

    Args:
        path: a victim's ``.npz`` file; or, with ``victim_id``, a trial's image folder
            (``RunLayout(run).images(trial_id).directory``).
        victim_id: the victim, when ``path`` is a folder.

    Returns:
        ``{"original": ..., <attack key>: ..., "worst": ...}``: the private images, each attack's reconstruction
        and (when the suite had a worst case) the worst case's reconstruction, plus ``"indices"`` (the victim's
        dataset indices, an int64 tensor). Values are the stored uint8 pixels divided by 255.

    Raises:
        DglbenchError: the file is missing, unreadable or of an unknown version.

    Example:
        >>> import tempfile, torch
        >>> x = torch.rand(1, 1, 8, 8)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     folder = RunLayout(tmp).images("t")
        ...     _ = save_reconstructions(folder.victim(3), x, {"dlg": x}, worst="dlg")
        ...     images = load_reconstructions(folder.directory, 3)
        >>> sorted(images), bool((images["worst"] - x).abs().max() <= 0.5 / 255)
        (['dlg', 'indices', 'original', 'worst'], True)
    """
    import numpy as np
    import torch

    file = TrialImages(Path(path)).victim(victim_id) if victim_id is not None else Path(path)
    try:
        with np.load(file, allow_pickle=False) as data:
            version = int(data["schema_version"])
            if version != IMAGES_SCHEMA_VERSION:
                raise DglbenchError(f"{file}: image file of version {version}; this dglbench reads version 1")
            keys = [str(k) for k in data["attack_keys"]]
            out = {"original": torch.from_numpy(data["original"]).float() / 255}
            out.update({key: torch.from_numpy(data[f"attack_{i}"]).float() / 255 for i, key in enumerate(keys)})
            worst = str(data["worst"])
            if worst:
                out["worst"] = out[worst]
            out["indices"] = torch.from_numpy(data["indices"])
    except (OSError, KeyError, ValueError) as exc:
        raise DglbenchError(f"cannot read reconstructions {file}: {exc}") from None
    return out
