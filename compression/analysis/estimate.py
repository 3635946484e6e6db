"""The plan page's live estimate: compressed bytes, ratio and FLOPs of a plan, analytically (no model run).

Per prunable layer it predicts the compact file's bytes from the layer's own weights:
- sparsity s keeps the largest (1 - s) |w| (exact threshold from the sorted magnitudes);
- the positions stream: magnitude-pruned positions are close to random, so the gaps are modelled
  as geometric with the layer's density; with a field of b bits a gap g costs floor(g / 2**b)
  filler entries plus one entry (the file's scheme, compression/storage/FORMAT.md), and the stream
  costs its order-0 entropy (our ANS coder lands within a fraction of a per cent of it); the field
  width is chosen as the encoder does, by the smallest estimate;
- the index stream: k-means of the kept weights' histogram gives each cluster's share; its entropy
  (plus the fillers' zero symbol) times the number of entries;
- codebooks, tables and section headers are small constants; tensors no step touches (biases,
  BatchNorm) are encoded once for real and their exact bytes reused.
Speed matters (a slider moves it): everything per layer is precomputed once in `LayerStats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compression import metrics
from compression.models.handle import ModelHandle

HIST_BINS = 1024
SECTION_OVERHEAD = 12  # name length, type, shape, flags (plus the name's own bytes)
STREAM_OVERHEAD = 6  # per coded stream: counts, table header, ANS tail
TABLE_BYTES_PER_SYMBOL = 0.9  # the coder's table costs about this per used symbol (measured on demo runs)
GAP_BITS_RANGE = range(2, 13)


@dataclass
class LayerStats:
    name: str
    numel: int
    kind: str
    sorted_abs: np.ndarray  # |w| ascending (float32)
    centers: np.ndarray  # histogram bin centres of the signed weights
    counts_by_bin: np.ndarray  # bin counts
    abs_centers: np.ndarray
    flops: int
    fp32_bytes: int


@dataclass
class ModelStats:
    layers: dict[str, LayerStats]
    other_bytes: int  # exact encoded bytes of every tensor no step touches, plus the file header
    fp32_bytes: int
    flops: int
    other_flops: int


def model_stats(handle: ModelHandle) -> ModelStats:
    """Precompute what the estimate needs (once per model; cache it)."""
    from compression.storage import encode_state

    total_flops, per_module = metrics.layer_flops(handle.model, handle.input_shape)
    layers = {}
    for name, weight in handle.prunable_layers().items():
        values = weight.detach().cpu().flatten().float().numpy()
        low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1e-12
        counts, edges = np.histogram(values, bins=HIST_BINS, range=(low, high))
        centers = (edges[:-1] + edges[1:]) / 2
        layers[name] = LayerStats(name, values.size, "conv" if weight.dim() > 2 else "fc", np.sort(np.abs(values)),
                                  centers, counts.astype(np.float64), np.abs(centers),
                                  per_module.get(name, 0), values.size * 4)
    weight_keys = {f"{name}.weight" for name in layers}
    rest = {k: v.detach().cpu() for k, v in handle.model.state_dict().items() if k not in weight_keys}
    other = len(encode_state(rest, {"architecture": handle.architecture}))
    layer_flops = sum(stats.flops for stats in layers.values())
    return ModelStats(layers, other, metrics.fp32_bytes(handle.model), total_flops, total_flops - layer_flops)


def _entropy_bits(weights: np.ndarray) -> float:
    """Shannon entropy in bits of a distribution given by non-negative weights."""
    weights = weights[weights > 0]
    p = weights / weights.sum()
    return float(-(p * np.log2(p)).sum())


def _weighted_kmeans_shares(centers: np.ndarray, counts: np.ndarray, k: int, iters: int = 40) -> np.ndarray:
    """Cluster shares of a weighted 1-D k-means (linear init, Lloyd) over histogram bins."""
    mask = counts > 0
    centers, counts = centers[mask], counts[mask]
    if len(centers) <= k:
        return counts / counts.sum()
    centroids = np.linspace(centers.min(), centers.max(), k)
    for _ in range(iters):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        labels = np.searchsorted(bounds, centers)
        sums = np.bincount(labels, weights=counts * centers, minlength=k)
        mass = np.bincount(labels, weights=counts, minlength=k)
        nonempty = mass > 0
        new = centroids.copy()
        new[nonempty] = sums[nonempty] / mass[nonempty]
        new = np.sort(new)
        if np.allclose(new, centroids):
            break
        centroids = new
    labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, centers)
    return np.bincount(labels, weights=counts, minlength=k) / counts.sum()


def _positions_and_fillers(density: float, index_shares: np.ndarray | None, kept: int) -> tuple[float, float]:
    """Bytes of the positions stream and of the index stream (with fillers) at the best field width."""
    q = 1.0 - density
    best = None
    for bits in GAP_BITS_RANGE:
        field = 1 << bits
        qf = q ** field
        fillers_per_kept = qf / (1.0 - qf) if qf < 1 else 1e9
        final = density * q ** np.arange(field) / (1.0 - qf)
        mix = final.copy()
        mix[-1] += fillers_per_kept
        entries = kept * (1.0 + fillers_per_kept)
        pos_bytes = entries * _entropy_bits(mix) / 8 + STREAM_OVERHEAD + TABLE_BYTES_PER_SYMBOL * field
        if index_shares is not None:
            idx = np.concatenate(([fillers_per_kept], index_shares))
            idx_bytes = entries * _entropy_bits(idx) / 8
        else:
            idx_bytes = kept * fillers_per_kept * 4  # a sparse fp32 layer stores a zero per filler
        if best is None or pos_bytes + idx_bytes < best[0] + best[1]:
            best = (pos_bytes, idx_bytes)
    return best


def layer_bytes(stats: LayerStats, sparsity: float, n_clusters: int | None) -> float:
    """Estimated bytes of one layer's section for a sparsity and a cluster count (None: not clustered)."""
    n_prune = int(round(sparsity * stats.numel))
    kept = stats.numel - n_prune
    header = SECTION_OVERHEAD + len(stats.name) + 7
    if kept == 0:
        return header + STREAM_OVERHEAD
    threshold = stats.sorted_abs[n_prune - 1] if n_prune > 0 else -1.0
    if n_clusters is None:
        if n_prune == 0:
            return header + stats.numel * 4
        pos, fillers = _positions_and_fillers(kept / stats.numel, None, kept)
        return header + pos + fillers + kept * 4
    counts = np.where(stats.abs_centers > threshold, stats.counts_by_bin, 0.0)
    shares = _weighted_kmeans_shares(stats.centers, counts, n_clusters)
    codebook = 4 * min(n_clusters, kept)
    used = int((shares > 0).sum())
    if n_prune == 0:
        idx = kept * _entropy_bits(shares) / 8 + STREAM_OVERHEAD + TABLE_BYTES_PER_SYMBOL * used
        return header + codebook + idx
    pos, idx = _positions_and_fillers(kept / stats.numel, shares * 1.0, kept)
    return header + codebook + pos + idx + STREAM_OVERHEAD + TABLE_BYTES_PER_SYMBOL * (used + 1)


def estimate(stats: ModelStats, settings: dict[str, tuple[float, int | None]]) -> dict:
    """Estimated compressed bytes, ratio and sparse FLOPs for per-layer (sparsity, n_clusters) settings."""
    total = float(stats.other_bytes)
    sparse_flops = float(stats.other_flops)
    per_layer = {}
    for name, layer in stats.layers.items():
        sparsity, n_clusters = settings.get(name, (0.0, None))
        size = layer_bytes(layer, sparsity, n_clusters)
        per_layer[name] = size
        total += size
        sparse_flops += layer.flops * (1.0 - sparsity)
    return {"compressed_bytes": int(round(total)), "ratio": stats.fp32_bytes / total,
            "fp32_bytes": stats.fp32_bytes, "flops": stats.flops, "sparse_flops": int(round(sparse_flops)),
            "per_layer_bytes": per_layer}


def settings_from_plan(plan, layers: list[str], auto_clusters: int = 32) -> dict[str, tuple[float, int | None]]:
    """Per-layer (sparsity, n_clusters) a plan asks for ("auto" is estimated at `auto_clusters`)."""
    from compression.plan import resolve

    out = {}
    for name in layers:
        sparsity, n_clusters = 0.0, None
        for step in plan.steps:
            if step.type == "prune":
                sparsity = float(resolve(step.sparsity, name) or 0.0)
            elif step.type == "cluster":
                value = resolve(step.n_clusters, name)
                n_clusters = auto_clusters if value == "auto" else value
        out[name] = (sparsity, n_clusters)
    return out


