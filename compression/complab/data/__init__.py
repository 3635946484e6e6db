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
from pathlib import Path

from torch.utils.data import TensorDataset

from complab.data.bundle import DataBundle
from complab.data.digits import DIGITS_MEAN, DIGITS_SHIFT_PIXELS, DIGITS_STD, load_digits_split
from complab.errors import DataLoadError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_data(ref: str, input_size: int | None = None, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None, in_channels: int | None = None) -> DataBundle:
    """Build a DataBundle from a reference string (see the module docstring)."""
    kind, _, arg = ref.partition(":")
    if kind == "digits":
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
        from complab.data import folders  # (torchvision: imported when a folder of images is opened)

        if kind == "imagefolder":
            return folders.load_imagefolder(folder, input_size or 224, mean or IMAGENET_MEAN,
                                            std or IMAGENET_STD, in_channels or 3)
        return folders.load_cifar(folder, kind, input_size or 32, mean or IMAGENET_MEAN, std or IMAGENET_STD)
    raise DataLoadError(
        f"unknown dataset {ref!r}: use 'digits', 'imagefolder:DIR', 'cifar10:DIR' or 'cifar100:DIR'"
    )
