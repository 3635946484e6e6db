"""Benchmark of the compact format: decode time vs torch.load, encode speed, file size, coder overhead.

Two models with random (seeded) weights: a LeNet-5-like net (conv 1->20 5x5, conv 20->50 5x5,
fc 800->500, fc 500->10) and torchvision's ResNet-18. Every conv/fc weight is pruned to 92% zeros
by magnitude and its survivors are snapped to 32 shared values (quantiles of the survivors; no
k-means needed to time a codec). Biases and BatchNorm tensors stay as they are.

Run from the repo root: .venv/bin/python benchmarks/codec_speed.py
The last line printed is one JSON object:
- decode_vs_torch_load: our decode_state time over torch.load(weights_only=True) of the same fp32
  state dict saved with torch.save to a BytesIO; the two run alternately, GC off, median of the
  repetitions, every result kept alive so each call fills fresh memory as loading a model does;
  the worse of the two models (target <= 3);
- hot_loop_decode_vs_torch_load: the same with each result dropped at once, so every call reuses
  the memory the previous one freed (torch.load then runs at memcpy speed; reported, not a target);
- encode_mb_s: fp32 MB of state dict encoded per second (both models together);
- max_stream_overhead: worst bytes / (n * H / 8) - 1 over coded streams of >= 10,000 symbols,
  table and stream header included (target <= 0.005); H is inspect_bytes' entropy_bytes, for an
  escape-coded positions block the order-0 entropy of the gaps themselves (FORMAT.md section 3);
- per-model details under "models".
"""

from __future__ import annotations

import gc
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compression"))

from complab.storage import decode_state, encode_state, inspect_bytes  # noqa: E402

SPARSITY = 0.92
N_CLUSTERS = 32
MIN_STREAM_SYMBOLS = 10_000


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None)


def prune_and_share(weight: torch.Tensor, sparsity: float, n_clusters: int) -> torch.Tensor:
    """Magnitude pruning to `sparsity`, then each survivor snapped to the nearest of n_clusters quantiles."""
    flat = weight.detach().numpy().astype(np.float32).ravel()
    n_zero = int(round(sparsity * flat.size))
    order = np.argsort(np.abs(flat), kind="stable")
    out = flat.copy()
    out[order[:n_zero]] = 0.0
    survivors = out[order[n_zero:]]
    centroids = np.quantile(survivors, (np.arange(n_clusters) + 0.5) / n_clusters).astype(np.float32)
    centroids = np.unique(centroids)
    edges = (centroids[1:] + centroids[:-1]) / 2
    out[order[n_zero:]] = centroids[np.searchsorted(edges, survivors)]
    return torch.from_numpy(out.reshape(weight.shape))


def compressed_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            kinds[f"{name}.weight"] = "conv" if isinstance(module, nn.Conv2d) else "fc"
    state = {}
    for name, tensor in model.state_dict().items():
        state[name] = prune_and_share(tensor, SPARSITY, N_CLUSTERS) if name in kinds else tensor.clone()
    return state, kinds


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired_median_times(first, second, repeats: int, keep_results: bool) -> tuple[float, float]:
    """Median times of two functions run alternately (so both see the same machine load), GC off.

    keep_results=True keeps every result alive until the end, so each call fills fresh memory, as a
    program that loads a model does; False drops each result at once, so the next call reuses the
    freed memory (a hot loop: the allocator hands back pages that are already mapped).
    """
    first(), second()  # warm up
    times: tuple[list[float], list[float]] = ([], [])
    kept = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for fn, out in ((first, times[0]), (second, times[1])):
                start = time.perf_counter()
                result = fn()
                out.append(time.perf_counter() - start)
                if keep_results:
                    kept.append(result)
                del result
    finally:
        del kept
        if enabled:
            gc.enable()
    return statistics.median(times[0]), statistics.median(times[1])


def bench(label: str, model: nn.Module, repeats: int) -> dict:
    state, kinds = compressed_state(model)
    fp32_bytes = sum(t.numel() * t.element_size() for t in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    saved = buffer.getvalue()

    encode_s = median_time(lambda: encode_state(state, {"model": label}, kinds), max(1, repeats // 3))
    data = encode_state(state, {"model": label}, kinds)
    meta, decoded = decode_state(data)
    assert list(decoded) == list(state) and all(torch.equal(decoded[k], state[k]) for k in state)

    def load():
        return torch.load(io.BytesIO(saved), weights_only=True)

    def decode():
        return decode_state(data)

    torch_load_s, decode_s = paired_median_times(load, decode, repeats, keep_results=True)
    hot_load_s, hot_decode_s = paired_median_times(load, decode, repeats, keep_results=False)

    rows = inspect_bytes(data)
    overheads = [s["bytes"] / s["entropy_bytes"] - 1 for r in rows for s in r["streams"]
                 if s["symbols"] >= MIN_STREAM_SYMBOLS and s["entropy_bytes"] > 0]
    try:
        import zstandard

        zstd_bytes = len(zstandard.ZstdCompressor(level=3).compress(saved))
    except ImportError:
        zstd_bytes = None
    result = {
        "fp32_bytes": fp32_bytes,
        "torch_save_bytes": len(saved),
        "torch_save_zstd3_bytes": zstd_bytes,
        "file_bytes": len(data),
        "compression_ratio": round(fp32_bytes / len(data), 2),
        "encode_s": round(encode_s, 4),
        "decode_s": round(decode_s, 4),
        "torch_load_s": round(torch_load_s, 4),
        "decode_vs_torch_load": round(decode_s / torch_load_s, 3),
        "hot_loop_decode_s": round(hot_decode_s, 4),
        "hot_loop_torch_load_s": round(hot_load_s, 4),
        "hot_loop_decode_vs_torch_load": round(hot_decode_s / hot_load_s, 3),
        "encode_mb_s": round(fp32_bytes / 1e6 / encode_s, 2),
        "coded_streams_ge_10k": len(overheads),
        "max_stream_overhead": round(max(overheads), 5) if overheads else None,
        "mean_stream_overhead": round(float(np.mean(overheads)), 5) if overheads else None,
    }
    print(f"{label}: {json.dumps(result)}", flush=True)
    return result


def main() -> None:
    torch.manual_seed(0)
    results = {"lenet5": bench("lenet5", lenet5(), repeats=101),
               "resnet18": bench("resnet18", resnet18(), repeats=15)}
    fp32 = sum(r["fp32_bytes"] for r in results.values())
    encode_s = sum(r["encode_s"] for r in results.values())
    overheads = [r["max_stream_overhead"] for r in results.values() if r["max_stream_overhead"] is not None]
    summary = {
        "decode_vs_torch_load": max(r["decode_vs_torch_load"] for r in results.values()),
        "hot_loop_decode_vs_torch_load": max(r["hot_loop_decode_vs_torch_load"] for r in results.values()),
        "encode_mb_s": round(fp32 / 1e6 / encode_s, 2),
        "max_stream_overhead": max(overheads) if overheads else None,
        "fp32_bytes": fp32,
        "file_bytes": sum(r["file_bytes"] for r in results.values()),
        "models": results,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
