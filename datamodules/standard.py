"""The standard small-image datasets, read from disk by torchvision's own loaders.

Files live under ``root`` in torchvision's layout; ``download=True`` fetches missing ones in
``prepare_data``. Missing or corrupted files raise :class:`~dglbench.errors.DataNotFoundError` with one
line naming the expected path, where to get the files, and ``download=True``.

``mean``/``std`` are the usual per-channel train-split statistics (population std over all pixels).
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

from dglbench.datamodules.base import VictimDataModule
from dglbench.errors import DataNotFoundError
from torch.utils.data import Dataset
from torchvision import datasets, transforms


class _TorchvisionDataModule(VictimDataModule):
    """A dataset read by a torchvision class; images go through ToTensor and, if needed, Resize."""

    torchvision_class: ClassVar[type]
    archive_url: ClassVar[str] = ""

    def _torchvision_kwargs(self, split: str) -> dict[str, Any]:
        return {"train": split == "train"}

    def _expected(self, split: str) -> str:
        """Where the split's files must be, for the error message."""
        raise NotImplementedError

    def _how_to_get(self, split: str) -> str:
        return f"download {self.archive_url} and extract it into {os.path.abspath(self.root)}"

    def _transform(self) -> transforms.Compose:
        steps: list[Any] = [transforms.ToTensor()]
        if self.image_size != self.default_image_size:
            steps.append(transforms.Resize(self.image_size, antialias=True))
        return transforms.Compose(steps)

    def _open(self, split: str, download: bool, transform: Any = None) -> Dataset:
        try:
            return self.torchvision_class(
                self.root, download=download, transform=transform, **self._torchvision_kwargs(split)
            )
        except (RuntimeError, OSError) as exc:  # torchvision: RuntimeError("Dataset not found ..."); URLError
            if download:
                reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
                action = f"could not be downloaded ({reason})"
            elif isinstance(exc, RuntimeError) and "not found" in str(exc):
                action = "not found or corrupted"
            else:
                raise
            raise DataNotFoundError(
                f"{self.name} {split} split {action}: expected {self._expected(split)}; "
                f"pass download=True (needs internet), or {self._how_to_get(split)}"
            ) from None

    def prepare_data(self) -> None:
        """With ``download=True``, fetch the train split and the victim split (one process per node)."""
        if self.download:
            for split in dict.fromkeys(("train", self.split)):
                self._open(split, download=True)

    def _load_split(self, split: str) -> Dataset:
        return self._open(split, download=False, transform=self._transform())


class _MNISTFamily(_TorchvisionDataModule):
    channels = 1
    default_image_size = 28
    num_classes = 10

    def _expected(self, split: str) -> str:
        raw = os.path.join(os.path.abspath(self.root), self.torchvision_class.__name__, "raw")
        names = ", ".join(os.path.splitext(name)[0] for name, _ in self.torchvision_class.resources)
        return f"the uncompressed IDX files {names} in {raw}"

    def _how_to_get(self, split: str) -> str:
        raw = os.path.join(os.path.abspath(self.root), self.torchvision_class.__name__, "raw")
        return f"download the .gz files from {self.torchvision_class.mirrors[0]} and gunzip them into {raw}"

    def _open(self, split: str, download: bool, transform: Any = None) -> Dataset:
        raw = os.path.join(os.path.abspath(self.root), self.torchvision_class.__name__, "raw")
        files = [os.path.join(raw, os.path.splitext(name)[0]) for name, _ in self.torchvision_class.resources]
        if all(os.path.exists(f) for f in files):  # a missing file is the "not found" case below
            prefix = "train" if split == "train" else "t10k"
            images, labels = (os.path.join(raw, f"{prefix}-{kind}-ubyte") for kind in ("images-idx3", "labels-idx1"))
            n_images, n_labels = check_idx_file(images, self), check_idx_file(labels, self)
            if n_images != n_labels:
                raise DataNotFoundError(
                    f"{self.name}: {images} holds {n_images} images but {labels} {n_labels} labels; "
                    f"{self._how_to_get(split)}"
                )
        return super()._open(split, download, transform)


# IDX element types (http://yann.lecun.com/exdb/mnist/): type code -> bytes per element
_IDX_TYPES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def check_idx_file(path: str, dm: _MNISTFamily) -> int:
    """Check an uncompressed IDX file's header against its length; returns its first dimension (the item count).

    An empty, truncated or padded file (a download cut short, a failed gunzip) is one
    :class:`~dglbench.errors.DataNotFoundError` line naming the file, instead of a parser's traceback.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
        problem = ""
        if len(head) < 4:
            problem = f"is {'empty' if size == 0 else 'cut short'} ({size} bytes)"
        elif head[:2] != b"\x00\x00" or head[2] not in _IDX_TYPES or not 1 <= head[3] <= 4:
            problem = f"is not an IDX file (header {head.hex()}; a .gz file not yet gunzipped?)"
        else:
            dims_raw = fh.read(4 * head[3])
            if len(dims_raw) < 4 * head[3]:
                problem = f"is cut short ({size} bytes, inside its header)"
            else:
                dims = [int.from_bytes(dims_raw[4 * i : 4 * i + 4], "big") for i in range(head[3])]
                expected = 4 + 4 * head[3] + _IDX_TYPES[head[2]] * math.prod(dims)
                if size != expected:
                    problem = f"has {size} bytes where its header ({'x'.join(map(str, dims))}) says {expected}"
                    problem += " (cut short)" if size < expected else ""
                else:
                    return dims[0]
    raise DataNotFoundError(f"{dm.name}: {path} {problem}; delete it, then {dm._how_to_get('train')}")


class MNISTDataModule(_MNISTFamily):
    """MNIST handwritten digits: 60000 train / 10000 test, 1×28×28, 10 classes.

    Files: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision layout).

    Example:
        >>> dm = MNISTDataModule(root="data")
        >>> dm.image_shape, dm.mean, dm.std
        ((1, 28, 28), (0.1307,), (0.3081,))
    """

    name = "mnist"
    torchvision_class = datasets.MNIST
    mean = (0.1307,)
    std = (0.3081,)


class FashionMNISTDataModule(_MNISTFamily):
    """Fashion-MNIST clothing images: 60000 train / 10000 test, 1×28×28, 10 classes.

    Files: ``root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    Example:
        >>> FashionMNISTDataModule(image_size=32).image_shape
        (1, 32, 32)
    """

    name = "fashion_mnist"
    torchvision_class = datasets.FashionMNIST
    mean = (0.2860,)
    std = (0.3530,)


class CIFAR10DataModule(_TorchvisionDataModule):
    """CIFAR-10: 50000 train / 10000 test, 3×32×32, 10 classes.

    Files: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (python pickles);
    torchvision checks their md5 against the official archive.

    Example:
        >>> CIFAR10DataModule().num_classes
        10
    """

    name = "cifar10"
    torchvision_class = datasets.CIFAR10
    archive_url = datasets.CIFAR10.url
    channels = 3
    default_image_size = 32
    num_classes = 10
    mean = (0.4915, 0.4823, 0.4468)
    std = (0.2470, 0.2435, 0.2616)

    def _expected(self, split: str) -> str:
        folder = os.path.join(os.path.abspath(self.root), self.torchvision_class.base_folder)
        files = [name for name, _ in self.torchvision_class.train_list + self.torchvision_class.test_list]
        files.append(self.torchvision_class.meta["filename"])
        return f"{', '.join(files)} (official md5) in {folder}"


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels): 50000 train / 10000 test, 3×32×32, 100 classes.

    Files: ``root/cifar-100-python/{train, test, meta}``.

    Example:
        >>> CIFAR100DataModule().num_classes
        100
    """

    name = "cifar100"
    torchvision_class = datasets.CIFAR100
    archive_url = datasets.CIFAR100.url
    num_classes = 100
    mean = (0.5072, 0.4867, 0.4412)
    std = (0.2673, 0.2564, 0.2762)


class SVHNDataModule(_TorchvisionDataModule):
    """SVHN cropped digits: 73257 train / 26032 test / 531131 extra, 3×32×32, 10 classes (label 0 = digit 0).

    Files: ``root/{train,test,extra}_32x32.mat`` (MATLAB, read with scipy; the file's label 10 means 0).

    Example:
        >>> SVHNDataModule(split="extra").splits
        ('train', 'test', 'extra')
    """

    name = "svhn"
    torchvision_class = datasets.SVHN
    channels = 3
    default_image_size = 32
    num_classes = 10
    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)
    splits = ("train", "test", "extra")

    def _torchvision_kwargs(self, split: str) -> dict[str, Any]:
        return {"split": split}

    def _expected(self, split: str) -> str:
        return f"{os.path.join(os.path.abspath(self.root), self.torchvision_class.split_list[split][1])} (official md5)"

    def _how_to_get(self, split: str) -> str:
        return f"download {self.torchvision_class.split_list[split][0]} into {os.path.abspath(self.root)}"
