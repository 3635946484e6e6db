"""Product quantization: faiss's ProductQuantizer against a batched PyTorch k-means, same data, same budget.

Data (seeded): a 4096 x 4096 float32 matrix of normal weights (a large dense layer). PQ as in Gong et
al.: each row is split into segments of s = 4 values (1024 segments) and each segment gets its own
k = 256 codewords by k-means over the 4096 rows; every row stores one 8-bit code per segment.

- faiss: ``faiss.ProductQuantizer(4096, 1024, 8)`` with ``cp.niter = 25`` (its default), trained on
  all rows, then ``compute_codes`` and ``decode``. What compression/methods/vq.py uses.
- torch: the same k-means written in PyTorch (the loser, kept only here): centroids initialised
  from random rows (seeded), 25 Lloyd iterations of all 1024 segments at once (distances by bmm,
  chunked to bound memory; centroid sums by scatter_add; an empty cluster keeps its centroid),
  then the nearest codeword per segment.

Both run on --threads threads (torch.set_num_threads, faiss.omp_set_num_threads; default 1: faiss
trains the 1024 small k-means one after another and its OpenMP threads only pay on an idle machine;
on the shared 2-core machine here 2 threads made faiss 5x slower).
Reconstruction error is the mean squared error of the decoded matrix. Prints one JSON object as its
last line: ``speedup`` (torch time / faiss time), ``mse_ratio`` (faiss MSE / torch MSE: <= 1 means
faiss is at least as accurate), the times and the MSEs.

    .venv/bin/python benchmarks/pq_speed.py [--rows 4096 --cols 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import faiss
import numpy as np
import torch

SEGMENT = 4
CODEWORDS = 256
ITERATIONS = 25


def faiss_pq(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    pq = faiss.ProductQuantizer(d, d // SEGMENT, int(np.log2(CODEWORDS)))
    pq.cp.niter = ITERATIONS
    pq.cp.seed = 0
    pq.cp.min_points_per_centroid = 1  # (only silences faiss's "provide more points" warning per segment)
    pq.train(x)
    return pq.decode(pq.compute_codes(x))


def _assign(xs: torch.Tensor, centroids: torch.Tensor, budget: int = 1 << 20) -> torch.Tensor:
    """(M, N) nearest-codeword index per segment; xs (M, N, s), centroids (M, k, s)."""
    segments, n, _ = xs.shape
    k = centroids.shape[1]
    step = max(1, budget // (n * k))
    out = torch.empty(segments, n, dtype=torch.long)
    norms = (centroids ** 2).sum(-1)
    for start in range(0, segments, step):
        part = slice(start, start + step)
        distance = norms[part, None, :] - 2 * torch.bmm(xs[part], centroids[part].transpose(1, 2))
        out[part] = distance.argmin(-1)
    return out


def torch_pq(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    segments = d // SEGMENT
    xs = torch.from_numpy(x).view(n, segments, SEGMENT).transpose(0, 1).contiguous()  # (M, N, s)
    generator = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randperm(n, generator=generator)[:CODEWORDS] for _ in range(segments)])
    centroids = xs[torch.arange(segments)[:, None], rows].clone()  # (M, k, s)
    for _ in range(ITERATIONS):
        codes = _assign(xs, centroids)
        sums = torch.zeros_like(centroids).scatter_add_(1, codes[..., None].expand(-1, -1, SEGMENT), xs)
        counts = torch.zeros(segments, CODEWORDS).scatter_add_(1, codes, torch.ones(segments, n))
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled][:, None]
    codes = _assign(xs, centroids)
    decoded = centroids[torch.arange(segments)[:, None], codes]  # (M, N, s)
    return decoded.transpose(0, 1).reshape(n, d).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    x = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    results = {}
    for name, fn in (("faiss", faiss_pq), ("torch", torch_pq)):
        start = time.perf_counter()
        decoded = fn(x)
        seconds = time.perf_counter() - start
        mse = float(((decoded.astype(np.float64) - x) ** 2).mean())
        results[name] = {"seconds": round(seconds, 2), "mse": mse}
        print(f"{name}: {seconds:.1f} s, MSE {mse:.5f}", flush=True)
    print(json.dumps({"speedup": round(results["torch"]["seconds"] / results["faiss"]["seconds"], 2),
                      "mse_ratio": round(results["faiss"]["mse"] / results["torch"]["mse"], 4),
                      "faiss_seconds": results["faiss"]["seconds"], "torch_seconds": results["torch"]["seconds"],
                      "faiss_mse": results["faiss"]["mse"], "torch_mse": results["torch"]["mse"],
                      "rows": args.rows, "cols": args.cols, "segment_length": SEGMENT, "n_codewords": CODEWORDS,
                      "iterations": ITERATIONS, "threads": threads}))


if __name__ == "__main__":
    main()
