"""Reading schema-v1 entries as schema v2, field by field.

Schema v2 (protocol 2) keeps every field of schema v1 with the same meaning *within its track* and adds two:

============================  ==========================================================================
field                         schema v1 entry read as v2
============================  ==========================================================================
``defense.*`` (v1 fields)     migrated unchanged: the same defense and parameters.
``defense.code_hash``         ``null``: v1 did not record the defense's code ("unknown").
``privacy[*]``                migrated unchanged: per attack, the same metrics of the same victims.
``i2f``                       migrated unchanged: the same estimate of the same victims.
``utility.*``                 migrated unchanged, **not comparable** with protocol 2: v1's FedSGD clients hold
                              a different batch than its victims (32 against 1 on ``digits-convnet5@1``),
                              so noise calibrated to the batch size is charged differently.
``provenance.*``              migrated unchanged.
``worst_case``                ``null``, **not comparable**: v1 ranked the attack strongest on average, not the
                              per-victim worst case, and recorded no leakage score.
``entry_id`` / file name      unchanged: v1 ids stay citable as published.
============================  ==========================================================================

No v1 entry is moved to a v2 track: the tracks differ (8x8 digits, 8 victims, one image per victim against
FedSGD clients of 32), so v1 entries are *not comparable* with v2 entries as a whole and stay on their
superseded v1 board.

Example:
    >>> migrate_entry({"schema_version": 1, "defense": {"name": "none"}})["worst_case"] is None
    True
"""

from __future__ import annotations

import copy
from typing import Any

from dglbench.leaderboard.schema import SCHEMA_VERSION

__all__ = ["NOT_COMPARABLE", "migrate_entry"]

#: Fields of a migrated schema-v1 entry whose numbers do not mean what the same field means under protocol 2.
NOT_COMPARABLE = ("utility", "worst_case")


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    if isinstance(out.get("defense"), dict):
        out["defense"].setdefault("code_hash", None)
    out.setdefault("worst_case", None)
    out["schema_version"] = 2
    return out


_STEPS = {1: _v1_to_v2}


def migrate_entry(data: dict[str, Any]) -> dict[str, Any]:
    """Entry data of any readable schema version, as data of the current one (a copy; the input is unchanged)."""
    version = data.get("schema_version")
    while isinstance(version, int) and not isinstance(version, bool) and version < SCHEMA_VERSION:
        data = _STEPS[version](data)
        version = data["schema_version"]
    return data
