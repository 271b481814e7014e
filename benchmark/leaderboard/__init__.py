"""Versioned leaderboards: tracks, entries (schema v1), submit, validate, verify, render.

A *track* (``leaderboards/v1/tracks/<id>.yaml``) fixes victims, model, attack suite with budgets,
metrics, the FedSGD utility protocol and the ranking rule. An *entry* is one defense configuration
measured on one track (``leaderboards/v1/entries/<track>/<defense>-<hash>.json``), stored with the
per-victim records it was computed from. See ``leaderboards/SUBMITTING.md``.

Example:
    >>> from dglbench.leaderboard import load_track
    >>> load_track("digits-convnet5").ref
    'digits-convnet5@1'
"""

from dglbench.leaderboard.schema import SCHEMA_VERSION, Entry, config_hash
from dglbench.leaderboard.store import entry_files, load_entry
from dglbench.leaderboard.track import Track, list_tracks, load_track

__all__ = [
    "SCHEMA_VERSION",
    "Entry",
    "Track",
    "config_hash",
    "entry_files",
    "list_tracks",
    "load_entry",
    "load_track",
]
