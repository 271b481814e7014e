"""Schema migrations of leaderboard entries: every stored entry loads under the current schema.

A schema change bumps :data:`~dglbench.leaderboard.schema.SCHEMA_VERSION` and registers a
migration from the previous version here: a pure function on the entry's JSON dict that returns
the next version's dict (and sets its ``schema_version``). :func:`migrate` applies them in order.
Data is never dropped silently: a migration that cannot carry a value must raise.

Schema v1 is the first version, so there are no migrations yet. When v2 arrives::

    @register_migration(1)
    def _v1_to_v2(entry: dict) -> dict:
        out = dict(entry, schema_version=2)
        out["new_field"] = None  # not measured by v1
        return out

Example:
    >>> migrate({"schema_version": 1, "entry_id": "x"})["schema_version"]
    1
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.leaderboard.schema import SCHEMA_VERSION

__all__ = ["MIGRATIONS", "MigrationError", "migrate", "register_migration"]

Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: from_version -> function returning the entry at from_version + 1.
MIGRATIONS: dict[int, Migration] = {}


class MigrationError(DglbenchError, ValueError):
    """An entry's schema version is unknown or a migration failed."""


def register_migration(from_version: int) -> Callable[[Migration], Migration]:
    """Decorator: register the migration from ``from_version`` to ``from_version + 1``."""

    def decorator(fn: Migration) -> Migration:
        if from_version in MIGRATIONS:
            raise ValueError(f"a migration from schema v{from_version} is already registered")
        MIGRATIONS[from_version] = fn
        return fn

    return decorator


def migrate(entry: dict[str, Any], *, target: int = SCHEMA_VERSION) -> dict[str, Any]:
    """``entry`` (a JSON dict of any known schema version) migrated to schema ``target``; the input is not changed.

    Raises:
        MigrationError: no ``schema_version``, a version newer than this dglbench knows, or a gap in the chain.
    """
    if not isinstance(entry, dict):
        raise MigrationError(f"an entry must be a JSON object, got {type(entry).__name__}")
    version = entry.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MigrationError(f"schema_version must be a positive integer, got {version!r}")
    if version > target:
        raise MigrationError(f"schema_version {version} is newer than this dglbench knows ({target}); upgrade dglbench")
    out = copy.deepcopy(entry)
    while version < target:
        step = MIGRATIONS.get(version)
        if step is None:
            raise MigrationError(f"no migration from schema v{version} to v{version + 1} is registered")
        out = step(out)
        if out.get("schema_version") != version + 1:
            raise MigrationError(f"the migration from schema v{version} did not set schema_version {version + 1}")
        version += 1
    return out
