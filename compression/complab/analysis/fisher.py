"""Estimate-mode sensitivity: every layer at every grid point from a few batches of gradients, calibrated to accuracy.

The exact analysis evaluates the model once per (layer, grid point): on a ResNet-50 at 224 px on two
CPU cores that is tens of hours. This mode instead:

1. **Gradients** (stage "gradients"): per-sample gradients of the loss on a seeded part of the
   validation subset (cross-entropy; for a detector Ultralytics' detection loss, box + class + DFL),
   model in eval mode. They give the diagonal empirical Fisher F = mean(g_i^2) per weight (the OBD
   saliency of LeCun et al. 1990 with the Fisher standing in for the Hessian diagonal, as in
   HAWQ-style and Optimal-Brain-Surgeon-family estimates; Torch-Pruning's and NNI's Taylor / OBD
   importances compute the same 1/2 sum g^2 dw^2). Per-sample gradients (micro-batches of one)
   instead of per-batch ones: the square of a batch mean keeps only (sum g)^2 / B, which loses the
   curvature of a model at a minimum where the per-sample gradients cancel (measured on the fidelity
   benchmark, LeNet-300 + LeNet-5: rank correlation 0.87 per-sample against 0.72 with batches of 32).
2. **Loss increase** (stage "estimate"): for each layer and grid point, w' = the grid weight
   (magnitude-pruned, k-means-shared or integer-quantized, as the exact mode builds it) and
   dL ~= 1/2 sum F (w' - w)^2 over the layer. The first-order term g.(w' - w) is left out: it is
   ~0 at a trained minimum, and with it the fidelity benchmark's rank correlation fell from 0.87 to
   0.75 and the knee agreement from 1.0 to 0.86 (LeNet-300 + LeNet-5; presumably the mean gradient of 128
   samples is mostly noise, of the order of the quadratic term). FIRST_ORDER switches it on.
3. **Calibration** (stage "calibration"): loss increase -> score drop with a few exact points
   measured by the exact mode's own scorer (ExactScorer) on the same validation subset. Per layer
   and kind, a bracket search for the one-point crossing (the knee the plan page and solver use):
   first the point whose predicted drop is nearest to one point, then (pruning) the harshest
   sparsity, which pins the curve's steepness, then the grid midpoint between the last setting
   within one point and the first beyond it; two for cluster counts and two for integer widths. Refitted after
   each point. One curve per kind (pruning, sharing, integers: the last starts from sharing's), fitted by least
   squares in z = log(-log(1 - drop/D)):

       drop = D (1 - exp(-z)),  z = b (log dL - log c) + offset_l + slope_l (log dL - centre_l)

   with D the largest possible drop (the base score minus chance for a classifier, the base mAP for a
   detector), b and c shared by the layers and each layer's offset and extra slope ridge-shrunk
   towards the shared curve (a layer with no informative point uses it). Measured drops below the
   noise floor (1.5 images, or 0.005 mAP) only bound the fit from above. Each estimate is then
   clamped between the layer's measured neighbours (fewer weights pruned never scores lower than a
   measured point with more pruned; the same for cluster counts) and, for a classifier, rounded to
   whole images. Measured points are reported as measured, never replaced by an estimate.

Budget: the number of calibration points follows `calibration_seconds` (one forward of a few images
is timed first; an exact point costs a forward of the calibration images plus the batch-norm
re-estimation). When the budget cannot afford two points per layer, the calibration uses one
batch-norm batch and fewer validation images (down to MIN_CALIBRATION_IMAGES), then fewer points
(at least MIN_CALIBRATION_POINTS); while measuring, it stops once the next point (at the median
measured cost) would pass `calibration_seconds` counted from the scorer's construction, since the
first timing is only a guess on a loaded machine. The report's config records what was used. k-means on a layer
above KMEANS_SAMPLE weights fits its codebook on a seeded sample of that many weights and assigns
every weight to it, and the estimate's k-means is plain Lloyd without the exact mode's refinement
(measured points use the exact grid weight). Measured on a loaded 2-core machine: the refined k-means
takes ~0.45 s per layer at k = 256 whatever the layer's size (its dynamic programme), ~45 s for the
8 cluster counts of ResNet-50's 54 layers; plain Lloyd on at most 2^18 weights takes 3-30 ms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch

from complab.analysis.grid import BN_BATCH_SIZE, SensitivityConfig, SensitivityReport, grid_weight
from complab.errors import CompressionLabError
from complab.methods import bn_stats
from complab.methods.context import Cancelled
from complab.methods.importance import MIN_GRADIENT_IMAGES, accumulate_fisher, cancel_hooks, model_fisher  # noqa: F401
from complab.methods.kmeans1d import kmeans_1d, quantize_to_centroids
from complab.methods.tasks import task_for

GRADIENT_IMAGES = 128  # most validation images whose per-sample gradients form the Fisher
GRADIENT_MICROBATCH = 1  # images per gradient (1: per-sample; the benchmark compares larger batches)
FIRST_ORDER = False  # add the first-order term g.(w' - w) (the benchmark compares; see the module docstring)
GRADIENT_SECONDS = 20.0  # ...and at most this long (at least MIN_GRADIENT_IMAGES whatever it costs)
SPARSITY_POINTS = 3  # most exact calibration points per layer and kind: a bracket search needs 2-3
CLUSTER_POINTS = 2
BITS_POINTS = 2  # integer widths: a bracket of two, like cluster counts
POINTS_PER_LAYER = SPARSITY_POINTS + CLUSTER_POINTS  # ...plus BITS_POINTS where the grid has integer widths
GENTLEST_LAST = ("clusters", "bits")  # kinds whose larger grid values are the gentler settings
MIN_CALIBRATION_POINTS = 2  # whatever the budget (the shared curve needs a couple)
MIN_CALIBRATION_IMAGES = 32  # the calibration's validation images never go below this
KMEANS_SAMPLE = 1 << 18  # larger layers: codebook fitted on a seeded sample of this many weights
TARGET_DROP = 0.01  # calibration points go where the predicted drop is nearest to one point
CANCEL_EVERY_S = 0.25  # cancel is polled at most this often inside forwards and backwards
RIDGE = 0.25  # shrinkage of a layer's offset from the shared curve (in log z units)
RIDGE_SLOPE = 1.0  # ...and of its own steepness
DETECTOR_NOISE_FLOOR = 0.005  # mAP50 drops below this count as "no measurable drop"
# The Sensitivity page defaults to the estimate mode above this cost proxy: parameters x input pixels
# (one exact point costs about params x pixels per image). The demo models (LeNet-5: 431k x 784 =
# 3.4e8) stay exact; a ResNet-18 at 224 px (11.7M x 50,176 = 5.9e11) or any model of a few million
# parameters at 64 px and up is estimated.
ESTIMATE_ABOVE_COST = 1e10


def analysis_cost(handle) -> float:
    """The cost proxy of an exact analysis: parameters x input pixels."""
    params = sum(p.numel() for p in handle.model.parameters())
    height, width = handle.input_shape[-2:]
    return float(params) * height * width


def default_mode(handle) -> str:
    """"estimate" for models whose cost proxy is above ESTIMATE_ABOVE_COST, else "exact"."""
    return "estimate" if analysis_cost(handle) > ESTIMATE_ABOVE_COST else "exact"


class _Clock:
    """Progress, ETA and cancel for the three stages; `check()` is cheap enough to call from forward hooks."""

    def __init__(self, on_progress, cancel_requested):
        self.on_progress = on_progress
        self.cancel_requested = cancel_requested
        self.started = time.monotonic()
        self.last_check = 0.0

    def check(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.cancel_requested is None or (not force and now - self.last_check < CANCEL_EVERY_S):
            return
        self.last_check = now
        if self.cancel_requested():
            raise Cancelled("the sensitivity analysis was cancelled")

    def report(self, stage: str, layer: str, done: int, total: int, remaining_s: float) -> None:
        self.check(force=True)
        if self.on_progress is None:
            return
        elapsed = time.monotonic() - self.started
        remaining_s = max(0.0, remaining_s)
        fraction = elapsed / max(1e-9, elapsed + remaining_s)
        self.on_progress("sensitivity", min(1.0, fraction), {"layer": layer, "done": done, "total": total,
                                                              "eta_s": round(remaining_s, 1), "stage": stage})


# ---------------------------------------------------------------------------------------------------------------
# 1. gradients -> diagonal empirical Fisher

def fisher_diagonal(handle, data, config: SensitivityConfig, clock: _Clock, max_images: int = GRADIENT_IMAGES,
                    seconds: float = GRADIENT_SECONDS, later_s: float = 0.0) -> tuple[dict, dict, dict]:
    """(layer -> diagonal empirical Fisher, layer -> mean gradient, info) from per-sample gradients on the
    validation subset; `later_s`: the seconds the later stages are expected to take (for the ETA)."""
    work = handle.clone()
    model = work.model.eval()
    layers = work.prunable_layers()
    for param in model.parameters():
        param.requires_grad_(False)
    for weight in layers.values():
        weight.requires_grad_(True)
    task = task_for(handle, data)
    task.prepare_gradients(model)
    # microbatch > 1: the fidelity benchmark's comparison with per-batch gradients (where the task can batch)
    samples, microbatch = task.gradient_samples(max_images, config.val_size, config.seed, max(1, GRADIENT_MICROBATCH))
    if not len(samples):
        raise CompressionLabError("the validation split is empty: the estimate mode needs validation images")
    started = time.monotonic()
    fisher, mean_grad, used, losses = accumulate_fisher(model, layers, task, samples, microbatch, clock, seconds,
                                                        later_s)
    info = {"images": used * microbatch, "batches": used, "seconds": round(time.monotonic() - started, 2),
            "per_sample": microbatch == 1, "first_order": FIRST_ORDER,
            "mean_loss": float(np.mean(losses)),
            "loss": task.gradient_loss_name}
    return fisher, mean_grad, info


# ---------------------------------------------------------------------------------------------------------------
# 2. loss increase at every grid point

def estimate_weight(original: torch.Tensor, kind: str, value, seed: int = 0) -> torch.Tensor:
    """The grid weight for the estimate: exact for pruning; for sharing, plain Lloyd k-means (no refinement)
    fitted to at most KMEANS_SAMPLE of the layer's weights (see the module docstring)."""
    if kind in ("sparsity", "bits"):  # integer quantization is cheap: the exact grid weight
        return grid_weight(original, kind, value, seed)
    flat = original.detach().flatten().cpu().double().numpy()
    nonzero = flat != 0
    values = flat[nonzero]
    if values.size == 0:
        return original.clone()
    sample = np.random.default_rng(seed).choice(values, KMEANS_SAMPLE, replace=False) \
        if values.size > KMEANS_SAMPLE else values
    centroids, _ = kmeans_1d(sample, int(value), init="linear", seed=seed, refine=False)
    out = np.zeros_like(flat)
    out[nonzero] = centroids[quantize_to_centroids(values, centroids)]
    return torch.from_numpy(out).to(original.dtype).view(original.shape).to(original.device)


def pruning_loss_increases(original: torch.Tensor, fisher: torch.Tensor, sparsities, gradient=None) -> list[float]:
    """loss_increase for every sparsity at once: one stable sort by magnitude, cumulative sums of F w^2 / 2.

    Magnitude pruning at sparsity s zeroes the round(s n) smallest |w|, ties in position order
    (methods/prune.magnitude_mask), i.e. a prefix of the stable sort; w' - w = -w there."""
    w = original.detach().flatten().cpu().double()
    order = torch.sort(w.abs(), stable=True).indices
    terms = 0.5 * fisher.flatten().double()[order] * w[order] ** 2
    if gradient is not None:
        terms = terms - gradient.flatten().double()[order] * w[order]
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(terms, 0)])
    return [max(0.0, float(cumulative[int(round(float(s) * w.numel()))])) for s in sparsities]


def loss_increase(original: torch.Tensor, fisher: torch.Tensor, kind: str, value, seed: int,
                  gradient: torch.Tensor | None = None) -> float:
    """1/2 sum F (w' - w)^2 over the layer for one grid point (+ g.(w' - w) when a gradient is given)."""
    delta = (estimate_weight(original, kind, value, seed) - original).double().cpu()
    out = 0.5 * (fisher.double() * delta * delta).sum()
    if gradient is not None:
        out = out + (gradient.double() * delta).sum()
    return max(0.0, float(out))


# ---------------------------------------------------------------------------------------------------------------
# 3. calibration: loss increase -> score drop

class Calibration:
    """drop = D (1 - exp(-(s_l dL / c)^b)), fitted to measured points (module docstring)."""

    def __init__(self, max_drop: float, floor: float, initial_c: float):
        self.max_drop = max(max_drop, 1e-6)
        self.floor = floor
        self.log_c = math.log(max(initial_c, 1e-12))
        self.b = 1.0
        self.layer_terms: dict[str, tuple[float, float, float]] = {}  # layer -> (offset, slope change, centre)
        self.fitted = False  # whether any measured point moved the curve off its first guess

    def drop(self, layer: str, d_loss: float) -> float:
        if d_loss <= 0:
            return 0.0
        intercept, slope, center = self.layer_terms.get(layer, (0.0, 0.0, 0.0))
        x = math.log(d_loss)
        z = math.exp(min(50.0, self.b * (x - self.log_c) + intercept + slope * (x - center)))
        return self.max_drop * (1.0 - math.exp(-z))

    def _z(self, drop: float) -> float:
        drop = min(max(drop, self.floor), 0.95 * self.max_drop)
        return math.log(-math.log(1.0 - drop / self.max_drop))

    def fit(self, points: list[tuple[str, float, float]]) -> None:
        """points: (layer, loss increase, measured drop); points with no loss increase carry nothing."""
        points = [p for p in points if p[1] > 0]
        informative = [p for p in points if p[2] >= self.floor]
        censored = [p for p in points if p[2] < self.floor]
        if not informative:
            if censored:  # no drop yet anywhere: the curve sits to the right of every measured point
                self.log_c = max(self.log_c, max(math.log(p[1]) for p in censored) + 1.5)
            return
        self.fitted = True
        for _ in range(3):  # censored points whose prediction exceeds the floor join as points at the floor
            rows = informative + [p for p in censored if self.drop(p[0], p[1]) > self.floor]
            self._least_squares(rows)

    def _least_squares(self, rows: list[tuple[str, float, float]]) -> None:
        """z = b log dL + a + v_l + beta_l (log dL - mean_l): shared b, a; per-layer offset and slope, ridge-shrunk."""
        layers = sorted({p[0] for p in rows})
        index = {name: i for i, name in enumerate(layers)}
        centers = {name: float(np.mean([math.log(p[1]) for p in rows if p[0] == name])) for name in layers}
        n_layers = len(layers)
        n_params = 2 + 2 * n_layers
        matrix, target = [], []
        for layer, d_loss, drop in rows:
            row = np.zeros(n_params)
            x = math.log(d_loss)
            row[0], row[1] = x, 1.0
            row[2 + index[layer]] = 1.0
            row[2 + n_layers + index[layer]] = x - centers[layer]
            matrix.append(row)
            target.append(self._z(drop))
        spread = np.ptp([math.log(p[1]) for p in rows]) if len(rows) > 1 else 0.0
        # priors: b near 1 (firmly when the points span little of the loss axis), layers near the shared curve
        strength_b = 4.0 if len(rows) < 4 or spread < 1.0 else 0.25
        priors = [(0, math.sqrt(strength_b), math.sqrt(strength_b))]
        priors += [(2 + i, math.sqrt(RIDGE), 0.0) for i in range(n_layers)]
        priors += [(2 + n_layers + i, math.sqrt(RIDGE_SLOPE), 0.0) for i in range(n_layers)]
        for column, weight, value in priors:
            row = np.zeros(n_params)
            row[column] = weight
            matrix.append(row)
            target.append(value)
        solution, *_ = np.linalg.lstsq(np.array(matrix), np.array(target), rcond=None)
        self.b = float(np.clip(solution[0], 0.3, 4.0))
        self.log_c = float(-solution[1] / self.b)
        self.layer_terms = {name: (float(solution[2 + i]),
                                   float(np.clip(solution[2 + n_layers + i], 0.3 - self.b, 6.0 - self.b)),
                                   centers[name]) for name, i in index.items()}

    def describe(self) -> dict:
        return {"form": "drop = D * (1 - exp(-z)), log z = b (log dL - log c) + offset_l + slope_l (log dL - centre_l)",
                "D": self.max_drop, "c": math.exp(self.log_c), "b": self.b, "noise_floor": self.floor,
                "layers": {name: {"offset": o, "slope": sl, "centre": ce}
                           for name, (o, sl, ce) in self.layer_terms.items()}}


def _calibration_plan(t_image: float, n_val: int, bn_batches: int, has_bn: bool, n_layers: int,
                      seconds: float, per_layer: int = POINTS_PER_LAYER) -> tuple[int, int, int]:
    """(validation images, batch-norm batches, points) the calibration budget affords (module docstring);
    `per_layer`: the points a layer wants (POINTS_PER_LAYER, plus BITS_POINTS with a bits grid)."""
    wanted = per_layer * n_layers

    def points(images: int, batches: int) -> int:
        per_point = t_image * (images + (batches * BN_BATCH_SIZE if has_bn else 0))
        return int((seconds - t_image * images) / max(per_point, 1e-9))

    images, batches = n_val, bn_batches
    if points(images, batches) < 2 * n_layers and batches > 1:
        batches = 1
    while points(images, batches) < 2 * n_layers and images > MIN_CALIBRATION_IMAGES * 2:
        images = max(MIN_CALIBRATION_IMAGES * 2, images // 2)
    if points(images, batches) < MIN_CALIBRATION_POINTS:
        images = min(images, MIN_CALIBRATION_IMAGES)
    return images, batches, max(MIN_CALIBRATION_POINTS, min(wanted, points(images, batches)))


def _time_forward(handle, task, config: SensitivityConfig) -> float:
    """Seconds per image of one no-grad forward on a few validation images (after a warm-up)."""
    model = handle.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = task.example_batch(config.val_size, config.seed).to(next(model.parameters()).device)
            model(x[:1])
            started = time.monotonic()
            model(x)
            return (time.monotonic() - started) / len(x)
    finally:
        model.train(was_training)


def _clamp_monotone(scores: dict[str, float], measured: set[str], kind: str, base: float) -> None:
    """Estimates lie between the measured neighbours: scores fall with sparsity and rise with cluster count.

    A measured score above the base (noise: a pruned layer rarely helps) bounds as the base would."""
    keys = sorted(scores, key=float)
    if kind in GENTLEST_LAST:  # harsher first, as for sparsity read backwards
        keys = keys[::-1]
    for i, key in enumerate(keys):
        if key in measured:
            continue
        upper = min((min(base, scores[k]) for k in keys[:i] if k in measured), default=math.inf)  # gentler
        lower = max((min(base, scores[k]) for k in keys[i + 1:] if k in measured), default=-math.inf)  # harsher
        if lower <= upper:
            scores[key] = min(max(scores[key], lower), upper)


def _next_point(kind: str, d_loss: dict[str, float], known: dict[str, float], calibration: Calibration,
                layer: str) -> str | None:
    """The next grid key of `kind` to measure for `layer`: a bracket search for the one-point crossing.

    Between the harshest measured setting with a drop of at most TARGET_DROP and the gentlest one
    above it, the point whose predicted drop is nearest to TARGET_DROP (log scale); None once the two
    are neighbours (the crossing is known: the knee the plan page and solver care about). Once both
    ends are measured it bisects the grid between them instead: the curve's steepness between a
    point without a measurable drop and one with a large drop is what the prediction knows least."""
    order = sorted(d_loss, key=float, reverse=kind in GENTLEST_LAST)  # gentlest first
    low, high = -1, len(order)
    for i, key in enumerate(order):
        if key in known:
            if known[key] <= TARGET_DROP:
                low = max(low, i)
            else:
                high = min(high, i)
    if high <= low:  # non-monotone measurements: search above the gentlest failure only
        low = -1
    if low >= 0 and high < len(order) and d_loss[order[low]] > 0:  # a bracket: bisect it (towards the harsher)
        inside = [key for key in order[low + 1:high] if key not in known]
        return inside[len(inside) // 2] if inside else None
    best, best_gap = None, math.inf
    for key in order[low + 1:high]:
        if key in known or d_loss[key] <= 0:
            continue
        gap = abs(math.log(max(calibration.drop(layer, d_loss[key]), 1e-9) / TARGET_DROP))
        if gap < best_gap:
            best, best_gap = key, gap
    return best


def _spread(names: list[str]) -> list[str]:
    """The layers in an order that covers the depth evenly at any prefix (van der Corput over positions)."""
    def radical_inverse(i: int) -> float:
        out, base = 0.0, 0.5
        while i:
            out, i, base = out + base * (i & 1), i >> 1, base / 2
        return out

    return [names[i] for i in sorted(range(len(names)), key=lambda i: (radical_inverse(i), i))]


def analyze_estimate(handle, data, config: SensitivityConfig, exact_scorer: Callable, *,
                     on_progress: Callable[[str, float, dict], None] | None = None,
                     cancel_requested: Callable[[], bool] | None = None) -> SensitivityReport:
    """The estimate mode (module docstring): same report shape as the exact mode, plus what was measured.

    `exact_scorer(handle, data, config)`: the exact mode's scorer (sensitivity.ExactScorer), which measures the
    calibration points; the exact mode passes it in (it calls this module, not the other way round)."""
    clock = _Clock(on_progress, cancel_requested)
    task = task_for(handle, data)
    layers = handle.prunable_layers()
    grid = ([("sparsity", v) for v in config.sparsities] + [("clusters", v) for v in config.n_clusters]
            + [("bits", v) for v in config.bits])
    kinds = ("sparsity", "clusters", "bits") if config.bits else ("sparsity", "clusters")
    t_image = _time_forward(handle, task, config)
    has_bn = config.bn_batches > 0 and bn_stats.has_batch_norm(handle.model)
    n_val = task.validation_images(config.val_size, config.seed)
    cal_images, cal_bn, n_points = _calibration_plan(t_image, n_val, config.bn_batches, has_bn, len(layers),
                                                     config.calibration_seconds,
                                                     POINTS_PER_LAYER + (BITS_POINTS if config.bits else 0))

    # 1. Fisher
    per_point_cal = t_image * (cal_images + (cal_bn * BN_BATCH_SIZE if has_bn else 0))
    calibration_s = t_image * cal_images + n_points * per_point_cal
    fisher, mean_grad, gradient_info = fisher_diagonal(handle, data, config, clock,
                                                       later_s=calibration_s + 0.05 * len(layers) * len(grid))

    # 2. loss increase everywhere
    d_loss: dict[str, dict[str, dict[str, float]]] = {}
    started = time.monotonic()
    for i, (name, weight) in enumerate(layers.items()):
        original = weight.detach()
        d_loss[name] = {kind: {} for kind in kinds}
        gradient = mean_grad[name] if FIRST_ORDER else None
        for value, increase in zip(config.sparsities, pruning_loss_increases(original, fisher[name],
                                                                             config.sparsities, gradient), strict=True):
            d_loss[name]["sparsity"][str(value)] = increase
        for value in config.n_clusters:
            d_loss[name]["clusters"][str(value)] = loss_increase(original, fisher[name], "clusters", value,
                                                                 config.seed, gradient)
            clock.check()
        for value in config.bits:
            d_loss[name]["bits"][str(value)] = loss_increase(original, fisher[name], "bits", value, config.seed,
                                                             gradient)
            clock.check()
        per_layer = (time.monotonic() - started) / (i + 1)
        clock.report("estimate", name, i + 1, len(layers),
                     per_layer * (len(layers) - i - 1) + calibration_s)

    # layers no gradient reached (e.g. a detector's coarse-stride box branch when no object in the few
    # images is assigned there): their estimates show no drop; calibration points still measure them
    gradient_info["no_gradient_layers"] = [name for name in layers if not any(
        v > 0 for kind in d_loss[name].values() for v in kind.values())]

    # 3. calibration on exact points
    cal_config = replace(config, val_size=cal_images, bn_batches=cal_bn)
    cal_started = time.monotonic()
    scorer = exact_scorer(handle, data, cal_config)
    base = scorer.base
    if handle.kind.score_counts_images:  # a share of images: above chance, in steps of one image
        chance = 1.0 / max(1, handle.num_classes)
        max_drop, floor = max(base - chance, 0.01), 1.5 / max(1, cal_images)
    else:
        max_drop, floor = base, DETECTOR_NOISE_FLOOR
    positive = [v for row in d_loss.values() for kind in row.values() for v in kind.values() if v > 0]
    # first guess: a one-point drop at a loss increase of 1% of the mean loss (0.02 nats for a typical
    # classifier); the first measured points move it
    initial_c = max(gradient_info["mean_loss"], 0.05) * 0.01 / (-math.log(1 - min(0.5, TARGET_DROP / max_drop)))
    calibrations = {kind: Calibration(max_drop, floor, initial_c if positive else 1.0)
                    for kind in kinds}
    measured: dict[str, dict[str, float]] = {name: {} for name in layers}  # "kind:key" -> score
    seconds_per_point = []
    hooks = cancel_hooks(scorer.model, clock)
    points: dict[str, list[tuple[str, float, float]]] = {kind: [] for kind in kinds}
    try:
        for name in layers:  # the original (sparsity 0) scores the base exactly (the scorer does no work)
            for key in d_loss[name]["sparsity"]:
                if float(key) == 0:
                    measured[name][f"sparsity:{key}"] = base
        order = _spread(list(layers))  # when the budget is short of a point per layer: spread over the depth
        done = 0
        cap = {"sparsity": SPARSITY_POINTS, "clusters": CLUSTER_POINTS, "bits": BITS_POINTS}
        rounds = (["sparsity", "anchor", "sparsity"] + ["clusters"] * CLUSTER_POINTS
                  + (["bits"] * BITS_POINTS if "bits" in kinds else []))
        for step in rounds:
            kind = "sparsity" if step == "anchor" else step
            calibration = calibrations[kind]
            if kind == "clusters" and not calibrations["clusters"].fitted:  # start from the pruning curve
                calibration.log_c, calibration.b = calibrations["sparsity"].log_c, calibrations["sparsity"].b
            if kind == "bits" and not calibrations["bits"].fitted:  # integers perturb values as sharing does
                source = calibrations["clusters"] if calibrations["clusters"].fitted else calibrations["sparsity"]
                calibration.log_c, calibration.b = source.log_c, source.b
            for name in order:
                spent = time.monotonic() - cal_started
                if done >= n_points or (done >= MIN_CALIBRATION_POINTS and seconds_per_point
                                        and spent + float(np.median(seconds_per_point)) > config.calibration_seconds):
                    break  # the plan's count, or the budget as measured (the plan's timing was a guess)
                known = {key: base - score for tag, score in measured[name].items()
                         for k, key in [tag.split(":", 1)] if k == kind}
                if sum(float(k) != 0 for k in known) >= cap[kind]:  # (the original, sparsity 0, costs nothing)
                    continue
                if step == "anchor":  # the harshest setting: with the knee it gives the curve's steepness
                    harshest = max(d_loss[name][kind], key=float)
                    key = None if harshest in known or d_loss[name][kind][harshest] <= 0 else harshest
                else:
                    key = _next_point(kind, d_loss[name][kind], known, calibration, name)
                if key is None:
                    continue
                value = float(key) if kind == "sparsity" else int(key)  # clusters and bits are integers
                t0 = time.monotonic()
                score = scorer.score(name, grid_weight(scorer.layers[name].detach().clone(), kind, value,
                                                       config.seed))
                seconds_per_point.append(time.monotonic() - t0)
                measured[name][f"{kind}:{key}"] = score
                points[kind].append((name, d_loss[name][kind][key], base - score))
                calibration.fit(points[kind])
                done += 1
                clock.report("calibration", name, done, n_points,
                             float(np.median(seconds_per_point)) * (n_points - done))
        clock.report("calibration", "", done, done, 0.0)  # every bracket closed: done, possibly under budget
    finally:
        for hook in hooks:
            hook.remove()

    report = SensitivityReport(base, {}, {})
    for name, weight in layers.items():
        row = {"params": weight.numel(), "kind": "conv" if weight.dim() > 2 else "fc", "sparsity": {},
               "clusters": {}, "measured": {kind: [] for kind in kinds}, "loss_increase": d_loss[name]}
        if "bits" in kinds:
            row["bits"] = {}
        for kind in kinds:
            keys = set()
            for key, value in d_loss[name][kind].items():
                if f"{kind}:{key}" in measured[name]:
                    row[kind][key] = measured[name][f"{kind}:{key}"]
                    keys.add(key)
                    continue
                score = base - calibrations[kind].drop(name, value)
                if handle.kind.score_counts_images:  # accuracy on n images is a whole number of images
                    score = round(score * cal_images) / cal_images
                row[kind][key] = score
            _clamp_monotone(row[kind], keys, kind, base)
            row["measured"][kind] = sorted(keys, key=float)
        report.layers[name] = row
    report.config = {**asdict(config), "base_accuracy": base, "batch_norm": scorer.batch_norm,
                     "val_images": scorer.val_images,  # what the measured points (and the rounding) used
                     "mode": "estimate",
                     "gradients": {**gradient_info,
                                   "note": f"gradients of {gradient_info['batches']} batches of "
                                           f"{gradient_info['images'] // max(1, gradient_info['batches'])} "
                                           "validation image(s)"},
                     "calibration": {"sparsity": calibrations["sparsity"].describe(),
                                     "clusters": calibrations["clusters"].describe(),
                                     **({"bits": calibrations["bits"].describe()} if "bits" in kinds else {}),
                                     "points": sum(map(len, points.values())),
                                     "images": cal_images, "bn_batches": cal_bn,
                                     "seconds": round(time.monotonic() - cal_started, 2),
                                     "seconds_per_point": round(float(np.median(seconds_per_point)), 3)
                                     if seconds_per_point else 0.0,
                                     "forward_seconds_per_image": round(t_image, 5),
                                     "note": (f"{sum(map(len, points.values()))} exact points on {cal_images} "
                                              "validation images (plus the original); every other point estimated")},
                     "seconds": round(time.monotonic() - clock.started, 2)}
    return report.finish()
