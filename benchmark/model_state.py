"""The victim model's training state: at initialization, or trained for ``k`` SGD steps on the non-victim split.

A trial's ``model_state`` is ``"init"`` (the default: the model as its initialization scheme leaves it) or a
mapping ``{trained_steps: k, lr, batch_size, seed}`` (:class:`TrainedState`). A trained state is made by one
documented recipe (:func:`train_model`):

1. the model is built and initialized exactly as at ``init`` (same scheme and ``init_seed``);
2. it takes ``k`` plain SGD steps (no momentum, no weight decay) of rate ``lr`` on mini-batches of ``batch_size``
   images of the dataset's *training* split — the split the victims are **not** drawn from
   (:func:`training_split`; victims come from the test split by default), cross-entropy with mean reduction,
   in train mode (BatchNorm updates its running statistics);
3. mini-batches follow a seeded permutation (``seed``), redrawn after every pass over the split.

The weights are cached on disk (:func:`cache_dir`, written atomically) under a key (:func:`model_state_key`)
made of everything that determines them: data, model, initialization, the recipe's parameters, the source of
this module and the torch version. That key enters the trial id, so a changed recipe is a new trial and never
reuses old records; ids stay computable before anything is trained (offline validation of GPU-size specs,
W&B agents, resume) and equal on every process of a multi-node run. The SHA-256 of the weights
(:func:`weights_sha256`) goes into every record, and the cache checks it on each load.

Example:
    >>> parse_model_state("init") is None
    True
    >>> parse_model_state({"trained_steps": 50})
    TrainedState(trained_steps=50, lr=0.01, batch_size=32, seed=0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from dglbench.errors import ConfigError, DglbenchError
from dglbench.io import atomic_write_bytes, atomic_write_json
from dglbench.params import Count, ParamError, PositiveFloat, build
from torch import Tensor, nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from dglbench.trial import TrialConfig

__all__ = [
    "Checkpoint",
    "TrainedState",
    "cache_dir",
    "describe_model_state",
    "load_trained_state",
    "model_state_key",
    "parse_model_state",
    "train_model",
    "trained_checkpoint",
    "training_split",
    "victim_checkpoint",
    "weights_sha256",
]

#: Data-module arguments that choose victims or workers, not the training data: left out of the cache key.
_VICTIM_ONLY = ("num_victims", "images_per_victim", "victims_per_step", "seed", "num_workers", "download", "root")
#: Images of the training split the recorded train loss is measured on (before and after training).
LOSS_PROBE = 512


@dataclass(frozen=True)
class TrainedState:
    """A model trained for ``trained_steps`` SGD steps before the client computes its update.

    Attributes:
        trained_steps: SGD steps ``k`` (>= 1).
        lr: the SGD learning rate.
        batch_size: images per SGD step (BatchNorm in train mode needs at least 2).
        seed: seeds the order of the mini-batches.
    """

    trained_steps: Count
    lr: PositiveFloat = 0.01
    batch_size: Count = 32
    seed: int = 0

    __optional_keys__: ClassVar[tuple[str, ...]] = ("lr", "batch_size", "seed")


def parse_model_state(value: Any) -> TrainedState | None:
    """``None`` for ``"init"``, a :class:`TrainedState` for a mapping; anything else is a one-line ConfigError."""
    if value == "init":
        return None
    if not isinstance(value, dict):
        raise ConfigError(
            f"model_state must be 'init' or a mapping {{trained_steps: k, lr, batch_size, seed}}, got {value!r}"
        )
    try:
        return build(TrainedState, value, "model_state", json=True)
    except ParamError as exc:
        raise ConfigError(str(exc)) from None


def weights_sha256(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values, in name order (independent of file format).

    Example:
        >>> a = weights_sha256({"w": torch.zeros(2)})
        >>> a == weights_sha256({"w": torch.zeros(2)}), a == weights_sha256({"w": torch.ones(2)})
        (True, False)
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def training_split(victim_split: str, splits: tuple[str, ...]) -> str:
    """The split a trained state learns from: the one the victims are not drawn from.

    Example:
        >>> training_split("test", ("train", "test"))
        'train'
    """
    others = [s for s in splits if s != victim_split]
    if not others:
        raise ConfigError(
            f"model_state: the dataset has no split besides the victims' {victim_split!r} to train on; "
            "use model_state: init"
        )
    return "train" if "train" in others else others[0]


def train_model(model: nn.Module, dataset: Dataset, recipe: TrainedState) -> tuple[float, float]:
    """Train ``model`` in place by the module's recipe; returns the train loss before and after.

    The loss is the mean cross-entropy over the first :data:`LOSS_PROBE` images of ``dataset`` in eval mode.
    """
    n = len(dataset)  # type: ignore[arg-type]
    if recipe.batch_size > n:
        raise ConfigError(f"model_state.batch_size {recipe.batch_size} exceeds the {n} training images; lower it")
    probe = _stack(dataset, range(min(n, LOSS_PROBE)))
    before = _loss(model, *probe)
    gen = torch.Generator().manual_seed(recipe.seed)
    order, pos = torch.randperm(n, generator=gen), 0
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr)
    model.train()
    for _ in range(recipe.trained_steps):
        if pos + recipe.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        x, y = _stack(dataset, order[pos : pos + recipe.batch_size].tolist())
        pos += recipe.batch_size
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return before, _loss(model, *probe)


def _stack(dataset: Dataset, indices: Any) -> tuple[Tensor, Tensor]:
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    training = model.training
    model.eval()
    with torch.no_grad():
        value = float(F.cross_entropy(model(x), y))
    model.train(training)
    return value


def cache_dir() -> Path:
    """Where trained states are kept: ``$DGLBENCH_CACHE``, else ``$XDG_CACHE_HOME/dglbench``, else
    ``~/.cache/dglbench``; checkpoints go to its ``model_states/`` folder."""
    root = os.environ.get("DGLBENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "dglbench"
    )
    return Path(root) / "model_states"


@lru_cache(maxsize=1)
def _recipe_source_sha() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def model_state_key(config: TrialConfig) -> str | None:
    """The trained state's cache key (a hash of everything that determines its weights); ``None`` at ``init``."""
    recipe = parse_model_state(config.model_state)
    return None if recipe is None else _cache_key(config, recipe)


def _cache_key(config: TrialConfig, recipe: TrainedState) -> str:
    data_params = {k: v for k, v in config.dataset_params.items() if k not in _VICTIM_ONLY}
    blob = {
        "dataset": config.dataset, "dataset_params": data_params, "model": config.model,
        "model_params": config.model_params, "init": config.init, "init_seed": config.init_seed,
        "recipe": dataclasses.asdict(recipe), "recipe_source": _recipe_source_sha(), "torch": torch.__version__,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Checkpoint:
    """A trained state on disk.

    Attributes:
        path: the weights file (``torch.save`` of the state dict).
        sha256: :func:`weights_sha256` of the weights.
        split: the split it was trained on.
        train_loss_init / train_loss_trained: the train loss before and after training (:func:`train_model`).
    """

    path: Path
    sha256: str
    split: str
    train_loss_init: float
    train_loss_trained: float


def trained_checkpoint(config: TrialConfig, build_model: Callable[[int, tuple[int, ...]], nn.Module]) -> Checkpoint:
    """The trial's trained state, from the cache or trained now (and cached, atomically).

    Args:
        config: the trial; its ``model_state`` must be a trained state.
        build_model: ``(num_classes, image_shape) -> model``, initialized as at ``init`` (float32).
    """
    recipe = parse_model_state(config.model_state)
    if recipe is None:
        raise ConfigError("trained_checkpoint needs a trained model_state, got 'init'")
    key = _cache_key(config, recipe)
    return _checkpoint(key, config, recipe, build_model)


_MEMO: dict[str, Checkpoint] = {}


def _checkpoint(
    key: str, config: TrialConfig, recipe: TrainedState, build_model: Callable[[int, tuple[int, ...]], nn.Module]
) -> Checkpoint:
    folder = cache_dir()
    weights, meta = folder / f"{key}.pt", folder / f"{key}.json"
    if key in _MEMO and _MEMO[key].path == weights and weights.exists():
        return _MEMO[key]
    if weights.exists() and meta.exists():
        info = json.loads(meta.read_text())
        ckpt = Checkpoint(weights, info["sha256"], info["split"], info["train_loss_init"], info["train_loss_trained"])
    else:
        from dglbench.datamodules import create_datamodule

        dm = create_datamodule(config.dataset, **config.dataset_params)
        split = training_split(dm.split, dm.splits)
        model = build_model(dm.num_classes, dm.image_shape)
        before, after = train_model(model, dm._split(split), recipe)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        sha = weights_sha256(state)
        atomic_write_bytes(weights, buffer.getvalue())
        info = {"sha256": sha, "split": split, "train_loss_init": before, "train_loss_trained": after,
                "recipe": dataclasses.asdict(recipe), "model": config.model, "dataset": config.dataset}  # fmt: skip
        atomic_write_json(meta, info)
        ckpt = Checkpoint(weights, sha, split, before, after)
    _MEMO[key] = ckpt
    return ckpt


def victim_checkpoint(config: TrialConfig) -> Checkpoint | None:
    """The trial's trained state (trained and cached on first use), or ``None`` at ``model_state: init``."""
    if parse_model_state(config.model_state) is None:
        return None
    from dglbench.modules import initialized_model

    return trained_checkpoint(config, lambda classes, shape: initialized_model(config, classes, shape))


def load_trained_state(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Load ``checkpoint`` into ``model`` (in place), checking the weights' hash against the cache's record."""
    try:
        state = torch.load(checkpoint.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files fail in many ways (pickle, zip, EOF)
        msg = f"cannot read the cached model state {checkpoint.path} ({exc}); delete it to retrain"
        raise DglbenchError(msg) from None
    if weights_sha256(state) != checkpoint.sha256:
        raise DglbenchError(f"the cached model state {checkpoint.path} does not match its hash; delete it to retrain")
    model.load_state_dict(state)


def describe_model_state(config: TrialConfig, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """The model state for a record: ``{"state": "init"}`` or the recipe with the weights' hash and losses."""
    if checkpoint is None:
        return {"state": "init"}
    recipe = parse_model_state(config.model_state)
    assert recipe is not None
    return {
        "state": "trained", **dataclasses.asdict(recipe), "key": checkpoint.path.stem, "sha256": checkpoint.sha256,
        "split": checkpoint.split,
        "train_loss_init": checkpoint.train_loss_init, "train_loss_trained": checkpoint.train_loss_trained,
    }  # fmt: skip
