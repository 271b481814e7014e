"""The fixed victim protocol shared by every dataset.

A *victim* is one client's private batch: ``images_per_victim`` images of one split, drawn by a
documented, seeded rule, so that every attack, estimate and defense in the benchmark sees the same
private data. :class:`VictimDataModule` implements that rule once; a dataset only says how to load a
split (:meth:`VictimDataModule._load_split`) and what its constants are.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from dglbench.errors import ConfigError, ShapeError
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

#: The most values one image may have after resizing (C·H·W): 2²² float32 values are 16 MiB per image, i.e.
#: 2048×2048 grey or 1182×1182 RGB. Every stage keeps several copies per image (the batch, the attack's
#: reconstruction, I2F's solver vectors, the model's activations), and embedded datasets resize a whole
#: split at once, so a larger request would exhaust memory before it could fail cleanly.
MAX_IMAGE_VALUES = 2**22


def owned_by_rank(victim_id: Tensor | int, rank: int, world_size: int) -> Tensor:
    """Whether ``rank`` owns ``victim_id`` under Lightning's sharding of the victim dataloaders.

    Lightning shards ``predict_dataloader`` with an unrepeated sampler and ``test_dataloader`` with a
    ``DistributedSampler`` that pads the last round with repeats of the first victims. In both, victim ``j``
    genuinely belongs to rank ``j % world_size``; a padding copy lands on another rank. Keeping only owned
    victims writes every victim's record exactly once.

    Args:
        victim_id: victim ids, e.g. ``batch["victim_id"]`` (shape ``[V]``) or one int.
        rank: the process's global rank (``trainer.global_rank``).
        world_size: the number of processes (``trainer.world_size``).

    Returns:
        A bool tensor of the same shape as ``victim_id``.

    Example:
        >>> owned_by_rank(torch.tensor([0, 1, 2, 3, 0]), rank=0, world_size=2).tolist()
        [True, False, True, False, True]
    """
    return torch.as_tensor(victim_id) % world_size == rank


class _Normalized(Dataset):
    """(normalized image [C,H,W], label) over a split whose items are (image in [0, 1], label)."""

    def __init__(self, split: Dataset, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.split = split
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.split)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.split[index]
        return (image.float() - self.mean) / self.std, int(label)


class VictimDataset(Dataset):
    """Item ``j`` is victim ``j``: ``{"images": [B,C,H,W], "labels": [B], "victim_id": j, "indices": [B]}``.

    Args:
        split: a dataset of (normalized image [C,H,W], label).
        indices: LongTensor ``[num_victims, B]``; row ``j`` holds victim ``j``'s indices into ``split``.
    """

    def __init__(self, split: Dataset, indices: Tensor) -> None:
        self.split = split
        self.indices = indices

    def __len__(self) -> int:
        return self.indices.shape[0]

    def __getitem__(self, j: int) -> dict[str, Any]:
        if not 0 <= j < len(self):
            raise IndexError(f"victim {j} out of range [0, {len(self)})")
        items = [self.split[int(i)] for i in self.indices[j]]
        return {
            "images": torch.stack([image for image, _ in items]),
            "labels": torch.tensor([label for _, label in items], dtype=torch.long),
            "victim_id": j,
            "indices": self.indices[j].clone(),
        }


class VictimDataModule(LightningDataModule):
    """Victims of a gradient-leakage attack, drawn from one split by a fixed, seeded protocol.

    Protocol (the same for every dataset):

    1. The split (``split``, default ``"test"``) is loaded, images scaled to [0, 1], resized to
       ``image_size`` if given, then normalized with the dataset's per-channel ``mean`` and ``std``.
    2. ``perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))``.
    3. Victim ``j`` (``0 <= j < num_victims``) is the batch ``perm[j*B:(j+1)*B]``, ``B = images_per_victim``.
       Victims are disjoint; raising ``num_victims`` adds victims and never changes existing ones.

    A victim is a dict ``{"images": [B,C,H,W] float, "labels": [B] long, "victim_id": int, "indices": [B] long}``
    (``indices`` index the split). ``test_dataloader`` and ``predict_dataloader`` yield
    ``victims_per_step`` victims per step, stacked by the default collate to ``images [V,B,C,H,W]``,
    ``labels [V,B]``, ``victim_id [V]``, ``indices [V,B]``, in victim order (``shuffle=False``, no ``drop_last``).

    Several processes (DDP): keep Lightning's default ``use_distributed_sampler=True`` and let it shard;
    do not shard yourself. Victim ``j`` goes to rank ``j % world_size`` in both loops.

    - ``trainer.predict`` (recommended for per-victim records): Lightning's unrepeated sampler gives every
      victim to exactly one rank; ranks may run one step more or fewer, so ``predict_step`` must not call
      collectives. Needs ``num_victims >= world_size``.
    - ``trainer.test``: Lightning's ``DistributedSampler`` pads the last round with repeats of victims
      ``0, 1, ...`` so all ranks run equally many steps; drop the copies with
      ``owned_by_rank(batch["victim_id"], trainer.global_rank, trainer.world_size)`` before writing records.

    Subclasses set the class constants and implement :meth:`_load_split`.

    Args:
        num_victims: number of victims.
        images_per_victim: images in one victim's private batch (B).
        victims_per_step: victims per dataloader step (V), the DataLoader's ``batch_size``.
        seed: seed of the victim permutation.
        split: split the victims are drawn from (one of ``splits``).
        image_size: side of the square images after resizing; None keeps ``default_image_size``.
        root: folder of the dataset files (datasets read from disk).
        download: download missing files in ``prepare_data`` (datasets that can be downloaded).
        num_workers: DataLoader worker processes.

    Example:
        >>> from dglbench.datamodules import DigitsDataModule
        >>> dm = DigitsDataModule(num_victims=4, images_per_victim=2, victims_per_step=2)
        >>> dm.setup("test")
        >>> batch = next(iter(dm.test_dataloader()))
        >>> tuple(batch["images"].shape), batch["victim_id"].tolist()
        ((2, 2, 1, 8, 8), [0, 1])
    """

    name: ClassVar[str] = ""
    num_classes: ClassVar[int] = 0
    channels: ClassVar[int] = 0
    default_image_size: ClassVar[int] = 0
    mean: ClassVar[tuple[float, ...]] = ()
    std: ClassVar[tuple[float, ...]] = ()
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(
        self,
        num_victims: int = 8,
        images_per_victim: int = 1,
        victims_per_step: int = 1,
        seed: int = 0,
        split: str = "test",
        image_size: int | None = None,
        root: str = "data",
        download: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for arg, value, low in (
            ("num_victims", num_victims, 1),
            ("images_per_victim", images_per_victim, 1),
            ("victims_per_step", victims_per_step, 1),
            ("num_workers", num_workers, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{self.name}: {arg} must be an integer >= {low}, got {value!r}")
        if split not in self.splits:
            raise ConfigError(f"{self.name}: unknown split {split!r}; choose one of {', '.join(self.splits)}")
        if image_size is not None and (
            not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1
        ):
            raise ConfigError(f"{self.name}: image_size must be a positive integer or None, got {image_size!r}")
        side = image_size or self.default_image_size
        if self.channels * side * side > MAX_IMAGE_VALUES:
            largest = int((MAX_IMAGE_VALUES / max(self.channels, 1)) ** 0.5)
            need = 4 * self.channels * side * side
            raise ConfigError(
                f"{self.name}: image_size={side} makes one image {self.channels}x{side}x{side} "
                f"({need / 2**30:.3g} GiB as float32), over the limit of {MAX_IMAGE_VALUES / 2**20:.0f}M values "
                f"per image; use image_size <= {largest}"
            )
        self.save_hyperparameters()
        self.num_victims = num_victims
        self.images_per_victim = images_per_victim
        self.victims_per_step = victims_per_step
        self.seed = seed
        self.split = split
        self.image_size = image_size or self.default_image_size
        self.root = root
        self.download = download
        self.num_workers = num_workers
        self._splits: dict[str, Dataset] = {}
        self._victims: VictimDataset | None = None
        self._mean_image: Tensor | None = None

    # --- what a dataset provides -------------------------------------------------------------------

    def _load_split(self, split: str) -> Dataset:
        """A dataset of (image FloatTensor [C,H,W] in [0, 1] at ``image_shape``, int label)."""
        raise NotImplementedError

    # --- constants ---------------------------------------------------------------------------------

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image after resizing."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def protocol(self) -> dict[str, Any]:
        """The settings that identify the victims, for records: same protocol, same victims."""
        return {
            "dataset": self.name,
            "split": self.split,
            "seed": self.seed,
            "num_victims": self.num_victims,
            "images_per_victim": self.images_per_victim,
            "image_size": self.image_size,
        }

    def normalize(self, x: Tensor) -> Tensor:
        """Map images in [0, 1] with shape ``[..., C, H, W]`` to the normalized input space."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: normalized ``[..., C, H, W]`` back to pixel space (not clamped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ShapeError(f"{self.name}: expected images [..., {self.channels}, H, W], got {tuple(x.shape)}")
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(-1, 1, 1)
        return mean, std

    # --- Lightning hooks ---------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download missing files when ``download=True``; holds no state (runs on one process per node)."""

    def setup(self, stage: str | None = None) -> None:
        """Load the victim split and draw the victims; runs on every process, idempotent."""
        if self._victims is not None:
            return
        split = self._split(self.split)
        n, b = len(split), self.images_per_victim  # type: ignore[arg-type]
        if self.num_victims * b > n:
            raise ConfigError(
                f"{self.name}: num_victims * images_per_victim = {self.num_victims} * {b} exceeds the "
                f"{n} images of split {self.split!r}; lower one of them"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        self._victims = VictimDataset(split, perm[: self.num_victims * b].view(self.num_victims, b))

    def test_dataloader(self) -> DataLoader:
        """Victims in order, ``victims_per_step`` per step (see the class docstring for DDP)."""
        return self._victim_loader()

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`test_dataloader`; under DDP Lightning shards it without repeats."""
        return self._victim_loader()

    def _victim_loader(self) -> DataLoader:
        victims = self.victims
        world = getattr(self.trainer, "world_size", 1) if self.trainer is not None else 1
        if world > len(victims):
            raise ConfigError(f"{self.name}: num_victims={len(victims)} < {world} processes; raise num_victims")
        return DataLoader(
            victims, batch_size=self.victims_per_step, shuffle=False, drop_last=False, num_workers=self.num_workers
        )

    # --- victims and splits ------------------------------------------------------------------------

    @property
    def victims(self) -> VictimDataset:
        """The victim dataset (item ``j`` is victim ``j``); sets up on first use."""
        if self._victims is None:
            self.setup()
        assert self._victims is not None
        return self._victims

    def victim(self, j: int) -> dict[str, Any]:
        """Victim ``j`` as a dict (see the class docstring)."""
        if not 0 <= j < self.num_victims:
            raise ConfigError(f"{self.name}: victim {j} does not exist; ids are 0..{self.num_victims - 1}")
        return self.victims[j]

    def victim_ids(self) -> list[int]:
        """All victim ids, ``[0, ..., num_victims - 1]``."""
        return list(range(self.num_victims))

    def train_dataset(self) -> Dataset:
        """(normalized image [C,H,W], label) over the whole train split, e.g. for FedSGD utility rounds."""
        return self._split("train")

    def test_dataset(self) -> Dataset:
        """(normalized image [C,H,W], label) over the whole test split."""
        return self._split("test")

    def mean_image(self) -> Tensor:
        """Mean of the victim split's normalized images, ``[C,H,W]``: the reconstruction a blind attacker can make."""
        if self._mean_image is None:
            split = self._split(self.split)
            loader = DataLoader(split, batch_size=256, num_workers=self.num_workers)
            total = torch.zeros(self.image_shape, dtype=torch.float64)
            for images, _ in loader:
                total += images.double().sum(0)
            self._mean_image = (total / len(split)).float()  # type: ignore[arg-type]
        return self._mean_image.clone()

    def _split(self, split: str) -> Dataset:
        if split not in self._splits:
            self._splits[split] = _Normalized(self._load_split(split), self.mean, self.std)
        return self._splits[split]
