"""Datasets from local folders: ImageFolder directories and CIFAR-10/100 "python version" batches.

CIFAR's python batches are pickles. We never unpickle a file the user did not vouch for, so they
are read with a restricted unpickler that can build only plain containers and numpy arrays (what
real CIFAR batches hold); anything else in the file is refused before it can run.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from compression.data import DataBundle
from compression.errors import DataLoadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*") if p.is_file())


def load_imagefolder(folder: Path, input_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                     in_channels: int = 3) -> DataBundle:
    """DIR/train + DIR/val (+ DIR/test), or one folder of class folders split 60/20/20 with seed 0."""
    from torchvision import datasets, transforms

    steps = [transforms.Resize(input_size), transforms.CenterCrop(input_size)]
    if in_channels == 1:
        steps.append(transforms.Grayscale(1))
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    transform = transforms.Compose(steps)
    expected = (f"expected class sub-folders with images, like {folder}/train/cat/1.jpg and {folder}/val/cat/2.jpg, "
                f"or {folder}/cat/1.jpg")

    def open_split(path: Path):
        classes = _class_dirs(path)
        if not classes or not _has_images(path):
            raise DataLoadError(f"{path} has no class folders with images: {expected}")
        try:
            return datasets.ImageFolder(str(path), transform=transform, allow_empty=True), classes
        except (OSError, RuntimeError, FileNotFoundError) as exc:
            raise DataLoadError(f"cannot read images under {path}: {exc}") from None

    if (folder / "train").is_dir() and (folder / "val").is_dir():
        train, classes = open_split(folder / "train")
        val, val_classes = open_split(folder / "val")
        test, test_classes = open_split(folder / "test") if (folder / "test").is_dir() else (val, val_classes)
        for name, other in (("val", val_classes), ("test", test_classes)):
            if other != classes:
                raise DataLoadError(f"{folder}/{name} has classes {other[:5]} but {folder}/train has {classes[:5]}: "
                                    "every split needs the same class folders")
    else:
        full, classes = open_split(folder)
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0)).tolist()
        n_train, n_val = int(0.6 * len(order)), int(0.2 * len(order))
        from torch.utils.data import Subset

        train = Subset(full, order[:n_train])
        val = Subset(full, order[n_train:n_train + n_val])
        test = Subset(full, order[n_train + n_val:])
        if len(val) == 0 or len(test) == 0:
            raise DataLoadError(f"{folder} has only {len(full)} images: too few to split into train, val and test")
    return DataBundle(f"imagefolder:{folder}", train, val, test, len(classes), (in_channels, input_size, input_size),
                      tuple(mean), tuple(std), classes)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise DataLoadError(f"refusing to load {self.source}: it asks to run code ({module}.{name}); CIFAR batches "
                            "contain only arrays - is this the right folder?")


def read_batch(path: Path) -> dict:
    """One CIFAR python batch, parsed with the restricted unpickler."""
    if not path.is_file():
        raise DataLoadError(f"CIFAR file {path} is missing: the folder must hold the 'python version' batches")
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, path).load()
    except DataLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated or garbage pickles raise many types
        raise DataLoadError(f"cannot read CIFAR batch {path}: {type(exc).__name__} ({str(exc)[:100]}); "
                            "the file is damaged or not a CIFAR python batch") from None
    if not isinstance(data, dict):
        raise DataLoadError(f"{path} is not a CIFAR batch (expected a dict with data and labels)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _arrays(batch: dict, path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataLoadError(f"{path} lacks 'data' or '{label_key}': not a CIFAR python batch")
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
        raise DataLoadError(f"{path}: data has shape {data.shape} {data.dtype}, expected N x 3072 uint8 rows")
    if len(labels) != len(data):
        raise DataLoadError(f"{path}: {len(data)} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataLoadError(f"{path}: labels outside 0..{num_classes - 1}")
    return data, labels


def load_cifar(folder: Path, kind: str, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> DataBundle:
    """CIFAR-10 (data_batch_1..5, test_batch) or CIFAR-100 (train, test) python batches."""
    inner = folder / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    if inner.is_dir():
        folder = inner
    num_classes = 10 if kind == "cifar10" else 100
    label_key = "labels" if kind == "cifar10" else "fine_labels"
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else [folder / "train"]
    test_file = folder / ("test_batch" if kind == "cifar10" else "test")
    parts = [_arrays(read_batch(p), p, label_key, num_classes) for p in train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _arrays(read_batch(test_file), test_file, label_key, num_classes)
    names = [str(i) for i in range(num_classes)]
    meta = folder / ("batches.meta" if kind == "cifar10" else "meta")
    if meta.is_file():
        info = read_batch(meta)
        raw = info.get("label_names" if kind == "cifar10" else "fine_label_names")
        if isinstance(raw, list) and len(raw) == num_classes:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
    order = np.random.default_rng(0).permutation(len(train_y))
    n_val = max(1, len(order) // 10)
    val_idx, train_idx = order[-n_val:], order[:-n_val]

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        images = torch.from_numpy(x.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        if input_size != 32:
            images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", align_corners=False)
        m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        return TensorDataset((images - m) / s, torch.from_numpy(y))

    return DataBundle(f"{kind}:{folder}", tensors(train_x[train_idx], train_y[train_idx]),
                      tensors(train_x[val_idx], train_y[val_idx]), tensors(test_x, test_y), num_classes,
                      (3, input_size, input_size), tuple(mean), tuple(std), names)
