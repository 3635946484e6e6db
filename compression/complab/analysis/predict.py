"""Predicted accuracy of per-layer settings, from a sensitivity report, calibrated on finished runs.

Two stages, both named in the result's "model" text:

1. **Raw drop** (no fine-tuning): each layer's drop at its setting, read from the report's curves
   (interpolated between grid points: linear in sparsity, linear in log2 k for cluster counts, linear in
   bits for integer widths; a layer both pruned and shared, or pruned and integer, costs the sum of its
   two drops), and the layers' drops added up (each was measured with every other layer untouched; the
   additive model the solver also uses).
2. **After fine-tuning**: a run fine-tunes after every step, which recovers most of that. Measured on
   the demo classifiers (12 plans from the solver on LeNet-300-100 and LeNet-5, targets 20/40/60x and
   1/3/10-point budgets, `benchmarks/predicted_accuracy.py --fit-prior`), the measured drop follows
   drop = c * raw ** p (in points) with c = 0.24, p = 0.5 (mean absolute error 0.73 pt, against 3.99 pt
   for the raw additive drop). Refitted when the raw drop became noise-aware (the solver's curves,
   issue 26: an unresolved point is charged part of the noise floor, so raw drops grew; the old c = 1.16
   gave 1.64 pt on the same 12 runs). Once a model has CALIBRATE_MIN_RUNS finished runs that carried a
   prediction, c is refitted on that model's own runs (p kept), and so is the range.

The range (`low`/`high` of the drop, `accuracy_low`/`accuracy_high` of the score, both within [0, 1]) adds
up, in quadrature (independent errors), the model's error and the measurement noise:

- the model: the 80th percentile of |measured - predicted| / (1 + predicted) over the calibration runs,
  times (1 + predicted) (points);
- the sensitivity's noise: each layer the plan changes carries a drop measured within the report's noise floor
  (report_noise), so the raw drop is uncertain by the floor summed in quadrature over those layers, N; the raw
  interval [raw - N, raw + N] is mapped through the fine-tuning curve (c * raw ** p is monotone), which keeps a
  plan whose raw drop is unresolved (0 +- N) from promising no loss;
- the scores' own sampling noise: the base score was measured on the validation subset (its Wilson half-width,
  the floor) and the run measures on its evaluation split (`test_images`; the Wilson half-width of the predicted
  score there). A run can come out better than the original only by this noise: `low` is never below it.

The refit refuses a degenerate fit (fewer than CALIBRATE_MIN_DISTINCT distinct raw drops, c at the edge of its
grid, residuals too large for any range to mean something) and falls back to the prior with a `warning`;
`basis` names what the prediction rests on ("demo runs", "this model's runs", or "none" when no layer the plan
changes has a sensitivity point, or without fine-tuning, where no calibration is used).
"""

from __future__ import annotations

import math

import numpy as np

from complab import intervals, runfolder
from complab.analysis.sensitivity_report import report_noise
from complab.analysis.solver import LayerGrid, bits_drop, grids_from_report

PRIOR_C, PRIOR_P = 0.24, 0.5  # fitted on the 12 demo runs described above
PRIOR_SPREAD = 0.6  # their 80th percentile of |residual| / (1 + predicted)
PRIOR_RUNS = 12
CALIBRATE_MIN_RUNS = 3
CALIBRATE_MIN_DISTINCT = 3  # distinct raw drops (to 0.1 pt) a refit needs: c * raw ** p through one point is no fit
C_GRID = np.linspace(0.0, 4.0, 401)  # the refit's candidates for c (least absolute error)
MAX_SPREAD = 10.0  # a refit whose residuals exceed 10 x (1 + predicted) points describes nothing
AUTO_TOLERANCE = 0.005  # "auto" cluster counts: the run picks the fewest clusters within this drop (ClusterStep)


def _grid_drop(grid: LayerGrid, sparsity: float, n_clusters) -> float:
    """One layer's raw drop (fraction) at a setting from its noise-aware grid (the solver's own curves):
    pruning's (linear in sparsity between grid points) plus sharing's (linear in log2 k)."""
    drop = 0.0
    if len(grid.sparsities) > 1 and sparsity > 0:
        drop += float(np.interp(sparsity, grid.sparsities, grid.sparsity_drop))
    ks = np.array([k for k in grid.clusters if k is not None], dtype=float)[::-1]  # ascending k
    kdrops = np.array(grid.cluster_drop[1:])[::-1]
    if ks.size and n_clusters == "auto":  # the fewest clusters within the run's tolerance
        within = kdrops[kdrops <= AUTO_TOLERANCE]
        drop += float(within.max()) if within.size else float(kdrops[-1])
    elif ks.size and isinstance(n_clusters, int | float) and not isinstance(n_clusters, bool):
        drop += float(np.interp(np.log2(n_clusters), np.log2(ks), kdrops))
    return drop


def layer_drop(report: dict, layer: str, sparsity: float, n_clusters) -> float | None:
    """One layer's raw drop alone (fraction): pruning's plus sharing's. None for a layer the report lacks."""
    grid = grids_from_report(report).get(layer)
    return None if grid is None else _grid_drop(grid, float(sparsity), n_clusters)


def _raw(grids: dict[str, LayerGrid], settings: dict, quantizers: dict | None) -> tuple[float, list[str], int]:
    total, unknown, changed = 0.0, [], 0
    for layer, (sparsity, k) in settings.items():
        quantizer = (quantizers or {}).get(layer)
        if quantizer and "int_bits" in quantizer:  # integer levels: the layer's bits curve (with its pruning's)
            grid = grids.get(layer)
            integer = None if grid is None else bits_drop(grid, int(quantizer["int_bits"]))
            if integer is None:
                unknown.append(layer)  # a report without the bits axis measured no such point
                continue
            changed += 1
            total += _grid_drop(grid, float(sparsity), None) + integer
            continue
        if quantizer:
            if quantizer.get("quantizer") != "kmeans":
                unknown.append(layer)  # binary / pq / rq: the analysis measures no such point
                k = None
            else:
                k = int(quantizer["n_codewords"])
        grid = grids.get(layer)
        if grid is None:
            unknown.append(layer)
            continue
        if float(sparsity) > 0 or k is not None:
            changed += 1
        total += _grid_drop(grid, float(sparsity), k)
    return total, unknown, changed


def raw_drop(report: dict, settings: dict, quantizers: dict | None = None) -> tuple[float, list[str]]:
    """The additive raw drop (fraction) and the layers it could not predict (vector quantizers other than
    kmeans, layers missing from the report)."""
    total, unknown, _ = _raw(grids_from_report(report), settings, quantizers)
    return total, unknown


def history_from_runs(runs: list[dict], model: str | None = None) -> list[tuple[float, float]]:
    """(raw drop, measured drop) pairs in points from finished runs whose job carried a prediction (of
    `model` when given); the measured drop is the run's own before/after on the same split."""
    pairs = []
    for run in runs:
        if run.get("state") != "succeeded" or run.get("damaged"):
            continue
        job, _ = runfolder.check_job(run.get("job") or {})  # the rows' job and metrics, checked once more here
        metrics, _ = runfolder.check_metrics(run.get("metrics"), "compress")
        predicted = (job or {}).get("predicted") or {}
        if metrics is None or "raw_drop" not in predicted:
            continue
        if model is not None and job.get("model") != model:
            continue
        measured = 100 * (metrics["before"]["accuracy"] - metrics["after"]["accuracy"])
        pairs.append((100 * float(predicted["raw_drop"]), measured))
    return pairs


def _prior(warning: str = "") -> dict:
    return {"c": PRIOR_C, "p": PRIOR_P, "spread": PRIOR_SPREAD, "runs": PRIOR_RUNS, "source": "demo runs",
            "warning": warning}


def calibration(history: list[tuple[float, float]] | None = None) -> dict:
    """c, p and the spread of drop = c * raw ** p (points): the prior, or refitted on `history` (c only).

    A refit that cannot mean anything is refused and the prior returned with a `warning` saying why: fewer than
    CALIBRATE_MIN_DISTINCT distinct raw drops (four runs whose raw drops were all 0 fitted c = 0 and a range of
    40-145%), c at the edge of C_GRID (the runs do not follow the curve at all), or a spread above MAX_SPREAD."""
    pairs = [(r, m) for r, m in (history or []) if np.isfinite(r) and np.isfinite(m)]
    if len(pairs) < CALIBRATE_MIN_RUNS:
        return _prior()
    raw = np.array([max(0.0, r) for r, _ in pairs]) ** PRIOR_P
    measured = np.array([m for _, m in pairs])
    errors = np.array([np.abs(measured - k * raw).mean() for k in C_GRID])
    c = float(C_GRID[np.argmin(errors)])
    spread = float(np.quantile(np.abs(measured - c * raw) / (1.0 + c * raw), 0.8))
    distinct = len({round(max(0.0, r), 1) for r, _ in pairs})
    problem = ""
    if distinct < CALIBRATE_MIN_DISTINCT:
        problem = f"only {distinct} distinct predicted raw drop{'s' if distinct != 1 else ''}"
    elif c <= C_GRID[0] or c >= C_GRID[-1]:
        problem = f"the fitted factor {c:.2f} is at the edge of its range {C_GRID[0]:g}-{C_GRID[-1]:g}"
    elif spread > MAX_SPREAD:
        problem = f"their errors ({spread:.1f} x (1 + drop) points) are too large for a range"
    if problem:
        return _prior(f"{len(pairs)} runs of this model do not support a fit ({problem}): the prediction uses "
                      f"the calibration of {PRIOR_RUNS} demo runs")
    return {"c": c, "p": PRIOR_P, "spread": spread, "runs": len(pairs), "source": "this model's runs", "warning": ""}


def _half(accuracy: float, n: int | None) -> float:
    """The Wilson half-width (fraction) of a score measured on n images (0 when n is unknown)."""
    if not n:
        return 0.0
    low, high = intervals.wilson(min(1.0, max(0.0, accuracy)), int(n))
    return (high - low) / 2


def predict(report: dict, settings: dict, quantizers: dict | None = None,
            history: list[tuple[float, float]] | None = None, finetuned: bool = True,
            test_images: int | None = None) -> dict:
    """settings: {layer: (sparsity, n_clusters | "auto" | None)} -> the predicted score after the run.

    Returns fractions of the score: accuracy, drop, low and high (the range of the drop), accuracy_low and
    accuracy_high (the range of the score, within [0, 1]; high drop = base - accuracy_low), raw_drop (no
    fine-tuning), plus the calibration used, the layers not predicted, the model in words, `basis` and `warning`
    (module docstring). `test_images`: the size of the split the run will be measured on (default: the validation
    subset's, its stand-in)."""
    base = float(report["base_accuracy"])
    noise = report_noise(report)
    floor = float(noise.get("floor") or 0.0)
    val_images = noise.get("val_images")
    raw, unknown, changed = _raw(grids_from_report(report), settings, quantizers)
    raw_pts = 100 * raw
    spread_pts = 100 * floor * math.sqrt(changed)  # the sensitivity's noise over the layers the plan changes
    warnings = []
    if finetuned:
        cal = calibration(history)
        c, p = cal["c"], cal["p"]
        drop_pts = c * raw_pts ** p
        model_half = cal["spread"] * (1.0 + drop_pts)
        noise_up = c * (raw_pts + spread_pts) ** p - drop_pts
        noise_down = drop_pts - c * max(0.0, raw_pts - spread_pts) ** p
        model = (f"layers' drops measured alone add up to {raw_pts:.2f} pts; fine-tuning maps that to "
                 f"{c:.2f} x raw^{p:g} (fitted on {cal['runs']} {cal['source']})")
        basis = cal["source"]
        if cal["warning"]:
            warnings.append(cal["warning"])
    else:
        cal = None
        drop_pts = raw_pts
        model_half = 0.5 * raw_pts + 0.5
        noise_up = noise_down = spread_pts
        model = "layers' drops measured alone add up (no fine-tuning)"
        basis = "none"
    if unknown:
        model += f"; {len(unknown)} layer(s) not predicted (no sensitivity points for their quantizer)"
        if len(unknown) >= len(settings):
            basis = "none"
            warnings.append("no layer of this plan has a sensitivity point for its setting: nothing is predicted")
    if spread_pts > 0:
        model += f"; the sensitivity's noise ({100 * floor:.1f} pts a layer) widens the range"
    if noise.get("message"):
        warnings.append(noise["message"])
    drop_pts = min(drop_pts, 100 * base)  # the score cannot fall below 0
    accuracy = base - drop_pts / 100
    measure_pts = 100 * math.hypot(floor, _half(accuracy, test_images or val_images))
    high_pts = drop_pts + math.sqrt(model_half ** 2 + noise_up ** 2 + measure_pts ** 2)
    low_pts = drop_pts - math.sqrt(model_half ** 2 + noise_down ** 2 + measure_pts ** 2)
    # within [0, 100]: the score between 0 and 1, and better than the original only by measurement noise
    high_pts = min(high_pts, 100 * base)
    low_pts = max(low_pts, -measure_pts, 100 * (base - 1.0))
    return {"accuracy": accuracy, "drop": drop_pts / 100, "low": low_pts / 100, "high": high_pts / 100,
            "accuracy_low": min(1.0, max(0.0, base - high_pts / 100)),
            "accuracy_high": min(1.0, max(0.0, base - low_pts / 100)),
            "raw_drop": raw, "calibration": cal, "unpredicted": unknown, "model": model,
            "basis": basis, "warning": " ".join(warnings)}
