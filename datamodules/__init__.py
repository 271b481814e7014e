"""LightningDataModules that serve the benchmark's victims, by dataset name.

Embedded (offline, nothing to download): ``digits``, ``faces``, ``natural``.
From disk through torchvision: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``imagenet``.
Every one follows the victim protocol of :class:`VictimDataModule`.

Example:
    >>> from dglbench.datamodules import DATAMODULES, create_datamodule
    >>> DATAMODULES.list("*mnist")
    ['fashion_mnist', 'mnist']
    >>> dm = create_datamodule("digits", num_victims=3, seed=1)
    >>> dm.victim_ids()
    [0, 1, 2]
"""

from __future__ import annotations

from typing import Any

from dglbench.datamodules.base import VictimDataModule, VictimDataset, owned_by_rank
from dglbench.datamodules.embedded import DigitsDataModule, FacesDataModule, NaturalDataModule, stratified_split
from dglbench.datamodules.imagenet import ImageNetDataModule
from dglbench.datamodules.standard import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from dglbench.registry import Registry

DATAMODULES: Registry[type[VictimDataModule]] = Registry("dataset")
for _cls in (
    DigitsDataModule,
    FacesDataModule,
    NaturalDataModule,
    MNISTDataModule,
    FashionMNISTDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    SVHNDataModule,
    ImageNetDataModule,
):
    DATAMODULES.register(_cls.name)(_cls)


def create_datamodule(name: str, **kwargs: Any) -> VictimDataModule:
    """The DataModule registered as ``name``, built with ``kwargs`` (the :class:`VictimDataModule` arguments).

    An unknown name raises :class:`~dglbench.errors.UnknownNameError`; a bad argument a ``ConfigError``.
    """
    return DATAMODULES.create(name, **kwargs)


__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DigitsDataModule",
    "FacesDataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "MNISTDataModule",
    "NaturalDataModule",
    "SVHNDataModule",
    "VictimDataModule",
    "VictimDataset",
    "create_datamodule",
    "owned_by_rank",
    "stratified_split",
]
