"""Fast one-dimensional k-means for per-layer weight sharing (Deep Compression's trained quantization).

The values go once into a fine histogram that keeps, per bin, the exact count, sum and sum of
squares (bins are ~4x finer than the values, at most 2**20). Clusters of a 1-D k-means are
contiguous runs of bins, so with prefix sums a Lloyd step costs O(k log bins): boundaries are the
midpoints between neighbouring centroids (binary search), each mean a difference of prefix sums.
Lloyd runs to its fixed point; a split/merge move (the centroid whose removal costs least goes to
the cluster with the largest error) then escapes the local optima a finite sample has in its tails.
Finally every value is labelled with its nearest centroid and the centroids are set to the exact
means of their values. Han et al.'s linear initialisation (evenly spaced from min to max) is the
default: it keeps centroids for the few large weights, which matter for accuracy.
"""

from __future__ import annotations

import numpy as np

MAX_BINS = 1 << 20


def _init(low: float, high: float, means: np.ndarray, weights: np.ndarray, k: int, init: str,
          seed: int) -> np.ndarray:
    if init == "linear":
        return np.linspace(low, high, k)
    if init == "quantile":
        cdf = np.cumsum(weights) / weights.sum()
        return means[np.minimum(np.searchsorted(cdf, (np.arange(k) + 0.5) / k), len(means) - 1)]
    if init == "random":
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(means, size=k, replace=False, p=weights / weights.sum()))
    raise ValueError(f"unknown init {init!r}: use linear, quantile or random")


class _Bins:
    """Prefix sums over the non-empty histogram bins (ascending)."""

    def __init__(self, x: np.ndarray) -> None:
        low, high = float(x.min()), float(x.max())
        n_bins = int(np.clip(4 * x.size, 4096, MAX_BINS))
        self.scale = n_bins / (high - low)
        index = ((x - low) * self.scale).astype(np.int64)
        np.minimum(index, n_bins - 1, out=index)
        count = np.bincount(index, minlength=n_bins).astype(np.float64)
        total = np.bincount(index, weights=x, minlength=n_bins)
        square = np.bincount(index, weights=x * x, minlength=n_bins)
        keep = count > 0
        self.index, self.x, self.n_bins = index, x, n_bins
        self.count, total, square = count[keep], total[keep], square[keep]
        self.means = total / self.count
        self.p0 = np.concatenate(([0.0], np.cumsum(self.count)))
        self.p1 = np.concatenate(([0.0], np.cumsum(total)))
        self.p2 = np.concatenate(([0.0], np.cumsum(square)))
        self.low, self.high = low, high

    def labels(self, c: np.ndarray) -> np.ndarray:
        """Nearest-centroid label of every value: per bin, then exactly for the few bins a boundary cuts."""
        mids = (c[1:] + c[:-1]) / 2
        bin_low = self.low + np.arange(self.n_bins) / self.scale
        per_bin = np.searchsorted(mids, bin_low, side="right")
        labels = per_bin[self.index]
        cut = np.zeros(self.n_bins, dtype=bool)
        cut[np.clip(((mids - self.low) * self.scale).astype(np.int64), 0, self.n_bins - 1)] = True
        touched = cut[self.index]
        labels[touched] = np.searchsorted(mids, self.x[touched], side="right")
        return labels

    def partition(self, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cuts = np.searchsorted(self.means, (c[1:] + c[:-1]) / 2, side="right")
        return np.concatenate(([0], cuts)), np.concatenate((cuts, [len(self.means)]))

    def stats(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.p0[hi] - self.p0[lo], self.p1[hi] - self.p1[lo], self.p2[hi] - self.p2[lo]

    def lloyd(self, c: np.ndarray, k: int) -> tuple[np.ndarray, float]:
        """One Lloyd step; returns the new centroids and the error of c's partition."""
        counts, sums, squares = self.stats(*self.partition(c))
        error = float((squares - 2 * c * sums + counts * c * c).sum())
        keep = counts > 0
        new = sums[keep] / counts[keep]
        if new.size < k:  # empty clusters (sparse tails): split the clusters with the largest error
            sq = squares[keep] - counts[keep] * new * new
            spread = np.sqrt(np.maximum(sq, 0.0) / counts[keep])
            worst = np.argsort(-sq)[: k - new.size]
            new = np.unique(np.concatenate((new, new[worst] + 0.5 * spread[worst] + 1e-12)))
        return new, error

    def converge(self, c: np.ndarray, k: int, max_iter: int) -> tuple[np.ndarray, float]:
        for _ in range(max_iter):
            target, _ = self.lloyd(c, k)
            if target.size == c.size and np.array_equal(target, c):
                break
            c = target
        return c, self.lloyd(c, k)[1]

    def split_merge(self, c: np.ndarray) -> np.ndarray | None:
        """Move the cheapest-to-remove centroid into the cluster with the largest error (None: no move)."""
        lo, hi = self.partition(c)
        counts, sums, squares = self.stats(lo, hi)
        error = squares - np.where(counts > 0, sums * sums / np.maximum(counts, 1e-300), 0.0)
        # cost of merging cluster j with its right neighbour, for every j
        n, t, s = self.stats(lo[:-1], hi[1:])
        pair = s - t * t / np.maximum(n, 1e-300) - error[:-1] - error[1:]
        cost = np.full(len(c), np.inf)
        cost[:-1] = np.minimum(cost[:-1], pair)
        cost[1:] = np.minimum(cost[1:], pair)
        victim, host = int(np.argmin(cost)), int(np.argmax(error))
        if victim == host or counts[host] < 2:
            return None
        spread = np.sqrt(max(error[host], 0.0) / counts[host])
        kept = np.delete(c, [victim, host])
        return np.sort(np.concatenate((kept, [c[host] - 0.5 * spread, c[host] + 0.5 * spread])))


def kmeans_1d(values: np.ndarray, n_clusters: int, init: str = "linear", max_iter: int = 3000,
              tol: float = 0.0, seed: int = 0, refine_rounds: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centroids float64 ascending, shape [k'] with k' <= n_clusters; labels int64 indexing them).

    With fewer distinct values than n_clusters the distinct values are returned (zero error); a
    centroid that ends with no value is dropped. max_iter=0 returns the initial centroids. `tol` is
    kept for API compatibility (Lloyd runs to its fixed point).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("kmeans_1d needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("kmeans_1d got NaN or infinite values")
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    low, high = float(x.min()), float(x.max())
    distinct = np.unique(x) if x.size <= 4 * n_clusters or low == high else None
    if distinct is not None and distinct.size <= n_clusters:
        return distinct, np.searchsorted(distinct, x)
    bins = _Bins(x)
    if len(bins.means) <= n_clusters:
        distinct = np.unique(x)
        if distinct.size <= n_clusters:
            return distinct, np.searchsorted(distinct, x)
    centroids = _init(low, high, bins.means, bins.count, n_clusters, init, seed)
    if max_iter == 0:
        return centroids, quantize_to_centroids(x, centroids)
    centroids, error = bins.converge(centroids, n_clusters, max_iter)
    for _ in range(refine_rounds):
        trial = bins.split_merge(centroids)
        if trial is None:
            break
        candidate, candidate_error = bins.converge(trial, n_clusters, max_iter)
        if candidate_error >= error * (1 - 1e-12):
            break
        centroids, error = candidate, candidate_error
    # exact finish on the values themselves: nearest-centroid labels, then exact means, then relabel
    labels = bins.labels(centroids)
    counts = np.bincount(labels, minlength=len(centroids))
    used = counts > 0
    centroids = np.bincount(labels, weights=x, minlength=len(centroids))[used] / counts[used]
    return centroids, bins.labels(centroids)


def quantize_to_centroids(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Label of the nearest centroid for each value (centroids ascending)."""
    centroids = np.asarray(centroids, dtype=np.float64)
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, np.asarray(values, dtype=np.float64),
                           side="right").astype(np.int64)


def sse(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared errors of a clustering."""
    return float(((np.asarray(values, dtype=np.float64) - np.asarray(centroids)[labels]) ** 2).sum())
