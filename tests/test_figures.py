"""The figures (complab/ui/figures.py) say what the numbers mean: the heatmap's neutral colour is zero drop, the
sensitivity curves carry their 95% band, an axis over equal values does not invent precision, a waterfall's labels
are short and horizontal and its numbers are not clipped."""

import re

import pandas as pd
import pytest
from complab.analysis.report import Waterfall
from complab.intervals import wilson
from complab.ui import figures
from plotly.colors import find_intermediate_color, hex_to_rgb

REPORT = {"base_accuracy": 0.9, "config": {"val_size": 200},
          "layers": {"conv1": {"params": 500, "sparsity": {"0.0": 0.9, "0.5": 0.85, "0.9": 0.5},
                               "clusters": {"2": 0.6, "8": 0.88, "32": 0.9}},
                     "fc1": {"params": 4000, "sparsity": {"0.0": 0.9, "0.5": 0.925, "0.9": 0.9},
                             "clusters": {"2": 0.8, "8": 0.9, "32": 0.91}}}}


def colour_at(trace, value: float) -> tuple[float, ...]:
    """The RGB a heatmap trace draws `value` with (its colorscale between zmin and zmax, linear)."""
    where = (value - trace.zmin) / (trace.zmax - trace.zmin)
    scale = [(float(stop), tuple(float(c) for c in hex_to_rgb(colour))) for stop, colour in trace.colorscale]
    for (s0, c0), (s1, c1) in zip(scale, scale[1:], strict=False):
        if s0 <= where <= s1:
            return find_intermediate_color(c0, c1, (where - s0) / (s1 - s0) if s1 > s0 else 0.0)
    raise AssertionError(f"{value} outside the scale")


def test_heatmap_neutral_colour_is_zero_drop():
    trace = figures.sensitivity_heatmap(REPORT).data[0]
    assert trace.z[0][0] == 0  # conv1 at sparsity 0: no drop
    assert colour_at(trace, 0.0) == (255.0, 255.0, 255.0)  # white: not a colour that reads as a loss
    red = colour_at(trace, 40.0)  # conv1 at 0.9: the largest loss, the saturated end
    assert red[0] > 150 and red[1] < 60 and red[2] < 60
    gain = colour_at(trace, -2.5)  # fc1 at 0.5 "gains" 2.5 points: noise, grey (r = g = b), never red
    assert gain[0] == gain[1] == gain[2] < 255
    assert trace.zmin == -trace.zmax  # centred at zero whatever the data


def test_sensitivity_curves_carry_their_95_percent_band():
    fig = figures.sensitivity_curves(REPORT, "sparsity")
    bands = [t for t in fig.data if t.fill == "toself"]
    assert [t.name for t in bands] == ["conv1 95% band", "fc1 95% band"]
    low, high = wilson(0.5, 200)  # conv1 at 0.9 on the config's 200 images
    conv1 = bands[0]
    assert conv1.y[2] == pytest.approx(100 * high) and conv1.y[3] == pytest.approx(100 * low)
    rects = [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert len(rects) == 1  # the original's band behind its dotted line
    base_low, base_high = wilson(0.9, 200)
    assert rects[0].y0 == pytest.approx(100 * base_low) and rects[0].y1 == pytest.approx(100 * base_high)
    # the noise's own count wins over the config's size; no count, no band; a detector's mAP: none
    noisy = {**REPORT, "noise": {"val_images": 40, "message": ""}}
    wide = [t for t in figures.sensitivity_curves(noisy, "sparsity").data if t.fill == "toself"][0]
    assert wide.y[2] == pytest.approx(100 * wilson(0.5, 40)[1])
    assert not [t for t in figures.sensitivity_curves({**REPORT, "config": {}}, "sparsity").data if t.fill]
    assert not [t for t in figures.sensitivity_curves(REPORT, "clusters", band=False).data if t.fill]
    # a ResNet-18's 21 layers: their bands would stack into one grey block; only the original's band is drawn
    many = {**REPORT, "layers": {f"layer{i}": REPORT["layers"]["conv1"] for i in range(figures.BAND_LAYERS_UP_TO + 1)}}
    crowded = figures.sensitivity_curves(many, "sparsity")
    assert not [t for t in crowded.data if t.fill] and len([s for s in crowded.layout.shapes if s.type == "rect"]) == 1


def runs(costs: list[float], accuracies: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"run": [f"r{i}" for i in range(len(costs))], "method": "prune", "plan": "p", "ratio": 10.0,
                         "sparse_flops": costs, "accuracy": accuracies, "task": "classify"})


def test_pareto_axis_over_equal_values_is_padded_not_zoomed_into_noise():
    fig = figures.pareto_figure(runs([43_551, 43_553], [0.9812, 0.9812]), "sparse_flops", "FLOPs")
    low, high = fig.layout.xaxis.range
    assert low <= 43_551 * 0.96 and high >= 43_553 * 1.04  # a 43.551k-43.553k axis is gone
    assert fig.layout.xaxis.tickformat == "~s"
    y_low, y_high = fig.layout.yaxis.range
    assert y_low <= 98.12 - 0.999 and y_high >= 98.12 + 0.999
    spread = figures.pareto_figure(runs([20_000, 43_553], [0.95, 0.98]), "sparse_flops", "FLOPs")
    assert spread.layout.xaxis.range is None and spread.layout.yaxis.range is None  # real spreads: plotly's own


def test_waterfall_labels_are_short_and_horizontal_numbers_not_clipped():
    steps = {"framing": -1_204, "pruned": -1_540_000, "positions": 40_000, "indices": -120_000, "codebooks": 64,
             "entropy": -7_349, "zstd": -73_493, "sections": 900, "header": 1_800}
    start = 1_722_572
    waterfall = Waterfall("run 20261207-132400-abcdef layer model.backbone.stage4.block2.conv_pointwise", start,
                          steps, start + sum(steps.values()))
    fig = figures.bytes_waterfall(waterfall)
    trace = fig.data[0]
    assert trace.cliponaxis is False and trace.textposition == "outside"
    assert fig.layout.xaxis.tickangle == 0
    assert all(len(line) <= 8 for label in trace.x for line in label.split("<br>")), trace.x
    assert "-73.5k" in trace.text and "-7,349" in trace.text and trace.text[0] == "1.72M"  # short enough to fit
    assert all(len(text) <= 7 for text in trace.text), trace.text
    assert trace.constraintext == "none"  # drawn at its size, not shrunk to the bar's width
    assert "entropy coded (positions and indices)" in trace.customdata  # the long label in the hover
    title_lines = re.sub(r"</?sup>", "", fig.layout.title.text).split("<br>")
    assert len(title_lines) == 2 and all(len(line) <= 40 for line in title_lines), title_lines
    assert fig.layout.margin.t >= 70
    low, high = fig.layout.yaxis.range
    assert high >= 1.1 * start and low < 0  # room above the tallest bar, and below a saving that ends near zero
