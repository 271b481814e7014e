"""Where entries live and how they are read: JSON only, checked strictly against the current schema.

Entries carry their ``schema_version``. This dglbench writes schema v2 and reads v1 and v2: a v1 entry is
read as v2 by :func:`dglbench.leaderboard.migrate.migrate_entry` (the file is not rewritten); an entry of a
newer version asks for a newer dglbench.

``leaderboards/v<N>/entries/<track id>/<defense slug>-<config hash>.json`` holds the entry and
``<defense slug>-<config hash>.victims.json`` its per-victim records. Nothing is unpickled.

Example:
    >>> entry_paths("digits-convnet5@1", "gaussian", "0123456789ab", "/lb")[0].as_posix()
    '/lb/v1/entries/digits-convnet5/gaussian-0123456789ab.json'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.leaderboard.schema import SCHEMA_VERSION, Entry, VictimsFile, entry_slug
from dglbench.leaderboard.track import default_root
from dglbench.leaderboard.typed import from_dict

__all__ = [
    "EntryFileError",
    "check_schema_version",
    "entry_files",
    "entry_paths",
    "load_entry",
    "load_victims",
    "read_json",
    "victims_path",
]

VICTIMS_SUFFIX = ".victims.json"


class EntryFileError(DglbenchError, ValueError):
    """An entry or victims file cannot be read or does not match the schema."""


def entry_paths(track_ref: str, defense: str, digest: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """(entry file, victims file) of a (track, defense, config hash)."""
    track_id, _, version = track_ref.partition("@")
    folder = Path(root or default_root()) / f"v{version}" / "entries" / track_id
    stem = f"{entry_slug(defense)}-{digest}"
    return folder / f"{stem}.json", folder / f"{stem}{VICTIMS_SUFFIX}"


def victims_path(entry_path: str | Path) -> Path:
    """The victims file beside an entry file."""
    p = Path(entry_path)
    return p.with_name(p.name[: -len(".json")] + VICTIMS_SUFFIX)


def entry_files(root: str | Path | None = None) -> list[Path]:
    """Every stored entry file (victims files excluded), sorted."""
    root = Path(root or default_root())
    return sorted(p for p in root.glob("v*/entries/*/*.json") if not p.name.endswith(VICTIMS_SUFFIX))


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; NaN/Infinity literals are rejected; errors are one :class:`EntryFileError` line."""

    def refuse(token: str) -> Any:
        raise ValueError(f"{token} is not JSON")

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)
    except (OSError, ValueError) as exc:
        raise EntryFileError(f"{path}: cannot read JSON: {str(exc).splitlines()[0]}") from None


def check_schema_version(data: Any) -> None:
    """Raise :class:`EntryFileError` unless ``data`` is a JSON object of a schema version this dglbench reads.

    Example:
        >>> check_schema_version({"schema_version": 1})
        >>> try:
        ...     check_schema_version({"schema_version": 3})
        ... except EntryFileError as exc:
        ...     print(exc)
        schema_version 3 is newer than this dglbench knows (2); upgrade dglbench
    """
    if not isinstance(data, dict):
        raise EntryFileError(f"an entry must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise EntryFileError(f"schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise EntryFileError(
            f"schema_version {version} is newer than this dglbench knows ({SCHEMA_VERSION}); upgrade dglbench"
        )


def load_entry(path: str | Path) -> Entry:
    """Read an entry (schema v1 migrated) and check it strictly against :class:`Entry` (schema v2)."""
    from dglbench.leaderboard.migrate import migrate_entry

    data = read_json(path)
    try:
        check_schema_version(data)
        return from_dict(Entry, migrate_entry(data))
    except DglbenchError as exc:
        raise EntryFileError(f"{path}: {exc}") from None


def load_victims(path: str | Path) -> VictimsFile:
    """Read a victims file and check its envelope (the records are checked by ``validate``)."""
    data = read_json(path)
    try:
        return from_dict(VictimsFile, data)
    except DglbenchError as exc:
        raise EntryFileError(f"{path}: {exc}") from None
