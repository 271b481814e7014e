"""Real image data that ships inside installed packages: nothing to download, works offline.

Three small datasets, each split once into train (80 %) and test (20 %) by :func:`stratified_split`
(per class, seed 0; fixed, independent of the victim ``seed``):

- ``digits``: scikit-learn's ``load_digits``, 1797 handwritten digits, 8×8 grey, 10 classes.
- ``faces``: scikit-image's ``lfw_subset``, 200 crops 25×25 grey: 100 faces then 100 non-faces, 2 classes.
- ``natural``: 32×32 RGB patches of six scikit-image sample photographs, class = photograph.

``mean``/``std`` are the per-channel mean and population standard deviation of the train split at
native resolution (before resizing), rounded to 4 decimals.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from dglbench.datamodules.base import VictimDataModule
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset


def stratified_split(labels: Tensor, test_fraction: float = 0.2, seed: int = 0) -> dict[str, Tensor]:
    """Split indices into train/test with ``round(test_fraction * n_c)`` test images per class ``c``.

    For each class in increasing order, its indices are shuffled by one ``torch.Generator`` seeded
    with ``seed`` and the first ``round(test_fraction * n_c)`` go to test. Returned indices are sorted.

    Example:
        >>> parts = stratified_split(torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1]))
        >>> len(parts["train"]), len(parts["test"])
        (8, 2)
    """
    generator = torch.Generator().manual_seed(seed)
    test = []
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        shuffled = members[torch.randperm(len(members), generator=generator)]
        test.append(shuffled[: round(test_fraction * len(members))])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    is_test[torch.cat(test)] = True
    return {"train": torch.nonzero(~is_test).flatten(), "test": torch.nonzero(is_test).flatten()}


def resize(images: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of ``[N,C,h,w]`` images to ``[N,C,size,size]``, kept in [0, 1]."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


class _EmbeddedDataModule(VictimDataModule):
    """An embedded dataset: all images in memory as a tensor, split by :func:`stratified_split`."""

    def _load_split(self, split: str) -> Dataset:
        images, labels = self.load_all()
        index = stratified_split(labels)[split]
        return TensorDataset(resize(images[index], self.image_size), labels[index])

    @classmethod
    def load_all(cls) -> tuple[Tensor, Tensor]:
        """All images, FloatTensor ``[N,C,h,w]`` in [0, 1] at native resolution, and labels ``[N]``."""
        raise NotImplementedError


@functools.cache
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)
    return images, torch.from_numpy(bunch.target).long()


class DigitsDataModule(_EmbeddedDataModule):
    """scikit-learn's handwritten digits: 1797 images, 1×8×8, values 0..16 scaled to [0, 1], 10 classes.

    Split (:func:`stratified_split`): 1438 train, 359 test. Train mean 0.3059, std 0.3765.
    ``image_size`` resizes bilinearly (8 by default; 16, 28 or 32 for larger models).

    Example:
        >>> dm = DigitsDataModule(num_victims=2, image_size=16)
        >>> dm.image_shape, dm.victim(1)["images"].shape
        ((1, 16, 16), torch.Size([1, 1, 16, 16]))
    """

    name = "digits"
    num_classes = 10
    channels = 1
    default_image_size = 8
    mean = (0.3059,)
    std = (0.3765,)

    @classmethod
    def load_all(cls) -> tuple[Tensor, Tensor]:
        return _digits()


@functools.cache
def _faces() -> tuple[Tensor, Tensor]:
    from skimage.data import lfw_subset

    images = torch.from_numpy(lfw_subset()).float().unsqueeze(1)  # float64 in [0, 1], (200, 25, 25)
    labels = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    return images, labels


class FacesDataModule(_EmbeddedDataModule):
    """scikit-image's LFW subset: 200 grey crops 25×25 in [0, 1]; class 0 = face (first 100), 1 = non-face.

    Split (:func:`stratified_split`): 160 train, 40 test (20 per class). Train mean 0.3661, std 0.2674.
    Resized bilinearly to ``image_size`` (32 by default).

    Example:
        >>> dm = FacesDataModule(num_victims=2)
        >>> dm.image_shape, dm.num_classes
        ((1, 32, 32), 2)
    """

    name = "faces"
    num_classes = 2
    channels = 1
    default_image_size = 32
    mean = (0.3661,)
    std = (0.2674,)

    @classmethod
    def load_all(cls) -> tuple[Tensor, Tensor]:
        return _faces()


PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle")
"""The scikit-image sample photographs (bundled with the package) that ``natural`` cuts into patches."""

PATCH = 32


@functools.cache
def _natural() -> tuple[Tensor, Tensor]:
    import skimage.data

    patches, labels = [], []
    for label, photo_name in enumerate(PHOTOGRAPHS):
        photo = getattr(skimage.data, photo_name)()
        photo = photo[0] if isinstance(photo, tuple) else photo  # stereo_motorcycle: (left, right, disparity)
        rows, cols = photo.shape[0] // PATCH, photo.shape[1] // PATCH
        grid = photo[: rows * PATCH, : cols * PATCH, :3].reshape(rows, PATCH, cols, PATCH, 3)
        patches.append(grid.transpose(0, 2, 4, 1, 3).reshape(rows * cols, 3, PATCH, PATCH))
        labels.append(np.full(rows * cols, label))
    images = torch.from_numpy(np.concatenate(patches)).float() / 255.0
    return images, torch.from_numpy(np.concatenate(labels)).long()


class NaturalDataModule(_EmbeddedDataModule):
    """RGB 32×32 patches of six natural photographs bundled with scikit-image; class = photograph.

    Each photograph in :data:`PHOTOGRAPHS` (astronaut, chelsea, coffee, rocket, immunohistochemistry,
    stereo_motorcycle's left view) is cut on the grid of non-overlapping 32×32 patches starting at its
    top-left corner (row-major, remainders dropped): 1459 patches, 126 to 345 per photograph.
    Split (:func:`stratified_split`): 1168 train, 291 test. Train mean (0.5145, 0.4044, 0.3670),
    std (0.2720, 0.2472, 0.2492). ``image_size`` resizes bilinearly (32 by default).

    Example:
        >>> dm = NaturalDataModule(num_victims=2)
        >>> dm.image_shape, dm.num_classes
        ((3, 32, 32), 6)
    """

    name = "natural"
    num_classes = len(PHOTOGRAPHS)
    channels = 3
    default_image_size = PATCH
    mean = (0.5145, 0.4044, 0.3670)
    std = (0.2720, 0.2472, 0.2492)

    @classmethod
    def load_all(cls) -> tuple[Tensor, Tensor]:
        return _natural()
