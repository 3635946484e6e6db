"""Our per-layer 1-D k-means against scikit-learn's KMeans and against the exact optimum, in one run.

Data (seeded), each clustered into k = 32 shared values: 1,000,000 normally distributed weights, and
a pruned-layer-like bimodal sample of the same size: the 1,000,000 non-zero weights left when a
layer of 2,000,000 normal weights loses the smaller half by magnitude (|w| > median |w|), i.e. a
Gaussian with its centre cut out. For each sample:

- ours: ``kmeans_1d(values, 32)`` with its defaults (linear init); the time covers everything
  (validation, histogram or sort, Lloyd, refinement, final labels). Median of 5 runs.
- sklearn: ``KMeans(n_clusters=32, n_init=1, random_state=0)`` on ``values.reshape(-1, 1)``, median
  of 3 runs, its defaults otherwise (k-means++ init, Lloyd, tol=1e-4, all cores: this machine has
  2, see ``setup.threadpools``). We use one core.
- optimum: ``kmeans1d.cluster(values, 32)``, the exact O(kn) dynamic programme (its time includes
  building its Python lists of labels and centroids).

All squared errors are computed the same way (``sse``, float64). Prints one JSON object as its last
line: ``speedup`` (sklearn time / ours, target >= 20), ``sse_ratio`` (ours / sklearn's, target <= 1)
and ``sse_vs_optimal`` (ours / optimal, target <= 1.001) for the Gaussian sample, the same three
with a ``bimodal_`` prefix for the pruned sample, the times in seconds, and the details of each.

    .venv/bin/python benchmarks/kmeans_speed.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import kmeans1d
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compression"))

from complab.methods.kmeans1d import kmeans_1d, sse  # noqa: E402

K = 32
N = 1_000_000
REPEATS = 5
SKLEARN_REPEATS = 3


def timed(fn, repeats: int = 1) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def compare(values: np.ndarray) -> dict:
    ours_s, (centroids, labels) = timed(lambda: kmeans_1d(values, K), repeats=REPEATS)
    ours_sse = sse(values, centroids, labels)
    sk_s, model = timed(lambda: KMeans(n_clusters=K, n_init=1, random_state=0).fit(values.reshape(-1, 1)),
                        repeats=SKLEARN_REPEATS)
    sk_sse = sse(values, model.cluster_centers_.ravel(), model.labels_)
    opt_s, (opt_labels, opt_centroids) = timed(lambda: kmeans1d.cluster(values, K))
    opt_sse = sse(values, np.asarray(opt_centroids), np.asarray(opt_labels))
    return {"n": int(values.size), "ours_s": round(ours_s, 4), "sklearn_s": round(sk_s, 3),
            "optimal_dp_s": round(opt_s, 3), "speedup": round(sk_s / ours_s, 1),
            "sse_ratio": round(ours_sse / sk_sse, 6), "sse_vs_optimal": round(ours_sse / opt_sse, 7),
            "sklearn_vs_optimal": round(sk_sse / opt_sse, 6), "sklearn_iterations": int(model.n_iter_),
            "ours_sse": ours_sse, "sklearn_sse": sk_sse, "optimal_sse": opt_sse,
            "clusters_used": int(np.unique(labels).size)}


def main() -> None:
    gaussian = compare(np.random.default_rng(0).normal(size=N))
    layer = np.random.default_rng(1).normal(size=2 * N)
    pruned = compare(layer[np.abs(layer) > np.median(np.abs(layer))])
    figures = ("speedup", "sse_ratio", "sse_vs_optimal")
    result = {
        **{key: gaussian[key] for key in figures},
        **{f"bimodal_{key}": pruned[key] for key in figures},
        "ours_s": gaussian["ours_s"], "sklearn_s": gaussian["sklearn_s"],
        "optimal_dp_s": gaussian["optimal_dp_s"],
        "bimodal_ours_s": pruned["ours_s"], "bimodal_sklearn_s": pruned["sklearn_s"],
        "bimodal_optimal_dp_s": pruned["optimal_dp_s"],
        "targets_met": all(r["speedup"] >= 20 and r["sse_ratio"] <= 1.0 and r["sse_vs_optimal"] <= 1.001
                           for r in (gaussian, pruned)),
        "gaussian": gaussian, "pruned_bimodal": pruned,
        "setup": {"k": K, "n": N, "ours_repeats_median": REPEATS, "sklearn_repeats_median": SKLEARN_REPEATS,
                  "cpu_count": os.cpu_count(),
                  "threadpools": [{"api": pool["internal_api"], "threads": pool["num_threads"]}
                                  for pool in threadpool_info()],
                  "baseline": "sklearn KMeans(n_clusters=32, n_init=1, random_state=0), defaults otherwise; "
                              "optimum: kmeans1d.cluster (exact dynamic programme)"},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
