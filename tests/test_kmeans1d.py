"""1-D k-means: near-optimal SSE, nearest-centroid labels, exactness with few values, bad input."""

import kmeans1d
import numpy as np
import pytest

from compression.methods.kmeans1d import kmeans_1d, quantize_to_centroids, sse


def optimal_sse(values, k):
    labels, centroids = kmeans1d.cluster(values, k)
    return sse(values, np.asarray(centroids), np.asarray(labels))


@pytest.mark.parametrize("kind", ["gaussian", "pruned"])
@pytest.mark.parametrize("k", [4, 32])
def test_close_to_optimal_on_smooth_densities(kind, k):
    """On a smooth log-concave sample (normal quantiles) Lloyd's fixed point is the optimum; with the
    centre pruned away the density is bimodal and has local optima, so we allow a little more."""
    from scipy.stats import norm

    values = norm.ppf((np.arange(60_000) + 0.5) / 60_000)
    if kind == "pruned":
        values = values[np.abs(values) > 0.8]
    centroids, labels = kmeans_1d(values, k)
    assert sse(values, centroids, labels) <= (1.001 if kind == "gaussian" else 1.005) * optimal_sse(values, k)


def test_close_to_optimal_on_random_samples():
    """A random sample has local optima in its sparse tails; the split/merge refinement keeps us near."""
    values = np.random.default_rng(1).normal(size=50_000)
    centroids, labels = kmeans_1d(values, 32)
    assert len(centroids) == 32
    assert sse(values, centroids, labels) <= 1.01 * optimal_sse(values, 32)


def test_labels_are_nearest_and_centroids_sorted():
    values = np.random.default_rng(2).laplace(size=5000).astype(np.float32)
    centroids, labels = kmeans_1d(values, 16)
    assert np.all(np.diff(centroids) > 0)
    distances = np.abs(values[:, None].astype(np.float64) - centroids[None, :])
    assert np.all(distances[np.arange(len(values)), labels] <= distances.min(1) + 1e-12)
    assert np.array_equal(quantize_to_centroids(values, centroids), labels)


def test_few_distinct_values_exact_and_linear_init():
    values = np.array([3.0, -1.0, 3.0, 0.5, -1.0])
    centroids, labels = kmeans_1d(values, 8)
    assert centroids.tolist() == [-1.0, 0.5, 3.0]
    assert np.array_equal(centroids[labels], values)
    spread = np.linspace(-2, 5, 100)
    init, _ = kmeans_1d(spread, 8, max_iter=0)
    assert init[0] == -2 and init[-1] == 5 and np.allclose(np.diff(init), 1.0)
    again = kmeans_1d(np.random.default_rng(3).normal(size=1000), 8)
    assert np.array_equal(again[0], kmeans_1d(np.random.default_rng(3).normal(size=1000), 8)[0])


@pytest.mark.parametrize("values, k", [(np.array([]), 4), (np.array([1.0, np.nan]), 2), (np.array([1.0]), 0)])
def test_bad_input(values, k):
    with pytest.raises(ValueError):
        kmeans_1d(values, k)
