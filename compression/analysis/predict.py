"""Predicted accuracy of per-layer settings, from a sensitivity report (first version; refined in issue 13).

`predict(report, settings, quantizers)` -> {"accuracy", "drop", "low", "high", "model"}: drops are
fractions of the base score. The model of combining per-layer drops is named in "model".
"""

from __future__ import annotations

import numpy as np

from compression.analysis.solver import _monotone


def _curve(row: dict, kind: str, base: float) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(row.get(kind, {}), key=float)
    xs = np.array([float(k) for k in keys])
    drops = np.array(_monotone([max(0.0, base - float(row[kind][k])) for k in keys])) if keys else np.array([])
    return xs, drops


def layer_drop(report: dict, layer: str, sparsity: float, n_clusters) -> float:
    """One layer's predicted drop alone: pruning's drop plus sharing's (interpolated on the report's grid)."""
    base = float(report["base_accuracy"])
    row = report["layers"].get(layer)
    if row is None:
        return 0.0
    drop = 0.0
    xs, drops = _curve(row, "sparsity", base)
    if xs.size and sparsity > 0:
        drop += float(np.interp(sparsity, np.concatenate(([0.0], xs)), np.concatenate(([0.0], drops))))
    if isinstance(n_clusters, int):
        ks, kdrops = _curve(row, "clusters", base)
        if ks.size:  # fewer clusters cost more: interpolate in log2(k), descending
            kdrops_desc = np.array(_monotone([max(0.0, base - float(row["clusters"][str(int(k))]))
                                              for k in sorted(ks, reverse=True)]))
            logk = np.log2(sorted(ks))
            drop += float(np.interp(np.log2(n_clusters), logk, kdrops_desc[::-1]))
    return drop


def predict(report: dict, settings: dict, quantizers: dict | None = None) -> dict:
    """settings: {layer: (sparsity, n_clusters | "auto" | None)} -> predicted score and range (no fine-tuning)."""
    base = float(report["base_accuracy"])
    drops = [layer_drop(report, layer, float(s), k) for layer, (s, k) in settings.items()]
    total = float(sum(drops))
    return {"accuracy": base - total, "drop": total, "low": max(drops, default=0.0), "high": total,
            "model": "additive: the layers' drops measured alone add up (no fine-tuning)"}
