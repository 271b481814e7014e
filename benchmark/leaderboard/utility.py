"""Utility of a defense: test accuracy after FedSGD rounds in which every client's gradient is defended.

Protocol (a track's ``utility`` block fixes ``rounds``, ``clients``, ``batch_size``, ``lr``, ``seed``):

1. The track's model is built and initialized exactly as for the privacy trials (same init and seed,
   same mode from the case), always at its initialization: a track's training state (``model.state``) is
   not loaded. On protocol-2 tracks the victims are drawn from the train split, so a trained state learns
   from the test split, the one this run measures accuracy on; utility is the defense's cost to FedSGD
   training from the track's initialization. Under a malicious server the run trains the model without the
   server's imprint block (the block is the attacker's modification, not the federation's model).
2. Round ``k`` draws ``clients · batch_size`` distinct images of the train split,
   ``perm = randperm(n_train, generator=Generator().manual_seed(seed))`` re-drawn each round from one
   generator; client ``c`` gets the slice ``perm[c·batch_size : (c+1)·batch_size]``.
3. Each client computes the gradient of the case's loss on its batch; the defense is applied to it
   with :func:`dglbench.defenses.apply_defense` and a :class:`~dglbench.case.DefenseContext` whose
   generator depends only on ``(seed, round, client)``.
4. The server averages the defended gradients and takes one SGD step ``θ ← θ − lr · mean``.
5. After the last round: top-1 accuracy (percent) on the whole test split.

With defense ``none`` this is the undefended accuracy; it is computed once per track and cached in
``leaderboards/v<N>/utility/<track>.json`` (keyed by the track's content hash and the device type).
``submit`` runs a defended FedSGD run through :func:`shared_fedsgd_accuracy`: tracks that differ only on the
attacker's side (a trained model state for the privacy trials, a malicious server's imprint block and its
scale) compute the same number, so it is stored under the work folder keyed by everything the run depends on
(:func:`utility_key`) and reused (Soteria's six hours of utility on the imprint tracks are paid once).
On a CPU the result is deterministic: the run uses one intra-op thread whatever ``OMP_NUM_THREADS`` or
``torch.set_num_threads`` say (:func:`dglbench.hardware.one_cpu_thread`), because a defense that selects
entries (top-k, pruning) turns the last-bit differences between thread counts into other training runs.

Example:
    >>> from dglbench.leaderboard.track import load_track
    >>> track = load_track("digits-convnet5")
    >>> r = fedsgd_accuracy(track, "none", {}, rounds=2)
    >>> 0.0 <= r.test_accuracy <= 100.0, r.rounds
    (True, 2)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from dglbench.errors import ConfigError
from dglbench.io import atomic_write_json
from dglbench.leaderboard.track import Track, default_root

__all__ = [
    "FedSGDOutcome", "fedsgd_accuracy", "shared_fedsgd_accuracy", "undefended_accuracy", "utility_cache_path",
    "utility_key",
]  # fmt: skip

#: Fields of the case that the FedSGD run reads (loss, update rule, model mode). The others (``server``,
#: ``imprint_*``, ``labels``, ``server_knows_batch_size``, ``bn_stats``) describe the attacker, whom the
#: utility run does not model; tracks that differ only there (and in the privacy trials' model state) share
#: one utility run per defense.
UTILITY_CASE_FIELDS = (
    "loss", "reduction", "model_mode", "update", "local_steps", "local_lr", "local_batch_size", "local_epochs",
)  # fmt: skip

#: Sources on the utility run's path; a change to one of them makes a stored utility run stale.
_UTILITY_SOURCES = (
    "dglbench.leaderboard.utility", "dglbench.defenses.base", "dglbench.gradients", "dglbench.case",
    "dglbench.modules", "dglbench.models.init", "dglbench.hardware",
)  # fmt: skip


@dataclass(frozen=True)
class FedSGDOutcome:
    """Test accuracy (percent) after ``rounds`` FedSGD rounds, the test-set size and the wall time."""

    test_accuracy: float
    test_images: int
    rounds: int
    seconds: float


def _generator(seed: int, round_: int, client: int, device: torch.device) -> torch.Generator:
    digest = hashlib.sha256(f"fedsgd:{seed}:{round_}:{client}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _batch(dataset: Any, indices: torch.Tensor, device: torch.device, dtype: torch.dtype):
    items = [dataset[int(i)] for i in indices]
    images = torch.stack([x for x, _ in items]).to(device, dtype)
    labels = torch.tensor([y for _, y in items], dtype=torch.long, device=device)
    return images, labels


@torch.no_grad()
def _accuracy(model: torch.nn.Module, dataset: Any, device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    from torch.utils.data import DataLoader

    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=256, shuffle=False):
        logits = model(images.to(device, dtype))
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        total += int(labels.numel())
    return 100.0 * correct / max(total, 1), total


def fedsgd_accuracy(
    track: Track,
    defense: str,
    params: dict[str, Any],
    *,
    device: str | torch.device = "cpu",
    rounds: int | None = None,
    data_root: str | None = None,
    log: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: float = 60.0,
) -> FedSGDOutcome:
    """Test accuracy after the track's FedSGD protocol with ``defense(**params)`` applied to every client gradient.

    Args:
        track: the track (model, data, case and the utility protocol).
        defense: a defense name, ``module:Class`` path or entry point.
        params: its parameters.
        device: where to train (``"cpu"``, ``"cuda"``).
        rounds: override the track's number of rounds (tests only; entries always use the track's).
        data_root: where the dataset's files are (embedded datasets need none).
        log: print a plain progress line on stderr every 30 s or so (rounds done, time spent and left).
        checkpoint: a file that holds the run's state (weights, round, the draw's generator, seconds spent)
            after a round, at most every ``checkpoint_every`` seconds, written atomically; a run that finds it
            continues from there and removes it when done. The result is the same, bit for bit, as a run
            without a break (a defended run can outlast a session: Soteria on the imprint tracks, six hours).
            The caller keys the file by the run's inputs (:func:`shared_fedsgd_accuracy` does).
    """
    from dglbench.case import DefenseContext
    from dglbench.datamodules import create_datamodule
    from dglbench.defenses import apply_defense, clean_gradients, create_defense
    from dglbench.hardware import one_cpu_thread
    from dglbench.modules import build_victim_model
    from dglbench.progress import Pace

    start = time.perf_counter()
    device = torch.device(device)
    spec = track.utility
    rounds = spec.rounds if rounds is None else rounds
    config = dataclasses.replace(track.trial_configs(defense, params, data_root)[0], model_state="init")
    dm = create_datamodule(track.data.dataset, **config.dataset_params)
    train, test = dm.train_dataset(), dm.test_dataset()
    n_train = len(train)
    per_round = spec.clients * spec.batch_size
    if per_round > n_train:
        raise ConfigError(
            f"track {track.ref}: utility needs clients * batch_size = {per_round} <= {n_train} train images"
        )
    dtype = torch.float64 if track.dtype == "float64" else torch.float32
    model = build_victim_model(config, dm.num_classes, dm.image_shape).to(device)
    case = config.case_obj
    defense_obj = create_defense(defense, **params)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    trainable = [p for p in model.parameters() if p.requires_grad]
    draw = torch.Generator().manual_seed(spec.seed)
    first, spent = 0, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        first, spent = _resume(Path(checkpoint), model, draw, rounds)
    pace = Pace(f"utility of {defense} on {track.ref}", rounds - first, unit="FedSGD rounds") if log else None
    saved = time.perf_counter()
    with one_cpu_thread(device):
        for k in range(first, rounds):
            perm = torch.randperm(n_train, generator=draw)[:per_round]
            total = [torch.zeros_like(p) for p in trainable]
            for c in range(spec.clients):
                case.prepare(model)
                images, labels = _batch(train, perm[c * spec.batch_size : (c + 1) * spec.batch_size], device, dtype)
                context = DefenseContext(model, images, labels, case, _generator(spec.seed, k, c, device), names)
                with torch.enable_grad():
                    defended = apply_defense(defense_obj, clean_gradients(context), context)
                for t, g in zip(total, defended):
                    t.add_(g)
            with torch.no_grad():
                for p, t in zip(trainable, total):
                    p.sub_(spec.lr * t / spec.clients)
            if pace is not None:
                pace.step()
            if checkpoint is not None and k + 1 < rounds and time.perf_counter() - saved >= checkpoint_every:
                _save(Path(checkpoint), model, draw, k + 1, rounds, spent + time.perf_counter() - start)
                saved = time.perf_counter()
        accuracy, n_test = _accuracy(model, test, device, dtype)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)
    return FedSGDOutcome(round(accuracy, 4), n_test, rounds, spent + time.perf_counter() - start)


def _save(path: Path, model: torch.nn.Module, draw: torch.Generator, done: int, rounds: int, seconds: float) -> None:
    """The state of a FedSGD run after ``done`` rounds, written to a temporary file and renamed into place."""
    import os

    state = {"done": done, "rounds": rounds, "seconds": seconds, "draw": draw.get_state(),
             "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume(path: Path, model: torch.nn.Module, draw: torch.Generator, rounds: int) -> tuple[int, float]:
    """Load a run's state saved by :func:`_save`; returns ``(rounds done, seconds spent)``, or ``(0, 0)`` (and
    the run starts afresh) when the file is unreadable or from a run of another length."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if int(state["rounds"]) != rounds or not 0 < int(state["done"]) < rounds:
            raise ValueError("another run")
        mine = model.state_dict()
        if set(state["model"]) != set(mine) or any(state["model"][k].shape != v.shape for k, v in mine.items()):
            raise ValueError("another model")
        torch.Generator().set_state(state["draw"])  # checked on a spare generator before anything changes
        done, seconds = int(state["done"]), float(state["seconds"])
    except Exception:  # noqa: BLE001 - a damaged or foreign checkpoint is never trusted: start afresh
        return 0, 0.0
    model.load_state_dict(state["model"])
    draw.set_state(state["draw"])
    return done, seconds


def utility_cache_path(track: Track, root: str | Path | None = None) -> Path:
    """Where the undefended accuracy of ``track`` is cached."""
    return Path(root or default_root()) / f"v{track.version}" / "utility" / f"{track.id}.json"


def undefended_accuracy(
    track: Track,
    *,
    device: str | torch.device = "cpu",
    root: str | Path | None = None,
    refresh: bool = False,
    data_root: str | None = None,
) -> FedSGDOutcome:
    """The track's FedSGD accuracy without a defense, from the cache when it matches the track and device type."""
    path = utility_cache_path(track, root)
    kind = torch.device(device).type
    if path.exists() and not refresh:
        try:
            cached = json.loads(path.read_text())
            entry = cached["devices"][kind]
            if cached["track_hash"] == track.content_hash:
                return FedSGDOutcome(
                    float(entry["test_accuracy"]), int(entry["test_images"]), track.utility.rounds, 0.0
                )
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a stale or corrupt cache is recomputed
    outcome = fedsgd_accuracy(track, "none", {}, device=device, data_root=data_root)
    cached = {"devices": {}}
    if path.exists():
        try:
            cached = json.loads(path.read_text())
            if cached.get("track_hash") != track.content_hash:
                cached = {"devices": {}}
        except (OSError, ValueError):
            cached = {"devices": {}}
    cached.update({"schema_version": 1, "track": track.ref, "track_hash": track.content_hash})
    cached.setdefault("devices", {})[kind] = {
        "test_accuracy": outcome.test_accuracy, "test_images": outcome.test_images,
        "rounds": outcome.rounds, "seconds": round(outcome.seconds, 3),
    }  # fmt: skip
    atomic_write_json(path, cached)
    return outcome


def utility_key(track: Track, defense: Any, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything the defended FedSGD run of ``defense`` on ``track`` depends on, as plain data.

    ``defense`` is the entry's :class:`~dglbench.leaderboard.schema.DefenseInfo` (name, every parameter,
    package, version and code hash). The track contributes its data, model, initialization, dtype, the case
    fields of :data:`UTILITY_CASE_FIELDS` and its ``utility`` block, not its model state (the run starts from
    initialization) nor the attacker's side of the case; the versions of dglbench, torch and timm and the
    sources on the run's path (the data's and the model's modules included) complete it. Two tracks with equal
    keys compute the same number.
    """
    import importlib
    import inspect

    import timm
    from dglbench import __version__
    from dglbench.datamodules import DATAMODULES

    config = track.trial_configs(defense.spec, defense.params)[0]
    case = dataclasses.asdict(config.case_obj)
    modules = [importlib.import_module(name) for name in _UTILITY_SOURCES]
    modules += [
        inspect.getmodule(DATAMODULES.get(config.dataset)),
        inspect.getmodule(timm.create_model),
        inspect.getmodule(timm.models.model_entrypoint(config.model)),
    ]  # the data's and the model's code
    sources = hashlib.sha256()
    for module in modules:
        sources.update(inspect.getsource(module).encode())
    return {
        "defense": {"name": defense.name, "params": defense.params, "package": defense.package,
                    "version": defense.package_version, "code_hash": defense.code_hash},
        "data": {"dataset": config.dataset, "params": config.dataset_params},
        "model": {"name": config.model, "params": config.model_params, "init": config.init,
                  "init_seed": config.init_seed, "dtype": config.dtype},
        "case": {k: case[k] for k in UTILITY_CASE_FIELDS},
        "utility": dataclasses.asdict(track.utility),
        "device": torch.device(device).type,
        "dglbench": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "sources": sources.hexdigest()[:16],
    }  # fmt: skip


def shared_fedsgd_accuracy(
    track: Track,
    defense: Any,
    work_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
    log: bool = False,
) -> tuple[FedSGDOutcome, str | None]:
    """:func:`fedsgd_accuracy`, stored under ``work_dir/utility/`` by :func:`utility_key` and reused.

    Returns the outcome and, when it was reused, the track that computed it (else ``None``). The stored
    ``seconds`` are the computing run's, so an entry still reports what its utility cost. ``verify --utility``
    never reads the store: it re-runs FedSGD.
    """
    key = utility_key(track, defense, device)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(work_dir) / "utility" / f"{digest}.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored["key"] == json.loads(json.dumps(key, default=str)):
                o = stored["outcome"]
                outcome = FedSGDOutcome(float(o["test_accuracy"]), int(o["test_images"]), int(o["rounds"]),
                                        float(o["seconds"]))  # fmt: skip
                return outcome, str(stored["track"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a corrupt record is recomputed and replaced
    outcome = fedsgd_accuracy(
        track, defense.spec, defense.params, device=device, data_root=data_root, log=log,
        checkpoint=path.with_suffix(".partial.pt"),
    )  # fmt: skip
    atomic_write_json(path, {"schema_version": 1, "track": track.ref, "key": key,
                             "outcome": dataclasses.asdict(outcome)})  # fmt: skip
    return outcome, None
