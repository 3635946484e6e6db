"""Per-layer suggestions from a sensitivity report: the most aggressive setting within an accuracy budget."""

from __future__ import annotations


def suggest(report: dict, max_drop: float = 0.01, clusters: str = "auto") -> dict[str, tuple[float, int | str]]:
    """{layer: (sparsity, n_clusters)}: the highest sparsity whose drop, measured alone on the validation
    subset, stays within `max_drop` (fraction), and "auto" clusters (the dynamical-clustering paper's
    dynamic choice, which judges each layer with the earlier ones already shared). With clusters="table", the fewest
    clusters whose drop alone stays within max_drop / 2 instead: layers measured alone often allow
    2 values each, but together they cost more than the budget."""
    base = report["base_accuracy"]
    out = {}
    for name, row in report["layers"].items():
        sparsity = max((float(s) for s, acc in row["sparsity"].items() if base - acc <= max_drop), default=0.0)
        k: int | str = "auto"
        if clusters == "table":
            k = min((int(k) for k, acc in row["clusters"].items() if base - acc <= max_drop / 2), default=256)
        out[name] = (sparsity, k)
    return out
