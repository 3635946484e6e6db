"""Plotly figures the pages draw (built here so pages stay thin): sensitivity, Pareto fronts, histograms, GA fitness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from complab.analysis.pareto import pareto_mask, sweep_curve
from complab.intervals import wilson
from complab.models.tasks import finds_boxes
from complab.ui import numbers


def _measured(row: dict, axis: str) -> set[str] | None:
    """The keys of a row measured exactly; None when the report says nothing (an exact-mode report: all measured)."""
    marks = row.get("measured")
    return None if marks is None else {str(k) for k in marks.get(axis, [])}


def val_images(report: dict) -> int | None:
    """The number of validation images a sensitivity report's scores were measured on: report["noise"]'s, else the
    config's val_images (what the analysis found) or val_size (what it asked for, in older reports)."""
    config = report.get("config") or {}
    for value in ((report.get("noise") or {}).get("val_images"), config.get("val_images"), config.get("val_size")):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return int(value)
    return None


def _hex_rgba(colour: str, alpha: float) -> str:
    return f"rgba({int(colour[1:3], 16)},{int(colour[3:5], 16)},{int(colour[5:7], 16)},{alpha})"


BAND_LAYERS_UP_TO = 6  # layers whose curves each get their own 95% band


def sensitivity_curves(report: dict, axis: str, band: bool = True) -> go.Figure:
    """Score per layer against sparsity (axis="sparsity"), cluster count (axis="clusters") or integer width
    (axis="bits"; a layer of a report without that axis draws no curve), each curve with its
    95% band (Wilson, on the report's validation images; band=False for a detector's mAP, which has none here),
    and the original's band around its dotted line: a point inside it is not distinguishable from the original.
    Above BAND_LAYERS_UP_TO layers only the original's band is drawn: twenty overlapping bands stack into one grey
    block (seen on a ResNet-18) that hides the curves, and every point has about the original's band width anyway.

    In an estimate-mode report, measured points are filled markers and estimated ones hollow (the
    legend's two grey entries say which is which)."""
    fig = go.Figure()
    n = val_images(report) if band else None
    base = float(report["base_accuracy"])
    if n:  # the original's own band, behind everything
        low, high = wilson(base, n)
        fig.add_hrect(y0=100 * low, y1=100 * high, fillcolor="#7f7f7f", opacity=0.10, line_width=0, layer="below")
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    estimated_any = False
    for index, (name, row) in enumerate(report["layers"].items()):
        measured = _measured(row, axis)
        points = sorted(((float(k), v, measured is None or k in measured) for k, v in (row.get(axis) or {}).items()))
        if not points:
            continue
        estimated_any |= not all(p[2] for p in points)
        color = palette[index % len(palette)]
        if n and points and len(report["layers"]) <= BAND_LAYERS_UP_TO:
            # the 95% band of each point, as a filled polygon (low edge forward, high edge back)
            bounds = [wilson(p[1], n) for p in points]
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points] + [p[0] for p in reversed(points)],
                y=[100 * b[1] for b in bounds] + [100 * b[0] for b in reversed(bounds)],
                fill="toself", fillcolor=_hex_rgba(color, 0.06), line={"width": 0}, mode="lines",
                name=f"{name} 95% band", legendgroup=name, showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=[p[0] for p in points], y=[100 * p[1] for p in points], mode="lines+markers", name=name,
            legendgroup=name,
            line={"color": color}, customdata=["measured" if p[2] else "estimated" for p in points],
            marker={"color": [color if p[2] else "white" for p in points], "line": {"color": color, "width": 1.5},
                    "size": 8, "symbol": "circle"},
            hovertemplate=name + ": %{x} -> %{y:.2f}% (%{customdata})<extra></extra>"))
    if estimated_any:  # legend keys for the two marker styles
        for label, fill in (("measured (filled)", "grey"), ("estimated (hollow)", "white")):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label,
                                     marker={"color": fill, "line": {"color": "grey", "width": 1.5}, "size": 8}))
    fig.add_hline(y=100 * base, line_dash="dot", annotation_text="original")
    fig.update_layout(xaxis_title={"sparsity": "sparsity", "clusters": "clusters (k)"}.get(axis, "integer bits"),
                      yaxis_title="validation accuracy (%)", height=380, margin={"t": 30})
    if axis == "clusters":
        fig.update_xaxes(type="log", tickvals=[2, 4, 8, 16, 32, 64, 128, 256])
    if axis == "bits":  # fewer bits to the left, as harsher settings lie right on the other two
        fig.update_xaxes(tickvals=list(range(2, 9)), autorange="reversed")
    return fig


# the heatmap's diverging scale: zero drop is white (the middle), losses red, "gains" grey (on a validation subset a
# gain is noise, never a colour that reads as good)
DROP_SCALE = [[0.0, "#969696"], [0.5, "#ffffff"], [1.0, "#b2182b"]]


def sensitivity_heatmap(report: dict) -> go.Figure:
    """Layer x sparsity heatmap of the accuracy drop in points, on a scale centred at zero drop (white); measured
    cells of an estimate-mode report marked."""
    layers = list(report["layers"])
    sparsities = sorted({float(s) for row in report["layers"].values() for s in row["sparsity"]})
    base = report["base_accuracy"]
    keys = {layer: {float(k): k for k in report["layers"][layer]["sparsity"]} for layer in layers}
    z = [[100 * (base - report["layers"][layer]["sparsity"][keys[layer][s]]) if s in keys[layer] else np.nan
          for s in sparsities] for layer in layers]
    finite = [abs(v) for row in z for v in row if v == v]
    reach = max([1.0, *finite])  # symmetric around zero: no drop is the middle (white) whatever the data
    marks = [[("measured" if (m := _measured(report["layers"][layer], "sparsity")) is None or keys[layer].get(s) in m
               else "estimated") if s in keys[layer] else "" for s in sparsities] for layer in layers]
    fig = go.Figure(go.Heatmap(z=z, x=[f"{s:.2f}" for s in sparsities], y=layers, colorscale=DROP_SCALE,
                               colorbar={"title": "drop (pts)"}, zmin=-reach, zmax=reach, zmid=0, customdata=marks,
                               xgap=1, ygap=1,
                               hovertemplate="%{y} at %{x}: %{z:.2f} pts drop (%{customdata})<extra></extra>"))
    if any(_measured(row, "sparsity") is not None for row in report["layers"].values()):
        xs = [f"{s:.2f}" for layer in layers for s, mark in zip(sparsities, marks[layers.index(layer)], strict=True)
              if mark == "measured"]
        ys = [layer for layer in layers for mark in marks[layers.index(layer)] if mark == "measured"]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="measured (others estimated)",
                                 marker={"symbol": "circle", "size": 7, "color": "black"}, hoverinfo="skip"))
        fig.update_layout(legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"})
    # a grey ground between the cells: a white (no drop) cell stays visible on a white page
    fig.update_layout(xaxis_title="sparsity", yaxis_title="layer", height=120 + 28 * len(layers), margin={"t": 30},
                      plot_bgcolor="#d9d9d9")
    fig.update_xaxes(type="category")  # one column per sparsity measured, evenly spaced, labelled as measured
    fig.update_yaxes(autorange="reversed")
    return fig


def pareto_figure(table: pd.DataFrame, cost: str, cost_title: str, sweeps: list[dict] | None = None,
                  highlight: str | None = None) -> go.Figure:
    """Accuracy against a cost; each method family its own series, dominated runs dimmed, the front joined;
    each sweep (engine.list_sweeps()) one line through its finished members, sorted by the cost; the run
    `highlight` (an id) ringed."""
    fig = go.Figure()
    if table.empty:
        return fig
    data = table.dropna(subset=[cost]).copy()
    if data.empty:
        fig.add_annotation(text=f"no run measured {cost_title}", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
        return fig
    data["front"] = pareto_mask(list(data[cost]), list(data["accuracy"]))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for index, (method, group) in enumerate(data.groupby("method")):
        color = palette[index % len(palette)]
        own = group[pareto_mask(list(group[cost]), list(group["accuracy"]))].sort_values(cost)
        if len(own) > 1:  # each method family's own front: what that family alone can reach
            fig.add_trace(go.Scatter(x=own[cost], y=100 * own["accuracy"], mode="lines", name=f"{method} front",
                                     legendgroup=method, showlegend=False, line={"color": color, "width": 1},
                                     hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=group[cost], y=100 * group["accuracy"], mode="markers", name=method, legendgroup=method,
            marker={"size": 11, "color": color, "opacity": [1.0 if f else 0.3 for f in group["front"]]},
            text=group["run"], customdata=group[["plan", "ratio"]],
            hovertemplate="%{text}<br>%{customdata[0]}<br>" + cost_title + " %{x:,}<br>"
                          + ("mAP50" if "task" in data and data["task"].map(finds_boxes).all() else "accuracy")
                          + " %{y:.2f}%"
                          "<br>ratio %{customdata[1]:.1f}x<extra></extra>"))
    front = data[data["front"]].sort_values(cost)
    fig.add_trace(go.Scatter(x=front[cost], y=100 * front["accuracy"], mode="lines", name="Pareto front",
                             line={"dash": "dash", "color": "black"}, hoverinfo="skip"))
    add_sweep_curves(fig, data, sweeps or [], cost, cost_title)
    chosen = data[data["run"] == highlight]
    if not chosen.empty:
        fig.add_trace(go.Scatter(x=chosen[cost], y=100 * chosen["accuracy"], mode="markers", name=f"{highlight}",
                                 marker={"size": 22, "symbol": "circle-open", "color": "black", "line": {"width": 3}},
                                 hoverinfo="skip"))
    detector = "task" in data and data["task"].map(finds_boxes).all()
    fig.update_layout(xaxis_title=cost_title, yaxis_title="validation mAP50 (%)" if detector else "test accuracy (%)",
                      height=420, margin={"t": 30})
    if data[cost].max() > 20 * max(1, data[cost].min()):
        fig.update_xaxes(type="log")
    else:
        pad_flat_axis(fig, "x", data[cost], relative=0.05, least=1.0)
    pad_flat_axis(fig, "y", 100 * data["accuracy"], relative=0.0, least=1.0)
    return fig


def pad_flat_axis(fig: go.Figure, axis: str, values, relative: float, least: float) -> bool:
    """When every value on an axis is (nearly) the same, plotly zooms into the rounding noise (two runs at equal
    FLOPs gave a 43.551k-43.553k axis): give that axis a range padded around the value (`relative` of it, at least
    `least` either side) and ticks without invented digits. True when it padded."""
    vals = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    if not vals:
        return False
    low, high = min(vals), max(vals)
    centre = (low + high) / 2
    if high - low > 0.01 * max(abs(centre), least):
        return False
    pad = max(relative * abs(centre), least, high - low)
    update = {"range": [centre - pad, centre + pad]}
    if abs(centre) >= 1000:
        update["tickformat"] = "~s"  # 43k, 44k: never 43.551k
    (fig.update_xaxes if axis == "x" else fig.update_yaxes)(**update)
    return True


def add_sweep_curves(fig: go.Figure, data: pd.DataFrame, sweeps: list[dict], cost: str, cost_title: str) -> None:
    """One line with markers per sweep through its finished members (it grows as members finish)."""
    palette = ["#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#ff7f0e", "#9467bd"]
    for index, sweep in enumerate(sweeps):
        curve = sweep_curve(data, sweep, cost)
        if curve.empty:
            continue
        waiting = sweep["counts"]["queued"] + sweep["counts"]["running"]
        name = sweep["label"] + (f" - {waiting} to come" if waiting else "")
        fig.add_trace(go.Scatter(
            x=curve[cost], y=100 * curve["accuracy"], mode="lines+markers", name=name,
            line={"color": palette[index % len(palette)], "width": 2}, marker={"size": 7, "symbol": "diamond"},
            text=curve["run"], customdata=curve[["target", "ratio"]],
            hovertemplate=sweep["label"] + "<br>%{customdata[0]}: %{text}<br>" + cost_title
                          + " %{x:,}<br>%{y:.2f}%<br>ratio %{customdata[1]:.1f}x<extra></extra>"))


WRAP = 28  # a waterfall title's line, in characters (a half-width column fits about this at 16 px)


def short_name(name: str, limit: int = WRAP) -> str:
    """A long layer or run name cut in the middle to `limit` characters ("backbone.lay...4.1.conv2"): the end of a
    layer's name says which one it is."""
    if len(name) <= limit:
        return name
    keep = limit - 3
    return name[: keep // 2] + "..." + name[len(name) - (keep - keep // 2):]


def bar_number(value: float, signed: bool = False) -> str:
    """A waterfall bar's number, at most seven characters so it fits above its bar at half a page: exact below
    10,000 ("-220", "+9,412"), else three digits ("-73.5k", "1.73M"); the exact bytes are in the hover and the
    report's table."""
    text = numbers.human(value, exact_below=1e4).replace(" ", "")
    return ("+" + text if value > 0 else text) if signed else text


def bytes_waterfall(waterfall, estimated: bool = False, height: int = 420) -> go.Figure:
    """Where the bytes went (analysis.report.Waterfall): fp32 bytes, one signed bar per part of the compact file,
    the file's size; the bars add up to it exactly. Short horizontal labels on the axis (the long one in the hover),
    numbers drawn outside the plot area when they need to (never clipped), a two-line title that fits half a page.

    estimated: the plan page's estimate (analysis.estimate.estimated_waterfall), not a file: lighter, outlined
    bars, dotted connectors, "~" before every number, "estimated file" as the last bar and a note saying so."""
    bars = waterfall.short_bars()
    end_label = "estimated<br>file" if estimated else "compact<br>file"
    labels = ["fp32<br>model"] + [short for short, _, _ in bars] + [end_label]
    long_labels = (["fp32 model"] + [label for _, label, _ in bars]
                   + ["estimated file" if estimated else "compact file"])
    values = [waterfall.start] + [value for _, _, value in bars] + [waterfall.end]
    approx = "~" if estimated else ""
    colours = ("#98df8a", "#ff9896", "#aec7e8") if estimated else ("#2ca02c", "#d62728", "#1f77b4")
    outline = ("#2ca02c", "#d62728", "#1f77b4")
    fig = go.Figure(go.Waterfall(
        orientation="v", measure=["absolute"] + ["relative"] * len(bars) + ["total"], x=labels, y=values,
        text=[approx + bar_number(v, signed=0 < i < len(values) - 1) for i, v in enumerate(values)],
        textposition="outside", cliponaxis=False, constraintext="none", textfont={"size": 10},
        customdata=long_labels,
        connector={"line": {"color": "#999", "width": 1, "dash": "dot" if estimated else "solid"}},
        decreasing={"marker": {"color": colours[0], "line": {"color": outline[0], "width": 2 if estimated else 0}}},
        increasing={"marker": {"color": colours[1], "line": {"color": outline[1], "width": 2 if estimated else 0}}},
        totals={"marker": {"color": colours[2], "line": {"color": outline[2], "width": 2 if estimated else 0}}},
        hovertemplate="%{customdata}: " + ("estimated " if estimated else "") + "%{y:,} bytes<extra></extra>"))
    ratio = waterfall.start / max(1, waterfall.end)
    fig.update_layout(title={"text": f"{short_name(waterfall.title)}<br><sup>{numbers.human(waterfall.start, 'B')} -> "
                                     f"{approx}{numbers.human(waterfall.end, 'B')} ({approx}{numbers.times(ratio)} "
                                     "smaller)</sup>", "font": {"size": 15}, "x": 0, "xanchor": "left"},
                      yaxis_title="bytes", height=height, margin={"t": 80, "b": 10, "l": 60, "r": 20},
                      showlegend=False)
    # room above the tallest bar for its number, and below zero for the number under a saving that ends near zero
    # (drawn under the bar: at zero it would sit on the axis labels)
    top = max(float(np.cumsum(values[:-1]).max()), waterfall.end, 1)
    fig.update_yaxes(range=[-0.1 * top, 1.18 * top], zeroline=True, zerolinecolor="#999")
    if estimated:
        fig.add_annotation(text="ESTIMATED from the weights (no model run): the run measures the real file",
                           xref="paper", yref="paper", x=1, y=1, xanchor="right", yanchor="bottom",
                           showarrow=False, font={"color": "#7f7f7f", "size": 12})
    fig.update_xaxes(tickangle=0, tickfont={"size": 9}, automargin=True)
    return fig


def weight_histogram(before: np.ndarray, after: np.ndarray, layer: str) -> go.Figure:
    """Histogram of a layer's weights before and after, with the shared values marked."""
    fig = go.Figure()
    fig.add_trace(go.Histogram(x=before, name="original", nbinsx=120, opacity=0.55))
    kept = after[after != 0]
    fig.add_trace(go.Histogram(x=kept, name="compressed (non-zero)", nbinsx=120, opacity=0.55))
    shared = np.unique(kept)
    if 0 < len(shared) <= 64:
        for value in shared:
            fig.add_vline(x=float(value), line_width=1, line_color="crimson", opacity=0.6)
    fig.update_layout(barmode="overlay", title=f"{layer}: {len(shared)} distinct non-zero values, "
                      f"{100 * (1 - kept.size / max(1, after.size)):.1f}% zeros", height=340, margin={"t": 40},
                      xaxis_title="weight", yaxis_title="count")
    return fig


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


def prediction_figure(table: pd.DataFrame) -> go.Figure:
    """Predicted vs measured accuracy drop (points) per run, the predicted range as an error bar, y = x dashed."""
    rows = table.dropna(subset=["predicted_drop_pts"])
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=rows["predicted_drop_pts"], y=rows["accuracy_drop_pts"], mode="markers", name="runs",
        text=rows["run"] + " " + rows["plan"].astype(str),
        error_x={"type": "data", "symmetric": False,
                 "array": rows["predicted_high_pts"] - rows["predicted_drop_pts"],
                 "arrayminus": rows["predicted_drop_pts"] - rows["predicted_low_pts"]},
        hovertemplate="%{text}<br>predicted %{x:.2f} pts, measured %{y:.2f} pts<extra></extra>"))
    top = float(max(rows["predicted_high_pts"].max(), rows["accuracy_drop_pts"].max(), 0.5)) if len(rows) else 1.0
    fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="predicted = measured",
                             line={"dash": "dash", "color": "grey"}))
    fig.update_layout(xaxis_title="predicted accuracy drop (points, at launch)",
                      yaxis_title="measured accuracy drop (points, decoded file)", height=360,
                      margin={"t": 30, "b": 40})
    return fig


def lesson_histogram(before: np.ndarray, after: np.ndarray | None, layer: str, after_name: str = "now") -> go.Figure:
    """The lesson's histogram of one layer's weights, zeros included (pruning's spike at zero shows), on shared bins;
    with `after`, the original faint behind it, its shared values marked, and counts on a log scale so the spike at
    zero and the few weights left beside it are both visible. Binned here: the browser gets 150 bars per series,
    not a quarter of a million weights."""
    values = before if after is None else np.concatenate([before, after])
    edges = np.linspace(float(values.min()), float(values.max()), 151)
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])

    def bars(weights: np.ndarray, name: str, colour: str, opacity: float) -> go.Bar:
        counts, _ = np.histogram(weights, edges)
        return go.Bar(x=centres, y=counts, width=width, name=name, marker={"color": colour}, opacity=opacity,
                      hovertemplate="%{x:.4f}: %{y:,} weights<extra>" + name + "</extra>")

    fig = go.Figure()
    fig.add_trace(bars(before, "original", "#7f7f7f" if after is not None else "#1f77b4",
                       0.35 if after is not None else 0.9))
    title = f"{layer}: {before.size:,} weights"
    if after is not None:
        fig.add_trace(bars(after, after_name, "#1f77b4", 0.85))
        kept = after[after != 0]
        shared = np.unique(kept)
        if 0 < shared.size <= 64:
            for value in shared:
                fig.add_vline(x=float(value), line_width=1, line_color="crimson", opacity=0.5)
        title += (f", {100 * (1 - kept.size / max(1, after.size)):.2f}% zeros, {shared.size:,} distinct non-zero "
                  "values" + (" (red lines)" if 0 < shared.size <= 64 else ""))
        fig.update_yaxes(type="log", title="count (log scale)")
    else:
        fig.update_yaxes(title="count")
    fig.update_layout(barmode="overlay", bargap=0, title=title, height=330, margin={"t": 40, "b": 30},
                      xaxis_title="weight",
                      legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1.0, "xanchor": "right"})
    return fig
