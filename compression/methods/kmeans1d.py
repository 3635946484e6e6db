"""Fast one-dimensional k-means for per-layer weight sharing (Deep Compression's trained quantization).

The values are sorted once and prefix sums of x and x^2 are built; a Lloyd step then costs
O(k log n): the clusters of sorted values are contiguous, their boundaries are the midpoints between
neighbouring centroids (found by binary search) and each mean is a difference of prefix sums.
Labels for the original order are computed once at the end. In 1-D, Lloyd's iteration on a
log-concave density (Gaussian, Laplacian weights) has a unique fixed point, the optimum, so running
it to convergence (cheap here) lands within a hair of the exact dynamic programme.
"""

from __future__ import annotations

import numpy as np


def _init(x_sorted: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    if init == "linear":  # Han et al.: evenly spaced between min and max (the large weights matter)
        return np.linspace(x_sorted[0], x_sorted[-1], k)
    if init == "quantile":  # density-based
        return np.quantile(x_sorted, (np.arange(k) + 0.5) / k)
    if init == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(x_sorted, size=k, replace=False))
    raise ValueError(f"unknown init {init!r}: use linear, quantile or random")


def kmeans_1d(values: np.ndarray, n_clusters: int, init: str = "linear", max_iter: int = 1000,
              tol: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids float64 ascending, shape [k'] with k' <= n_clusters; labels int64 indexing them).

    Empty clusters are dropped, so k' can be below n_clusters; with fewer distinct values than
    n_clusters the distinct values themselves are returned (zero error). max_iter=0 returns the init.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("kmeans_1d needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("kmeans_1d got NaN or infinite values")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    distinct = np.unique(xs)
    if distinct.size <= n_clusters:
        centroids = distinct
    else:
        prefix = np.concatenate(([0.0], np.cumsum(xs)))
        centroids = _init(xs, n_clusters, init, seed)
        cuts = None
        for _ in range(max_iter):
            new_cuts = np.searchsorted(xs, (centroids[1:] + centroids[:-1]) / 2, side="right")
            if cuts is not None and np.array_equal(new_cuts, cuts):
                break
            cuts = new_cuts
            lo = np.concatenate(([0], cuts))
            hi = np.concatenate((cuts, [xs.size]))
            counts = hi - lo
            keep = counts > 0
            new = (prefix[hi[keep]] - prefix[lo[keep]]) / counts[keep]
            shift = np.max(np.abs(new - centroids[keep])) if new.size == centroids.size else np.inf
            centroids = new
            if shift <= tol * (xs[-1] - xs[0]):
                break
    labels_sorted = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, xs, side="right")
    used = np.unique(labels_sorted)
    if used.size < centroids.size:  # a centroid no value is nearest to: drop it
        centroids = centroids[used]
        labels_sorted = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, xs, side="right")
    labels = np.empty(x.size, dtype=np.int64)
    labels[order] = labels_sorted
    return centroids, labels


def quantize_to_centroids(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Label of the nearest centroid for each value (centroids ascending)."""
    centroids = np.asarray(centroids, dtype=np.float64)
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, np.asarray(values, dtype=np.float64), side="right")


def sse(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared errors of a clustering."""
    return float(((np.asarray(values, dtype=np.float64) - np.asarray(centroids)[labels]) ** 2).sum())
