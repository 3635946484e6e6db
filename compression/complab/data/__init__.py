"""Datasets: the built-in digits, an ImageFolder directory, a CIFAR-10/100 "python version" directory.

`load_data(ref, ...)` turns a reference string into a `DataBundle` with train/val/test splits:
  digits            scikit-learn's handwritten digits (ships with the package; the demo data)
  imagefolder:DIR   DIR/train, DIR/val (and optional DIR/test) class folders, or one folder of
                    class folders split 60/20/20 with a fixed seed
  cifar10:DIR       CIFAR-10 "python version" batches (data_batch_1..5, test_batch)
  cifar100:DIR      CIFAR-100 "python version" (train, test)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from complab.errors import DataLoadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataBundle:
    """Train/validation/test splits plus what a model needs to read them."""

    ref: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] = field(default_factory=list)
    # fine-tuning augmentation: random shifts of up to this many pixels (the digits: 2, what the demo
    # models were trained with; other data is already at the model's input size and gets none)
    shift_pixels: int = 0

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise DataLoadError(f"unknown split {name!r}: use train, val or test")
        return getattr(self, name)

    def subset(self, name: str, size: int | None, seed: int = 0) -> Dataset:
        """The first `size` items of a seeded permutation of a split (the whole split when None)."""
        data = self.split(name)
        if size is None or size >= len(data):
            return data
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:size]
        return Subset(data, order.tolist())

    def loader(self, name: str, batch_size: int = 256, size: int | None = None, seed: int = 0) -> DataLoader:
        return DataLoader(self.subset(name, size, seed), batch_size=batch_size, shuffle=False)


def load_data(ref: str, input_size: int | None = None, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None, in_channels: int | None = None) -> DataBundle:
    """Build a DataBundle from a reference string (see the module docstring)."""
    kind, _, arg = ref.partition(":")
    if kind == "digits":
        from complab.data.digits import DIGITS_MEAN, DIGITS_SHIFT_PIXELS, DIGITS_STD, load_digits_split

        size = input_size or 28
        splits = load_digits_split(size)
        return DataBundle(
            ref="digits",
            train=TensorDataset(*splits["train"]),
            val=TensorDataset(*splits["val"]),
            test=TensorDataset(*splits["test"]),
            num_classes=10,
            input_shape=(1, size, size),
            mean=DIGITS_MEAN,
            std=DIGITS_STD,
            class_names=[str(i) for i in range(10)],
            shift_pixels=DIGITS_SHIFT_PIXELS,
        )
    if kind in ("imagefolder", "cifar10", "cifar100"):
        if not arg:
            raise DataLoadError(f"dataset reference {ref!r} has no folder: write {kind}:PATH")
        folder = Path(os.path.expanduser(arg))  # "~nobody": unchanged, not a RuntimeError
        if folder.exists() and not folder.is_dir():
            raise DataLoadError(f"dataset path {folder} is a file, not a folder: give the folder that holds the "
                                f"{'class folders' if kind == 'imagefolder' else 'CIFAR batches'}")
        if not folder.is_dir():
            raise DataLoadError(f"dataset folder {folder} does not exist: check the path after '{kind}:'")
        from complab.data import folders

        if kind == "imagefolder":
            return folders.load_imagefolder(folder, input_size or 224, mean or IMAGENET_MEAN,
                                            std or IMAGENET_STD, in_channels or 3)
        return folders.load_cifar(folder, kind, input_size or 32, mean or IMAGENET_MEAN, std or IMAGENET_STD)
    raise DataLoadError(
        f"unknown dataset {ref!r}: use 'digits', 'imagefolder:DIR', 'cifar10:DIR' or 'cifar100:DIR'"
    )
