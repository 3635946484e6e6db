"""The HTML report's "Behaviour" section: the chosen run against the original (when the report was given it) or
else against the report's second run, drawn from a behaviour diff (complab.analysis.behaviour, schema
"behaviour/1") with the same words and figures as the Compare page (complab.ui.behaviour_figures), the gallery's
thumbnails inline as data: URIs. No Streamlit here (the CLI's `report` imports it). When no diff can be computed,
the section says why in one line."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from complab.analysis import report
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui import behaviour_figures as bf
from complab.ui import numbers

GALLERY_IN_REPORT = 24  # flipped images inlined in the report (the diff keeps up to 48)


def report_diff(runs: list, original=None, cache_dir: str | Path | None = None) -> dict | str:
    """The diff the report shows for runs[0] (the chosen run): against `original` ((handle, data) the person gave,
    used only when its label is the run's model) else against runs[1] (a before, the chosen run after); a one-line
    reason (str) when there is neither or it cannot be computed."""
    from complab.analysis.behaviour import diff_files

    chosen = runs[0]
    try:
        if original is not None and report.original_matches(original[0], chosen.metrics):
            diff = diff_files(chosen.dir / "model.clab", None, original=original[0], data=original[1],
                              cache_dir=cache_dir)
            return labelled(diff, "the original", f"run {chosen.id}")
        if len(runs) > 1:
            other = runs[1]
            diff = diff_files(other.dir / "model.clab", chosen.dir / "model.clab", cache_dir=cache_dir)
            return labelled(diff, f"run {other.id}", f"run {chosen.id}")
    except CompressionLabError as exc:
        return f"No behaviour diff: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}."
    return ("No behaviour diff: the report was given neither the original model (complab report RUN --model "
            "MODEL) nor a second run to compare this run with.")


def labelled(diff: dict, label_a: str, label_b: str) -> dict:
    """The diff with its two sides named as a reader knows them ("original", "run 2026...") instead of the file
    names the library records (both runs' files are called model.clab)."""
    return {**diff, "a": {**(diff.get("a") or {}), "label": label_a}, "b": {**(diff.get("b") or {}), "label": label_b}}


def _numbers(diff: dict) -> dict:
    """The section's numbers as data (a <script type=application/json>), for a reader's tools and the tests."""
    if finds_boxes(diff.get("task")):
        return {key: diff.get(key) for key in ("task", "n", "map50_a", "map50_b", "map50_95_a", "map50_95_b")}
    flips = diff["flips"]
    return {"task": "classify", "n": diff["n"], "agreement": diff["agreement"],
            "right_to_wrong": flips["right_to_wrong"], "wrong_to_right": flips["wrong_to_right"],
            "accuracy_a": diff["accuracy_a"], "accuracy_b": diff["accuracy_b"],
            "ece_a": diff["calibration"]["ece_a"], "ece_b": diff["calibration"]["ece_b"],
            "changed_classes": bf.noisy_classes(diff), "a": diff["a"].get("label"), "b": diff["b"].get("label")}


def _gallery(diff: dict) -> str:
    names = bf.class_names(diff)
    cells = []
    for item in bf.gallery_items(diff)[:GALLERY_IN_REPORT]:
        picture = bf.thumbnail(item.get("image_png_b64"))
        caption = html.escape(bf.gallery_caption(item, names, diff)).replace("\n", "<br>")
        source = ("" if picture is None else  # re-encoded from the checked bytes: nothing of the file's text
                  f"<img alt='flipped image {int(item['index'])}' src='data:image/png;base64,"
                  f"{base64.b64encode(picture).decode('ascii')}'>")
        cells.append(f"<div>{source}<div class='small'>{caption}</div></div>")
    if not cells:
        return "<p class='small'>No image changed its prediction.</p>"
    return ("<h3>Flipped images</h3><p class='small'>The second model's most confident wrong answers first; under "
            "each its true class and both models' three most likely classes ("
            f"{html.escape(bf.gallery_legend(diff))}).</p>"
            "<div class='grid gallery' id='behaviour-gallery' style='grid-template-columns:repeat(6,1fr)'>"
            f"{''.join(cells)}</div>")


def behaviour_block(diff: dict | str, draw, json_for_html) -> str:
    """The section's HTML: `draw` turns a figure into a <div> (the report's, so plotly.js is inlined once),
    `json_for_html` makes its numbers safe inside a <script> element."""
    head = "<h2 id='behaviour'>Behaviour</h2>"
    if isinstance(diff, str):
        return head + f"<p class='small' id='no-behaviour'>{html.escape(diff)}</p>"
    parts = [head, f"<script type='application/json' id='behaviour-numbers'>{json_for_html(_numbers(diff))}</script>"]
    a, b = bf.side_label(diff, "a"), bf.side_label(diff, "b")
    if finds_boxes(diff.get("task")):
        parts.append(f"<p class='headline'>{html.escape(a)} -> {html.escape(b)}: mAP50 {diff['map50_a']:.3f} -> "
                     f"{diff['map50_b']:.3f}, mAP50-95 {diff['map50_95_a']:.3f} -> {diff['map50_95_b']:.3f} on "
                     f"{numbers.count(diff['n'])} validation images.</p>")
        parts.append(draw(bf.detector_ap_figure(diff)))
        rows = "".join(f"<tr><td>{html.escape(str(row.get('path')))}</td><td>{int(row.get('vanished') or 0)}</td>"
                       f"<td>{int(row.get('new') or 0)}</td><td>{int(row.get('moved') or 0)}</td>"
                       f"<td>{float(row.get('change') or 0):.2f}</td></tr>" for row in diff.get("images") or [])
        parts.append("<table id='behaviour-images'><tr><th>image (most changed first)</th><th>vanished</th>"
                     f"<th>new</th><th>moved</th><th>change</th></tr>{rows}</table>")
        return "".join(parts)
    parts.append("".join(f"<p class='verdict'>{html.escape(line)}</p>" for line in bf.summary(diff)))
    noisy = bf.noisy_classes(diff)
    parts.append(draw(bf.per_class_figure(diff)))
    parts.append("<p class='small'>" + html.escape(
        ("Classes changed beyond noise: " + ", ".join(noisy) + ". " if noisy else
         "Every class's change is within noise. ")
        + "Faint points: the 95% interval of a class's change holds zero, or the change is under one image.") + "</p>")
    parts.append(draw(bf.confusion_figure(diff)))
    parts.append(draw(bf.reliability_figure(diff)))
    trace = bf.trace_figure(diff)
    if trace is not None:
        parts.append(draw(trace))
    note = (diff.get("trace") or {}).get("note")
    if note:
        parts.append(f"<p class='small' id='behaviour-trace'>{html.escape(str(note))}</p>")
    parts.append(_gallery(diff))
    return "".join(parts)
