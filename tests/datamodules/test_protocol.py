"""The victim protocol (on the embedded digits, the fastest dataset): determinism, disjointness,
collation, normalization, argument checks, DDP sharding and the Lightning/jsonargparse wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dglbench.datamodules import DATAMODULES, DigitsDataModule, create_datamodule, owned_by_rank, stratified_split
from dglbench.errors import ConfigError, ShapeError, UnknownNameError
from sklearn.datasets import load_digits
from torch.utils.data import DistributedSampler


def victim_indices(dm: DigitsDataModule) -> torch.Tensor:
    return torch.stack([dm.victim(j)["indices"] for j in dm.victim_ids()])


def test_victims_follow_the_documented_formula():
    dm = DigitsDataModule(num_victims=5, images_per_victim=3, seed=7)
    n = len(dm.test_dataset())
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(7))
    for j in range(5):
        assert dm.victim(j)["indices"].tolist() == perm[3 * j : 3 * j + 3].tolist()
        assert dm.victim(j)["victim_id"] == j


def test_same_seed_same_victims_other_seed_other_victims():
    a = victim_indices(DigitsDataModule(num_victims=6, images_per_victim=2, seed=3))
    b = victim_indices(DigitsDataModule(num_victims=6, images_per_victim=2, seed=3))
    c = victim_indices(DigitsDataModule(num_victims=6, images_per_victim=2, seed=4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_victims_are_disjoint_and_nested():
    few = victim_indices(DigitsDataModule(num_victims=4, images_per_victim=5))
    many = victim_indices(DigitsDataModule(num_victims=40, images_per_victim=5))
    assert len(set(many.flatten().tolist())) == many.numel()
    assert torch.equal(many[:4], few)


def test_victim_images_and_labels_are_the_sklearn_digits():
    dm = DigitsDataModule(num_victims=3, images_per_victim=4, seed=2)
    bunch = load_digits()
    test_index = stratified_split(torch.from_numpy(bunch.target))["test"].numpy()
    for j in dm.victim_ids():
        victim = dm.victim(j)
        rows = test_index[victim["indices"].numpy()]
        expected = (bunch.images[rows] / 16.0 - dm.mean[0]) / dm.std[0]
        np.testing.assert_allclose(victim["images"][:, 0].numpy(), expected, atol=1e-6)
        assert victim["labels"].tolist() == bunch.target[rows].tolist()


def test_dataloader_stacks_victims_in_order_without_loss():
    dm = DigitsDataModule(num_victims=5, images_per_victim=2, victims_per_step=2)
    dm.setup("test")
    batches = list(dm.test_dataloader())
    assert tuple(batches[0]["images"].shape) == (2, 2, 1, 8, 8)
    assert tuple(batches[0]["labels"].shape) == (2, 2) and batches[0]["labels"].dtype == torch.long
    assert tuple(batches[0]["indices"].shape) == (2, 2)
    assert tuple(batches[-1]["images"].shape) == (1, 2, 1, 8, 8)  # no drop_last
    assert torch.cat([b["victim_id"] for b in batches]).tolist() == [0, 1, 2, 3, 4]
    predicted = next(iter(dm.predict_dataloader()))
    assert torch.equal(predicted["images"][1], dm.victim(1)["images"])


def test_normalize_and_denormalize_are_inverse_affine_maps():
    dm = DigitsDataModule()
    x = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64)
    np.testing.assert_allclose(dm.normalize(x).numpy(), (x.numpy() - dm.mean[0]) / dm.std[0])
    torch.testing.assert_close(dm.denormalize(dm.normalize(x)), x)
    torch.testing.assert_close(dm.normalize(dm.denormalize(x)), x)
    with pytest.raises(ShapeError):
        dm.normalize(torch.rand(3, 8, 8))


def test_mean_image_matches_numpy():
    dm = DigitsDataModule(image_size=8)
    bunch = load_digits()
    test_index = stratified_split(torch.from_numpy(bunch.target))["test"].numpy()
    expected = (bunch.images[test_index] / 16.0).mean(0)
    expected = (expected - dm.mean[0]) / dm.std[0]
    np.testing.assert_allclose(dm.mean_image()[0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_victims": 0}, {"images_per_victim": -1}, {"victims_per_step": 0}, {"split": "valid"}, {"image_size": 0}],
)
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError) as info:
        DigitsDataModule(**kwargs)
    assert "\n" not in str(info.value)


def test_too_many_victims_for_the_split():
    dm = DigitsDataModule(num_victims=200, images_per_victim=2)
    with pytest.raises(ConfigError, match="exceeds"):
        dm.setup("test")
    with pytest.raises(ConfigError, match="does not exist"):
        DigitsDataModule(num_victims=2).victim(2)


def test_registry():
    assert set(DATAMODULES.list()) == {
        "digits", "faces", "natural", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagenet"
    }  # fmt: skip
    for name in DATAMODULES:
        assert DATAMODULES.get(name).name == name
    assert isinstance(create_datamodule("digits", num_victims=2), DigitsDataModule)
    with pytest.raises(UnknownNameError, match="digits"):
        create_datamodule("digit")
    with pytest.raises(ConfigError):
        create_datamodule("digits", victims=2)


@pytest.mark.parametrize("num_victims,world_size", [(7, 2), (8, 3), (3, 3)])
def test_lightning_samplers_with_owned_by_rank_give_every_victim_once(num_victims, world_size):
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    victims = DigitsDataModule(num_victims=num_victims).victims
    test_seen, predict_seen = [], []
    for rank in range(world_size):
        padded = list(DistributedSampler(victims, num_replicas=world_size, rank=rank, shuffle=False))
        ids = torch.tensor([victims[i]["victim_id"] for i in padded])
        test_seen += ids[owned_by_rank(ids, rank, world_size)].tolist()
        unrepeated = list(UnrepeatedDistributedSampler(victims, num_replicas=world_size, rank=rank, shuffle=False))
        assert owned_by_rank(torch.tensor(unrepeated), rank, world_size).all()
        predict_seen += unrepeated
    assert sorted(test_seen) == list(range(num_victims))
    assert sorted(predict_seen) == list(range(num_victims))


def test_trainer_predict_and_jsonargparse_signature():
    import lightning.pytorch as pl
    from jsonargparse import ArgumentParser

    class Echo(pl.LightningModule):
        def predict_step(self, batch, batch_idx):
            return batch["victim_id"]

    dm = DigitsDataModule(num_victims=3, victims_per_step=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    assert torch.cat(trainer.predict(Echo(), datamodule=dm)).tolist() == [0, 1, 2]

    parser = ArgumentParser()
    parser.add_class_arguments(DigitsDataModule, "data")
    config = parser.parse_args(["--data.num_victims=3", "--data.image_size=16"])
    dm = DigitsDataModule(**config.data.as_dict())
    assert dm.num_victims == 3 and dm.image_shape == (1, 16, 16)
