"""A behaviour diff (complab.analysis.behaviour, schema "behaviour/1") as words and plotly figures: the summary
sentence, per-class accuracy before/after with 95% intervals, the confusion-matrix difference, the reliability
diagram, the flip trace, a detector's per-class AP; the gallery's thumbnails and captions. No Streamlit here: the
Compare page (complab.ui.behaviour) and the HTML report (complab.ui.behaviour_report) both draw from it.

The diff may come from a cache file, so it is read as untrusted data: a thumbnail is decoded (base64, then PNG by
PIL, its size bounded) before it is drawn, and every text taken from it is escaped by the caller."""

from __future__ import annotations

import base64
import binascii
import io
import math

import plotly.graph_objects as go

from complab.analysis.behaviour import calibration_direction
from complab.ui import numbers

COLOUR_A, COLOUR_B = "#1f77b4", "#ff7f0e"  # the same two colours in every behaviour figure: A before, B after
KIND_WORDS = {"right_to_wrong": "right -> wrong", "wrong_to_right": "wrong -> right",
              "wrong_to_other_wrong": "wrong -> another wrong"}
MAX_THUMBNAIL_BYTES = 256 << 10  # a gallery thumbnail is a few KB; a larger one is not drawn
MAX_THUMBNAIL_SIDE = 1024  # pixels


def side_label(diff: dict, side: str, limit: int = 60) -> str:
    """The name of side "a" or "b" as the diff records it ("original", "run 2026...-ab12"), shortened."""
    label = str((diff.get(side) or {}).get("label") or side.upper())
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _within(span) -> bool:
    return bool(span) and float(span[0]) <= 0 <= float(span[1])


def net_change(diff: dict) -> float:
    """B's accuracy minus A's (a fraction): the flips wrong->right minus right->wrong over the split."""
    flips = diff["flips"]
    return (flips["wrong_to_right"] - flips["right_to_wrong"]) / max(1, diff["n"])


def summary(diff: dict) -> list[str]:
    """The diff in two or three plain sentences (the caller escapes them for markdown or HTML): agreement with its
    interval, the flips each way with the net change's interval and whether it is within noise, the accuracies."""
    n, flips = diff["n"], diff["flips"]
    split = diff.get("split") or "test"
    a, b = side_label(diff, "a"), side_label(diff, "b")
    lines = [f"{a[:1].upper()}{a[1:]} and {b} agree on {numbers.percent(diff['agreement'])} of the "
             f"{numbers.count(n)} {split} images (95% CI {numbers.percent_span(*diff['agreement_ci'])})."]
    net = net_change(diff)
    noise = _within(flips.get("net_ci"))
    verdict = "within noise" if noise else "beyond noise"
    lines.append(f"{numbers.count(flips['right_to_wrong'])} image(s) flipped right -> wrong, "
                 f"{numbers.count(flips['wrong_to_right'])} wrong -> right"
                 + (f", {numbers.count(flips['wrong_to_other_wrong'])} wrong -> another wrong answer"
                    if flips.get("wrong_to_other_wrong") else "")
                 + f" (net {numbers.points(net)}, 95% CI {numbers.points_span(*flips['net_ci'])}): {verdict}.")
    lines.append(f"Top-1 accuracy {numbers.percent(diff['accuracy_a'])} -> {numbers.percent(diff['accuracy_b'])}; "
                 f"expected calibration error {diff['calibration']['ece_a']:.3f} -> "
                 f"{diff['calibration']['ece_b']:.3f}" + _confidence_clause(diff) + ".")
    return lines


def _confidence_clause(diff: dict) -> str:
    """Which way the second model's calibration errs (analysis.behaviour.calibration_direction), as a clause."""
    found = calibration_direction(diff)
    if found is None:
        return ""
    confidence, accuracy, way = found
    return (f" ({side_label(diff, 'b')}'s mean confidence {numbers.percent(confidence)} against its accuracy "
            f"{numbers.percent(accuracy)}: {way})")


def noisy_classes(diff: dict) -> list[str]:
    """The names of the classes whose change is NOT within noise (what a reader should look at)."""
    return [str(row["name"]) for row in diff["per_class"] if not row["within_noise"]]


def per_class_figure(diff: dict, height: int = 380) -> go.Figure:
    """Per-class accuracy of both models, side by side per class, with their 95% intervals as error bars; a class
    whose change is within noise drawn faint (the caption says so)."""
    rows = diff["per_class"]
    names = [str(row["name"]) for row in rows]
    opacity = [0.3 if row["within_noise"] else 1.0 for row in rows]
    fig = go.Figure()
    for side, colour in (("a", COLOUR_A), ("b", COLOUR_B)):
        values = [100 * float(row[f"accuracy_{side}"]) for row in rows]
        spans = [row[f"ci_{side}"] for row in rows]
        fig.add_trace(go.Scatter(
            x=names, y=values, mode="markers", name=side_label(diff, side, 40),
            marker={"color": colour, "size": 11, "opacity": opacity},
            error_y={"type": "data", "array": [100 * float(hi) - v for (_, hi), v in zip(spans, values, strict=True)],
                     "arrayminus": [v - 100 * float(lo) for (lo, _), v in zip(spans, values, strict=True)],
                     "color": colour, "thickness": 1.5},
            customdata=[[row["n"], numbers.points(float(row["diff"])), numbers.points_span(*row["diff_ci"]),
                         "within noise" if row["within_noise"] else "beyond noise"] for row in rows],
            hovertemplate="class %{x}: %{y:.1f}% of %{customdata[0]} images<br>change %{customdata[1]} "
                          "(95% CI %{customdata[2]}), %{customdata[3]}<extra>%{fullData.name}</extra>"))
    lows = [100 * float(row[f"ci_{side}"][0]) for row in rows for side in "ab"]
    fig.update_layout(title="Per-class accuracy (95% intervals; faint: change within noise)", scattermode="group",
                      height=height, yaxis_title="top-1 accuracy (%)", xaxis_title="class",
                      margin={"t": 60, "b": 40}, legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(type="category")
    fig.update_yaxes(range=[max(0.0, min(lows, default=0.0) - 3), 101])
    return fig


def confusion_figure(diff: dict, height: int = 420) -> go.Figure:
    """B's confusion matrix minus A's (rows: true class, columns: predicted) with the counts in the cells, white at
    zero: blue where B puts more images than A, red where it puts fewer (on the diagonal blue is good)."""
    matrix = [[int(v) for v in row] for row in diff["confusion_diff"]]
    names = [str(row["name"]) for row in diff["per_class"]] or [str(i) for i in range(len(matrix))]
    largest = max((abs(v) for row in matrix for v in row), default=0) or 1
    fig = go.Figure(go.Heatmap(
        z=matrix, x=names, y=names, zmid=0, zmin=-largest, zmax=largest, colorscale="RdBu",
        text=[[("" if v == 0 else f"{v:+d}") for v in row] for row in matrix], texttemplate="%{text}",
        hovertemplate="true %{y}, predicted %{x}: %{z:+d} image(s)<extra></extra>",
        colorbar={"title": {"text": "B - A"}}))
    fig.update_layout(title="Confusion matrix change (after minus before)",
                      height=height, xaxis_title="predicted class", yaxis_title="true class", margin={"t": 60})
    fig.update_xaxes(type="category", side="bottom")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def reliability_figure(diff: dict, height: int = 400) -> go.Figure:
    """The reliability diagram: each confidence bin's mean confidence against its accuracy, both models (marker
    area by the bin's images), the diagonal a perfectly calibrated model follows, each model's ECE in the legend."""
    calibration = diff["calibration"]
    fig = go.Figure(go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="perfectly calibrated",
                               line={"color": "#7f7f7f", "dash": "dot"}, hoverinfo="skip"))
    for side, colour in (("a", COLOUR_A), ("b", COLOUR_B)):
        bins = [b for b in calibration["bins"] if b.get(f"count_{side}") and b.get(f"confidence_{side}") is not None
                and b.get(f"accuracy_{side}") is not None]  # an empty bin has no point
        most = max((b[f"count_{side}"] for b in bins), default=1)
        fig.add_trace(go.Scatter(
            x=[100 * float(b[f"confidence_{side}"]) for b in bins],
            y=[100 * float(b[f"accuracy_{side}"]) for b in bins],
            mode="lines+markers", line={"color": colour, "width": 1},
            name=f"{side_label(diff, side, 40)} (ECE {float(calibration[f'ece_{side}']):.3f})",
            marker={"color": colour, "size": [6 + 14 * math.sqrt(b[f"count_{side}"] / most) for b in bins]},
            customdata=[[numbers.count(b[f"count_{side}"]), numbers.percent(b["lo"], 0), numbers.percent(b["hi"], 0)]
                        for b in bins],
            hovertemplate="bin %{customdata[1]}-%{customdata[2]}: %{customdata[0]} images, confidence %{x:.1f}%, "
                          "accuracy %{y:.1f}%<extra>%{fullData.name}</extra>"))
    fig.update_layout(title="Reliability diagram (confidence vs accuracy per bin)", height=height,
                      xaxis_title="mean confidence in the bin (%)", yaxis_title="accuracy in the bin (%)",
                      margin={"t": 60}, legend={"orientation": "h", "y": -0.2})
    fig.update_xaxes(range=[0, 101])
    fig.update_yaxes(range=[0, 101])
    return fig


def trace_figure(diff: dict, height: int = 320) -> go.Figure | None:
    """The layers the flips trace back to: the share of the flips each layer reproduces alone (ablation) or its
    predicted drop (sensitivity), largest first; None when the diff has no trace."""
    trace = diff.get("trace") or {}
    layers = trace.get("layers") or []
    if not trace.get("method") or not layers:
        return None
    ablation = trace["method"] == "ablation"
    rows = sorted(layers, key=lambda row: -float(row.get("share") or 0))
    values = [100 * float(row.get("share") or 0) for row in rows]
    said = ([f"{_flips(row.get('flips_reproduced') or 0)} ({numbers.percent(row.get('share') or 0, 0)})"
             for row in rows] if ablation else [numbers.points(float(row.get("predicted_drop") or 0)) for row in rows])
    fig = go.Figure(go.Bar(x=values, y=[str(row["layer"]) for row in rows], orientation="h", text=said,
                           textposition="outside", cliponaxis=False, marker={"color": COLOUR_B}))
    fig.update_layout(title=("Share of the flips each layer reproduces on its own (ablation)" if ablation else
                             "Predicted drop per layer at the run's settings (sensitivity report)"),
                      height=max(height, 80 + 28 * len(rows)), margin={"t": 60, "l": 10, "r": 40},
                      xaxis_title="share of the flips (%)" if ablation else "share of the predicted drop (%)")
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(range=[0, max(values + [1.0]) * 1.25])
    return fig


def _flips(n: int) -> str:
    return f"{numbers.count(n)} flip{'' if n == 1 else 's'}"


def detector_ap_figure(diff: dict, height: int = 380) -> go.Figure:
    """A detector's per-class AP50 and AP50-95 of both models, grouped bars per class."""
    rows = diff["per_class"]
    names = [str(row["name"]) for row in rows]
    fig = go.Figure()
    for side, colour in (("a", COLOUR_A), ("b", COLOUR_B)):
        for metric, opacity in (("ap50", 1.0), ("ap50_95", 0.55)):
            fig.add_trace(go.Bar(x=names, y=[_optional(row.get(f"{metric}_{side}")) for row in rows],
                                 name=f"{'AP50' if metric == 'ap50' else 'AP50-95'} {side_label(diff, side, 30)}",
                                 marker={"color": colour, "opacity": opacity},
                                 texttemplate="%{y:.3f}", textposition="outside"))
    fig.update_layout(title="Per-class AP before and after", barmode="group", height=height, yaxis_title="AP",
                      margin={"t": 60}, legend={"orientation": "h", "y": -0.2})
    fig.update_yaxes(range=[0, 1.1])
    fig.update_xaxes(type="category")
    return fig


def _optional(value) -> float | None:
    """A number the diff may leave out (a class with no boxes has no AP): None stays a gap in the bars."""
    return None if value is None else float(value)


# ---- the gallery ---------------------------------------------------------------------------------------------


def class_names(diff: dict) -> dict[int, str]:
    """Class index -> name, from the per-class table."""
    return {int(row["class"]): str(row["name"]) for row in diff.get("per_class") or []}


def top3_text(top3, names: dict[int, str]) -> str:
    """"3 (98%), 5 (1%), 8 (0%)": a model's three most likely classes and their probabilities."""
    return ", ".join(f"{names.get(int(cls), str(int(cls)))} ({numbers.percent(prob, 0)})" for cls, prob in top3)


def gallery_caption(item: dict, names: dict[int, str], diff: dict) -> str:
    """One flipped image's caption, three lines: its true class and the kind of flip, then model A's and model B's
    three most likely classes (gallery_legend says who A and B are)."""
    label = names.get(int(item["label"]), str(int(item["label"])))
    return (f"true {label} · {KIND_WORDS.get(item['kind'], item['kind'])}\n"
            f"A: {top3_text(item['top3_a'], names)}\n"
            f"B: {top3_text(item['top3_b'], names)}")


def gallery_legend(diff: dict) -> str:
    """Who A and B are in the gallery's captions."""
    return f"A: {side_label(diff, 'a')}; B: {side_label(diff, 'b')}"


def gallery_items(diff: dict, kinds: tuple[str, ...] | None = None) -> list[dict]:
    """The gallery as the diff orders it (the compressed model's confidence in its wrong answer, highest first),
    only the flips of `kinds` when given."""
    return [item for item in diff.get("gallery") or [] if kinds is None or item["kind"] in kinds]


def thumbnail(encoded: str) -> bytes | None:
    """A gallery thumbnail's PNG bytes, checked: valid base64, a PNG that PIL decodes, at most MAX_THUMBNAIL_SIDE
    pixels a side; None for anything else (a damaged cache file shows a missing picture, never a traceback)."""
    from PIL import Image

    if not isinstance(encoded, str) or len(encoded) > MAX_THUMBNAIL_BYTES * 4 // 3 + 4:
        return None
    try:
        blob = base64.b64decode(encoded, validate=True)
        with Image.open(io.BytesIO(blob)) as image:
            if image.format != "PNG" or max(image.size) > MAX_THUMBNAIL_SIDE:
                return None
            image.load()
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError):
        return None
    return blob
