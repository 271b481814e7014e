"""ImageNet-1k (ILSVRC2012) from an ImageFolder-style directory.

ImageNet cannot be downloaded automatically (its licence needs a login), so the files are placed by
hand: ``root/val/<wnid>/*.JPEG`` (and ``root/train/<wnid>/*.JPEG`` for :meth:`train_dataset`), one
folder per WordNet id such as ``n01440764``.
"""

from __future__ import annotations

import os

from dglbench.datamodules.base import VictimDataModule
from dglbench.errors import ConfigError, DataNotFoundError
from timm.data import ImageNetInfo
from torch.utils.data import Dataset
from torchvision import datasets, transforms

_HOW_TO_GET = (
    "download ILSVRC2012_img_val.tar from https://image-net.org (login required) and sort its images into "
    "one folder per WordNet id (e.g. with valprep.sh); ImageNet cannot be fetched with download=True"
)


class ImageNetDataModule(VictimDataModule):
    """ImageNet-1k validation images: 50000, 1000 classes, Resize(256) + CenterCrop(224), 3×224×224.

    Labels are the standard 1000-class indices: a folder's WordNet id is looked up in the sorted list of
    the 1000 ILSVRC2012 synsets (``timm.data.ImageNetInfo``), so a directory holding only some classes
    still gets the labels a pretrained classifier expects. Split ``"test"`` (the default) and ``"val"`` both
    read ``root/val``, the standard evaluation set; ``"train"`` reads ``root/train``. With ``image_size=s``
    the preprocessing is Resize(round(s / 0.875)) + CenterCrop(s).

    Example:
        >>> dm = ImageNetDataModule(root="/datasets/imagenet")
        >>> dm.image_shape, dm.mean
        ((3, 224, 224), (0.485, 0.456, 0.406))
    """

    name = "imagenet"
    num_classes = 1000
    channels = 3
    default_image_size = 224
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    splits = ("train", "val", "test")

    def _folder(self, split: str) -> str:
        return os.path.join(os.path.abspath(self.root), "train" if split == "train" else "val")

    def _missing(self, split: str) -> DataNotFoundError:
        return DataNotFoundError(
            f"imagenet {split} images not found: expected {self._folder(split)}/<wnid>/*.JPEG; {_HOW_TO_GET}"
        )

    def prepare_data(self) -> None:
        """Nothing to download; with ``download=True`` a missing folder is reported here, once."""
        if self.download and not os.path.isdir(self._folder(self.split)):
            raise self._missing(self.split)

    def _load_split(self, split: str) -> Dataset:
        folder = self._folder(split)
        if not os.path.isdir(folder):
            raise self._missing(split)
        preprocess = transforms.Compose(
            [
                transforms.Resize(round(self.image_size / 0.875)),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
            ]
        )
        try:
            classes, _ = datasets.folder.find_classes(folder)
        except FileNotFoundError:  # no class folders
            raise self._missing(split) from None
        standard = {wnid: i for i, wnid in enumerate(ImageNetInfo("imagenet-1k").label_names())}
        unknown = [c for c in classes if c not in standard]
        if unknown:
            raise ConfigError(
                f"imagenet: folder {os.path.join(folder, unknown[0])} is not an ILSVRC2012 WordNet id "
                "(e.g. n01440764); name class folders by WordNet id"
            )
        labels = [standard[c] for c in classes]  # ImageFolder's index (sorted folders) -> standard index
        try:
            return datasets.ImageFolder(folder, transform=preprocess, target_transform=labels.__getitem__)
        except FileNotFoundError:  # class folders without images
            raise self._missing(split) from None
