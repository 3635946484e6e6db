"""Entropy-constrained scalar quantization (ECSQ) of one layer's weights, optionally importance-weighted and with
zero as a free level (the cluster step's objective "rate", importance "fisher" and joint_prune).

Choi, El-Khamy and Lee, "Towards the Limit of Network Quantization" (ICLR 2017), entropy-constrained k-means:
alternate

    assignment  label_i = argmin_j  imp_i * (w_i - c_j)^2 / s2  +  lambda * bits_j
    update      c_j = sum_i imp_i w_i / sum_i imp_i over the cluster,  p_j = n_j / n,  bits_j = -log2 p_j

dropping clusters that empty (n_clusters is the upper bound), from the k-means solution with n_clusters values.
bits_j is what an order-0 coder spends on index j, the proxy for our index stream (storage/shared_section.py codes
the indices with a static order-0 table per stream, so H(indices) is what it costs, plus its table).

The unit of lambda (scale-free, so one value means the same on every layer): s2 is the layer's mean squared
non-zero weight and imp is normalised to mean 1, so lambda = 0.01 means that saving one bit on a weight is worth
adding one hundredth of the layer's mean square weight (importance-weighted) to that weight's squared error.

joint_prune: zero is an extra level whose centroid is pinned at 0; a kept weight pays, besides its index bits, the
marginal cost of one more kept position in the positions stream, log2((1 - d) / d) bits at density d (the
derivative of n * H2(d), what an order-0 gap coder spends on a mask of density d), and a zero pays nothing. So a
weight goes to zero when imp * w^2 / s2 < lambda * (its index bits + position bits), i.e. where the bits saved
outweigh the distortion added. Weights that were zero already stay zero (they are not assigned at all).
"""

from __future__ import annotations

import math

import numpy as np

from complab.methods.kmeans1d import kmeans_1d

MAX_ITER = 60
LAMBDA_RANGE = (1e-5, 10.0)  # target_bytes: the lambdas the bisection searches (log scale; the run and the estimate)
LAMBDA_STEPS = 16
CHUNK = 1 << 16  # assignment rows at once (k up to 256: 16 M floats)
IMPORTANCE_FLOOR = 0.05  # a weight's importance is at least this share of the layer's mean Fisher (a zero Fisher
# on the validation images does not make a weight free to move anywhere)


def position_bits(density: float) -> float:
    """Marginal bits one more kept weight costs in an order-0 coded mask of this density: d/dk n*H2(k/n)."""
    density = min(max(density, 1e-6), 1 - 1e-6)
    return max(0.0, math.log2((1 - density) / density))


def normalised_importance(importance: np.ndarray | None, n: int) -> np.ndarray:
    if importance is None:
        return np.ones(n)
    imp = np.asarray(importance, dtype=np.float64)
    mean = float(imp.mean()) if imp.size else 0.0
    if not np.isfinite(mean) or mean <= 0:
        return np.ones(n)
    imp = np.maximum(imp / mean, IMPORTANCE_FLOOR)
    return imp / imp.mean()


def _assign(x: np.ndarray, imp: np.ndarray, centroids: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    labels = np.empty(x.size, dtype=np.int64)
    for start in range(0, x.size, CHUNK):
        xs, ws = x[start:start + CHUNK, None], imp[start:start + CHUNK, None]
        labels[start:start + CHUNK] = np.argmin(ws * (xs - centroids[None, :]) ** 2 + penalty[None, :], axis=1)
    return labels


def ecsq_1d(values: np.ndarray, n_clusters: int, rate_lambda: float = 0.0, importance: np.ndarray | None = None,
            joint_prune: bool = False, total: int | None = None, init: str = "linear", seed: int = 0,
            max_iter: int = MAX_ITER) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [k'], labels [n]) of the non-zero `values`; with joint_prune the label k' means zero.

    k' <= n_clusters. rate_lambda 0 and no importance: plain k-means (kmeans_1d's result). `total`: the layer's
    number of weights (zeros included), for the position bits of joint_prune (default: len(values))."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    centroids, labels = kmeans_1d(x, n_clusters, init=init, seed=seed)
    if n == 0 or (rate_lambda <= 0 and importance is None and not joint_prune):
        return centroids, labels
    imp = normalised_importance(importance, n)
    s2 = float(np.mean(x * x)) or 1.0
    w = imp / s2  # distortion in units of the layer's mean square weight
    total = max(total or n, n)
    lam = float(rate_lambda)
    # a kept weight's position cost at the layer's density before sharing, held fixed: re-reading it from the
    # shrinking density each round is a feedback (fewer kept -> dearer positions -> fewer kept) that emptied the
    # demo VGG's layers between lambda 0.15 (199,044 of 233,469 kept, -0.56 pts) and 0.3 (45,045 kept, 8%)
    start_position_bits = position_bits(n / total)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=len(centroids)).astype(np.float64)
        if joint_prune:  # the kept counts are clusters 0..k'-1; the zero level is last
            counts = counts[:len(centroids)]
        keep = counts > 0
        centroids, counts = centroids[keep], counts[keep]
        kept = counts.sum()
        bits = -np.log2(counts / kept) if kept else np.zeros(0)
        penalty = lam * bits
        table = centroids
        if joint_prune:
            penalty = penalty + lam * start_position_bits
            table = np.append(centroids, 0.0)
            penalty = np.append(penalty, 0.0)
        new = _assign(x, w, table, penalty)
        k = len(centroids)
        sums = np.bincount(new, weights=imp * x, minlength=len(table))[:k]
        mass = np.bincount(new, weights=imp, minlength=len(table))[:k]
        updated = np.where(mass > 0, sums / np.maximum(mass, 1e-300), centroids)
        done = np.array_equal(new, labels) and np.allclose(updated, centroids)
        labels, centroids = new, updated
        if done:
            break
    # renumber: used clusters in ascending order, zero level (joint_prune) last
    k = len(centroids)
    used = np.unique(labels[labels < k])
    order = used[np.argsort(centroids[used])]
    remap = np.full(k + 1, len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return centroids[order], remap[labels]


def index_entropy_bits(labels: np.ndarray, k: int) -> float:
    """Order-0 entropy (total bits) of the kept weights' indices (labels < k)."""
    kept = labels[labels < k]
    if kept.size == 0:
        return 0.0
    p = np.bincount(kept, minlength=k).astype(np.float64) / kept.size
    p = p[p > 0]
    return float(-kept.size * (p * np.log2(p)).sum())


def coded_bytes_estimate(labels: np.ndarray, k: int, total: int) -> float:
    """Estimated coded bytes of a layer: order-0 index entropy, n * H2(d) for the positions, fp32 codebook."""
    kept = int((labels < k).sum())
    d = kept / max(1, total)
    h2 = 0.0 if d <= 0 or d >= 1 else -(d * math.log2(d) + (1 - d) * math.log2(1 - d))
    return (index_entropy_bits(labels, k) + total * h2) / 8 + 4 * k
