"""The Compare page's "Behaviour" section and its projector view: did compression change what the model does?

`section` picks what to compare the shown run with (the original when the person's active model is the run's
model, else another finished run of the same model), reads the pair's diff from the disk cache at once or computes
it on the button (complab.service.behaviour_diff, decoded files only), and `draw` shows a diff dict (schema
"behaviour/1"): the summary, per-class accuracy, the confusion-matrix difference, the reliability diagram, the
gallery of flipped images and the layers the flips trace back to; a detector's per-class AP and its most changed
validation images, redrawn with complab.analysis.detections.draw (only images the active data holds by that name).
"""

from __future__ import annotations

import streamlit as st

from complab import service
from complab.analysis import detections, report
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui import behaviour_figures as bf
from complab.ui.behaviour_report import labelled
from complab.ui.numbers import count, percent
from complab.ui.present import presenting, projector
from complab.ui.report import plain_markdown
from complab.ui.state import home, load_active

ORIGINAL = "original"  # the picker's value for "the original model" (a run id never reads so)
GALLERY_COLUMNS = 6
DETECTION_IMAGES = 4  # the most changed images drawn side by side (the diff's table lists them all)


def active_original(metrics: dict):
    """(handle, data) of the active model when it is the run's model (report.original_matches), else None: the
    original's weights come only from the model the person made active, never from a run folder."""
    try:
        handle, data = load_active()
    except CompressionLabError:
        return None
    return (handle, data) if report.original_matches(handle, metrics) else None


def partners(run_id: str, runs: list[dict], original_ok: bool) -> list[str]:
    """What the run can be compared with: the original (when the person's active model is the run's model), then
    the other finished, undamaged runs of the same model, newest first. A run of another model is not offered."""
    mine = next((run for run in runs if run["id"] == run_id), None)
    model = (mine or {}).get("metrics", {}).get("model") if mine else None
    others = [run["id"] for run in runs if run["id"] != run_id and not run.get("damaged")
              and run.get("state", "succeeded") == "succeeded"
              and isinstance(run.get("metrics"), dict) and run["metrics"].get("model") == model]
    return ([ORIGINAL] if original_ok else []) + others


def _pair_key(run_id: str, other: str, original) -> str:
    """The session's memo of a pair's diff (run files never change; the original is the active model's label)."""
    return f"behaviour::{run_id}::{other}::{original[0].label if original and other == ORIGINAL else ''}"


def _diff(run_id: str, other: str, original, compute: bool) -> dict | None:
    """The pair's diff (a: the original or the other run, b: the shown run) from the service, its sides named as
    the page names them; compute=False: only from the disk cache (None when not there or damaged)."""
    handle, data = original if original and other == ORIGINAL else (None, None)
    diff = service.behaviour_diff(run_id if other == ORIGINAL else other, None if other == ORIGINAL else run_id,
                                  root=home(), original=handle, data=data, compute=compute)
    return None if diff is None else labelled(diff, "the original" if other == ORIGINAL else f"run {other}",
                                              f"run {run_id}")


def cached(run_id: str, other: str, original) -> dict | None:
    """The pair's diff from the disk cache (no model is run), or None when it was never computed, its cache file
    is damaged (the button computes it again) or the files cannot be read (the button says why)."""
    if other == ORIGINAL and original is None:
        return None
    try:
        return _diff(run_id, other, original, compute=False)
    except CompressionLabError:
        return None


def compute(run_id: str, other: str, original) -> dict:
    """The pair's diff, computed from the decoded files (and kept on disk by the service for next time)."""
    return _diff(run_id, other, original, compute=True)


def section(run_id: str, runs: list[dict], original=None, key: str = "behaviour") -> None:
    """The Behaviour section for the shown run: pick B, then the diff (shown at once when cached, else computed on
    the button, with a spinner); errors as one st.error line. `original`: (handle, data) of the active model when it
    is the run's model (report.original_matches), else None."""
    options = partners(run_id, runs, original is not None)
    if not options:
        st.info("Nothing to compare this run's behaviour with: make its model the active one (Model page) to "
                "compare it with the original, or finish another run of the same model.")
        return
    other = st.selectbox("Compare with", options, key=f"{key}_other",
                         format_func=lambda o: "the original (the active model)" if o == ORIGINAL else f"run {o}")
    memo = _pair_key(run_id, other, original)
    diff = st.session_state.get(memo) or cached(run_id, other, original)
    if diff is None:
        wanted = f"{key}_wanted::{run_id}::{other}"  # set by the button's callback: it outlives page_setup's rerun
        if not st.session_state.get(wanted):
            st.button("Compare behaviour", key=f"{key}_go", on_click=st.session_state.__setitem__, args=(wanted, True),
                      help="Runs both models on the split (decoded from their compact files) and keeps the result "
                           "on disk for next time: a few seconds.")
            st.caption("Agreement, flipped images, per-class accuracy, calibration and the layers the flips come "
                       "from, on the run's split.")
            return
        st.session_state[wanted] = False
        try:
            with st.spinner("Running both models on the split..."):
                diff = compute(run_id, other, original)
        except CompressionLabError as exc:
            st.error(plain_markdown(str(exc)))
            return
    st.session_state[memo] = diff  # redrawn at once when a widget below (the gallery's filter) reruns the page
    draw(diff, original[1] if original else None, key=key)


def draw(diff: dict, data=None, key: str = "behaviour") -> None:
    """A diff dict drawn: a classifier's or a detector's (data: the active data, for a detector's images)."""
    if finds_boxes(diff.get("task")):
        draw_detector(diff, data, key)
    else:
        draw_classifier(diff, key)


def draw_classifier(diff: dict, key: str) -> None:
    """Summary, per-class accuracy, confusion difference, reliability, gallery and trace of a classifier diff."""
    lines = bf.summary(diff)
    st.markdown("  \n".join(plain_markdown(line) for line in lines))
    noisy = bf.noisy_classes(diff)
    left, right = st.columns(2)
    left.plotly_chart(bf.per_class_figure(diff), key=f"{key}_per_class")
    right.plotly_chart(bf.confusion_figure(diff), key=f"{key}_confusion")
    st.caption(("Classes changed beyond noise: " + ", ".join(plain_markdown(name) for name in noisy) + ". "
                if noisy else "Every class's change is within noise. ")
               + "Faint points: classes whose change is within noise (the 95% interval of the difference holds "
               f"zero, or it is under one image: one image of {count(diff['n'])} is "
               f"{percent(1 / max(1, diff['n']), 2)} of the split). The heatmap: after minus before, blue where "
               "the second model puts more images, red fewer; white is no change.")
    left, right = st.columns(2)
    left.plotly_chart(bf.reliability_figure(diff), key=f"{key}_reliability")
    trace = bf.trace_figure(diff)
    if trace is not None:
        right.plotly_chart(trace, key=f"{key}_trace")
    note = (diff.get("trace") or {}).get("note")
    if note:
        right.caption(plain_markdown(note))
    st.caption("Expected calibration error (ECE): the gap between confidence and accuracy, averaged over 15 "
               "confidence bins weighted by their images (Guo et al. 2017); on the diagonal a model is as sure as "
               "it is right.")
    gallery(diff, key)


def gallery(diff: dict, key: str) -> None:
    """The flipped images in a grid, sorted as the diff gives them, filtered by the kind of flip."""
    items = bf.gallery_items(diff)
    if not items:
        st.caption("No image changed its prediction: nothing to show in the gallery.")
        return
    kinds = [kind for kind in bf.KIND_WORDS if any(item["kind"] == kind for item in items)]
    chosen = st.pills("Flips", kinds, selection_mode="multi", default=kinds, key=f"{key}_kinds",
                      format_func=lambda kind: bf.KIND_WORDS[kind])
    shown = bf.gallery_items(diff, tuple(chosen or kinds))
    st.caption(f"{count(len(shown))} flipped image(s), the second model's most confident wrong answers first; under "
               "each: its true class and both models' three most likely classes ("
               + plain_markdown(bf.gallery_legend(diff)) + ").")
    names = bf.class_names(diff)
    columns = st.columns(GALLERY_COLUMNS)
    for index, item in enumerate(shown):
        picture = bf.thumbnail(item.get("image_png_b64"))
        column = columns[index % GALLERY_COLUMNS]
        caption = "  \n".join(plain_markdown(line) for line in bf.gallery_caption(item, names, diff).splitlines())
        if picture is None:
            column.caption("(picture damaged)")
        else:
            column.image(picture, width="stretch")
        column.caption(caption)


def draw_detector(diff: dict, data, key: str) -> None:
    """A detector diff: mAP before/after, per-class AP, and the most changed validation images side by side."""
    a, b = bf.side_label(diff, "a"), bf.side_label(diff, "b")
    st.markdown(plain_markdown(f"mAP50 {diff['map50_a']:.3f} -> {diff['map50_b']:.3f}, mAP50-95 "
                               f"{diff['map50_95_a']:.3f} -> {diff['map50_95_b']:.3f} on {count(diff['n'])} "
                               f"validation images ({a} -> {b})."))
    st.plotly_chart(bf.detector_ap_figure(diff), key=f"{key}_ap")
    images = diff.get("images") or []
    st.dataframe([{k: row.get(k) for k in ("path", "vanished", "new", "moved", "kept", "change")} for row in images],
                 hide_index=True, key=f"{key}_images")
    drawn = detector_pairs(diff, data, DETECTION_IMAGES)
    if data is None or not drawn:
        st.caption("The most changed images are drawn when the run's model is the active one (Model page): image "
                   "names from the diff are looked up in its validation images.")
        return
    for name, left_image, right_image, counts in drawn:
        left, right = st.columns(2)
        left.image(left_image, caption=f"{a}: {name}", width="stretch")
        right.image(right_image, caption=f"{b}: {counts['vanished']} vanished (red), {counts['appeared']} new "
                                         "(pink)", width="stretch")


def detector_pairs(diff: dict, data, limit: int) -> list[tuple]:
    """(name, image A, image B, counts) of the most changed images that carry boxes, drawn as the Detections page
    draws them; a name not among `data`'s validation images (an untrusted cache file's) is skipped."""
    from PIL import Image

    if data is None:
        return []
    by_name = {path.name: path for path in data.val_images()}
    names = dict(getattr(data, "names", {}) or {})
    out = []
    for row in diff.get("images") or []:
        path = by_name.get(str(row.get("path")))
        if path is None or not row.get("boxes_a") and not row.get("boxes_b"):
            continue
        try:  # the cache reader checked the boxes; a row that is still not six numbers a box is skipped
            before, after = _boxes(row.get("boxes_a")), _boxes(row.get("boxes_b"))
        except (TypeError, ValueError, IndexError):
            continue
        detections.compare(before, after)
        with Image.open(path) as image:
            image.load()
            scale = max(1, round(360 / max(image.size)))
            out.append((path.name, detections.draw(image, before, names, scale),
                        detections.draw(image, after, names, scale), detections.counts(before, after)))
        if len(out) >= limit:
            break
    return out


def _boxes(rows) -> list:
    """[x1, y1, x2, y2, class, confidence] rows as detections.Box, corners put in order (a cache file may swap
    them; PIL refuses a rectangle drawn backwards)."""
    boxes = []
    for r in rows or []:
        x1, y1, x2, y2 = (float(v) for v in r[:4])
        boxes.append(detections.Box((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)), int(r[4]), float(r[5])))
    return boxes


def presented(run_id: str, original) -> None:
    """Presentation mode: the run against the original, large (summary and per-class chart), when the pair is
    cached or the original is at hand to compute it; nothing otherwise."""
    if not presenting():
        return
    diff = cached(run_id, ORIGINAL, original)
    if diff is None and original is not None:
        try:
            with st.spinner("Comparing behaviour with the original..."):
                diff = compute(run_id, ORIGINAL, original)
        except CompressionLabError as exc:
            st.error(plain_markdown(str(exc)))
            return
    if diff is None:
        return
    st.subheader("Behaviour")
    st.markdown("  \n".join(plain_markdown(line) for line in bf.summary(diff)[:2]) if not finds_boxes(diff.get("task"))
                else plain_markdown(f"mAP50 {diff['map50_a']:.3f} -> {diff['map50_b']:.3f}"))
    figure = bf.detector_ap_figure(diff) if finds_boxes(diff.get("task")) else bf.per_class_figure(diff)
    st.plotly_chart(projector(figure), key="present_behaviour")
