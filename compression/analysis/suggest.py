"""Per-layer suggestions from a sensitivity report: the most aggressive setting within an accuracy budget."""

from __future__ import annotations


def suggest(report: dict, max_drop: float = 0.01) -> dict[str, tuple[float, int]]:
    """{layer: (sparsity, n_clusters)}: the highest sparsity and the fewest clusters whose drop, each
    measured alone on the validation subset, stays within `max_drop` (fraction)."""
    base = report["base_accuracy"]
    out = {}
    for name, row in report["layers"].items():
        sparsity = max((float(s) for s, acc in row["sparsity"].items() if base - acc <= max_drop), default=0.0)
        clusters = min((int(k) for k, acc in row["clusters"].items() if base - acc <= max_drop / 2), default=256)
        out[name] = (sparsity, clusters)
    return out
