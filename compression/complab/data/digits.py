"""The built-in demo data: scikit-learn's 1,797 handwritten digits (real 8x8 scans), split and resized.

The split is fixed and seeded (60% train, 20% validation, 20% test), so every model card, test and
benchmark sees the same images. Images are upsampled (bilinear) to the size an architecture expects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
# Mean and std of the digits' pixel values scaled to [0, 1] (the 8x8 originals, fixed here).
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)
DIGITS_SHIFT_PIXELS = 2  # random shifts used when training and fine-tuning on the digits (complab.demo.train)


def load_digits_split(image_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return {"train"|"val"|"test": (images [N,1,S,S] normalised float32, labels int64)}."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images - DIGITS_MEAN[0]) / DIGITS_STD[0]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_train = int(round(SPLIT_FRACTIONS[0] * len(labels)))
    n_val = int(round(SPLIT_FRACTIONS[1] * len(labels)))
    parts = {
        "train": order[:n_train],
        "val": order[n_train:n_train + n_val],
        "test": order[n_train + n_val:],
    }
    return {name: (images[idx], labels[idx]) for name, idx in parts.items()}
