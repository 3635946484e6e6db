"""The GA's best and mean fitness per generation, read from a run's progress events (for the Runs page).

The channels step emits one progress event per generation with `generation`, `best_fitness` and
`mean_fitness` values and a stage naming the layer ("channels features.3 (2/7)"); events are written at
most ~5 a second, so a very fast generation may be missing from the plot, never misreported.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def ga_rows(events: list[dict]) -> pd.DataFrame:
    """One row per recorded generation: layer, generation, best and mean fitness, in event order."""
    rows = []
    for event in events:
        values = event.get("values") or {}
        if "best_fitness" in values and str(event.get("stage", "")).startswith("channels "):
            layer = str(event["stage"]).split()[1]
            rows.append({"layer": layer, "generation": int(values.get("generation", 0)),
                         "best_fitness": float(values["best_fitness"]), "mean_fitness": float(values["mean_fitness"])})
    return pd.DataFrame(rows, columns=["layer", "generation", "best_fitness", "mean_fitness"])


def has_ga(job: dict) -> bool:
    """Whether a compress job's plan runs the channels step with the genetic algorithm."""
    steps = (job.get("plan") or {}).get("steps") or []
    return any(s.get("type") == "channels" and s.get("selection", "ga") == "ga" for s in steps if isinstance(s, dict))


def ga_figure(rows: pd.DataFrame) -> go.Figure:
    """Best (solid) and mean (dotted) fitness against the generation, one colour per layer, in search order."""
    fig = go.Figure()
    palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
    for i, (layer, group) in enumerate(rows.groupby("layer", sort=False)):
        colour = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=group["generation"], y=group["best_fitness"], mode="lines+markers",
                                 name=f"{layer} best", line={"color": colour}))
        fig.add_trace(go.Scatter(x=group["generation"], y=group["mean_fitness"], mode="lines",
                                 name=f"{layer} mean", line={"color": colour, "dash": "dot"}))
    fig.update_layout(xaxis_title="generation", yaxis_title="fitness (top-1 on the fitness subset)", height=320,
                      margin={"t": 30})
    return fig
