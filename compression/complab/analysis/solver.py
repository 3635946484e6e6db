"""Target solver: per-layer sparsity, cluster count and integer width chosen greedily over a sensitivity table.

Given one target (compressed bytes, sparse FLOPs, or an accuracy-drop budget), start every layer
untouched and repeatedly take the cheapest move over all layers, where a move makes one layer more
aggressive (higher sparsity, fewer clusters or fewer integer bits, or several at once) and its price is the
accuracy it costs
per byte (or FLOP) it saves. This is the greedy ratio selection that Neural Magic's Sparsify (global
slider) and AIMET (greedy compression-ratio selection) used, taken over each layer's lower convex hull
of (cost, drop) so that a single step that does not pay (pruning a layer already shared at 2 values
adds a positions stream) cannot trap it. The accuracy cost of a layer is read from the sensitivity
report (drops of separate layers are assumed to add up; the sizes come from the analytic estimate,
compression/complab/analysis/estimate.py). The drops are noise-aware (noise_aware_drops): a gain within noise
counts as zero, and a drop the validation subset cannot resolve is never taken as a measured zero.

Mixed precision: where the report has the "bits" axis (analysis/grid.py), a layer's values are either shared
(clusters) or uniform integers at one of the measured widths (the int step; one set of levels per layer), so the
walk chooses bits per layer as it chooses cluster counts, each width's bytes from the int estimate
(steps/int_quant.IntStep.estimate_layer). `axes` narrows the choice, e.g. ("bits",): integers only, no pruning,
what "b bits on average" means (a size target equal to uniform b-bit's bytes, `uniform_bits_bytes`);
SOLVER_AXES all three. By default (DEFAULT_AXES) sparsity and clusters, as before the axis existed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from complab.analysis.estimate import ModelStats, estimate, int_quantizer, layer_bytes, replaced_layer_parts
from complab.analysis.sensitivity_report import check_report, report_noise
from complab.layermap import resolve

TARGET_KINDS = ("compressed_bytes", "sparse_flops", "accuracy_drop")
SOLVER_AXES = ("sparsity", "clusters", "bits")  # what the solver may change per layer (solve's `axes`)
# ...by default: a plan of prune and cluster steps, as before the bits axis (its callers read `settings` alone);
# integer widths join where asked (the Plan page's "integer bits" choice, the bits targets)
DEFAULT_AXES = ("sparsity", "clusters")
EPSILON = 1e-6  # a free move (no measured drop) still prefers the larger saving


@dataclass
class LayerGrid:
    sparsities: list[float]  # ascending, starting at 0
    sparsity_drop: list[float]  # accuracy drop (fraction) at each sparsity, noise-aware (noise_aware_drops)
    clusters: list[int | None]  # descending aggressiveness order: None (not clustered), 256, ..., 2
    cluster_drop: list[float]
    bits: list[int] = field(default_factory=list)  # integer widths, gentlest first (8, 6, 4, 3, 2); [] without the axis
    bits_drop: list[float] = field(default_factory=list)  # the drop at each width, noise-aware like the others


# An unresolved point (its drop within the noise floor) is charged this share of the floor at the far end of its
# ramp (noise_aware_drops): the middle of the [0, floor] its true drop lies in, the expected drop of a point known
# only to be within noise
NOISE_CHARGE = 0.5


def noise_aware_drops(drops: list[float], floor: float) -> list[float]:
    """The drops (fractions) of one layer's curve, mildest first (drops[0]: untouched, 0), as the solver and the
    predictor plan on them when each is measured with noise of `floor` (the report's noise floor, report_noise).

    1. A gain is noise: an accuracy above the base counts as the base (drop 0), never as a reason to prefer a
       setting (on 40 validation images, pruning a layer 80% "gained" up to 7.5 points).
    2. A more aggressive setting never costs less than a milder one (running maximum), so a noisy good point can
       never make a harsher one look free.
    3. Within noise is not measured zero: a point whose drop is still within the floor, before the curve's first
       resolved point (its drop above the floor) or anywhere on a curve that never resolves, lies somewhere in
       [0, floor]. It is charged a ramp rising linearly with its place in the grid from 0 at the mildest grid point
       (sharing at 256 values, 10% sparsity: nothing measurable, what the solver starts from) to NOISE_CHARGE x
       floor at that first resolved point (or at the harshest setting of a curve that never resolves): the expected
       drop of an unresolved point, growing with how far it is from the untouched layer. Without it, a curve that
       is flat within noise (all a 40-image subset can show) made k = 2 and 95% sparsity free, and the solver
       planned them with a promise of no loss; with it, an unresolved harsh point costs about half the floor and
       the solver prefers the settings the data does resolve. The rest of the uncertainty, up to the floor, is the
       predictor's range (analysis/predict.py). On a large subset the floor (one image, or the Wilson half-width)
       is a fraction of a point and the curves are what was measured."""
    out = _monotone([max(0.0, float(d)) for d in drops])
    last = len(out) - 1
    if floor <= 0 or last < 1:
        return out
    first = next((i for i in range(1, last + 1) if out[i] > floor), None)
    span = first if first is not None else last  # where the ramp reaches NOISE_CHARGE x floor
    for i in range(2, span if first is not None else last + 1):  # the mildest point (k = 256, 10%) stays as measured
        out[i] = max(out[i], NOISE_CHARGE * floor * (i - 1) / (span - 1))
    return _monotone(out)


def grids_from_report(report: dict) -> dict[str, LayerGrid]:
    """Per-layer grids from a SensitivityReport dict (noise-aware drops: noise_aware_drops, with the report's noise
    floor, report_noise; 0 for a report whose validation size is unknown); the report is checked first
    (check_report: a damaged one raises SensitivityReportError naming its key, never a KeyError or a NaN plan)."""
    report = check_report(report)
    base = float(report["base_accuracy"])
    floor = float(report_noise(report).get("floor") or 0.0)
    grids = {}
    for name, row in report["layers"].items():
        sparsities = sorted(float(s) for s in row["sparsity"])
        if 0.0 not in sparsities:
            sparsities.insert(0, 0.0)
        s_drop = [0.0 if s == 0.0 else base - row["sparsity"].get(_key(s), base) for s in sparsities]
        ks = sorted((int(k) for k in row["clusters"]), reverse=True)
        k_drop = [0.0] + [base - row["clusters"][str(k)] for k in ks]
        bs = sorted((int(b) for b in row.get("bits") or {}), reverse=True)
        b_drop = noise_aware_drops([0.0] + [base - row["bits"][str(b)] for b in bs], floor)[1:] if bs else []
        grids[name] = LayerGrid(sparsities, noise_aware_drops(s_drop, floor), [None, *ks],
                                noise_aware_drops(k_drop, floor), bs, b_drop)
    return grids


def uniform_bits_bytes(stats: ModelStats, bits: int, layers=None) -> int:
    """Estimated file bytes with every layer (of `layers`, default all) at `bits` uniform integers, unpruned: the
    size target of "`bits` bits on average"."""
    names = [name for name in (layers or stats.layers) if name in stats.layers]
    return estimate(stats, {name: (0.0, None) for name in names},
                    {name: int_quantizer(bits) for name in names})["compressed_bytes"]


def bits_drop(grid: LayerGrid, bits: int) -> float | None:
    """One layer's drop (fraction, noise-aware) at an integer width from its bits curve (linear between measured
    widths, the harshest's below them, 0 above 8 bits); None when the report has no bits axis."""
    if not grid.bits:
        return None
    import numpy as np

    widths = np.array(grid.bits[::-1], dtype=float)  # ascending
    drops = np.array(grid.bits_drop[::-1], dtype=float)
    return float(np.interp(float(bits), widths, drops, left=drops[0], right=drops[-1] if widths[-1] < 8 else 0.0))


def _values(grid: LayerGrid, axes) -> list[tuple[str, int, float]]:
    """A layer's value settings (kind, index, drop): untouched ("none"), each cluster count, each integer width."""
    out = [("none", 0, 0.0)]
    if "clusters" in axes:
        out += [("k", i, grid.cluster_drop[i]) for i in range(1, len(grid.clusters))]
    if "bits" in axes:
        out += [("b", i, drop) for i, drop in enumerate(grid.bits_drop)]
    return out


def _key(value: float) -> str:
    return str(value)


def _monotone(drops: list[float]) -> list[float]:
    """A more aggressive setting never costs less than a milder one (smooths evaluation noise)."""
    out, worst = [], 0.0
    for drop in drops:
        worst = max(worst, drop)
        out.append(worst)
    return out


def _hull(options: list[tuple[float, float, tuple]]) -> list[tuple[float, float, tuple]]:
    """The lower convex hull of one layer's (cost, drop, setting) options, from the least drop towards the least
    cost: each next option is the one that saves cost at the lowest price (drop per unit of cost saved)."""
    start = min(options, key=lambda o: (o[1], o[0]))
    chain = [start]
    while True:
        cost, drop, _ = chain[-1]
        cheaper = [o for o in options if o[0] < cost]
        if not cheaper:
            return chain
        # lowest price; among equal prices the largest saving (so the chain's prices only rise)
        chain.append(min(cheaper, key=lambda o: ((max(0.0, o[1] - drop) + EPSILON) / (cost - o[0]), o[0])))


def _relax(chosen: dict, options: dict, slack: float) -> dict:
    """Give back what the walk overshot: a hull segment can jump far past the target (a layer whose drop is flat
    from 0 to 95% sparsity is one segment), so a 5x target could come back at 32x. Within the slack (target minus
    the plan's cost), each layer moves to a milder option that loses no more: first the layers that lose the most
    take a lower drop, then the biggest savings are handed back, so the plan lands near its target."""
    chosen = dict(chosen)
    for lower_drop in (True, False):
        order = sorted(chosen, key=lambda n: (-chosen[n][1], chosen[n][0]) if lower_drop else -chosen[n][0])
        for name in order:
            cost, drop, _ = chosen[name]
            fits = [o for o in options[name] if o[1] <= drop + 1e-12 and o[0] - cost <= slack and o[0] > cost]
            if lower_drop:
                fits = [o for o in fits if o[1] < drop - 1e-12]
            if not fits:
                continue
            best = min(fits, key=lambda o: (o[1], -o[0])) if lower_drop else max(fits, key=lambda o: (o[0], -o[1]))
            slack -= best[0] - cost
            chosen[name] = best
    return chosen


def solve(stats: ModelStats, grids: dict[str, LayerGrid], target_kind: str, target: float,
          cluster_first: bool = True, axes=DEFAULT_AXES, rate: dict | None = None) -> dict:
    """Settings {layer: (sparsity, n_clusters)} meeting the target (or as close as the grid allows), and `bits`
    {layer: integer width} for the layers it stores as integers (their n_clusters is None).

    target: compressed bytes (<=), sparse FLOPs (<=), or the largest total accuracy drop (fraction).
    Every (sparsity, cluster count) pair of a layer's grid is an option with a cost (its estimated bytes, or
    its FLOPs) and a drop (pruning's plus sharing's, measured alone). Per layer only the options on the lower
    convex hull of (cost, drop) can be worth taking; the solver walks all layers' hull segments in order of
    price (accuracy lost per byte or FLOP saved) until the target is met: the greedy ratio selection of
    Sparsify and AIMET, done over the hull so that a jump (prune 90% and share 16 values at once) is seen
    even when no single grid step pays (the multiple-choice knapsack's Lagrangian solution).
    With cluster_first, every layer is at least shared at the largest k in its grid or stored as integers at its
    widest measured width (either costs nothing measurable and makes the file about 4x smaller), as Deep
    Compression does. `axes` (of SOLVER_AXES): what may change; a report without the bits axis offers no widths.
    `rate`: the cluster step's rate-aware options (ClusterStep.estimate_options()["rate"]): a shared layer is
    priced at the bytes of entropy-constrained sharing with its rate_lambda (k the most values it may use); its
    drop is still the grid's, measured with plain k-means at that k. A target_bytes plan is priced at lambda 0
    (the run chooses its lambda after the solver chose the settings).
    """
    lambdas = (rate or {}).get("rate_lambda") or {}
    joint = bool((rate or {}).get("joint_prune"))
    if target_kind not in TARGET_KINDS:
        raise ValueError(f"target kind {target_kind!r}: use one of {TARGET_KINDS}")
    unknown_axes = set(axes) - set(SOLVER_AXES)
    if unknown_axes or not axes:
        raise ValueError(f"solver axes {sorted(unknown_axes) or '(none)'}: use some of {SOLVER_AXES}")
    names = [name for name in grids if name in stats.layers]
    chains, all_options = {}, {}
    for name in names:
        grid = grids[name]
        values = _values(grid, axes)
        if cluster_first and len(values) > 1:
            values = values[1:]  # at least the mildest sharing or integer width
        if target_kind == "sparse_flops":  # FLOPs do not depend on how values are stored: the mildest one
            values = values[:1]
        sparsities = list(enumerate(grid.sparsities)) if "sparsity" in axes else [(0, grid.sparsities[0])]
        options = []
        for s_index, sparsity in sparsities:
            for kind, index, value_drop in values:
                drop = grid.sparsity_drop[s_index] + value_drop
                if target_kind == "sparse_flops":
                    cost = stats.layers[name].flops * (1.0 - sparsity)
                elif kind == "b":
                    cost = replaced_layer_parts(stats.layers[name], sparsity, int_quantizer(grid.bits[index])).total
                else:
                    layer_rate = (float(resolve(lambdas, name) or 0.0), joint) if rate and kind == "k" else None
                    cost = layer_bytes(stats.layers[name], sparsity, grid.clusters[index] if kind == "k" else None,
                                       layer_rate)
                options.append((cost, drop, (s_index, kind, index)))
        chains[name] = _hull(options)
        all_options[name] = options

    position = dict.fromkeys(names, 0)
    drop = sum(chains[name][0][1] for name in names)
    cost = sum(chains[name][0][0] for name in names)
    other = stats.other_flops if target_kind == "sparse_flops" else stats.other_bytes

    def price(name: str) -> float:
        (c0, d0, _), (c1, d1, _) = chains[name][position[name]:position[name] + 2]
        return (max(0.0, d1 - d0) + EPSILON) / (c0 - c1)

    heap = [(price(name), index, name) for index, name in enumerate(names) if len(chains[name]) > 1]
    heapq.heapify(heap)
    while heap:
        if target_kind != "accuracy_drop" and cost + other <= target:
            break
        _, index, name = heapq.heappop(heap)
        (c0, d0, _), (c1, d1, _) = chains[name][position[name]:position[name] + 2]
        if target_kind == "accuracy_drop" and drop + (d1 - d0) > target:
            continue  # this layer stops here; the others may still afford their next segment
        position[name] += 1
        drop, cost = drop + (d1 - d0), cost - (c0 - c1)
        if position[name] + 1 < len(chains[name]):
            heapq.heappush(heap, (price(name), index, name))
    chosen = {name: chains[name][position[name]] for name in names}
    if target_kind != "accuracy_drop" and cost + other <= target:
        chosen = _relax(chosen, all_options, target - cost - other)
        drop = sum(option[1] for option in chosen.values())
        cost = sum(option[0] for option in chosen.values())
    settings, bits = {}, {}
    for name in names:
        s_index, kind, index = chosen[name][2]
        settings[name] = (grids[name].sparsities[s_index], grids[name].clusters[index] if kind == "k" else None)
        if kind == "b":
            bits[name] = grids[name].bits[index]
    reached = target_kind == "accuracy_drop" or cost + other <= target
    quantizers = {name: int_quantizer(b) for name, b in bits.items()}
    return {"settings": settings, "bits": bits, "predicted_drop": drop, "met": reached,
            **{k: v for k, v in estimate(stats, settings, quantizers, rate=rate).items() if k != "per_layer_bytes"}}
