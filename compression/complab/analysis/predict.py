"""Predicted accuracy of per-layer settings, from a sensitivity report, calibrated on finished runs.

Two stages, both named in the result's "model" text:

1. **Raw drop** (no fine-tuning): each layer's drop at its setting, read from the report's curves
   (interpolated between grid points: linear in sparsity, linear in log2 k for cluster counts; a
   layer both pruned and shared costs the sum of its two drops), and the layers' drops added up
   (each was measured with every other layer untouched; the additive model the solver also uses).
2. **After fine-tuning**: a run fine-tunes after every step, which recovers most of that. Measured on
   the demo classifiers (12 plans from the solver on LeNet-300-100 and LeNet-5, targets 20/40/60x and
   1/3/10-point budgets, `benchmarks/predicted_accuracy.py`'s procedure), the measured drop follows
   drop = c * raw ** p (in points) with c = 1.16, p = 0.5 (mean absolute error 0.81 pt, against 2.74 pt
   for the raw additive drop). Once a model has CALIBRATE_MIN_RUNS finished runs that carried a
   prediction, c is refitted on that model's own runs (p kept), and so is the range.

The range: the 80th percentile of |measured - predicted| / (1 + predicted) over the calibration runs,
times (1 + predicted), either side (drops in points).
"""

from __future__ import annotations

import numpy as np

from complab import runfolder
from complab.analysis.solver import _monotone

PRIOR_C, PRIOR_P = 1.16, 0.5  # fitted on the 12 demo runs described above
PRIOR_SPREAD = 0.55  # their 80th percentile of |residual| / (1 + predicted)
PRIOR_RUNS = 12
CALIBRATE_MIN_RUNS = 3
AUTO_TOLERANCE = 0.005  # "auto" cluster counts: the run picks the fewest clusters within this drop (ClusterStep)


def _curve(row: dict, kind: str, base: float, descending: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Grid values (ascending) and their monotone drops (more aggressive never costs less)."""
    keys = sorted(row.get(kind, {}), key=float, reverse=descending)
    drops = _monotone([max(0.0, base - float(row[kind][k])) for k in keys])
    xs = np.array([float(k) for k in keys])
    if descending:  # clusters: fewer is more aggressive; return ascending k for interpolation
        return xs[::-1], np.array(drops[::-1])
    return xs, np.array(drops)


def layer_drop(report: dict, layer: str, sparsity: float, n_clusters) -> float | None:
    """One layer's raw drop alone (fraction): pruning's plus sharing's. None for a layer the report lacks."""
    base = float(report["base_accuracy"])
    row = report["layers"].get(layer)
    if row is None:
        return None
    drop = 0.0
    xs, drops = _curve(row, "sparsity", base)
    if xs.size and sparsity > 0:
        drop += float(np.interp(sparsity, np.concatenate(([0.0], xs)), np.concatenate(([0.0], drops))))
    ks, kdrops = _curve(row, "clusters", base, descending=True)
    if ks.size and n_clusters == "auto":  # the fewest clusters within the run's tolerance
        within = kdrops[kdrops <= AUTO_TOLERANCE]
        drop += float(within.max()) if within.size else float(kdrops[-1])
    elif ks.size and isinstance(n_clusters, int | float) and not isinstance(n_clusters, bool):
        drop += float(np.interp(np.log2(n_clusters), np.log2(ks), kdrops))
    return drop


def raw_drop(report: dict, settings: dict, quantizers: dict | None = None) -> tuple[float, list[str]]:
    """The additive raw drop (fraction) and the layers it could not predict (vector quantizers other than
    kmeans, layers missing from the report)."""
    total, unknown = 0.0, []
    for layer, (sparsity, k) in settings.items():
        quantizer = (quantizers or {}).get(layer)
        if quantizer:
            if quantizer.get("quantizer") != "kmeans":
                unknown.append(layer)  # binary / pq / rq: the analysis measures no such point
                k = None
            else:
                k = int(quantizer["n_codewords"])
        drop = layer_drop(report, layer, float(sparsity), k)
        if drop is None:
            unknown.append(layer)
            continue
        total += drop
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


def calibration(history: list[tuple[float, float]] | None = None) -> dict:
    """c, p and the spread of drop = c * raw ** p (points): the prior, or refitted on `history` (c only)."""
    pairs = [(r, m) for r, m in (history or []) if np.isfinite(r) and np.isfinite(m)]
    if len(pairs) < CALIBRATE_MIN_RUNS:
        return {"c": PRIOR_C, "p": PRIOR_P, "spread": PRIOR_SPREAD, "runs": PRIOR_RUNS, "source": "demo runs"}
    raw = np.array([max(0.0, r) for r, _ in pairs]) ** PRIOR_P
    measured = np.array([m for _, m in pairs])
    candidates = np.linspace(0.0, 4.0, 401)  # least absolute error over c (robust to one odd run)
    c = float(candidates[np.argmin([np.abs(measured - k * raw).mean() for k in candidates])])
    spread = float(np.quantile(np.abs(measured - c * raw) / (1.0 + c * raw), 0.8))
    return {"c": c, "p": PRIOR_P, "spread": spread, "runs": len(pairs), "source": "this model's runs"}


def predict(report: dict, settings: dict, quantizers: dict | None = None,
            history: list[tuple[float, float]] | None = None, finetuned: bool = True) -> dict:
    """settings: {layer: (sparsity, n_clusters | "auto" | None)} -> the predicted score after the run.

    Returns fractions of the score: accuracy, drop, low and high (the range of the drop), raw_drop (no
    fine-tuning), plus the calibration used, the layers not predicted and the model in words."""
    base = float(report["base_accuracy"])
    raw, unknown = raw_drop(report, settings, quantizers)
    raw_pts = 100 * raw
    if finetuned:
        cal = calibration(history)
        drop_pts = cal["c"] * raw_pts ** cal["p"]
        half = cal["spread"] * (1.0 + drop_pts)
        model = (f"layers' drops measured alone add up to {raw_pts:.2f} pts; fine-tuning maps that to "
                 f"{cal['c']:.2f} x raw^{cal['p']:g} (fitted on {cal['runs']} {cal['source']})")
    else:
        cal = None
        drop_pts = raw_pts
        half = 0.5 * raw_pts + 0.5
        model = "layers' drops measured alone add up (no fine-tuning)"
    if unknown:
        model += f"; {len(unknown)} layer(s) not predicted (no sensitivity points for their quantizer)"
    drop = drop_pts / 100
    return {"accuracy": base - drop, "drop": drop, "low": drop - half / 100, "high": drop + half / 100,
            "raw_drop": raw, "calibration": cal, "unpredicted": unknown, "model": model}
