"""DataBundle: a dataset's train/validation/test splits and what a model needs to read them (every loader's type)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from complab.errors import DataLoadError


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
