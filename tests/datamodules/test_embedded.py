"""The embedded datasets against their sources (scikit-learn, scikit-image) and numpy statistics."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from dglbench.datamodules import DigitsDataModule, FacesDataModule, NaturalDataModule, stratified_split
from dglbench.datamodules.embedded import PHOTOGRAPHS
from sklearn.datasets import load_digits

EMBEDDED = [DigitsDataModule, FacesDataModule, NaturalDataModule]


def photographs() -> list[np.ndarray]:
    photos = [getattr(skimage.data, name)() for name in PHOTOGRAPHS]
    return [p[0] if isinstance(p, tuple) else p for p in photos]


def test_stratified_split_partitions_each_class():
    labels = torch.tensor([0] * 11 + [1] * 5 + [2] * 20)
    parts = stratified_split(labels)
    train, test = parts["train"].tolist(), parts["test"].tolist()
    assert sorted(train + test) == list(range(36)) and not set(train) & set(test)
    assert torch.bincount(labels[parts["test"]]).tolist() == [2, 1, 4]
    assert torch.equal(stratified_split(labels)["test"], parts["test"])


@pytest.mark.parametrize("cls,size,classes,channels", [(DigitsDataModule, 8, 10, 1), (FacesDataModule, 32, 2, 1),
                                                       (NaturalDataModule, 32, 6, 3)])  # fmt: skip
def test_shapes_and_classes(cls, size, classes, channels):
    dm = cls(num_victims=3, images_per_victim=2)
    assert dm.image_shape == (channels, size, size) and dm.num_classes == classes
    victim = dm.victim(2)
    assert victim["images"].shape == (2, channels, size, size) and victim["images"].dtype == torch.float32
    assert victim["labels"].min() >= 0 and victim["labels"].max() < classes
    pixels = dm.denormalize(victim["images"])
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


@pytest.mark.parametrize("cls", EMBEDDED)
def test_split_sizes_and_train_statistics(cls):
    images, labels = cls.load_all()
    train, test = cls().train_dataset(), cls().test_dataset()
    assert len(train) + len(test) == len(labels)
    assert abs(len(test) - 0.2 * len(labels)) <= cls.num_classes
    train_pixels = images[stratified_split(labels)["train"]].numpy().astype(np.float64)
    np.testing.assert_allclose(cls.mean, train_pixels.mean(axis=(0, 2, 3)), atol=6e-5)
    np.testing.assert_allclose(cls.std, train_pixels.std(axis=(0, 2, 3)), atol=6e-5)


def test_digits_source():
    images, labels = DigitsDataModule.load_all()
    bunch = load_digits()
    np.testing.assert_allclose(images[:, 0].numpy(), bunch.images / 16.0, atol=1e-7)
    assert labels.tolist() == bunch.target.tolist()


def test_digits_resize():
    small, large = DigitsDataModule(num_victims=2), DigitsDataModule(num_victims=2, image_size=16)
    a, b = small.victim(0), large.victim(0)
    assert b["images"].shape == (1, 1, 16, 16)
    assert torch.equal(a["indices"], b["indices"])
    # bilinear upsampling keeps the mean pixel approximately
    assert abs(float(large.denormalize(b["images"]).mean() - small.denormalize(a["images"]).mean())) < 0.03


def test_faces_source_and_labels():
    dm = FacesDataModule(num_victims=6, images_per_victim=3, image_size=25)
    faces = skimage.data.lfw_subset()
    assert faces.shape == (200, 25, 25)
    test_index = stratified_split(torch.tensor([0] * 100 + [1] * 100))["test"].numpy()
    for j in dm.victim_ids():
        victim = dm.victim(j)
        rows = test_index[victim["indices"].numpy()]
        np.testing.assert_allclose(dm.denormalize(victim["images"])[:, 0].numpy(), faces[rows], atol=1e-5)
        assert victim["labels"].tolist() == (rows >= 100).astype(int).tolist()


def test_natural_patches_are_grid_cells_of_the_photographs():
    photos = photographs()
    cells = [(p.shape[0] // 32) * (p.shape[1] // 32) for p in photos]
    images, labels = NaturalDataModule.load_all()
    assert len(labels) == sum(cells) and torch.bincount(labels).tolist() == cells
    dm = NaturalDataModule(num_victims=5, images_per_victim=2, seed=11)
    test_index = stratified_split(labels)["test"].numpy()
    offsets = np.cumsum([0, *cells])
    for j in dm.victim_ids():
        victim = dm.victim(j)
        for image, label, i in zip(dm.denormalize(victim["images"]), victim["labels"], victim["indices"], strict=True):
            photo_id = int(np.searchsorted(offsets, test_index[i], side="right") - 1)
            cell = test_index[i] - offsets[photo_id]
            cols = photos[photo_id].shape[1] // 32
            r, c = divmod(int(cell), cols)
            expected = photos[photo_id][32 * r : 32 * r + 32, 32 * c : 32 * c + 32, :3].transpose(2, 0, 1) / 255.0
            assert int(label) == photo_id
            np.testing.assert_allclose(image.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("cls", EMBEDDED)
def test_mean_image_matches_numpy(cls):
    dm = cls(split="train")
    images, labels = cls.load_all()
    split = images[stratified_split(labels)["train"]].numpy().astype(np.float64)
    if split.shape[-1] == dm.image_size:
        mean = np.asarray(dm.mean).reshape(-1, 1, 1)
        std = np.asarray(dm.std).reshape(-1, 1, 1)
        np.testing.assert_allclose(dm.mean_image().numpy(), (split.mean(0) - mean) / std, atol=1e-5)
    else:  # resized: the mean image has the target shape and the same overall mean
        assert dm.mean_image().shape == dm.image_shape
        assert abs(float(dm.denormalize(dm.mean_image()).mean()) - split.mean()) < 0.01
