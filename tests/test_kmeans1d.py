"""1-D k-means: near-optimal error against the exact optimum, nearest labels, exact cases, inits, errors."""

import kmeans1d
import numpy as np
import pytest
from complab.methods import kmeans1d as module
from complab.methods.kmeans1d import kmeans_1d, quantize_to_centroids, sse


def optimal_sse(values: np.ndarray, k: int) -> float:
    """The exact optimum (the kmeans1d package's O(kn) dynamic programme)."""
    labels, centroids = kmeans1d.cluster(np.asarray(values, dtype=np.float64), k)
    return sse(values, np.asarray(centroids), np.asarray(labels))


def sample(kind: str, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.normal(size=n)
    if kind == "laplace":
        return rng.laplace(size=n)
    values = rng.normal(size=3 * n)  # "pruned": a layer's weights with the small ones removed (bimodal)
    return values[np.abs(values) > 1.0][:n]


@pytest.mark.parametrize("kind", ["gaussian", "pruned", "laplace"])
@pytest.mark.parametrize("k", [4, 32])
def test_close_to_optimal(kind, k):
    values = sample(kind, 50_000)
    centroids, labels = kmeans_1d(values, k)
    assert len(centroids) == k
    assert sse(values, centroids, labels) <= 1.001 * optimal_sse(values, k)


@pytest.mark.parametrize("init", ["linear", "quantile", "random"])
def test_close_to_optimal_any_init_many_clusters(init):
    """Small samples with many clusters are where plain Lloyd gets stuck worst."""
    values = sample("pruned", 3000, seed=2).astype(np.float32)
    centroids, labels = kmeans_1d(values, 64, init=init)
    assert sse(values, centroids, labels) <= 1.001 * optimal_sse(values, 64)
    values = sample("gaussian", 20_000, seed=3)
    centroids, labels = kmeans_1d(values, 128, init=init)
    assert sse(values, centroids, labels) <= 1.001 * optimal_sse(values, 128)


def test_histogram_path_for_large_inputs(monkeypatch):
    """From 131,072 values on, a fine enough histogram replaces the sort; it must change nothing."""
    values = sample("pruned", 200_000)
    assert module._binned_points(values, 32) is not None  # this sample takes the histogram path
    centroids, labels = kmeans_1d(values, 32)
    assert np.array_equal(labels, quantize_to_centroids(values, centroids))
    error = sse(values, centroids, labels)
    assert error <= 1.001 * optimal_sse(values, 32)
    monkeypatch.setattr(module, "BIN_MIN_VALUES", 1 << 60)  # force the sorted path
    assert error <= 1.0001 * sse(values, *kmeans_1d(values, 32))
    heavy = np.random.default_rng(8).standard_cauchy(200_000)  # too coarse a histogram: sorted instead
    assert module._binned_points(heavy, 8) is None
    centroids, labels = kmeans_1d(heavy, 8)
    assert sse(heavy, centroids, labels) <= 1.001 * optimal_sse(heavy, 8)


def test_refinement_never_worse_than_plain_lloyd():
    for seed in range(3):
        values = sample("laplace", 5000, seed=seed)
        plain = kmeans_1d(values, 16, refine=False, max_iter=100_000)
        refined = kmeans_1d(values, 16)
        assert sse(values, *refined) <= sse(values, *plain) * (1 + 1e-12)


def test_labels_are_nearest_and_centroids_are_means():
    values = np.random.default_rng(2).laplace(size=5000).astype(np.float32)
    centroids, labels = kmeans_1d(values, 16)
    assert centroids.dtype == np.float64 and labels.dtype == np.int64
    assert np.all(np.diff(centroids) > 0)
    distances = np.abs(values[:, None].astype(np.float64) - centroids[None, :])
    assert np.all(distances[np.arange(len(values)), labels] <= distances.min(1) + 1e-12)
    assert np.array_equal(quantize_to_centroids(values, centroids), labels)
    counts = np.bincount(labels, minlength=16)
    assert counts.min() > 0
    means = np.bincount(labels, weights=values.astype(np.float64)) / counts
    assert np.allclose(means, centroids, rtol=0, atol=1e-9)


def test_quantize_lookup_table_is_exact():
    """Large inputs take the lookup-table path; it must equal the binary search, midpoints included."""
    rng = np.random.default_rng(4)
    for centroids in (np.sort(rng.normal(size=40)), np.concatenate([np.linspace(-1, -0.999, 30), [0.0, 5.0]]),
                      np.sort(rng.standard_t(1, size=300))):
        mids = (centroids[1:] + centroids[:-1]) / 2
        values = np.concatenate([rng.normal(size=100_000) * 3, mids, np.nextafter(mids, -np.inf),
                                 np.nextafter(mids, np.inf), [-np.inf, np.inf, 1e300, -1e300]])
        expected = np.searchsorted(mids, values, side="right")
        assert np.array_equal(quantize_to_centroids(values, centroids), expected)


def test_exact_cases():
    values = np.array([3.0, -1.0, 3.0, 0.5, -1.0])
    centroids, labels = kmeans_1d(values, 8)
    assert centroids.tolist() == [-1.0, 0.5, 3.0]
    assert np.array_equal(centroids[labels], values)
    centroids, labels = kmeans_1d(np.full(10, 2.5, dtype=np.float32), 4)
    assert centroids.tolist() == [2.5] and labels.tolist() == [0] * 10
    values = np.random.default_rng(5).normal(size=(20, 30))  # any shape is flattened
    centroids, labels = kmeans_1d(values, 1)
    assert np.allclose(centroids, [values.mean()]) and labels.shape == (600,) and not labels.any()
    # at most 2 * grid distinct values: the dynamic programme sees every boundary, so this is optimal
    values = np.round(np.random.default_rng(6).normal(size=20_000), 2)
    centroids, labels = kmeans_1d(values, 8)
    assert sse(values, centroids, labels) <= optimal_sse(values, 8) * (1 + 1e-9)


def test_empty_clusters_are_reseeded():
    """Linear init on values with a far outlier leaves most initial clusters empty."""
    values = np.concatenate([np.random.default_rng(7).normal(size=1000), [100.0]])
    for refine in (False, True):
        centroids, labels = kmeans_1d(values, 8, refine=refine)
        assert len(centroids) == 8 and np.bincount(labels, minlength=8).min() > 0
        assert centroids[-1] == 100.0


def test_inits_and_determinism():
    spread = np.linspace(-2, 5, 100)
    init, labels = kmeans_1d(spread, 8, max_iter=0)  # max_iter=0 returns the initial centroids
    assert init[0] == -2 and init[-1] == 5 and np.allclose(np.diff(init), 1.0)
    assert np.array_equal(labels, quantize_to_centroids(spread, init))
    values = np.random.default_rng(3).normal(size=1000)
    quantile, _ = kmeans_1d(values, 4, init="quantile", max_iter=0)
    expected = np.quantile(values, [0.125, 0.375, 0.625, 0.875], method="inverted_cdf")
    assert np.allclose(quantile, expected, rtol=0, atol=1e-12)
    drawn, _ = kmeans_1d(values, 4, init="random", seed=1, max_iter=0)
    assert np.isin(drawn, values).all() and len(drawn) == 4
    for init in ("linear", "quantile", "random"):
        first = kmeans_1d(values, 8, init=init)
        again = kmeans_1d(values.copy(), 8, init=init)
        assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])


@pytest.mark.parametrize("values, k, kwargs", [
    (np.array([]), 4, {}),
    (np.array([1.0, np.nan]), 2, {}),
    (np.array([1.0, np.inf]), 2, {}),
    (np.array([1.0]), 0, {}),
    (np.array([1.0, 2.0]), 1, {"init": "kmeans++"}),
    (np.array([1.0, 2.0]), 1, {"max_iter": -1}),
])
def test_bad_input(values, k, kwargs):
    with pytest.raises(ValueError):
        kmeans_1d(values, k, **kwargs)
