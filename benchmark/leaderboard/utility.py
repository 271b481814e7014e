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

__all__ = ["FedSGDOutcome", "fedsgd_accuracy", "undefended_accuracy", "utility_cache_path"]


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
    pace = Pace(f"utility of {defense} on {track.ref}", rounds, unit="FedSGD rounds") if log else None
    with one_cpu_thread(device):
        for k in range(rounds):
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
        accuracy, n_test = _accuracy(model, test, device, dtype)
    return FedSGDOutcome(round(accuracy, 4), n_test, rounds, time.perf_counter() - start)


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
