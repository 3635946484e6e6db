"""A layer's sensitivity curve as a tiny inline SVG (a string: no chart library, cheap for 100 rows).

`layer_curve(report, layer, kind)` reads one curve out of a sensitivity report (accuracy at each grid point,
and whether the point was measured or estimated); `sparkline(curve, ...)` draws it with the current slider
position marked: filled dots for measured points, hollow ones for estimated points, a red line and dot at the
setting. Pure functions: the page puts the string in st.markdown(unsafe_allow_html=True).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

LINE, MEASURED, MARK, AXIS = "#4c78a8", "#4c78a8", "#e45756", "#c8c8c8"


@dataclass(frozen=True)
class Curve:
    xs: tuple[float, ...]  # grid points, ascending (sparsity, or log2 of the cluster count)
    accuracies: tuple[float, ...]
    measured: tuple[bool, ...]  # False: the point was estimated (e.g. from gradients), not measured
    base: float  # the unchanged model's accuracy
    kind: str  # "sparsity", "clusters" or "bits" (integer widths, on a linear axis)


def layer_curve(report: dict | None, layer: str, kind: str = "sparsity") -> Curve | None:
    """The layer's accuracy curve for one kind of setting, or None when the report has no such curve.

    A report entry may list its measured points ({"measured": {"sparsity": ["0.5", ...]}}); without that list
    every point counts as measured. Clusters are placed on a log2 axis (k = 2 ... 256)."""
    if not report:
        return None
    row = (report.get("layers") or {}).get(layer) or {}
    points = row.get(kind) or {}
    parsed = []
    for key, accuracy in points.items():
        try:
            x, y = float(key), float(accuracy)
        except (TypeError, ValueError):
            continue
        if kind == "clusters":
            if x <= 0:
                continue
            x = math.log2(x)
        if math.isfinite(x) and math.isfinite(y):
            parsed.append((x, y, key))
    if not parsed:
        return None
    parsed.sort()
    listed = (row.get("measured") or {}).get(kind)
    measured_keys = None if listed is None else {float(k) for k in listed}
    measured = tuple(measured_keys is None or float(key) in measured_keys for _, _, key in parsed)
    return Curve(tuple(x for x, _, _ in parsed), tuple(y for _, y, _ in parsed), measured,
                 float(report.get("base_accuracy", max(y for _, y, _ in parsed))), kind)


def accuracy_at(curve: Curve, x: float) -> float:
    """The curve's accuracy at x (linear between grid points, flat beyond them)."""
    xs, ys = curve.xs, curve.accuracies
    if x <= xs[0]:
        return ys[0]
    points = list(zip(xs, ys, strict=True))
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):  # neighbours: one pair fewer than points
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return ys[-1]


def sparkline(curve: Curve, current: float | None = None, width: int = 120, height: int = 30,
              floor: float | None = None) -> str:
    """An inline <svg> of the curve (x: the setting, y: accuracy from `floor` up to the base accuracy, a grey
    line at the base) with `current` (same units as curve.xs) marked. Numbers only go into the markup."""
    pad = 3.0
    x_lo, x_hi = min(curve.xs), max(curve.xs)
    if current is not None and math.isfinite(current):
        x_lo, x_hi = min(x_lo, current), max(x_hi, current)
    y_hi = max(curve.base, *curve.accuracies)
    y_lo = min(curve.accuracies) if floor is None else min(floor, *curve.accuracies)
    if y_hi - y_lo < 1e-9:
        y_lo = y_hi - 1.0

    def px(x: float) -> float:
        return pad + (width - 2 * pad) * ((x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5)

    def py(y: float) -> float:
        return pad + (height - 2 * pad) * (y_hi - y) / (y_hi - y_lo)

    points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(curve.xs, curve.accuracies, strict=True))
    title = f"{curve.kind}: accuracy {min(curve.accuracies):.3f} - {max(curve.accuracies):.3f} (base {curve.base:.3f})"
    # width 100% (at most `width` px): the picture scales to its column and keeps its proportions
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" style="max-width:{width}px;display:block" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(curve.kind)} sensitivity">',
             f"<title>{escape(title)}</title>",
             f'<line x1="{pad}" y1="{py(curve.base):.1f}" x2="{width - pad}" y2="{py(curve.base):.1f}" '
             f'stroke="{AXIS}" stroke-width="1" stroke-dasharray="2,2"/>',
             f'<polyline points="{points}" fill="none" stroke="{LINE}" stroke-width="1.5"/>']
    for x, y, measured in zip(curve.xs, curve.accuracies, curve.measured, strict=True):
        fill = MEASURED if measured else "white"
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2" fill="{fill}" stroke="{LINE}" '
                     f'stroke-width="1" class="{"measured" if measured else "estimated"}"/>')
    if current is not None and math.isfinite(current):
        cx, cy = px(current), py(accuracy_at(curve, current))
        parts.append(f'<line x1="{cx:.1f}" y1="0" x2="{cx:.1f}" y2="{height}" stroke="{MARK}" stroke-width="1"/>')
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{MARK}" class="current"/>')
    parts.append("</svg>")
    return "".join(parts)
