"""How sure a measured score is: 95% intervals for accuracy (Wilson) and mAP (bootstrap over images), the
difference of two accuracies (Newcombe), and the smallest drop a split of n images can resolve.

An accuracy measured on n images moves in steps of 1/n and has a sampling error of about
sqrt(p (1 - p) / n): on 40 images one image is 2.5 points and the 95% interval of 92.5% is 80.1-97.4%.
Every page, the report and the predictor take their intervals from here, so the app never shows a
difference its data cannot resolve as if it were signal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

Z95 = 1.959964  # two-sided 95%


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (fractions) of an accuracy measured on `n` images; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, float(accuracy)))
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def difference(before: float, n_before: int, after: float, n_after: int,
               z: float = Z95) -> tuple[float, float]:
    """Newcombe's interval (hybrid score, method 10) of `before - after` (fractions): two accuracies measured on
    splits of n_before and n_after images. Conservative when both are measured on the same images (paired)."""
    l1, u1 = wilson(before, n_before, z)
    l2, u2 = wilson(after, n_after, z)
    d = float(before) - float(after)
    low = d - math.sqrt((before - l1) ** 2 + (u2 - after) ** 2)
    high = d + math.sqrt((u1 - before) ** 2 + (after - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def resolution(n: int) -> float:
    """The step of an accuracy on n images (one image), as a fraction: 0.025 on 40 images."""
    return 1.0 / n if n > 0 else 1.0


def noise_floor(accuracy: float, n: int, z: float = Z95) -> float:
    """The smallest drop (fraction) distinguishable from zero on a split of n images at this accuracy: the half
    width of the Wilson interval, and never less than one image. A drop smaller than this is noise."""
    if n <= 0:
        return 1.0
    low, high = wilson(accuracy, n, z)
    return max(resolution(n), (high - low) / 2)


def bootstrap(per_image: Sequence, statistic: Callable[[Sequence], float], rounds: int = 200,
              seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of `statistic` over images: `per_image` is one entry per image (for a
    detector, that image's predictions and labels), `statistic` maps a resample of them to a score (mAP)."""
    items = list(per_image)
    if not items:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(max(1, int(rounds))):
        picks = rng.integers(0, len(items), len(items))
        values.append(float(statistic([items[i] for i in picks])))
    tail = (1.0 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


def recorded(value) -> tuple[float, float] | None:
    """A recorded interval ([low, high] fractions, e.g. a detector's metrics["after"]["map50_interval"]) as a
    pair, or None when it is absent or not two numbers with 0 <= low <= high <= 1 (an older or damaged run)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    low, high = float(value[0]), float(value[1])
    return (low, high) if 0.0 <= low <= high <= 1.0 else None
