"""Deep Compression's Table 1 on our demo networks (LeNet-300-100, LeNet-5 on the digits).

Runs the shipped recipes (assets/recipes/) through `compress`: prune -> k-means weight sharing with
the dynamic per-layer k -> compact file; accuracy after is measured on the model decoded from the
file, on the test split (one test image = 0.28 points). Each network runs with SEEDS plan seeds, in
WORKERS processes of one thread each (2 cores: the six runs take about what three would one by one);
the ratio and accuracy drop reported are the means over the seeds, with every seed's value beside
them. Baselines in the same run: the fp32 state dict (torch.save) and zstd -19 of the same pruned,
clustered fp32 state dict. Prints one JSON object as its last line.

entropy_overhead: the worst bytes / entropy_bytes - 1 over the coded streams of >= 10,000 symbols, both
from inspect_bytes. entropy_bytes is n * H / 8 with H the order-0 empirical entropy of the information
the stream carries: for a version-2 positions block (escape-coded, FORMAT.md 2.5 and 3.2) the entropy
of the gaps themselves (one per kept weight), not of the escape symbols coded; for an index stream split
by context, that of the whole index stream. So the escape split cannot flatter the figure, and a context
that pays shows as a negative overhead. "streams" lists each measured stream (layer, kind, symbols, bytes,
entropy_bytes, overhead, section version, index contexts) of >= 1,000 symbols; entropy_overhead_1k is the
worst over those (the recipes' 98-99% pruned files have no stream of 10,000 symbols, so entropy_overhead
is null for them, and a small stream pays its table over fewer symbols).

    .venv/bin/python benchmarks/deep_compression_table.py
"""

from __future__ import annotations

import io
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab.data import load_data  # noqa: E402
from complab.models.handle import load_model  # noqa: E402
from complab.pipeline import compress  # noqa: E402
from complab.plan import Plan  # noqa: E402
from complab.storage import inspect_bytes  # noqa: E402

MIN_STREAM_SYMBOLS = 10_000
SMALL_STREAM_SYMBOLS = 1_000  # entropy_overhead_1k: the records' files have no stream of 10,000 symbols
NETWORKS = ("lenet300", "lenet5")
SEEDS = (0, 1, 2)  # plan seeds: fine-tuning data order (and the search's) differ; the recipe's settings do not
WORKERS = 2  # processes at once, one torch thread each


def zstd_bytes(model: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    return len(zstandard.ZstdCompressor(level=19).compress(buffer.getvalue()))


def run_network(name: str, out_root: Path, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    handle = load_model(f"demo:{name}")
    data = load_data("digits", input_size=handle.input_shape[-1])
    recipe = json.loads((ROOT / "assets" / "recipes" / f"{name}.json").read_text())
    plan = Plan.from_dict({**recipe, "seed": seed})
    out_root = out_root / f"seed{seed}"
    start = time.time()
    result = compress(handle, plan, data, out_root / name, latency=False)
    m = result.metrics
    rows = inspect_bytes(result.path.read_bytes())
    streams = [s for row in rows for s in row.get("streams", [])]
    big = [s for s in streams if s["symbols"] >= MIN_STREAM_SYMBOLS]
    layers = []
    for row in rows:
        if row.get("encoding") != "shared":
            continue
        coded_bits = 8 * (row["bytes_positions"] + row["bytes_indices"])
        entropy_bits = 8 * sum(s["entropy_bytes"] for s in row.get("streams", []))
        layers.append({"layer": row["name"], "weights": row["numel"], "kept": row["nonzeros"],
                       "n_clusters": row["n_clusters"],
                       "bits_per_kept_weight": coded_bits / max(1, row["nonzeros"]),
                       "entropy_bits_per_kept_weight": entropy_bits / max(1, row["nonzeros"])})
    zstd = zstd_bytes(result.handle.model)
    return {
        "fp32_bytes": m["before"]["fp32_bytes"],
        "compressed_bytes": m["after"]["compressed_bytes"],
        "ratio": m["compression_ratio"],
        "weights_kept_pct": 100 * m["weights_kept"],
        "acc_before": m["before"]["accuracy"],
        "acc_after": m["after"]["accuracy"],
        "acc_after_in_memory": m["after"]["in_memory_accuracy"],
        "acc_drop_points": 100 * (m["before"]["accuracy"] - m["after"]["accuracy"]),
        "seed": seed,
        "n_clusters": m["steps"].get("cluster", {}).get("n_clusters"),
        "sparsity": m["steps"].get("prune", {}).get("sparsity"),
        "layers": layers,
        "zstd19_bytes": zstd,
        "zstd_over_ours": zstd / m["after"]["compressed_bytes"],
        "stream_overheads": [s["bytes"] / s["entropy_bytes"] - 1 for s in big if s["entropy_bytes"] > 0],
        "stream_overheads_1k": [s["bytes"] / s["entropy_bytes"] - 1 for s in streams
                                if s["symbols"] >= SMALL_STREAM_SYMBOLS and s["entropy_bytes"] > 0],
        "streams": [{"layer": row["name"], "stream": s["stream"], "symbols": s["symbols"], "bytes": s["bytes"],
                     "entropy_bytes": round(s["entropy_bytes"], 1),
                     "overhead": round(s["bytes"] / s["entropy_bytes"] - 1, 5) if s["entropy_bytes"] else None,
                     "section_version": row.get("section_version"), "contexts": s.get("contexts")}
                    for row in rows for s in row.get("streams", []) if s["symbols"] >= SMALL_STREAM_SYMBOLS],
        "seconds": round(time.time() - start, 1),
    }


def main() -> None:
    started = time.time()
    jobs = [(name, seed) for name in reversed(NETWORKS) for seed in SEEDS]  # the slower LeNet-5 first
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(
            WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job: pool.submit(run_network, job[0], Path(tmp), job[1]) for job in jobs}
        runs = {job: future.result() for job, future in futures.items()}
    table = {}
    for name in NETWORKS:
        rows = [runs[(name, seed)] for seed in SEEDS]
        table[name] = {**rows[0], "ratio": statistics.mean(r["ratio"] for r in rows),
                       "ratio_seeds": [r["ratio"] for r in rows],
                       "compressed_bytes_seeds": [r["compressed_bytes"] for r in rows],
                       "acc_drop_points": statistics.mean(r["acc_drop_points"] for r in rows),
                       "acc_drop_points_seeds": [r["acc_drop_points"] for r in rows],
                       "acc_after_seeds": [r["acc_after"] for r in rows],
                       "seconds_seeds": [r["seconds"] for r in rows],
                       "n_clusters_seeds": [r["n_clusters"] for r in rows]}
    for name, row in table.items():
        print(f"{name:9} {row['fp32_bytes']:>9,} -> {row['compressed_bytes']:>7,} bytes (seed {SEEDS[0]})  "
              f"mean {row['ratio']:5.1f}x  seeds {', '.join(f'{r:.1f}x' for r in row['ratio_seeds'])}  "
              f"drops {', '.join(f'{d:+.2f}' for d in row['acc_drop_points_seeds'])} pts  "
              f"kept {row['weights_kept_pct']:4.1f}%  zstd-19 {row['zstd19_bytes']:,} "
              f"({row['zstd_over_ours']:.2f}x ours)",
              file=sys.stderr)
        for layer in row["layers"]:
            print(f"    {layer['layer']:8} k={layer['n_clusters']:<4} kept {layer['kept']:>6}/{layer['weights']:<7} "
                  f"{layer['bits_per_kept_weight']:.2f} bits/kept weight (entropy "
                  f"{layer['entropy_bits_per_kept_weight']:.2f})", file=sys.stderr)
    overheads = [o for row in runs.values() for o in row["stream_overheads"]]
    overheads_1k = [o for row in runs.values() for o in row["stream_overheads_1k"]]
    summary = {
        "lenet5_ratio": round(table["lenet5"]["ratio"], 2),
        "lenet5_acc_drop": round(table["lenet5"]["acc_drop_points"], 3),
        "lenet300_ratio": round(table["lenet300"]["ratio"], 2),
        "lenet300_acc_drop": round(table["lenet300"]["acc_drop_points"], 3),
        "lenet5_ratio_seeds": [round(r, 2) for r in table["lenet5"]["ratio_seeds"]],
        "lenet5_acc_drop_seeds": [round(d, 3) for d in table["lenet5"]["acc_drop_points_seeds"]],
        "lenet300_ratio_seeds": [round(r, 2) for r in table["lenet300"]["ratio_seeds"]],
        "lenet300_acc_drop_seeds": [round(d, 3) for d in table["lenet300"]["acc_drop_points_seeds"]],
        "seeds": list(SEEDS),
        "entropy_overhead": round(max(overheads), 5) if overheads else None,
        "streams_measured": len(overheads),
        "entropy_overhead_1k": round(max(overheads_1k), 5) if overheads_1k else None,
        "streams_measured_1k": len(overheads_1k),
        "zstd_over_ours": round(min(row["zstd_over_ours"] for row in runs.values()), 3),
        "baseline": "torch.save fp32 state dict; zstd -19 of the same pruned+clustered fp32 state dict",
        "seconds": round(time.time() - started, 1),
        "networks": table,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
