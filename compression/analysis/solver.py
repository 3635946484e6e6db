"""Target solver: per-layer sparsity and cluster count chosen greedily over a sensitivity table.

Given one target (compressed bytes, sparse FLOPs, or an accuracy-drop budget), start every layer
untouched and repeatedly take the single cheapest move over all layers, where a move makes one
layer one grid step more aggressive (higher sparsity, or fewer clusters) and its price is the
accuracy it costs per byte (or FLOP) it saves. This is the greedy ratio selection that Neural
Magic's Sparsify (global slider) and AIMET (greedy compression-ratio selection) used; the
accuracy cost of a layer is read from the sensitivity report (drops of separate layers are assumed
to add up; the sizes come from the analytic estimate, compression/analysis/estimate.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from compression.analysis.estimate import ModelStats, estimate, layer_bytes

TARGET_KINDS = ("compressed_bytes", "sparse_flops", "accuracy_drop")
EPSILON = 1e-6  # a free move (no measured drop) still prefers the larger saving


@dataclass
class LayerGrid:
    sparsities: list[float]  # ascending, starting at 0
    sparsity_drop: list[float]  # accuracy drop (fraction) at each sparsity
    clusters: list[int | None]  # descending aggressiveness order: None (not clustered), 256, ..., 2
    cluster_drop: list[float]


def grids_from_report(report: dict) -> dict[str, LayerGrid]:
    """Per-layer grids from a SensitivityReport dict (drops clipped at zero)."""
    base = float(report["base_accuracy"])
    grids = {}
    for name, row in report["layers"].items():
        sparsities = sorted(float(s) for s in row["sparsity"])
        if 0.0 not in sparsities:
            sparsities.insert(0, 0.0)
        s_drop = [max(0.0, base - row["sparsity"].get(_key(s), base)) for s in sparsities]
        ks = sorted((int(k) for k in row["clusters"]), reverse=True)
        k_drop = [0.0] + [max(0.0, base - row["clusters"][str(k)]) for k in ks]
        grids[name] = LayerGrid(sparsities, _monotone(s_drop), [None, *ks], _monotone(k_drop))
    return grids


def _key(value: float) -> str:
    return str(value)


def _monotone(drops: list[float]) -> list[float]:
    """A more aggressive setting never costs less than a milder one (smooths evaluation noise)."""
    out, worst = [], 0.0
    for drop in drops:
        worst = max(worst, drop)
        out.append(worst)
    return out


def solve(stats: ModelStats, grids: dict[str, LayerGrid], target_kind: str, target: float,
          cluster_first: bool = True) -> dict:
    """Settings {layer: (sparsity, n_clusters)} meeting the target (or as close as the grid allows).

    target: compressed bytes (<=), sparse FLOPs (<=), or the largest total accuracy drop (fraction).
    With cluster_first, every layer starts clustered at the largest k in its grid (weight sharing at
    256 values costs nothing measurable and makes the file 4x smaller), as Deep Compression does.
    """
    if target_kind not in TARGET_KINDS:
        raise ValueError(f"target kind {target_kind!r}: use one of {TARGET_KINDS}")
    state = {name: [0, 1 if cluster_first and len(grid.clusters) > 1 else 0] for name, grid in grids.items()}
    names = [name for name in grids if name in stats.layers]

    def setting(name: str, s_index: int, k_index: int) -> tuple[float, int | None]:
        grid = grids[name]
        return grid.sparsities[s_index], grid.clusters[k_index]

    def layer_cost(name: str, s_index: int, k_index: int) -> tuple[float, float, float]:
        grid = grids[name]
        sparsity, k = setting(name, s_index, k_index)
        size = layer_bytes(stats.layers[name], sparsity, k)
        flops = stats.layers[name].flops * (1.0 - sparsity)
        return grid.sparsity_drop[s_index] + grid.cluster_drop[k_index], size, flops

    def totals() -> tuple[float, float, float]:
        drop = size = flops = 0.0
        for name in names:
            d, b, f = layer_cost(name, *state[name])
            drop, size, flops = drop + d, size + b, flops + f
        return drop, size + stats.other_bytes, flops + stats.other_flops

    def met(drop: float, size: float, flops: float) -> bool:
        if target_kind == "compressed_bytes":
            return size <= target
        if target_kind == "sparse_flops":
            return flops <= target
        return False  # accuracy budget: keep saving bytes while the budget allows

    drop, size, flops = totals()
    while not met(drop, size, flops):
        best = None
        for name in names:
            s_index, k_index = state[name]
            d0, b0, f0 = layer_cost(name, s_index, k_index)
            moves = []
            if s_index + 1 < len(grids[name].sparsities):
                moves.append((s_index + 1, k_index))
            if target_kind != "sparse_flops" and k_index + 1 < len(grids[name].clusters):
                moves.append((s_index, k_index + 1))
            for move in moves:
                d1, b1, f1 = layer_cost(name, *move)
                saving = (f0 - f1) if target_kind == "sparse_flops" else (b0 - b1)
                if saving <= 0:
                    continue
                price = (max(0.0, d1 - d0) + EPSILON) / saving
                if target_kind == "accuracy_drop" and drop + (d1 - d0) > target:
                    continue
                if best is None or price < best[0]:
                    best = (price, name, move)
        if best is None:
            break
        state[best[1]] = list(best[2])
        drop, size, flops = totals()
    settings = {name: setting(name, *state[name]) for name in names}
    reached = met(drop, size, flops) or target_kind == "accuracy_drop"
    return {"settings": settings, "predicted_drop": drop, "met": reached,
            **{k: v for k, v in estimate(stats, settings).items() if k != "per_layer_bytes"}}
