"""The GA's best and mean fitness per generation, read from a run's progress events (the Runs page plots them).

The channels step emits one progress event per generation with `generation`, `best_fitness` and
`mean_fitness` values and a stage naming the layer ("channels features.3 (2/7)"); events are written at
most ~5 a second, so a very fast generation may be missing from the plot, never misreported.
"""

from __future__ import annotations

import math

import pandas as pd


def ga_rows(events: list[dict]) -> pd.DataFrame:
    """One row per recorded generation: layer, generation, best and mean fitness, in event order."""
    rows = []
    for event in events:
        values = event.get("values") or {}
        if not isinstance(values, dict) or "best_fitness" not in values \
                or not str(event.get("stage", "")).startswith("channels "):
            continue
        try:  # events come from the run's folder (complab/runfolder.py checked their shape): a bad one is skipped
            row = {"layer": str(event["stage"]).split()[1], "generation": int(values.get("generation", 0)),
                   "best_fitness": float(values["best_fitness"]), "mean_fitness": float(values["mean_fitness"])}
        except (IndexError, KeyError, TypeError, ValueError, OverflowError):
            continue
        if math.isfinite(row["best_fitness"]) and math.isfinite(row["mean_fitness"]):
            rows.append(row)
    return pd.DataFrame(rows, columns=["layer", "generation", "best_fitness", "mean_fitness"])


def has_ga(job: dict) -> bool:
    """Whether a compress job's plan runs the channels step with the genetic algorithm."""
    steps = (job.get("plan") or {}).get("steps") or []
    return any(s.get("type") == "channels" and s.get("selection", "ga") == "ga" for s in steps if isinstance(s, dict))
