"""Product quantization: faiss's ProductQuantizer against a batched PyTorch k-means, same data, same budget.

Data (seeded): a 4096 x 4096 float32 matrix of normal weights (a large dense layer). PQ as in Gong et
al.: each row is split into segments of s = 4 values (1024 segments) and each segment gets its own
k = 256 codewords by k-means over the 4096 rows; every row stores one 8-bit code per segment.

- faiss: ``faiss.ProductQuantizer(4096, 1024, 8)`` with ``cp.niter = 25`` (its default), trained on
  all rows, then ``compute_codes`` and ``decode`` (kept only here: it lost).
- torch: ``complab.methods.vq.product_quantize``, what the quantize step uses: the same k-means
  in PyTorch, centroids initialised from random rows (seeded), 25 Lloyd iterations of all 1024
  segments at once (distances by bmm, chunked to stay in cache; centroid sums by scatter_add; an
  empty cluster keeps its centroid), then the nearest codeword per segment; decoded by the file's
  ``reconstruct``.

Both run on --threads threads (torch.set_num_threads, faiss.omp_set_num_threads; default 1: faiss
trains the 1024 small k-means one after another and its OpenMP threads only pay on an idle machine;
on the shared 2-core machine here 2 threads made faiss 5x slower).
Reconstruction error is the mean squared error of the decoded matrix. Prints one JSON object as its
last line: ``winner`` (the faster implementation), ``speedup`` (the loser's time / the winner's),
``mse_ratio`` (the winner's MSE / the loser's: <= 1 means the winner is also at least as accurate),
the times and the MSEs.

    .venv/bin/python benchmarks/pq_speed.py [--rows 4096 --cols 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compression"))

from complab.methods.vq import product_quantize  # noqa: E402
from complab.storage.vq_section import Quantized, reconstruct  # noqa: E402

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


def torch_pq(x: np.ndarray) -> np.ndarray:
    codebook, codes = product_quantize(x, SEGMENT, CODEWORDS, ITERATIONS, seed=0)
    return reconstruct(Quantized("pq", x.shape, CODEWORDS, codebook, codes, segment_length=SEGMENT))


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
    winner, loser = sorted(results, key=lambda name: results[name]["seconds"])
    print(json.dumps({"winner": winner, "speedup": round(results[loser]["seconds"] / results[winner]["seconds"], 2),
                      "mse_ratio": round(results[winner]["mse"] / results[loser]["mse"], 4),
                      "faiss_seconds": results["faiss"]["seconds"], "torch_seconds": results["torch"]["seconds"],
                      "faiss_mse": results["faiss"]["mse"], "torch_mse": results["torch"]["mse"],
                      "rows": args.rows, "cols": args.cols, "segment_length": SEGMENT, "n_codewords": CODEWORDS,
                      "iterations": ITERATIONS, "threads": threads}))


if __name__ == "__main__":
    main()
