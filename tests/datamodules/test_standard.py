"""The torchvision-backed datasets, read by torchvision's real loaders from tiny files written here in the
real on-disk formats: MNIST IDX, CIFAR python pickles, SVHN MATLAB .mat, an ImageFolder of PNGs.

CIFAR and SVHN: torchvision accepts a file only if its md5 equals the hard-coded md5 of the official
file, which no small file can match. The ``skip_md5`` fixture therefore replaces ``check_integrity``
inside ``torchvision.datasets.cifar`` and ``torchvision.datasets.svhn`` only, for one test at a time, by
torchvision's own check without an md5 (the file must exist). Everything else, the parsing included, is
torchvision's code. ``test_files_with_wrong_md5_are_reported`` shows the check is live without the fixture.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.cifar
import torchvision.datasets.svhn
from dglbench.datamodules import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from dglbench.errors import ConfigError, DataNotFoundError
from PIL import Image
from torchvision.datasets.utils import check_integrity

RNG = np.random.default_rng(0)


@pytest.fixture
def skip_md5(monkeypatch):
    def exists(fpath, md5=None):
        return check_integrity(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: two zero bytes, type 0x08 (uint8), number of dims, big-endian int32 dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int = 6, n_test: int = 10) -> dict[str, tuple]:
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = RNG.integers(0, 256, (n, 28, 28)), RNG.integers(0, 10, n)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels)
        data["train" if prefix == "train" else "test"] = (images[:, None] / 255.0, labels)
    return data


def write_cifar(root: Path, hundred: bool, n: int = 4) -> dict[str, tuple]:
    """Pickled dicts; "data" rows are 3072 uint8 values, the red, green then blue 32×32 planes."""
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key, classes = ("fine_labels", 100) if hundred else ("labels", 10)
    files = {"train": ["train"], "test": ["test"]} if hundred else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}  # fmt: skip
    data = {}
    for split, names in files.items():
        images, labels = [], []
        for name in names:
            rows, targets = RNG.integers(0, 256, (n, 3072)).astype(np.uint8), RNG.integers(0, classes, n).tolist()
            entry = {"data": rows, key: targets, "filenames": [f"{i}.png" for i in range(n)]}
            if hundred:
                entry["coarse_labels"] = [t // 5 for t in targets]
            (folder / name).write_bytes(pickle.dumps(entry))
            images.append(rows.reshape(n, 3, 32, 32))
            labels += targets
        data[split] = (np.concatenate(images) / 255.0, np.array(labels))
    meta_file, names_key = ("meta", "fine_label_names") if hundred else ("batches.meta", "label_names")
    (folder / meta_file).write_bytes(pickle.dumps({names_key: [f"c{i}" for i in range(classes)]}))
    return data


def write_svhn(root: Path, n: int = 8) -> dict[str, tuple]:
    """MATLAB files ``{split}_32x32.mat``: X uint8 [32, 32, 3, N], y [N, 1] with 10 standing for digit 0."""
    data = {}
    for split in ("train", "test"):
        x = RNG.integers(0, 256, (32, 32, 3, n)).astype(np.uint8)
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)
        y[0, 0] = 10
        root.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        data[split] = (x.transpose(3, 2, 0, 1) / 255.0, y[:, 0] % 10)
    return data


MNIST_FAMILY = [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]


@pytest.mark.parametrize("cls,folder", MNIST_FAMILY)
def test_mnist_family_reads_idx_files(tmp_path, cls, folder):
    data = write_mnist(tmp_path, folder)
    dm = cls(root=str(tmp_path), num_victims=5, images_per_victim=2)
    assert dm.image_shape == (1, 28, 28) and dm.num_classes == 10
    images, labels = data["test"]
    for j in dm.victim_ids():
        victim = dm.victim(j)
        rows = victim["indices"].numpy()
        np.testing.assert_allclose(dm.denormalize(victim["images"]).numpy(), images[rows], atol=1e-6)
        assert victim["labels"].tolist() == labels[rows].tolist()
    assert len(dm.train_dataset()) == 6 and len(dm.test_dataset()) == 10
    expected = (images.mean(0) - dm.mean[0]) / dm.std[0]
    np.testing.assert_allclose(dm.mean_image().numpy(), expected, atol=1e-5)


def test_mnist_resize_and_dataloader(tmp_path):
    write_mnist(tmp_path, "MNIST")
    dm = MNISTDataModule(root=str(tmp_path), num_victims=4, images_per_victim=2, victims_per_step=3, image_size=32)
    dm.prepare_data()
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert tuple(batch["images"].shape) == (3, 2, 1, 32, 32)
    assert tuple(batch["labels"].shape) == (3, 2) and batch["victim_id"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("cls,hundred", [(CIFAR10DataModule, False), (CIFAR100DataModule, True)])
def test_cifar_reads_pickled_batches(tmp_path, skip_md5, cls, hundred):
    data = write_cifar(tmp_path, hundred)
    dm = cls(root=str(tmp_path), num_victims=2, images_per_victim=2, seed=5)
    assert dm.image_shape == (3, 32, 32) and dm.num_classes == (100 if hundred else 10)
    images, labels = data["test"]
    for j in dm.victim_ids():
        victim = dm.victim(j)
        rows = victim["indices"].numpy()
        np.testing.assert_allclose(dm.denormalize(victim["images"]).numpy(), images[rows], atol=1e-6)
        assert victim["labels"].tolist() == labels[rows].tolist()
    train_images, train_labels = data["train"]
    image, label = dm.train_dataset()[len(train_labels) - 1]
    np.testing.assert_allclose(dm.denormalize(image).numpy(), train_images[-1], atol=1e-6)
    assert label == train_labels[-1]
    mean = np.asarray(dm.mean).reshape(3, 1, 1)
    std = np.asarray(dm.std).reshape(3, 1, 1)
    np.testing.assert_allclose(dm.mean_image().numpy(), (images.mean(0) - mean) / std, atol=1e-5)


def test_svhn_reads_mat_files_and_maps_label_10_to_0(tmp_path, skip_md5):
    data = write_svhn(tmp_path)
    dm = SVHNDataModule(root=str(tmp_path), num_victims=8, seed=1)
    images, labels = data["test"]
    victims = [dm.victim(j) for j in dm.victim_ids()]
    for victim in victims:
        row = int(victim["indices"][0])
        np.testing.assert_allclose(dm.denormalize(victim["images"][0]).numpy(), images[row], atol=1e-6)
        assert int(victim["labels"][0]) == labels[row]
    assert 0 in [int(v["labels"][0]) for v in victims]
    assert len(SVHNDataModule(root=str(tmp_path), split="train").train_dataset()) == 8


def test_files_with_wrong_md5_are_reported(tmp_path):
    write_cifar(tmp_path, hundred=False)
    with pytest.raises(DataNotFoundError, match="corrupted"):
        CIFAR10DataModule(root=str(tmp_path)).setup("test")


@pytest.mark.parametrize(
    "cls,expected",
    [
        (MNISTDataModule, "MNIST/raw"),
        (FashionMNISTDataModule, "FashionMNIST/raw"),
        (CIFAR10DataModule, "cifar-10-batches-py"),
        (CIFAR100DataModule, "cifar-100-python"),
        (SVHNDataModule, "test_32x32.mat"),
    ],
)
def test_missing_files_one_line(tmp_path, cls, expected):
    dm = cls(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("test")
    message = str(info.value)
    assert "\n" not in message and "download=True" in message
    assert str(tmp_path / "nowhere") in message and expected in message


def write_imagefolder(root: Path, colors: dict[str, tuple[int, int, int]], per_class: int = 2) -> None:
    for wnid, color in colors.items():
        (root / "val" / wnid).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + 8 * i, 30), color).save(root / "val" / wnid / f"ILSVRC2012_val_{i}.png")


def test_imagenet_folder_standard_labels_and_preprocessing(tmp_path):
    # n01440764 (tench) and n15075141 (toilet tissue) are the first and last of the 1000 sorted synsets
    colors = {"n01440764": (200, 30, 90), "n15075141": (10, 250, 128)}
    write_imagefolder(tmp_path, colors)
    dm = ImageNetDataModule(root=str(tmp_path), num_victims=4, image_size=32)
    assert dm.image_shape == (3, 32, 32) and dm.num_classes == 1000
    expected = {0: colors["n01440764"], 999: colors["n15075141"]}
    for j in dm.victim_ids():
        victim = dm.victim(j)
        label = int(victim["labels"][0])
        pixels = dm.denormalize(victim["images"][0])
        torch.testing.assert_close(pixels, torch.tensor(expected[label]).float().view(3, 1, 1).expand(3, 32, 32) / 255)
    assert sorted(int(dm.victim(j)["labels"][0]) for j in dm.victim_ids()) == [0, 0, 999, 999]
    assert ImageNetDataModule(root=str(tmp_path), split="val", num_victims=1).victim(0)["images"].shape == (
        1, 3, 224, 224)  # fmt: skip


def test_imagenet_missing_and_misnamed(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        ImageNetDataModule(root=str(tmp_path)).setup("test")
    assert "\n" not in str(info.value) and str(tmp_path / "val") in str(info.value)
    with pytest.raises(DataNotFoundError, match="download=True"):
        ImageNetDataModule(root=str(tmp_path), download=True).prepare_data()
    write_imagefolder(tmp_path, {"cats": (1, 2, 3)}, per_class=1)
    with pytest.raises(ConfigError, match="WordNet"):
        ImageNetDataModule(root=str(tmp_path), num_victims=1).setup("test")
