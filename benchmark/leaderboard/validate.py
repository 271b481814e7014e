"""``dglbench leaderboard validate``: every stored entry is well-formed, consistent, and recomputable.

Checks, each reported as one line ``<file>: <problem>``:

* **schema** — the entry and its victims file parse under schema v2 (v1 entries after migration): no unknown
  or missing keys, every value of its declared type (numbers are numbers, not strings);
* **identity** — ``entry_id``, file name, ``config_hash`` and the defense's name and parameters agree;
  no two files share an entry id; a built-in defense is named by its registered name;
* **code** — nothing the entry names is imported. A defense that is not built in (an installed entry
  point, or a ``package.module:Class`` path) is reported as a *note* (untrusted code that ``verify``
  runs only with ``--trust-code``), not as a problem;
* **track** — the track exists, and its content hash is the one the entry was measured under;
* **configuration** — every record was produced by the configuration the track prescribes for this
  defense (same trial ids, same resolved :class:`~dglbench.trial.TrialConfig`);
* **coverage** — every trial has a record for each of the track's victims exactly once;
* **aggregates** — privacy, I2F and gradient-cosine summaries recomputed from the victims file match
  the stored ones (relative tolerance 1e-6), and derived fields (``accuracy_drop``, failure counts,
  FedSGD settings, seeds) match their inputs;
* **data files** — the JSON Schema files in ``leaderboards/v2/schema`` match the dataclasses (``v1/schema``
  keeps schema v1 as published).
* **protocol 2** — the suite's per-victim worst case and leakage summary are recomputed too; an attack that
  diverged (non-finite loss or metrics) counts as failed on that victim.

Example:
    >>> problems = validate_paths([])  # all stored entries
    >>> problems
    []
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dglbench.errors import DglbenchError
from dglbench.leaderboard.aggregate import (
    accuracy_drop,
    by_trial,
    gradient_cosine,
    i2f_summary,
    privacy_summaries,
    suite_summaries,
    suite_worst_case,
)
from dglbench.leaderboard.schema import (
    SCHEMA_VERSION,
    DefenseInfo,
    Entry,
    entry_digest,
    entry_json_schema,
    entry_slug,
    victims_json_schema,
)
from dglbench.leaderboard.store import entry_files, load_entry, load_victims, read_json, victims_path
from dglbench.leaderboard.track import LOCATION_KEYS, Track, default_root, list_tracks, load_track
from dglbench.leaderboard.trust import code_source
from dglbench.leaderboard.typed import to_dict
from dglbench.record import VictimRecord

__all__ = ["diff", "untrusted_notes", "validate_entry", "validate_paths"]

REL_TOL = 1e-6


def diff(stored: Any, recomputed: Any, path: str = "") -> str | None:
    """The first place where ``stored`` and ``recomputed`` JSON data differ (floats within 1e-6 relative)."""
    if isinstance(stored, dict) and isinstance(recomputed, dict):
        for key in sorted(set(stored) | set(recomputed)):
            sub = f"{path}.{key}" if path else key
            if key not in stored or key not in recomputed:
                return f"{sub}: present in {'the victims' if key in recomputed else 'the entry'} only"
            found = diff(stored[key], recomputed[key], sub)
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(recomputed, list):
        if len(stored) != len(recomputed):
            return f"{path}: {len(stored)} items stored, {len(recomputed)} recomputed"
        for i, (a, b) in enumerate(zip(stored, recomputed)):
            found = diff(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    numbers = (int, float)
    if (
        isinstance(stored, numbers)
        and isinstance(recomputed, numbers)
        and not isinstance(stored, bool)
        and not isinstance(recomputed, bool)
    ):
        if math.isclose(stored, recomputed, rel_tol=REL_TOL, abs_tol=1e-12):
            return None
    elif stored == recomputed and type(stored) is type(recomputed):
        return None
    return f"{path}: stored {stored!r}, but the victims file gives {recomputed!r}"


def _protocol(config: dict[str, Any]) -> dict[str, Any]:
    """A trial configuration without the dataset's location keys (where files are is not what was measured)."""
    params = {k: v for k, v in config["dataset_params"].items() if k not in LOCATION_KEYS}
    return {**config, "dataset_params": params}


def _identity_problems(entry: Entry, path: Path, root: Path) -> list[str]:
    """Entry id, config hash, provenance track and file location agree with the defense and parameters."""
    problems = []
    d = entry.defense
    digest = entry_digest(entry.track, d)
    expected_id = f"{entry.track}/{entry_slug(d.name)}-{digest}"
    if entry.entry_id != expected_id:
        problems.append(f"entry_id {entry.entry_id!r} does not match its track, defense and parameters ({expected_id})")
    if entry.provenance.config_hash != digest:
        problems.append(f"provenance.config_hash {entry.provenance.config_hash} is not the hash {digest}")
    if entry.provenance.track != entry.track:
        problems.append(f"provenance.track {entry.provenance.track!r} is not the entry's track {entry.track!r}")
    track_id, _, version = entry.track.partition("@")
    expected_path = root / f"v{version}" / "entries" / track_id / f"{entry.entry_id.split('/', 1)[1]}.json"
    if path.resolve() != expected_path.resolve():
        problems.append(f"an entry with id {entry.entry_id!r} belongs in {expected_path}")
    return problems


def _defense_problems(defense: DefenseInfo) -> list[str]:
    """A built-in defense is named by its registered name and says so; no other defense borrows a built-in name.

    Where third-party code comes from is a note (:func:`untrusted_notes`), not a problem.
    """
    from dglbench.defenses import DEFENSES

    source = code_source(defense)
    if source.kind == "builtin":
        problems = [f"defense: {source.problem}"] if source.problem else []
        if defense.name != defense.spec:
            problems.append(f"defense.name {defense.name!r} is not its built-in spec {defense.spec!r}")
        return problems
    if defense.name in DEFENSES:
        return [f"defense.name {defense.name!r} is a built-in name, but its spec {defense.spec!r} is not built in"]
    return []


def _track_problems(entry: Entry, track: Track) -> list[str]:
    """The track is the one measured under; seeds and the utility protocol are the track's."""
    problems = []
    if entry.provenance.track_hash != track.content_hash:
        problems.append(
            f"track {track.ref} changed since the entry was measured (hash {entry.provenance.track_hash}, now "
            f"{track.content_hash}); restore the track or publish the change as a new track version"
        )
    seeds = entry.provenance.seeds
    expected_seeds = (int(track.data.params.get("seed", 0)), track.model.init_seed, track.seed, track.utility.seed)
    if (seeds.victims, seeds.init, seeds.trial, seeds.utility) != expected_seeds:
        problems.append(f"provenance.seeds {to_dict(seeds)} do not match the track's {expected_seeds}")
    return problems


def _utility_problems(entry: Entry, track: Track) -> list[str]:
    """FedSGD settings are the track's; the drop follows from the accuracies; accuracies are percentages."""
    problems = []
    fed, u = entry.utility.fedsgd, track.utility
    if (fed.rounds, fed.clients, fed.batch_size, fed.lr, fed.seed) != (u.rounds, u.clients, u.batch_size, u.lr, u.seed):
        problems.append("utility.fedsgd settings do not match the track's utility protocol")
    if fed.accuracy_drop != accuracy_drop(fed.undefended_test_accuracy, fed.test_accuracy):
        problems.append(
            f"utility.fedsgd.accuracy_drop {fed.accuracy_drop} is not undefended_test_accuracy - test_accuracy"
        )
    for name in ("test_accuracy", "undefended_test_accuracy"):
        if not 0.0 <= getattr(fed, name) <= 100.0:
            problems.append(f"utility.fedsgd.{name} must be a percentage in [0, 100]")
    return problems


def _record_problem(rec: VictimRecord, trial: str, expected: dict[str, Any], entry: Entry) -> str | None:
    """Why one record was not produced by the track's configuration for this defense (``None``: it was)."""
    from dglbench import __version__
    from dglbench.trial import TrialConfig

    try:
        record_config = TrialConfig.from_dict(rec.config or {})
    except DglbenchError as exc:
        return f"victim {rec.victim_id} of trial {trial}: bad config: {exc}"
    if entry.provenance.dglbench == __version__ and record_config.trial_id != trial:
        return f"trial id {trial} is not the id of its records' configuration"
    got = _protocol(record_config.to_dict())
    if got != expected:
        first = diff(got, expected) or "config"
        return f"trial {trial} did not run the track's configuration for this defense ({first})"
    rd, d = rec.defense, entry.defense
    if isinstance(rd, dict) and (rd.get("params") != d.params or rd.get("privacy") != d.formal_privacy):
        return (
            f"victim {rec.victim_id}: the defense's parameters or formal privacy differ from the entry's defense block"
        )
    return None


def _configuration_problems(entry: Entry, configs: list[Any], groups: dict[str, list[dict]], name: str) -> list[str]:
    """Every record ran the configuration the track prescribes for this defense (first problem per trial)."""
    problems = []
    for trial, config in zip(entry.provenance.trial_ids, configs):
        expected = _protocol(config.to_dict())
        for rec in groups[trial]:
            problem = _record_problem(rec, trial, expected, entry)
            if problem:
                problems.append(f"{name}: {problem}")
                break
    return problems


def _aggregate_problems(entry: Entry, track: Track, groups: dict[str, list[dict]]) -> list[str]:
    """The stored summaries are the ones the victims file gives."""
    trial_ids = entry.provenance.trial_ids
    v2 = track.protocol == 2
    recomputed = {
        "privacy": to_dict(
            suite_summaries(track, trial_ids[0], groups[trial_ids[0]])
            if v2
            else privacy_summaries(track, trial_ids, groups)
        ),
        "worst_case": to_dict(suite_worst_case(track, groups[trial_ids[0]])) if v2 else None,
        "i2f": to_dict(i2f_summary(trial_ids[0], groups[trial_ids[0]])) if track.estimate is not None else None,
        "utility.gradient_cosine": to_dict(gradient_cosine(groups[trial_ids[0]])),
    }
    stored = {
        "privacy": to_dict(entry.privacy),
        "worst_case": to_dict(entry.worst_case),
        "i2f": to_dict(entry.i2f),
        "utility.gradient_cosine": to_dict(entry.utility.gradient_cosine),
    }
    return [found for key in recomputed if (found := diff(stored[key], recomputed[key], key))]


def _victim_groups(entry: Entry, path: Path, track: Track) -> tuple[dict[str, list[dict]] | None, list[str]]:
    """The victims file's records grouped by trial (``None`` when they cannot be), and its problems."""
    vpath = victims_path(path)
    if not vpath.exists():
        return None, [f"victims file {vpath.name} is missing; the aggregates cannot be recomputed"]
    try:
        victims = load_victims(vpath)
    except DglbenchError as exc:
        return None, [str(exc)]
    problems = []
    if victims.entry_id != entry.entry_id:
        problems.append(f"{vpath.name}: entry_id {victims.entry_id!r} is not {entry.entry_id!r}")
    try:
        return by_trial(victims.records, entry.provenance.trial_ids, track.num_victims), problems
    except DglbenchError as exc:
        return None, [*problems, f"{vpath.name}: {exc}"]


def _check(entry: Entry, path: Path, root: Path) -> list[str]:
    problems = _identity_problems(entry, path, root) + _defense_problems(entry.defense)
    try:
        track = load_track(entry.track, root)
    except DglbenchError as exc:
        return [*problems, f"track: {exc}"]
    problems += _track_problems(entry, track) + _utility_problems(entry, track)
    try:  # builds configurations from names; imports nothing the entry names
        configs = track.trial_configs(entry.defense.spec, entry.defense.params)
    except DglbenchError as exc:
        return [*problems, f"cannot rebuild the trial configurations: {exc}"]
    if len(entry.provenance.trial_ids) != len(configs):
        n = len(entry.provenance.trial_ids)
        return [*problems, f"provenance.trial_ids lists {n} trials; the track's suite has {len(configs)}"]
    groups, found = _victim_groups(entry, path, track)
    problems += found
    if groups is None:
        return problems
    problems += _configuration_problems(entry, configs, groups, victims_path(path).name)
    return problems + _aggregate_problems(entry, track, groups)


def untrusted_notes(paths: Sequence[str | Path], root: str | Path | None = None) -> list[str]:
    """One line per readable entry whose defense is third-party code (not a problem: reading it runs nothing)."""
    root = Path(root or default_root())
    notes = []
    for f in _entry_files(paths, root):
        try:
            entry = load_entry(f)
        except DglbenchError:
            continue  # reported by validate_paths
        source = code_source(entry.defense)
        if not source.trusted:
            notes.append(f"{f}: note: untrusted code: {source.describe()}; verify runs it only with --trust-code")
    return notes


def validate_entry(path: str | Path, root: str | Path | None = None) -> list[str]:
    """Problems of one entry file (empty when it is valid)."""
    path = Path(path)
    root = Path(root or default_root())
    try:
        entry = load_entry(path)
    except DglbenchError as exc:
        return [str(exc)]
    return [f"{path}: {p}" for p in _check(entry, path, root)]


def _schema_problems(root: Path) -> list[str]:
    problems = []
    for name, schema in (("entry", entry_json_schema()), ("victims", victims_json_schema())):
        current = root / f"v{SCHEMA_VERSION}"
        for folder in [current / "schema"] if current.is_dir() else []:  # older ones keep their schema as published
            path = folder / f"{name}.schema.json"
            if not path.exists() or read_json(path) != schema:
                problems.append(
                    f"{path}: out of date with dglbench.leaderboard.schema; regenerate it with "
                    "`dglbench leaderboard render`"
                )
    return problems


def _entry_files(paths: Sequence[str | Path], root: Path) -> list[Path]:
    """The entry files named by ``paths`` (files, or folders searched recursively); every stored one when empty."""
    if not paths:
        return entry_files(root)
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(q for q in p.rglob("*.json") if not q.name.endswith(".victims.json"))
        else:
            files.append(p)
    return files


def validate_paths(paths: Sequence[str | Path], root: str | Path | None = None) -> list[str]:
    """Problems of the given entry files, or of every stored track and entry when ``paths`` is empty."""
    root = Path(root or default_root())
    problems: list[str] = []
    files = _entry_files(paths, root)
    if not paths:
        for ref in list_tracks(root):
            try:
                load_track(ref, root)
            except DglbenchError as exc:
                problems.append(str(exc))
        problems += _schema_problems(root)
        for vfile in sorted(root.glob("v*/entries/*/*.victims.json")):
            if not vfile.with_name(vfile.name.replace(".victims.json", ".json")).exists():
                problems.append(f"{vfile}: victims file without an entry file; delete it or restore the entry")
    seen: dict[str, Path] = {}
    for f in files:
        problems += validate_entry(f, root)
        try:
            entry_id = read_json(f).get("entry_id")
        except (DglbenchError, AttributeError):
            continue
        if isinstance(entry_id, str):
            if entry_id in seen:
                problems.append(f"{f}: duplicate entry_id {entry_id!r} (also {seen[entry_id]})")
            seen.setdefault(entry_id, f)
    return problems
