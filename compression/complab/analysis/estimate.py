"""The plan page's live estimate: compressed bytes, ratio and FLOPs of a plan, analytically (no model run).

Per prunable layer it predicts the compact file's bytes from the layer's own weights:
- sparsity s keeps the largest (1 - s) |w| (exact threshold from the sorted magnitudes);
- the positions stream: magnitude-pruned positions are close to random, so the gaps are modelled
  as geometric with the layer's density; with a field of b bits a gap g costs floor(g / 2**b)
  filler entries plus one entry (the file's scheme, compression/complab/storage/FORMAT.md), and the stream
  costs its order-0 entropy (our ANS coder lands within a fraction of a per cent of it); the field
  width is chosen as the encoder does, by the smallest estimate;
- the index stream: k-means of the kept weights' histogram gives each cluster's share; its entropy
  (plus the fillers' zero symbol) times the number of entries;
- codebooks, tables and section headers are small constants; tensors no step touches (biases,
  BatchNorm) are encoded once for real and their exact bytes reused.
Speed matters (a slider moves it): everything per layer is precomputed once in `LayerStats`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from complab import metrics
from complab.layermap import STEP_TYPES, resolve
from complab.methods.ecsq import LAMBDA_RANGE, LAMBDA_STEPS, ecsq_1d
from complab.methods.kmeans1d import kmeans_1d
from complab.models.handle import ModelHandle

HIST_BINS = 2048
KMEANS_SAMPLE = 512  # kept-bin centres the estimate clusters (the real run clusters every weight)
CALIBRATION_SPARSITIES = np.array([0.3, 0.6, 0.8, 0.9, 0.95, 0.98])
SECTION_OVERHEAD = 12  # name length, type, shape, flags (plus the name's own bytes)
STREAM_OVERHEAD = 6  # per coded stream: counts, table header, ANS tail
TABLE_BYTES_PER_SYMBOL = 0.12  # the coder's table costs about this per alphabet symbol (measured on demo runs)
GAP_BITS_RANGE = range(2, 13)
# a layer's section is named after its weight tensor, "<layer>.weight": the layer's name plus these bytes
WEIGHT_SUFFIX_BYTES = len(".weight")


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
    position_factors: tuple[np.ndarray, np.ndarray]  # (sparsities, real / geometric positions bytes)
    value_bytes: float  # bytes per kept fp32 value as the codec stores unshared values (shuffle + zstd)
    shape: tuple[int, ...] = ()  # the weight's shape (vector quantization's layouts depend on it)
    # a seeded sample of whole output-channel rows ([rows, values per row], float32): what the int step's estimate
    # quantizes to count its levels (per-channel scales need whole rows); None: estimated from sorted_abs alone
    rows: np.ndarray | None = None
    # layer_bytes answers by (sparsity, n_clusters): a slider moves one layer, the other layers' answers are reused
    memo: dict = field(default_factory=dict, repr=False, compare=False)
    parts_memo: dict = field(default_factory=dict, repr=False, compare=False)  # layer_parts' answers, the same way


@dataclass(frozen=True)
class LayerParts:
    """One layer's estimated section, split as the file's own sections count their bytes (storage.inspect_bytes):
    what the "where the bytes went" waterfall draws. `total` is the layer's estimated bytes."""

    numel: int
    kept: int  # weights left after pruning
    header: float = 0.0  # name, type, shape, flags
    codebook: float = 0.0  # shared values or codewords (32-bit)
    positions: float = 0.0  # the positions stream as coded (with its table)
    fixed_positions: float = 0.0  # the same entries at the fixed gap width, before entropy coding
    indices: float = 0.0  # the index stream as coded (with its table)
    fixed_indices: float = 0.0  # the same entries at log2(k+1) bits
    raw: float = 0.0  # values kept as 32-bit numbers (zstd), or the whole dense tensor
    codes: float = 0.0  # a vector quantizer's bit-packed codes
    encoding: str = "raw"  # raw, sparse, shared or a step's own (its estimate_layer hook): as the file writes it

    @property
    def total(self) -> float:
        return self.header + self.codebook + self.positions + self.indices + self.raw + self.codes


@dataclass
class ModelStats:
    layers: dict[str, LayerStats]
    other_bytes: int  # exact encoded bytes of every tensor no step touches, plus the file header
    fp32_bytes: int
    flops: int
    other_flops: int
    # layer -> (its bias's values, the bias section's exact bytes as it stands): what the cluster step's
    # bias_clusters would replace (the biases are part of other_bytes)
    biases: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)
    # the tensors no step touches, as report.tensor_steps counts them in their real encoding (plus the file
    # header), and their fp32 bytes: the estimated waterfall's exact part
    other_steps: dict[str, int] = field(default_factory=dict)
    other_dense_bytes: int = 0


def model_stats(handle: ModelHandle) -> ModelStats:
    """Precompute what the estimate needs (once per model; cache it).

    Each layer's weights are sorted twice (signed and by magnitude) and everything else is read off
    those two sorted copies: a ResNet-50 takes a few seconds, not half a minute of argsorts.
    """
    from complab import __version__
    from complab.storage import encode_state

    total_flops, per_module = _layer_flops(handle.model, handle.input_shape)

    def layer_stats(name: str, weight) -> LayerStats:
        values = weight.detach().cpu().flatten().float().numpy()  # float32: every comparison below is exact
        rows = _row_sample(values, tuple(weight.shape))
        sorted_values = np.sort(values)
        sorted_abs = _sorted_magnitudes(sorted_values)
        centers, counts = _equal_count_bins(sorted_values, min(HIST_BINS, values.size))
        return LayerStats(name, values.size, "conv" if weight.dim() > 2 else "fc", sorted_abs,
                          centers, counts, np.abs(centers), per_module.get(name, 0), values.size * 4,
                          _position_factors(np.abs(values), sorted_abs),
                          _value_bytes(values, sorted_abs=sorted_abs), tuple(weight.shape), rows)

    # numpy's sorts and reductions release the GIL: layers in parallel threads use the machine's cores
    workers = max(1, min(4, os.cpu_count() or 1))
    weights = handle.prunable_layers()
    with ThreadPoolExecutor(workers) as pool:
        layers = dict(zip(weights, pool.map(layer_stats, weights, weights.values()), strict=True))
    weight_keys = {f"{name}.weight" for name in layers}
    rest = {k: v.detach().cpu() for k, v in handle.model.state_dict().items() if k not in weight_keys}
    # the file's meta as the writer makes it (models/compact.py), less what a run adds (its plan, the data reference)
    meta = {"producer": f"complab {__version__}", "task": handle.task, **handle.compact_meta()}
    encoded = encode_state(rest, meta)
    other_steps, other_dense = _fixed_steps(encoded)
    layer_flops = sum(stats.flops for stats in layers.values())
    empty = len(encode_state({}, {}))
    biases = {name: (rest[f"{name}.bias"].flatten().float().numpy(),
                     len(encode_state({f"{name}.bias": rest[f"{name}.bias"]}, {})) - empty)
              for name in layers if rest.get(f"{name}.bias") is not None and rest[f"{name}.bias"].is_floating_point()}
    return ModelStats(layers, len(encoded), metrics.fp32_bytes(handle.model), total_flops, total_flops - layer_flops,
                      biases, other_steps, other_dense)


def _fixed_steps(encoded: bytes) -> tuple[dict[str, int], int]:
    """The waterfall steps of the tensors no step touches, read off their real encoding, and their fp32 bytes."""
    from complab.analysis.report import rows_steps
    from complab.storage import inspect_bytes

    return rows_steps(inspect_bytes(encoded))


ROW_SAMPLE = 1 << 16  # weights of whole output-channel rows an int layer's estimate quantizes (at least MIN_ROWS rows)
MIN_ROWS = 16


def _row_sample(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Evenly spaced whole rows (output channels) of a weight, about ROW_SAMPLE values (at least MIN_ROWS rows)."""
    out = shape[0] if shape else 1
    matrix = values.reshape(out, -1)
    take = min(out, max(MIN_ROWS, ROW_SAMPLE // max(1, matrix.shape[1])))
    chosen = np.unique(np.linspace(0, out - 1, take).round().astype(np.int64))
    return np.ascontiguousarray(matrix[chosen])


def _layer_flops(model, input_shape: tuple[int, ...]) -> tuple[int, dict[str, int]]:
    """metrics.layer_flops on a weightless copy of the model (meta tensors: FLOPs depend on shapes only), so
    counting costs no real forward pass (2.5 s for a ResNet-50 at 224 px on 2 cores); a model whose forward
    needs real values (or cannot be copied, e.g. TorchScript) is counted on its real weights."""
    import copy

    import torch

    try:
        memo = {}
        for tensor in (*model.parameters(), *model.buffers()):
            empty = torch.empty_like(tensor, device="meta")
            memo[id(tensor)] = torch.nn.Parameter(empty, requires_grad=False) \
                if isinstance(tensor, torch.nn.Parameter) else empty
        return metrics.layer_flops(copy.deepcopy(model, memo), input_shape)
    except Exception:  # noqa: BLE001 - data-dependent forward, a ScriptModule: count on the real model
        return metrics.layer_flops(model, input_shape)


def _sorted_magnitudes(sorted_values: np.ndarray) -> np.ndarray:
    """np.sort(np.abs(v)) from sorted v: the negatives reversed and the rest are two ascending runs, which a
    stable (run-merging) sort joins 5x faster than sorting the magnitudes afresh."""
    split = int(np.searchsorted(sorted_values, 0.0))
    runs = np.concatenate((-sorted_values[:split][::-1], np.abs(sorted_values[split:])))
    return np.sort(runs, kind="stable")


def _equal_count_bins(sorted_values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Means and sizes of np.array_split(sorted_values, bins) (the first n % bins groups one longer), without
    building the groups: equal-count bins follow the density, so even k = 256 clusters see the distribution."""
    size, extra = divmod(sorted_values.size, bins)
    counts = np.full(bins, size, dtype=np.int64)
    counts[:extra] += 1
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sums = np.add.reduceat(sorted_values.astype(np.float64), starts)
    return sums / counts, counts.astype(np.float64)


def _entropy_bits(weights: np.ndarray) -> float:
    """Shannon entropy in bits of a distribution given by non-negative weights."""
    weights = weights[weights > 0]
    p = weights / weights.sum()
    return float(-(p * np.log2(p)).sum())


def _kept_mask(magnitudes: np.ndarray, sorted_abs: np.ndarray, n_prune: int) -> np.ndarray:
    """The weights magnitude pruning keeps: the same mask as pruning the first n_prune of a stable argsort of
    |w| (ties at the threshold are pruned in index order), from one sort instead of an argsort per sparsity."""
    threshold = sorted_abs[n_prune - 1]
    keep = magnitudes > threshold
    ties_kept = magnitudes.size - n_prune - int(np.count_nonzero(keep))
    if ties_kept > 0:
        ties = np.flatnonzero(magnitudes == threshold)
        keep[ties[ties.size - ties_kept:]] = True
    return keep


def _gap_entropy_ratio(magnitudes: np.ndarray, sorted_abs: np.ndarray, sparsity: float) -> float:
    """Entropy of the real mask's gaps over that of random (geometric) gaps at the same density."""
    n_prune = int(round(sparsity * magnitudes.size))
    kept = magnitudes.size - n_prune
    if kept == 0 or n_prune == 0:
        return 1.0
    keep = _kept_mask(magnitudes, sorted_abs, n_prune)
    gaps = np.diff(np.flatnonzero(keep), prepend=-1) - 1
    real = _entropy_bits(np.bincount(gaps).astype(np.float64))
    density = kept / magnitudes.size
    q = 1.0 - density
    geometric = (-(q * np.log2(q)) - density * np.log2(density)) / density
    return real / geometric if geometric > 0 else 1.0


def _value_bytes(values: np.ndarray, sparsity: float = 0.9, sorted_abs: np.ndarray | None = None) -> float:
    """Measured bytes per kept value of a pruned, unshared layer: the codec's own packing of the largest
    10% of the layer's weights (a sample of at most 100,000)."""
    from complab.storage.sections import pack_raw

    sorted_abs = np.sort(np.abs(values)) if sorted_abs is None else sorted_abs
    kept = sorted_abs[int(sparsity * values.size):]
    sample = values[np.abs(values) >= kept[0]][:100_000].astype(np.float32) if kept.size else values[:1]
    return len(pack_raw(sample.tobytes(), 4)[1]) / max(1, sample.size)


def _position_factors(magnitudes: np.ndarray, sorted_abs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real / geometric positions bytes at a few sparsities: pruned weights cluster (dead inputs, whole
    filters), which random positions miss; the estimate scales its geometric model by this factor."""
    factors = [_gap_entropy_ratio(magnitudes, sorted_abs, sparsity) for sparsity in CALIBRATION_SPARSITIES]
    return CALIBRATION_SPARSITIES, np.array(factors)


def _positions_and_fillers(density: float, index_shares: np.ndarray | None, kept: int,
                           factor: float) -> tuple[float, float, int, float]:
    """Bytes of the positions stream and of the index stream (with fillers) at the best field width, that width
    in bits and the number of entries (kept weights plus fillers)."""
    q = 1.0 - density
    best = None
    # the best field for geometric gaps holds about the mean gap; try the widths around it
    centre = int(np.clip(np.round(np.log2(max(1.0, 1.0 / max(density, 1e-9)))) + 1, GAP_BITS_RANGE.start,
                         GAP_BITS_RANGE.stop - 1))
    for bits in range(max(GAP_BITS_RANGE.start, centre - 2), min(GAP_BITS_RANGE.stop, centre + 3)):
        field = 1 << bits
        qf = q ** field
        fillers_per_kept = qf / (1.0 - qf) if qf < 1 else 1e9
        final = density * q ** np.arange(field) / (1.0 - qf)
        mix = final.copy()
        mix[-1] += fillers_per_kept
        entries = kept * (1.0 + fillers_per_kept)
        pos_bytes = factor * entries * _entropy_bits(mix) / 8 + STREAM_OVERHEAD + TABLE_BYTES_PER_SYMBOL * field
        if index_shares is not None:
            idx = np.concatenate(([fillers_per_kept], index_shares))
            idx_bytes = entries * _entropy_bits(idx) / 8
        else:
            idx_bytes = kept * fillers_per_kept * 4  # a sparse fp32 layer stores a zero per filler
        if best is None or pos_bytes + idx_bytes < best[0] + best[1]:
            best = (pos_bytes, idx_bytes, bits, entries)
    return best


AUTO_CLUSTERS = 32  # a cluster count of "auto" (the run picks k per layer) is estimated at this k
MEMO_ENTRIES = 4096  # per layer: every slider step times every cluster choice fits


def layer_bytes(stats: LayerStats, sparsity: float, n_clusters: int | None,
                rate: tuple[float, bool] | None = None) -> float:
    """Estimated bytes of one layer's section for a sparsity and a cluster count (None: not clustered); `rate`:
    (lambda, joint_prune) of the cluster step's objective "rate" (n_clusters is then the most values it may use)."""
    n_clusters = AUTO_CLUSTERS if n_clusters == "auto" else n_clusters
    key = (float(sparsity), n_clusters) if rate is None else (float(sparsity), n_clusters, rate)
    cached = stats.memo.get(key)
    if cached is None:
        cached = layer_parts(stats, float(sparsity), n_clusters, rate).total
        if len(stats.memo) < MEMO_ENTRIES:
            stats.memo[key] = cached
    return cached


def layer_parts(stats: LayerStats, sparsity: float, n_clusters: int | None,
                rate: tuple[float, bool] | None = None) -> LayerParts:
    """layer_bytes split into the file's parts (memoized the same way). The fixed-width streams are counted at
    the estimate's own field width: the encoder picks its width from the real gaps (pruned weights cluster, so
    often a wider one), which moves bytes between the "positions" and "entropy" bars, not their sum."""
    n_clusters = AUTO_CLUSTERS if n_clusters == "auto" else n_clusters
    key = (float(sparsity), n_clusters) if rate is None else (float(sparsity), n_clusters, rate)
    cached = stats.parts_memo.get(key)
    if cached is None:
        cached = _layer_parts(stats, float(sparsity), n_clusters, rate)
        if len(stats.parts_memo) < MEMO_ENTRIES:
            stats.parts_memo[key] = cached
    return cached


def _layer_bytes(stats: LayerStats, sparsity: float, n_clusters: int | None) -> float:
    return _layer_parts(stats, sparsity, n_clusters).total


def _layer_parts(stats: LayerStats, sparsity: float, n_clusters: int | None,
                 rate: tuple[float, bool] | None = None) -> LayerParts:
    n_prune = int(round(sparsity * stats.numel))
    kept = stats.numel - n_prune
    header = SECTION_OVERHEAD + len(stats.name) + WEIGHT_SUFFIX_BYTES
    if kept == 0:
        return LayerParts(stats.numel, 0, header=header, positions=STREAM_OVERHEAD, encoding="sparse")
    threshold = stats.sorted_abs[n_prune - 1] if n_prune > 0 else -1.0
    factor = float(np.interp(sparsity, *stats.position_factors))
    if n_clusters is None:
        if n_prune == 0:
            return LayerParts(stats.numel, kept, header=header, raw=stats.numel * 4)
        pos, fillers, bits, entries = _positions_and_fillers(kept / stats.numel, None, kept, factor)
        return LayerParts(stats.numel, kept, header=header, positions=pos, fixed_positions=entries * bits / 8,
                          raw=fillers * stats.value_bytes / 4 + kept * stats.value_bytes, encoding="sparse")
    # the bins hold equal counts, so the kept bins' centres are an evenly weighted sample of the kept
    # weights: run the real k-means on them and read off each cluster's share
    sample = stats.centers[stats.abs_centers > threshold]
    if sample.size == 0:
        sample = stats.centers[-1:]
    sample = sample[:: max(1, sample.size // KMEANS_SAMPLE)]  # every bin holds the same count: thin evenly
    if rate is None or n_clusters is None:
        _, labels = kmeans_1d(sample, n_clusters, refine=False)  # Lloyd only: 20x faster, shares barely move
        shares = np.bincount(labels).astype(np.float64) / labels.size
    else:  # objective "rate": the same entropy-constrained k-means the run does, on the sample
        lam, joint_prune = rate
        centroids, labels = ecsq_1d(sample, n_clusters, lam, None, joint_prune,
                                    total=max(sample.size, int(round(sample.size * stats.numel / kept))))
        zeroed = float((labels == len(centroids)).mean())
        if joint_prune and zeroed > 0 and kept > 1:  # the weights it sends to zero: a higher sparsity
            sparsity = min(1.0, sparsity + (1.0 - sparsity) * zeroed)
            n_prune = int(round(sparsity * stats.numel))
            kept = stats.numel - n_prune
            if kept == 0:
                return LayerParts(stats.numel, 0, header=header, positions=STREAM_OVERHEAD, encoding="sparse")
            factor = float(np.interp(sparsity, *stats.position_factors))
        labels = labels[labels < len(centroids)]
        shares = np.bincount(labels, minlength=len(centroids)).astype(np.float64) / max(1, labels.size)
        n_clusters = max(1, int((shares > 0).sum()))
    codebook = 4 * min(n_clusters, kept)
    used = int((shares > 0).sum())
    index_bits = max(1, math.ceil(math.log2(n_clusters + 1)))  # the file's fixed width: k values and the zero
    if n_prune == 0:
        idx = kept * _entropy_bits(shares) / 8 + STREAM_OVERHEAD + TABLE_BYTES_PER_SYMBOL * used
        return LayerParts(stats.numel, kept, header=header, codebook=codebook, indices=idx,
                          fixed_indices=kept * index_bits / 8, encoding="shared")
    pos, idx, bits, entries = _positions_and_fillers(kept / stats.numel, shares * 1.0, kept, factor)
    return LayerParts(stats.numel, kept, header=header, codebook=codebook, positions=pos,
                      fixed_positions=entries * bits / 8,
                      indices=idx + STREAM_OVERHEAD + TABLE_BYTES_PER_SYMBOL * (used + 1),
                      fixed_indices=entries * index_bits / 8, encoding="shared")


def replaced_layer_parts(stats: LayerStats, sparsity: float, quantizer: dict) -> LayerParts:
    """Estimated bytes of a layer a step stores its own way (quantizer: the step's per-layer settings, e.g.
    QuantizeStep.layer_settings): the registered step that knows these settings estimates them (its
    `estimate_layer` hook), handed the clustered-layer estimate and LayerParts to build on."""
    header = SECTION_OVERHEAD + len(stats.name) + WEIGHT_SUFFIX_BYTES
    for config in STEP_TYPES.values():
        hook = getattr(config, "estimate_layer", None)
        if hook is not None:
            parts = hook(stats, sparsity, quantizer, layer_parts, LayerParts, header)
            if parts is not None:
                return parts
    raise ValueError(f"no step estimates a layer stored as {quantizer!r}")


def int_quantizer(bits: int, granularity: str | None = "channel") -> dict:
    """The per-layer storage settings of an integer-quantized layer, as `estimate`'s quantizers take them (the int
    step's estimate_layer hook turns them into bytes; predict reads its bits curve)."""
    return {"int_bits": int(bits), "granularity": granularity or "channel"}


def plan_settings(steps, layers: list[str]) -> tuple[dict[str, tuple[float, int | str | None]], dict[str, dict],
                                                        dict]:
    """(settings {layer: (sparsity, n_clusters)}, quantizers {layer: settings}, options such as bias_clusters) of
    a plan's steps, read from each step's estimate hook (`encoding(layer)`, `estimate_options()`): the arguments
    of `estimate` and `estimated_waterfall`, whatever steps the plan holds."""
    settings, quantizers, options = {}, {}, {}
    for step in steps:
        if hasattr(step, "estimate_options"):
            options.update(step.estimate_options())
    for layer in layers:
        merged: dict = {}
        for step in steps:
            if hasattr(step, "encoding"):
                merged.update(step.encoding(layer))
        settings[layer] = (float(merged.get("sparsity", 0.0)), merged.get("n_clusters"))
        if merged.get("quantizer"):
            quantizers[layer] = merged["quantizer"]
        elif merged.get("int_bits"):  # the int step's {bits, granularity}: IntStep.estimate_layer's settings
            quantizers[layer] = int_quantizer(merged["int_bits"]["bits"], merged["int_bits"].get("granularity"))
    return settings, quantizers, options


SHARED_MIN_NUMEL = 64  # the encoder tries the shared encoding on tensors of at least this many values (FORMAT.md)


def shared_bias_bytes(name: str, values: np.ndarray, n_clusters: int) -> float:
    """Estimated bytes of a bias shared among n_clusters values (the cluster step's bias_clusters): no zeros, so
    one index per value, entropy coded, plus the codebook."""
    _, labels = kmeans_1d(values.astype(np.float64), n_clusters, refine=False)
    shares = np.bincount(labels).astype(np.float64) / labels.size
    used = int((shares > 0).sum())
    return (SECTION_OVERHEAD + len(name) + len(".bias") + 4 * used + values.size * _entropy_bits(shares) / 8
            + STREAM_OVERHEAD + TABLE_BYTES_PER_SYMBOL * (used + 1))


def bias_delta(stats: ModelStats, settings: dict[str, tuple[float, int | None]], bias_clusters: int) -> float:
    """Estimated bytes the cluster step's bias_clusters adds (negative: saves) over the biases stored as they are."""
    delta = 0.0
    if bias_clusters:
        for name, (values, exact) in stats.biases.items():
            if settings.get(name, (0.0, None))[1] is None or values.size <= bias_clusters:
                continue
            if values.size >= SHARED_MIN_NUMEL:
                delta += min(exact, shared_bias_bytes(name, values, bias_clusters)) - exact
    return delta


def rate_settings(stats: ModelStats, settings: dict[str, tuple[float, int | None]], rate: dict | None,
                  quantizers: dict[str, dict] | None = None) -> dict[str, tuple[float, bool] | None]:
    """layer -> (lambda, joint_prune) for the clustered layers of a plan whose cluster step has objective "rate"
    (`rate`: ClusterStep.estimate_options()["rate"]), else None. With target_bytes, the one lambda whose estimated
    clustered-weight bytes come closest to the target from below (bisection on log lambda, as the run does)."""
    clustered = [name for name in stats.layers if settings.get(name, (0.0, None))[1] is not None
                 and not (quantizers or {}).get(name)]
    if not rate or not clustered:
        return {}
    joint = bool(rate.get("joint_prune"))
    if rate.get("target_bytes") is None:
        lambdas = rate.get("rate_lambda") or {}
        return {name: (float(resolve(lambdas, name) or 0.0), joint) for name in clustered}

    def weight_bytes(lam: float) -> float:
        return sum(layer_bytes(stats.layers[name], *settings[name], (lam, joint)) for name in clustered)

    target = float(rate["target_bytes"])
    low, high = math.log(LAMBDA_RANGE[0]), math.log(LAMBDA_RANGE[1])
    if weight_bytes(round(math.exp(low), 6)) > target:
        for _ in range(LAMBDA_STEPS):
            mid = (low + high) / 2
            low, high = (low, mid) if weight_bytes(float(f"{math.exp(mid):.4g}")) <= target else (mid, high)
        lam = float(f"{math.exp(high):.4g}")
    else:
        lam = round(math.exp(low), 6)
    return {name: (lam, joint) for name in clustered}


def estimate(stats: ModelStats, settings: dict[str, tuple[float, int | None]],
             quantizers: dict[str, dict] | None = None, bias_clusters: int = 0, rate: dict | None = None) -> dict:
    """Estimated compressed bytes, ratio and sparse FLOPs for per-layer (sparsity, n_clusters) settings.

    quantizers: layer -> a step's own storage settings (QuantizeStep.layer_settings: they replace clustering).
    bias_clusters: the cluster step's setting: the biases of clustered layers shared among that many values
    (a bias too short for the file's shared encoding keeps its bytes). rate: the cluster step's rate-aware
    options (ClusterStep.estimate_options()["rate"]; importance "fisher" is estimated as without importance: the
    estimate runs no model).
    """
    total = float(stats.other_bytes) + bias_delta(stats, settings, bias_clusters)
    sparse_flops = float(stats.other_flops)
    per_layer = {}
    rates = rate_settings(stats, settings, rate, quantizers)
    for name, layer in stats.layers.items():
        sparsity, n_clusters = settings.get(name, (0.0, None))
        quantizer = (quantizers or {}).get(name)
        size = (replaced_layer_parts(layer, sparsity, quantizer).total if quantizer
                else layer_bytes(layer, sparsity, n_clusters, rates.get(name)))
        per_layer[name] = size
        total += size
        sparse_flops += layer.flops * (1.0 - sparsity)
    return {"compressed_bytes": int(round(total)), "ratio": stats.fp32_bytes / total,
            "fp32_bytes": stats.fp32_bytes, "flops": stats.flops, "sparse_flops": int(round(sparse_flops)),
            "per_layer_bytes": per_layer}


def parts_steps(parts: LayerParts) -> dict[str, float]:
    """One layer's estimated parts as the waterfall's signed steps (report.STEPS keys), as report.tensor_steps
    counts a real section: they sum to parts.total - 4 * numel."""
    if parts.encoding == "raw":
        return {"sections": parts.header, "stored": parts.raw - 4 * parts.numel}
    if parts.encoding == "int":  # integer levels (entropy coded) and their scales (report.tensor_steps' int rows)
        return {"sections": parts.header, "levels": parts.positions + parts.indices - 4 * parts.numel,
                "codebooks": parts.codebook}
    if parts.codes:  # a layer stored as codebooks + bit-packed codes (a vector quantizer's)
        return {"sections": parts.header, "codes": parts.codes - 4 * parts.numel, "codebooks": parts.codebook}
    steps = {"sections": parts.header, "pruned": -4.0 * (parts.numel - parts.kept),
             "positions": parts.fixed_positions,
             "entropy": parts.positions - parts.fixed_positions + parts.indices - parts.fixed_indices}
    if parts.encoding == "shared":
        steps["indices"] = parts.fixed_indices - 4.0 * parts.kept
        steps["codebooks"] = parts.codebook
    else:
        steps["zstd"] = parts.raw - 4.0 * parts.kept
    return steps


def estimated_waterfall(stats: ModelStats, settings: dict[str, tuple[float, int | None]],
                        quantizers: dict[str, dict] | None = None, compressed_bytes: int | None = None,
                        title: str = "whole model", bias_clusters: int = 0, rate: dict | None = None):
    """Where the bytes go, estimated: the report's Waterfall (fp32 size -> each part of the file) from the same
    per-layer estimate as `estimate` (same settings, same memo: cheap on a slider move), the untouched tensors
    and the file header from their real encoding.

    compressed_bytes: the total the page shows (e.g. after the channel section took out removed channels); the
    difference from this estimate's own total is the "structure" step. The bars are rounded to whole bytes with
    the rounding remainder (a few bytes) in "sections", so they add up to that total exactly.
    """
    from complab.analysis.report import Waterfall

    steps: dict[str, float] = {key: float(value) for key, value in stats.other_steps.items()}
    dense = stats.other_dense_bytes
    # biases shared by bias_clusters: their 32-bit values become indices and a codebook (counted as indices)
    shared_biases = bias_delta(stats, settings, bias_clusters)
    steps["indices"] = steps.get("indices", 0.0) + shared_biases
    total = float(stats.other_bytes) + shared_biases
    rates = rate_settings(stats, settings, rate, quantizers)
    for name, layer in stats.layers.items():
        sparsity, n_clusters = settings.get(name, (0.0, None))
        quantizer = (quantizers or {}).get(name)
        parts = (replaced_layer_parts(layer, sparsity, quantizer) if quantizer
                 else layer_parts(layer, sparsity, n_clusters, rates.get(name)))
        for key, value in parts_steps(parts).items():
            steps[key] = steps.get(key, 0.0) + value
        dense += 4 * layer.numel
        total += parts.total
    end = int(round(total)) if compressed_bytes is None else int(compressed_bytes)
    steps["structure"] = end - total if compressed_bytes is not None and abs(end - total) > 1 else 0.0
    steps["framing"] = dense - stats.fp32_bytes
    rounded = {key: int(round(value)) for key, value in steps.items()}
    rounded["sections"] = rounded.get("sections", 0) + end - stats.fp32_bytes - sum(rounded.values())
    waterfall = Waterfall(f"Estimated: {title}", stats.fp32_bytes, rounded, end)
    assert waterfall.start + sum(waterfall.steps.values()) == waterfall.end  # the bars add up to the total shown
    return waterfall
