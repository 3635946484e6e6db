"""Our per-layer 1-D k-means against scikit-learn's KMeans and against the exact optimum, in one run.

1,000,000 normally distributed weights (and a pruned-layer-like sample: the same with |w| < 0.5
removed) clustered into 32 values. Baselines: sklearn.cluster.KMeans(n_clusters=32, n_init=1) on
the same data (its defaults otherwise; this machine has 2 cores) and the exact 1-D dynamic
programme of the `kmeans1d` package (optimal SSE). Prints one JSON object as its last line with
`speedup` (sklearn time / ours, target >= 20), `sse_ratio` (ours / sklearn's, target <= 1.0) and
`sse_vs_optimal` (ours / optimal, target <= 1.001).

    .venv/bin/python benchmarks/kmeans_speed.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import kmeans1d
import numpy as np
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compression.methods.kmeans1d import kmeans_1d, sse  # noqa: E402

K = 32


def timed(fn, repeats: int = 1):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def compare(values: np.ndarray) -> dict:
    ours_s, (centroids, labels) = timed(lambda: kmeans_1d(values, K), repeats=5)
    ours_sse = sse(values, centroids, labels)
    sk_s, model = timed(lambda: KMeans(n_clusters=K, n_init=1, random_state=0).fit(values.reshape(-1, 1)))
    sk_sse = float(model.inertia_)
    opt_s, (opt_labels, opt_centroids) = timed(lambda: kmeans1d.cluster(values, K))
    opt_sse = sse(values, np.asarray(opt_centroids), np.asarray(opt_labels))
    return {"ours_s": round(ours_s, 4), "sklearn_s": round(sk_s, 3), "optimal_dp_s": round(opt_s, 3),
            "speedup": round(sk_s / ours_s, 1), "sse_ratio": round(ours_sse / sk_sse, 6),
            "sse_vs_optimal": round(ours_sse / opt_sse, 6), "clusters_used": int(len(centroids))}


def main() -> None:
    values = np.random.default_rng(0).normal(size=1_000_000)
    gaussian = compare(values)
    pruned = compare(values[np.abs(values) >= 0.5])
    print(json.dumps({**{k: gaussian[k] for k in ("speedup", "sse_ratio", "sse_vs_optimal")},
                      "gaussian": gaussian, "pruned_bimodal": pruned,
                      "baseline": "sklearn KMeans(n_clusters=32, n_init=1); optimum: kmeans1d dynamic programme"}))


if __name__ == "__main__":
    main()
