"""Leaderboard entry schema v2: one frozen dataclass tree, exported as JSON Schema.

One entry is one (track, defense configuration): the defense and how to obtain it, privacy results
per attack and metric, the I2F estimate next to the attacks' measured error, utility, and
provenance. Every field is always present (``null`` when not applicable); numbers are JSON
numbers. The per-victim records the summaries were computed from are stored beside the entry
(:class:`VictimsFile`), so that ``dglbench leaderboard validate`` recomputes every summary.

Files: ``leaderboards/v<N>/entries/<track id>/<defense slug>-<config hash>.json`` and
``...victims.json``. The JSON Schema of both is generated from these classes by
:func:`write_schemas` into ``leaderboards/v2/schema/``; ``leaderboards/v1/schema/`` keeps schema v1 as
published. Schema v2 adds the defense's ``code_hash`` and the suite's per-victim ``worst_case``; schema-v1
files are read through :func:`dglbench.leaderboard.migrate.migrate_entry`.

Example:
    >>> config_hash("digits-convnet5@1", "gaussian", {"sigma": 0.01}) == config_hash(
    ...     "digits-convnet5@1", "gaussian", {"sigma": 0.010})
    True
    >>> entry_slug("mypkg.defenses:ClipNoise")
    'mypkg-defenses-clipnoise'
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dglbench.errors import ConfigError
from dglbench.io import atomic_write_json
from dglbench.leaderboard.stats import Stat
from dglbench.leaderboard.typed import json_schema

__all__ = [
    "SCHEMA_VERSION",
    "AttackSummary",
    "DefenseInfo",
    "Entry",
    "FedSGDResult",
    "Hardware",
    "I2FAgreement",
    "I2FSummary",
    "Provenance",
    "Seconds",
    "Seeds",
    "Stat",
    "UtilitySummary",
    "VictimsFile",
    "WorstCaseSummary",
    "config_hash",
    "entry_digest",
    "entry_json_schema",
    "entry_slug",
    "victims_json_schema",
    "write_schemas",
]

SCHEMA_VERSION = 2
_ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*@[0-9]+/[a-z0-9][a-z0-9_-]*-[0-9a-f]{12}$")


@dataclass(frozen=True)
class DefenseInfo:
    """The defense, its parameters, and how to obtain it.

    Attributes:
        name: registered name (``gaussian``) or ``package.module:Class``.
        spec: what was given to ``--defense`` (a name, a path or an entry point).
        params: every parameter, defaults included (what the defense's ``describe()`` reports).
        source: ``builtin`` (ships with dglbench), ``module`` (imported by path) or ``entry_point``.
        package / package_version: the distribution that provides it (null for built-ins).
        reference: URL or DOI of the paper or code (null when none given).
        description: one line about the defense (null when none given).
        formal_privacy: a formal guarantee the defense reports, e.g. ``{"epsilon", "delta"}`` (null: none).
        code_hash: 12 hex digits of SHA-256 over the source file that defines the defense's class (null in
            entries migrated from schema v1, which did not record it); part of the entry id, so a changed
            defense never reuses the records of the old one.
    """

    name: str
    spec: str
    params: dict[str, Any]
    source: Literal["builtin", "module", "entry_point"]
    package: str | None
    package_version: str | None
    reference: str | None
    description: str | None
    formal_privacy: dict[str, Any] | None
    code_hash: str | None = None  # required in files all the same (entries list every field)


@dataclass(frozen=True)
class I2FAgreement:
    """Spearman correlation over victims between the I2F prediction and the attack's measured l2 error."""

    spearman_lower_bound: float | None
    spearman_exact: float | None
    n: int


@dataclass(frozen=True)
class AttackSummary:
    """One attack of the suite against the defended gradients of all the track's victims.

    Attributes:
        attack / params: the attack and its budget (from the track).
        trial_id: the trial whose records these are.
        victims: victims attacked (all of the track's: failures are counted, never dropped).
        failures: victims whose trial failed (defense, attack or metric error; reasons in the victims file).
        metrics: per track metric, the summary over the victims that did not fail.
        mean_image_floor: per metric, the mean score of a blind guess (the dataset's mean image).
        i2f_agreement: how well I2F ranks the victims by this attack's error.
    """

    attack: str
    params: dict[str, Any]
    trial_id: str
    victims: int
    failures: int
    metrics: dict[str, Stat]
    mean_image_floor: dict[str, float | None]
    i2f_agreement: I2FAgreement


@dataclass(frozen=True)
class WorstCaseSummary:
    """Per victim, the worst case over the attacks of the suite that succeeded on it (protocol 2).

    Attributes:
        victims: victims of the track.
        failures: victims on which no attack of the suite succeeded (kept and counted, never dropped).
        attack_failures: per attack key, victims on which it failed or diverged (non-finite loss or metrics).
        metrics: per track metric, the summary of the per-victim worst case (t-interval).
        floors: per track metric, the mean blind-guess score (the data set's mean image) over the victims.
        source: per metric, how many victims' worst case each attack gave.
        leakage_metrics: the metrics the leakage score combines, each relative to its floor.
        leakage: summary of the per-victim leakage score (0 = blind guess, 1 = perfect reconstruction).
        leakage_ci95_low / leakage_ci95_high: 95 % percentile-bootstrap interval of the mean leakage.
    """

    victims: int
    failures: int
    attack_failures: dict[str, int]
    metrics: dict[str, Stat]
    floors: dict[str, float | None]
    source: dict[str, dict[str, int]]
    leakage_metrics: list[str]
    leakage: Stat
    leakage_ci95_low: float | None
    leakage_ci95_high: float | None


@dataclass(frozen=True)
class I2FSummary:
    """The I2F estimate of the reconstruction error over the victims (the suite's first trial computes it).

    Attributes:
        lower_bound: ``‖Kᵀδ‖ / λ_max(KᵀK)`` (paper Eq. 5); ``jt_delta`` and ``max_eigenvalue`` its parts.
        exact: per damping ``eps`` (key as in the records), ``‖(KᵀK + εI)⁻¹Kᵀδ‖`` (paper Eq. 4).
        failures: victims without an estimate.
        not_converged: victims whose eigenvalue or CG solve stopped before its tolerance.
    """

    trial_id: str
    victims: int
    failures: int
    lower_bound: Stat
    jt_delta: Stat
    max_eigenvalue: Stat
    exact: dict[str, Stat]
    not_converged: int


@dataclass(frozen=True)
class FedSGDResult:
    """Test accuracy (percent) after the track's FedSGD rounds with and without the defense."""

    rounds: int
    clients: int
    batch_size: int
    lr: float
    seed: int
    test_images: int
    test_accuracy: float
    undefended_test_accuracy: float
    accuracy_drop: float


@dataclass(frozen=True)
class UtilitySummary:
    """Utility: cosine between defended and clean gradient over the victims, and FedSGD accuracy."""

    gradient_cosine: Stat
    fedsgd: FedSGDResult


@dataclass(frozen=True)
class Hardware:
    """Where the entry was computed."""

    accelerator: str
    devices: int
    device: str
    cpu_count: int | None


@dataclass(frozen=True)
class Seeds:
    """Every seed of the entry (all fixed by the track)."""

    victims: int
    init: int
    trial: int
    utility: int


@dataclass(frozen=True)
class Seconds:
    """Wall time of the submission: ``privacy`` includes earlier runs' time on the trial records a resumed
    submission reused (:func:`~dglbench.leaderboard.submit.reused_seconds`), ``utility`` the defended FedSGD
    run's own time, whether stored and reused (:func:`~dglbench.leaderboard.utility.shared_fedsgd_accuracy`) or
    computed here, earlier sessions of a run resumed from its checkpoint included; ``total`` is their sum: what
    the entry's numbers cost to compute."""

    privacy: float
    utility: float
    total: float


@dataclass(frozen=True)
class Provenance:
    """What produced the entry: code, track, configuration, environment, hardware, date, seeds."""

    dglbench: str
    git_commit: str | None
    track: str
    track_hash: str
    config_hash: str
    trial_ids: list[str]
    python: str
    torch: str
    timm: str
    lightning: str
    platform: str
    hardware: Hardware
    date: str
    seeds: Seeds
    seconds: Seconds


@dataclass(frozen=True)
class Entry:
    """A leaderboard entry (schema v2): one defense configuration measured on one track.

    ``worst_case`` is the ranking input of protocol-2 tracks; null on protocol-1 tracks.
    """

    schema_version: int
    entry_id: str
    track: str
    defense: DefenseInfo
    privacy: list[AttackSummary]
    i2f: I2FSummary | None
    utility: UtilitySummary
    provenance: Provenance
    worst_case: WorstCaseSummary | None

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise ConfigError(
                f"schema_version {self.schema_version} is not {SCHEMA_VERSION}; this dglbench reads schema "
                f"v{SCHEMA_VERSION} entries only"
            )
        if not _ENTRY_ID.match(self.entry_id):
            raise ConfigError(f"entry_id {self.entry_id!r} must look like '<track>@<version>/<defense>-<12 hex>'")

    def summary(self, attack: str) -> AttackSummary | None:
        """The privacy summary of ``attack``, or ``None``."""
        return next((s for s in self.privacy if s.attack == attack), None)


@dataclass(frozen=True)
class VictimsFile:
    """The per-victim records an entry summarizes: every trial of the suite, every victim, failed ones too."""

    schema_version: int
    entry_id: str
    records: list[dict[str, Any]]


# ------------------------------------------------------------------------------------------- identities
def config_hash(track_ref: str, defense: str, params: dict[str, Any], code: dict[str, str | None] | None = None) -> str:
    """12 hex digits identifying (track, defense, parameters); integers and equal floats hash alike.

    ``code`` (protocol-2 tracks) is the defense's ``{"package", "version", "code_hash"}``: a new release or
    an edited source of the defense is a new configuration. Without it the hash is schema v1's.
    """

    def canon(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, dict):
            return {str(k): canon(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [canon(x) for x in v]
        return str(v)

    data = {"track": track_ref, "defense": defense, "params": canon(params)}
    if code is not None:
        data["code"] = dict(code)
    blob = json.dumps(data, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def entry_digest(track_ref: str, info: DefenseInfo) -> str:
    """An entry's config hash: with the defense's package, version and code hash when the entry records them."""
    code = None
    if info.code_hash is not None:
        code = {"package": info.package, "version": info.package_version, "code_hash": info.code_hash}
    return config_hash(track_ref, info.name, info.params, code)


def entry_slug(defense: str) -> str:
    """A file-name-safe form of a defense name."""
    return re.sub(r"[^a-z0-9_]+", "-", defense.lower()).strip("-") or "defense"


# ------------------------------------------------------------------------------------------- JSON Schema
SCHEMA_URN = "urn:dglbench:leaderboard:v2:"


def entry_json_schema() -> dict[str, Any]:
    """The JSON Schema of an entry file, generated from :class:`Entry`."""
    return json_schema(Entry, title="dglbench leaderboard entry, schema v2", schema_id=SCHEMA_URN + "entry")


def victims_json_schema() -> dict[str, Any]:
    """The JSON Schema of a victims file, generated from :class:`VictimsFile`."""
    return json_schema(
        VictimsFile, title="dglbench leaderboard victims file, schema v2", schema_id=SCHEMA_URN + "victims"
    )


def write_schemas(folder: str | Path) -> list[Path]:
    """Write ``entry.schema.json`` and ``victims.schema.json`` into ``folder`` (atomically)."""
    folder = Path(folder)
    return [
        atomic_write_json(folder / "entry.schema.json", entry_json_schema()),
        atomic_write_json(folder / "victims.schema.json", victims_json_schema()),
    ]
