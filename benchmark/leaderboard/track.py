"""Leaderboard tracks: a fixed, versioned protocol that every entry of the track is measured under.

A track fixes the victims (dataset and victim protocol), the model (architecture, initialization and
its seed), the threat model, the attack suite with budgets, the I2F settings, the metrics, the
utility protocol (FedSGD), the ranking rule and the tolerances of ``verify``. Its identity is
``<id>@<version>`` (e.g. ``digits-convnet5@1``): tracks of version ``N`` live in
``leaderboards/v<N>/tracks/<id>.yaml``, and a change to a track's content needs a new version, since
its entries were measured under the old one (entries store the track's content hash, and
``dglbench leaderboard validate`` rejects entries whose track changed).

Example:
    >>> track = load_track("digits-convnet5")
    >>> track.ref, track.ranking.metric
    ('digits-convnet5@1', 'psnr')
    >>> [c.attack for c in track.trial_configs("gaussian", {"sigma": 0.01})]
    ['inverting_gradients', 'dlg']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal

from dglbench.errors import ConfigError, DataNotFoundError, DglbenchError
from dglbench.io import load_yaml_mapping
from dglbench.leaderboard.typed import from_dict, to_dict
from dglbench.metrics import METRICS as _REGISTRY

__all__ = [
    "LOCATION_KEYS",
    "METRICS",
    "AttackSpec",
    "DataSpec",
    "EstimateSpec",
    "ModelSpec",
    "RankingSpec",
    "Tolerances",
    "Track",
    "default_root",
    "existing_root",
    "list_tracks",
    "load_track",
    "track_path",
]

#: Reconstruction metrics an entry can summarize, and whether a HIGH value means MORE leakage (read from the
#: metric registry, :data:`dglbench.metrics.METRICS`).
METRICS: dict[str, bool] = {
    name: _REGISTRY[name].higher_is_better
    for name in ("l2_error", "rmse", "mse", "psnr", "ssim", "lpips_alex", "lpips_vgg", "label_accuracy")
}

#: Track keys that describe the protocol in words; they are not part of its content hash.
PROSE_KEYS = ("title", "description", "references")

#: Dataset arguments that say where files are, not which victims: never part of a track or a comparison.
LOCATION_KEYS = ("root", "download", "num_workers")

_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def default_root() -> Path:
    """The leaderboard data folder: ``$DGLBENCH_LEADERBOARDS``, else ``leaderboards/`` of the source tree."""
    env = os.environ.get("DGLBENCH_LEADERBOARDS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "leaderboards"


@dataclass(frozen=True)
class DataSpec:
    """The victims: a registered dataset and its victim-protocol arguments (num_victims, seed, ...)."""

    dataset: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    """The victim model: a timm name, its arguments, the seeded initialization and its training state.

    ``state`` is the trials' ``model_state`` (:mod:`dglbench.model_state`): ``"init"`` (the default) or
    ``{trained_steps: k, lr, batch_size, seed}``, trained on the split the victims are not drawn from. The
    FedSGD utility run always starts from the initialization (:mod:`dglbench.leaderboard.utility`).
    """

    name: str
    params: dict[str, Any]
    init: str
    init_seed: int
    state: str | dict[str, Any] = "init"

    #: ``state`` may be left out (``init``); tracks that leave it out keep the content hash they had before the key.
    __optional_keys__: ClassVar[tuple[str, ...]] = ("state",)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of the suite and its budget (the attack's hyperparameters)."""

    name: str
    params: dict[str, Any]


@dataclass(frozen=True)
class EstimateSpec:
    """I2F settings: damping values of exact I2F and solver tolerances."""

    eps: list[float]
    lower_bound_tol: float
    cg_tol: float
    cg_max_iter: int


@dataclass(frozen=True)
class UtilitySpec:
    """FedSGD utility protocol: ``rounds`` rounds of ``clients`` clients with ``batch_size`` train images each."""

    rounds: int
    clients: int
    batch_size: int
    lr: float
    seed: int


@dataclass(frozen=True)
class RankingSpec:
    """Privacy at matched utility.

    Entries whose test accuracy is within ``max_accuracy_drop`` percentage points of the undefended
    accuracy are ranked by the mean ``metric`` of ``attack`` (less leakage first; ``tie_break`` next);
    the others are listed unranked, so that destroying utility never buys a rank. ``attack:
    strongest`` takes, per entry, the attack of the suite that leaks the most on ``metric`` (a defense
    is as good as it is against its strongest attacker). The privacy–utility Pareto frontier is
    marked over all entries.
    """

    attack: str
    metric: str
    tie_break: str
    max_accuracy_drop: float
    leakage: tuple[str, ...] = ()
    bootstrap: int = 0
    bootstrap_seed: int = 0

    #: Protocol v2 keys (``attack: worst_case``): the metrics the leakage score combines, each relative to its
    #: blind-guess floor, and the resamples and seed of its 95 % bootstrap interval. v1 tracks omit them.
    __optional_keys__: ClassVar[tuple[str, ...]] = ("leakage", "bootstrap", "bootstrap_seed")


@dataclass(frozen=True)
class Tolerances:
    """How closely a re-run (``dglbench leaderboard verify``) must reproduce each stored per-victim number."""

    i2f_rel: float
    l2_error_rel: float
    psnr_abs: float
    ssim_abs: float
    lpips_abs: float
    label_accuracy_abs: float
    gradient_cosine_abs: float
    test_accuracy_abs: float


@dataclass(frozen=True)
class Track:
    """A leaderboard track (see the module docstring); every key is required in the YAML file.

    ``estimate: null`` (protocol 2 only): the trials do not estimate I2F, for a suite of closed-form attacks that
    I2F does not model and whose cost the estimate would exceed many times over.
    """

    id: str
    version: int
    title: str
    description: str
    scale: Literal["cpu", "gpu"]
    data: DataSpec
    model: ModelSpec
    case: dict[str, Any]
    seed: int
    dtype: Literal["float32", "float64"]
    victims_per_step: int
    lpips: bool
    estimate: EstimateSpec | None
    attacks: list[AttackSpec]
    metrics: list[str]
    utility: UtilitySpec
    ranking: RankingSpec
    tolerances: Tolerances
    references: list[str]
    protocol: int = 1

    #: ``protocol`` 1 (v1 tracks, which omit it): victims and FedSGD clients may hold different batches, one trial
    #: per attack. ``protocol`` 2: see :mod:`dglbench.leaderboard.protocol`.
    __optional_keys__: ClassVar[tuple[str, ...]] = ("protocol",)

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ConfigError(f"track id {self.id!r} must be lower-case letters, digits, '-' or '_'")
        if self.version < 1:
            raise ConfigError(f"track {self.id}: version must be >= 1, got {self.version}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"track {self.id}: unknown metric {unknown[0]!r}; known: {', '.join(METRICS)}")
        names = [a.name for a in self.attacks]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"track {self.id}: the attack suite must list at least one attack, each once")
        if self.protocol not in (1, 2):
            raise ConfigError(f"track {self.id}: protocol must be 1 or 2, got {self.protocol!r}")
        if self.protocol == 2:
            from dglbench.leaderboard.protocol import check_track

            check_track(self)
        elif self.ranking.attack not in (*names, "strongest"):
            raise ConfigError(
                f"track {self.id}: ranking.attack {self.ranking.attack!r} is not 'strongest' or in the suite {names}"
            )
        for key in ("metric", "tie_break"):
            if getattr(self.ranking, key) not in self.metrics:
                raise ConfigError(
                    f"track {self.id}: ranking.{key} {getattr(self.ranking, key)!r} is not a track metric"
                )
        u = self.utility
        if min(u.rounds, u.clients, u.batch_size) < 1 or u.lr <= 0:
            raise ConfigError(f"track {self.id}: utility needs rounds, clients, batch_size >= 1 and lr > 0")
        n = self.data.params.get("num_victims")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"track {self.id}: data.params.num_victims must be a positive integer, got {n!r}")
        if self.estimate is None and self.protocol == 1:
            raise ConfigError(f"track {self.id}: protocol-1 tracks estimate I2F; give the estimate block")
        if self.estimate is not None and not self.estimate.eps:
            raise ConfigError(f"track {self.id}: estimate.eps must list at least one damping value")
        located = sorted(set(self.data.params) & set(LOCATION_KEYS))
        if located:
            raise ConfigError(
                f"track {self.id}: data.params.{located[0]} is a location, not protocol; pass --data-root"
            )
        import timm
        from dglbench import models  # noqa: F401  (registers the classic nets into timm)
        from dglbench.datamodules import DATAMODULES

        DATAMODULES.get(self.data.dataset)  # raises with the list of datasets
        if not timm.is_model(self.model.name):
            raise ConfigError(f"track {self.id}: unknown model {self.model.name!r}; list them with `dglbench models`")
        self.trial_configs("none", {})  # checks the case and attack settings

    @property
    def superseded(self) -> bool:
        """Whether the track follows protocol 1, superseded by protocol 2 (its board is kept, not ranked with v2's)."""
        return self.protocol < 2

    @property
    def num_victims(self) -> int:
        """Victims of the track (``data.params.num_victims``)."""
        return int(self.data.params["num_victims"])

    @property
    def ref(self) -> str:
        """``<id>@<version>``."""
        return f"{self.id}@{self.version}"

    @property
    def order_key(self) -> tuple:
        """How tracks are listed: current protocol first, then by id word by word, then version (a base track
        such as ``natural-convnet5`` before its variant ``natural-convnet5-trained``, which plain string order
        puts after it since ``-`` sorts before ``@``)."""
        return (self.protocol != 2, self.id.split("-"), self.version)

    @cached_property
    def content_hash(self) -> str:
        """Hash of the track's protocol (every key but the prose: ``title``, ``description``, ``references``).

        Entries store it; formatting, comments and wording can change without invalidating them.
        """
        protocol = {k: v for k, v in to_dict(self).items() if k not in PROSE_KEYS}
        if self.protocol == 1:  # keys added with protocol 2 are left out, so v1 tracks keep their hash
            protocol.pop("protocol")
            for key in RankingSpec.__optional_keys__:
                protocol["ranking"].pop(key)
        if self.model.state == "init":  # the default training state is left out: the hash it had before the key
            protocol["model"].pop("state")
        blob = json.dumps(protocol, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def trial_configs(self, defense: str, params: dict[str, Any], data_root: str | None = None) -> list[Any]:
        """One :class:`~dglbench.trial.TrialConfig` per attack of the suite; the first also estimates I2F.

        ``data_root`` is where the dataset's files are (``dataset_params.root``): a location, not part
        of the protocol (validation ignores it).
        """
        from dglbench.attacks import ATTACKS
        from dglbench.trial import TrialConfig

        if self.protocol == 2:
            from dglbench.leaderboard.protocol import trial_configs

            return trial_configs(self, defense, params, data_root)
        data_params = dict(self.data.params)
        if data_root is not None:
            data_params["root"] = str(data_root)
        configs = []
        for i, attack in enumerate(self.attacks):
            if attack.name not in ATTACKS:
                ATTACKS.get(attack.name)  # raises with the list of attacks
            data = {
                "dataset": self.data.dataset, "dataset_params": data_params,
                "model": self.model.name, "model_params": dict(self.model.params),
                "init": self.model.init, "init_seed": self.model.init_seed, "model_state": self.model.state,
                "defense": defense, "defense_params": dict(params),
                "attack": attack.name, "attack_params": dict(attack.params),
                "estimate": i == 0, "eps": list(self.estimate.eps),
                "lower_bound_tol": self.estimate.lower_bound_tol, "cg_tol": self.estimate.cg_tol,
                "cg_max_iter": self.estimate.cg_max_iter, "case": dict(self.case), "seed": self.seed,
                "victims_per_step": self.victims_per_step, "lpips": self.lpips, "dtype": self.dtype,
            }  # fmt: skip
            configs.append(TrialConfig.from_dict(data))
        return configs

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "track") -> Track:
        """Build and validate a track; any problem is one :class:`ConfigError` line naming ``source``."""
        try:
            return from_dict(cls, data)
        except DglbenchError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def existing_root(root: str | Path | None = None) -> Path:
    """``root`` (default :func:`default_root`) when it is a folder.

    Raises:
        DataNotFoundError: it does not exist or is not a folder (one line naming it and the fix).
    """
    path = Path(root or default_root())
    if not path.is_dir():
        raise DataNotFoundError(
            f"leaderboard folder {path} does not exist; give --root a folder holding v<N>/tracks/ "
            "(default: leaderboards/ of the source tree)"
        )
    return path


def track_path(track_id: str, version: int, root: str | Path | None = None) -> Path:
    """Where track ``track_id@version`` is stored."""
    return Path(root or default_root()) / f"v{version}" / "tracks" / f"{track_id}.yaml"


def _versions(root: Path) -> list[int]:
    return sorted(int(p.name[1:]) for p in root.glob("v*") if p.is_dir() and p.name[1:].isdigit())


def list_tracks(root: str | Path | None = None) -> list[str]:
    """Every stored track as ``id@version``, sorted."""
    root = Path(root or default_root())
    return sorted(f"{p.stem}@{v}" for v in _versions(root) for p in (root / f"v{v}" / "tracks").glob("*.yaml"))


def load_track(spec: str | Path, root: str | Path | None = None) -> Track:
    """Load a track by ``id``, ``id@version`` or YAML path; the latest version when none is given.

    Raises:
        DataNotFoundError: no such track (the message lists the stored ones).
        ConfigError: the file is not a valid track (unknown or missing key, wrong type, bad value).
    """

    root = Path(root or default_root())
    path = Path(spec)
    if not (str(spec).endswith((".yaml", ".yml")) and path.exists()):
        track_id, _, version = str(spec).partition("@")
        if version and not version.isdigit():
            raise ConfigError(f"track {spec!r}: the version after '@' must be an integer, e.g. natural-convnet5@2")
        candidates = [int(version)] if version else [v for v in reversed(_versions(root))]
        path = next((track_path(track_id, v, root) for v in candidates if track_path(track_id, v, root).exists()), None)
        if path is None:
            raise DataNotFoundError(f"no track {spec!r} under {root}; stored tracks: {', '.join(list_tracks(root))}")
    data = load_yaml_mapping(path, "track")
    track = Track.from_dict(data, source=str(path))
    folder = path.parent.parent.name
    if path.parent.name == "tracks" and folder.startswith("v") and folder[1:].isdigit():
        if int(folder[1:]) != track.version:
            raise ConfigError(f"{path}: version {track.version} does not match its folder {folder}; move or fix it")
        if path.stem != track.id:
            raise ConfigError(f"{path}: the file name must be the track id {track.id!r}")
    return track
