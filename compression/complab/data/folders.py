"""Datasets in a user's folder: ImageFolder class directories and CIFAR-10/100 "python version" batches.

CIFAR batches are pickles, and the project never unpickles an untrusted file, so they are read with a
restricted unpickler that can build numpy arrays and nothing else (see `_CifarUnpickler`).
"""

from __future__ import annotations

import os
import pickle
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from complab.data import walk
from complab.data.bundle import DataBundle
from complab.data.walk import FolderWalk
from complab.errors import DataLoadError, first_line

SPLIT_SEED = 0
# An image larger than this (e.g. a 10,000 x 10,000 scan) is refused by name before anything decodes it:
# one would take over a gigabyte as float pixels and stall every batch it lands in.
MAX_IMAGE_PIXELS = 40_000_000
# A folder of class folders with no train/val split is split 60% train, 20% val, 20% test.
FLAT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
# CIFAR has no validation split: the last 10% of a seeded permutation of the training batches is held out.
CIFAR_VAL_FRACTION = 0.1
CIFAR_SIDE = 32
CIFAR_ROW_LENGTH = 3 * CIFAR_SIDE * CIFAR_SIDE  # 1024 red, then 1024 green, then 1024 blue bytes
MAX_CIFAR_FILE_BYTES = 512 << 20  # the largest real file, CIFAR-100's train, is 155 MB

_LAYOUT_HINT = (
    "expected class sub-folders like DIR/train/cat/*.jpg and DIR/val/cat/*.jpg (DIR/test optional), "
    "or DIR/cat/*.jpg, DIR/dog/*.jpg to split 60/20/20"
)


# ---------------------------------------------------------------------------------------------- helpers


def _channel_stats(values: Sequence[float], in_channels: int, what: str) -> tuple[float, ...]:
    """Match a mean/std to the channel count: one value is repeated; RGB values average to one grey value."""
    values = tuple(float(v) for v in values)
    if len(values) == in_channels:
        return values
    if len(values) == 1:
        return values * in_channels
    if in_channels == 1:
        # A grey pixel is (roughly) the mean of its channels, so its mean/std is the average of theirs.
        return (sum(values) / len(values),)
    raise DataLoadError(
        f"{what} has {len(values)} values but the images have {in_channels} channels: "
        f"give one value per channel"
    )


# ---------------------------------------------------------------------------------------------- ImageFolder


def _image_transform(input_size: int, mean: tuple[float, ...], std: tuple[float, ...], in_channels: int):
    from torchvision import transforms

    steps = [transforms.Resize(input_size), transforms.CenterCrop(input_size)]
    if in_channels == 1:
        steps.append(transforms.Grayscale(1))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def _class_dirs(folder: Path) -> list[str]:
    names = []
    for count, path in enumerate(folder.iterdir()):
        if count >= walk.MAX_FILES:
            raise DataLoadError(f"image folder {folder} holds more than {walk.MAX_FILES:,} files and folders, more "
                                "than one dataset walk reads: point at a smaller folder (e.g. one split)")
        if not path.name.startswith(".") and path.is_dir():
            names.append(path.name)
    return sorted(names)


def load_image(path: str):
    """An image as RGB, or a DataLoadError naming the file (found while training, it fails the run clearly)."""
    from PIL import Image

    _check_regular(path)
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataLoadError(f"image {path} cannot be read ({first_line(exc, 120)}): remove or replace it") from None


def _check_regular(path: str) -> None:
    """A FIFO named x.png blocked Image.open forever (a hang), /dev/zero linked as one read zeros: only a regular
    file (a link to one included) is opened as an image."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        regular = True  # gone or unreadable: Image.open says so in its own words
    if not regular:
        raise DataLoadError(f"image {path} is not a regular file (a device, a FIFO or a socket): remove it")


def _check_images(dataset) -> None:
    """Read every image's header (not its pixels): unreadable files and huge images are named up front."""
    from PIL import Image

    for path, _ in dataset.samples:
        _check_regular(path)
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataLoadError(f"image {path} is not a readable image ({first_line(exc, 120)}): remove or "
                                "replace it") from None
        if width * height > MAX_IMAGE_PIXELS:
            raise DataLoadError(f"image {path} is {width} x {height} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                                "we read: shrink it or remove it")


def _is_image(path: str) -> bool:
    return has_file_allowed_extension(path, IMG_EXTENSIONS)


class BoundedImageFolder(ImageFolder):
    """torchvision's ImageFolder with its file walk replaced by complab.data.walk: a symlink cycle or more
    than walk.MAX_FILES entries is a DataLoadError in bounded time (os.walk(followlinks=True) loops forever)."""

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        walk = FolderWalk(directory)  # one walk over every class folder: each folder is read once
        instances, empty = [], 0
        for name in sorted(class_to_idx):
            target = os.path.join(directory, name)
            if not os.path.isdir(target):
                continue
            found = [(path, class_to_idx[name]) for path in walk.paths(target, _is_image)]
            empty += not found
            instances += found
        if empty and not allow_empty:
            raise DataLoadError(
                f"image folder {directory}: {empty} class folder(s) hold no image file: put .jpg/.png images "
                f"in every class folder (or remove the empty ones); {_LAYOUT_HINT}")
        return instances


def _open_imagefolder(folder: Path, transform) -> Dataset:
    if not _class_dirs(folder):
        raise DataLoadError(f"image folder {folder} has no class folders with images: {_LAYOUT_HINT}")
    dataset = BoundedImageFolder(str(folder), transform=transform, loader=load_image)
    if len(dataset) == 0:
        raise DataLoadError(f"image folder {folder} has no class folders with images: {_LAYOUT_HINT}")
    _check_images(dataset)
    return dataset


def _check_same_classes(splits: dict[str, Any], root: Path) -> list[str]:
    names = {split: list(ds.classes) for split, ds in splits.items()}
    reference = names["train"]
    for split, classes in names.items():
        if classes == reference:
            continue
        # counted, not named: a message never lists a folder's contents (the folder may come from a link)
        only_train = len(set(reference) - set(classes))
        only_here = len(set(classes) - set(reference))
        raise DataLoadError(
            f"class folders differ between {root / 'train'} and {root / split}: "
            f"{only_train} only in train, {only_here} only in {split}; "
            f"every split needs the same class folders (same names), so a label means the same class in each"
        )
    return reference


def load_imagefolder(folder: Path, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                     in_channels: int = 3) -> DataBundle:
    """Read DIR/train + DIR/val (+ DIR/test) class folders, or one folder of class folders split 60/20/20."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataLoadError(f"image folder {folder} does not exist: {_LAYOUT_HINT}")
    if in_channels not in (1, 3):
        raise DataLoadError(f"in_channels must be 1 (grey) or 3 (RGB) for image folders, not {in_channels}")
    mean = _channel_stats(mean, in_channels, "mean")
    std = _channel_stats(std, in_channels, "std")
    transform = _image_transform(input_size, mean, std, in_channels)

    has_train, has_val = (folder / "train").is_dir(), (folder / "val").is_dir()
    if has_train != has_val:
        present, missing = ("train", "val") if has_train else ("val", "train")
        raise DataLoadError(
            f"image folder {folder} has {present}/ but no {missing}/: add {folder / missing} with the same "
            f"class sub-folders, or put the class folders directly in {folder} to split them 60/20/20"
        )
    if has_train:
        splits = {"train": _open_imagefolder(folder / "train", transform),
                  "val": _open_imagefolder(folder / "val", transform)}
        if (folder / "test").is_dir():
            splits["test"] = _open_imagefolder(folder / "test", transform)
        class_names = _check_same_classes(splits, folder)
        train, val = splits["train"], splits["val"]
        test = splits.get("test", val)
    else:
        dataset = _open_imagefolder(folder, transform)
        class_names = list(dataset.classes)
        n_images = len(dataset)
        if n_images < 3:
            raise DataLoadError(
                f"image folder {folder} has {n_images} image(s): splitting 60/20/20 needs at least 3 "
                f"(add images, or give it train/ and val/ sub-folders)"
            )
        n_val = max(1, round(FLAT_SPLIT_FRACTIONS[1] * n_images))
        n_test = max(1, round(FLAT_SPLIT_FRACTIONS[2] * n_images))
        n_train = n_images - n_val - n_test
        order = torch.randperm(n_images, generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        train = Subset(dataset, order[:n_train])
        val = Subset(dataset, order[n_train:n_train + n_val])
        test = Subset(dataset, order[n_train + n_val:])

    return DataBundle(
        ref=f"imagefolder:{folder}",
        train=train,
        val=val,
        test=test,
        num_classes=len(class_names),
        input_shape=(in_channels, input_size, input_size),
        mean=mean,
        std=std,
        class_names=class_names,
    )


# ---------------------------------------------------------------------------------------------- CIFAR


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# Everything a CIFAR batch may name: the pieces numpy uses to rebuild an array. Nothing else is callable.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,  # the name Python 2 / numpy 1 wrote
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,  # the name numpy 2 writes
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, bytes and numpy arrays, and refuses every other global."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise DataLoadError(
                f"refusing to load {self.path}: it asks to run code (GLOBAL {module}.{name}); "
                f"CIFAR batches contain only arrays — is this the right folder?"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise DataLoadError(
            f"refusing to load {self.path}: it refers to outside objects, which CIFAR batches never do"
        )


def _read_pickle(path: Path) -> dict:
    """Unpickle one CIFAR file safely; the result must be a dict (keys decoded from bytes to str). Only a plain
    file of at most MAX_CIFAR_FILE_BYTES is opened (a link to /dev/zero or a FIFO would never end)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CIFAR_FILE_BYTES:
            raise DataLoadError(f"{path} is not a CIFAR batch (not a plain file of at most "
                                f"{MAX_CIFAR_FILE_BYTES >> 20} MB): download the CIFAR 'python version' again")
        with open(path, "rb") as handle:
            obj = _CifarUnpickler(handle, path).load()
    except DataLoadError:
        raise
    except OSError as exc:
        raise DataLoadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # a damaged pickle fails in many ways (EOF, bad opcode, bad state)
        raise DataLoadError(
            f"cannot read CIFAR batch {path}: it is truncated or not a CIFAR batch "
            f"({type(exc).__name__}: {exc}); "
            f"download the CIFAR 'python version' again and unpack it"
        ) from exc
    if not isinstance(obj, dict):
        raise DataLoadError(f"{path} holds a {type(obj).__name__}, not the dict a CIFAR batch holds")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 3, 32, 32], labels int64 [N]) from one batch file, checked."""
    batch = _read_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise DataLoadError(f"{path} has no {key!r} entry: is this a CIFAR-{num_classes} batch?")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        description = (f"a {data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                       else f"a {type(data).__name__}")
        raise DataLoadError(f"{path}: 'data' is {description}, expected N x {CIFAR_ROW_LENGTH} uint8 rows")
    if data.shape[1] != CIFAR_ROW_LENGTH:
        raise DataLoadError(
            f"{path}: rows are {data.shape[1]} bytes long, expected N x {CIFAR_ROW_LENGTH} uint8 rows "
            f"(3 x 32 x 32 pixels): "
            f"this is not a CIFAR 'python version' batch"
        )
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DataLoadError(f"{path}: {label_key!r} is not a list of integers ({exc})") from exc
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataLoadError(f"{path}: {len(data)} images but {labels.size} {label_key!r}: damaged file")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataLoadError(
            f"{path}: labels outside 0..{num_classes - 1} (found {labels.min()}..{labels.max()}): "
            f"is this CIFAR-{num_classes}?"
        )
    return data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), labels


def _read_class_names(path: Path, key: str, num_classes: int) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(num_classes)]
    meta = _read_pickle(path)
    names = meta.get(key)
    if not isinstance(names, list | tuple) or len(names) != num_classes:
        raise DataLoadError(f"{path}: expected {key!r} with {num_classes} class names; the file is damaged")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


class CifarImages(Dataset):
    """CIFAR images kept as uint8 in memory; each item is resized and normalised when it is read.

    Converting lazily keeps memory at one byte per pixel (50,000 float images at 224 px would take 30 GB).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, input_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        self.input_size = input_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def _convert(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.to(torch.float32) / 255.0
        if self.input_size != CIFAR_SIDE:
            size = (self.input_size, self.input_size)
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        return (pixels - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._convert(self.images[index].unsqueeze(0))[0], self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # DataLoader fetches a whole batch through this, so a batch is resized in one interpolate call.
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self._convert(self.images[index])
        return list(zip(images, self.labels[index], strict=True))


def _cifar_root(folder: Path, expected: str, subfolder: str) -> Path:
    if (folder / expected).is_file():
        return folder
    if (folder / subfolder / expected).is_file():
        return folder / subfolder
    return folder


def load_cifar(folder: Path, kind: str, input_size: int, mean: tuple[float, ...],
               std: tuple[float, ...]) -> DataBundle:
    """Read a CIFAR-10 or CIFAR-100 "python version" folder; kind is "cifar10" or "cifar100"."""
    folder = Path(folder)
    if kind == "cifar10":
        num_classes, label_key, subfolder = 10, "labels", "cifar-10-batches-py"
        root = _cifar_root(folder, "data_batch_1", subfolder)
        train_files = [root / f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, names_key = root / "test_batch", root / "batches.meta", "label_names"
    elif kind == "cifar100":
        num_classes, label_key, subfolder = 100, "fine_labels", "cifar-100-python"
        root = _cifar_root(folder, "train", subfolder)
        train_files = [root / "train"]
        test_file, meta_file, names_key = root / "test", root / "meta", "fine_label_names"
    else:
        raise DataLoadError(f"unknown CIFAR kind {kind!r}: use 'cifar10' or 'cifar100'")
    if not folder.is_dir():
        raise DataLoadError(f"dataset folder {folder} does not exist: check the path after '{kind}:'")

    if not all(p.is_file() for p in [*train_files, test_file]):
        # which files are there is not said: a message never lists a folder's contents
        expected = ", ".join(p.name for p in [*train_files, test_file])
        raise DataLoadError(
            f"{root} is missing {kind} batch files: a {kind} folder holds {expected} (the 'python version' "
            f"download, unpacked; the files may sit in a {subfolder} sub-folder)"
        )
    mean = _channel_stats(mean, 3, "mean")
    std = _channel_stats(std, 3, "std")

    batches = [_read_batch(path, label_key, num_classes) for path in train_files]
    train_images = np.concatenate([images for images, _ in batches])
    train_labels = np.concatenate([labels for _, labels in batches])
    test_images, test_labels = _read_batch(test_file, label_key, num_classes)
    class_names = _read_class_names(meta_file, names_key, num_classes)

    n_total = len(train_labels)
    if n_total < 2 or len(test_labels) == 0:
        raise DataLoadError(f"{root}: {n_total} training and {len(test_labels)} test images are too few "
                            f"to split into train/val/test")
    n_val = max(1, int(round(CIFAR_VAL_FRACTION * n_total)))
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(SPLIT_SEED)).numpy()
    train_idx, val_idx = order[:-n_val], order[-n_val:]

    def images(x: np.ndarray, y: np.ndarray) -> CifarImages:
        return CifarImages(x, y, input_size, mean, std)

    return DataBundle(
        ref=f"{kind}:{folder}",
        train=images(train_images[train_idx], train_labels[train_idx]),
        val=images(train_images[val_idx], train_labels[val_idx]),
        test=images(test_images, test_labels),
        num_classes=num_classes,
        input_shape=(3, input_size, input_size),
        mean=mean,
        std=std,
        class_names=class_names,
    )
