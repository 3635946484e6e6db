"""Detections page: the original and a compressed detector on the same image, what vanished and what appeared;
both detectors' CPU latency in PyTorch and in ONNX Runtime (the run's, or measured here on request).
In presentation mode (?present=1&run=ID&image=N): the numbers and the two images side by side, large."""

import io

import streamlit as st
from complab import engine, sources
from complab.analysis import detections, latency
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui import present
from complab.ui.links import link_image_index
from complab.ui.navigation import page_setup
from complab.ui.numbers import map_help, ms, speed
from complab.ui.report import plain_markdown
from complab.ui.state import active_spec, decoded_run, detector_latency, home, load_active, spec_key
from PIL import Image, UnidentifiedImageError

page_setup()
presenting = present.presenting()
if presenting:
    present.present_css()
st.title("Detections")
spec = active_spec()
if not finds_boxes(sources.task_of(spec)):
    st.info("The active model is a classifier. Pick 'Demo detector (YOLO)' or upload a YOLO detector on the Model "
            "page, compress it from the Plan page, then compare detections here.")
    st.stop()
try:
    handle, data = load_active(spec)
    finished = engine.list_runs(root=home(), kind="compress")
except CompressionLabError as exc:  # a model that does not fit its data; a damaged, locked or unreadable data folder
    st.error(str(exc))
    st.stop()
model_ref = engine.absolute_paths(spec)["model"]  # submit stores paths made absolute
runs = [r for r in finished if r["state"] == "succeeded" and r.get("job", {}).get("model") == model_ref
        and finds_boxes((r.get("metrics") or {}).get("task"))]
if not runs:
    st.info(f"No finished compression run of {handle.label} yet: launch one from the Plan page.")
    st.stop()


def describe(run: dict) -> str:
    m = run["metrics"]
    return f"{run['id']} · {m.get('plan_name', '')} · {m['compression_ratio']:.1f}x · mAP50 {m['after']['map50']:.3f}"


run = present.chosen_run(runs, key="det_run", label="Compressed run", id_of=lambda r: r["id"], format_func=describe)
metrics = run["metrics"]
before, after = metrics["before"], metrics["after"]
cols = st.columns(6)

cols[0].metric("mAP50 original", f"{before['map50']:.3f}", help=map_help(before, "map50"))
cols[1].metric("mAP50 compressed", f"{after['map50']:.3f}", f"{after['map50'] - before['map50']:+.3f}",
               help=map_help(after, "map50"))
cols[2].metric("mAP50-95 original", f"{before['map50_95']:.3f}", help=map_help(before, "map50_95"))
cols[3].metric("mAP50-95 compressed", f"{after['map50_95']:.3f}", f"{after['map50_95'] - before['map50_95']:+.3f}",
               help=map_help(after, "map50_95"))
cols[4].metric("fp32 bytes", f"{before['fp32_bytes']:,}")
cols[5].metric("Compact file bytes", f"{after['compressed_bytes']:,}", f"{metrics['compression_ratio']:.1f}x smaller",
               delta_color="off")
st.caption("mAP from Ultralytics' validator on the validation images; the compressed figures are measured on the "
           "model decoded from the compact file, which is also the model drawn below.")
removed = detections.channels_removed(metrics)
if removed:
    params = (f" · parameters {removed['params_before']:,} -> {removed['params_after']:,}"
              if removed["params_before"] and removed["params_after"] else "")
    st.markdown(f"**Channels removed**: {removed['kept']:,} of {removed['channels']:,} channels kept "
                f"({removed['kept'] / removed['channels']:.0%}) in the {removed['groups']} convolution groups it pruned"
                f"{params}.")
recorded = latency.figures(metrics)  # what the run measured: PyTorch eager and ONNX Runtime (older runs: PyTorch)
run_torch = bool(recorded["torch_before"] and recorded["torch_after"])
run_ort = recorded["reason"] is None
measured = None
if not (run_torch and run_ort) and st.session_state.get(f"det_latency::{run['id']}"):  # asked for: cached per run
    measured = detector_latency(run["id"], spec_key(spec))
torch_pair = ({"original_ms": recorded["torch_before"], "compressed_ms": recorded["torch_after"], "threads": None}
              if run_torch else measured)
ort_measured = (measured or {}).get("ort") or {}
if run_ort:
    ort_pair = {"original_ms": recorded["ort_before"], "compressed_ms": recorded["ort_after"],
                "setting": latency.ort_setting(recorded["ort"]), "where": "measured by the run"}
elif ort_measured.get("error") is None and ort_measured.get("compressed_ms"):
    ort_pair = {**ort_measured, "setting": latency.ort_setting(latency.ort_info({"ort": ort_measured})),
                "where": "measured here"}
else:
    ort_pair = None
ort_reason = None if ort_pair else (f"no ONNX Runtime latency: {ort_measured['error']}" if ort_measured.get("error")
                                    else recorded["reason"])


def latency_row(label: str, pair: dict, note: str) -> None:
    """One runtime's two latencies (original, compressed with the speed-up in words) and how they were measured."""
    cols = st.columns(3)
    ratio = pair["original_ms"] / max(1e-9, pair["compressed_ms"])
    cols[0].metric(f"{label} original", ms(pair["original_ms"]))
    cols[1].metric(f"{label} compressed", ms(pair["compressed_ms"]), speed(ratio), delta_color="off",
                   delta_arrow="off")
    cols[2].caption(note)


if torch_pair:
    where = ("measured by the run" if torch_pair["threads"] is None
             else f"measured here with {torch_pair['threads']} torch thread")
    latency_row("PyTorch latency", torch_pair,
                f"PyTorch eager: median of 30 forward passes, batch 1 at {handle.imgsz} px, {where}. Removed channels "
                "(and batch norm folded into the convolutions) make the compressed detector faster; pruned and "
                "shared weights alone do not.")
if ort_pair:
    latency_row("ONNX Runtime", ort_pair,
                f"{plain_markdown(ort_pair['setting'])}: median, batch 1 at {handle.imgsz} px, the two models' runs "
                f"alternating, {ort_pair['where']}. The runtime a detector is deployed with; integer weights run on "
                "its int8 kernels.")
if not (torch_pair and ort_pair) and not presenting and measured is None:  # no button on a projector
    cols = st.columns(3)
    cols[0].button("Measure CPU latency here", key="det_measure_latency", on_click=st.session_state.__setitem__,
                   args=(f"det_latency::{run['id']}", True))
    cols[1].caption("This run did not measure " + ("its ONNX Runtime latency" if torch_pair else "CPU latency")
                    + ": time both detectors on this machine, batch 1, in PyTorch (one torch thread) and ONNX "
                    "Runtime, their passes interleaved (a few seconds).")
if ort_reason and (torch_pair or measured is not None):
    st.caption(plain_markdown(ort_reason) + ".")
try:
    compressed = decoded_run(run["id"])
except CompressionLabError as exc:
    st.error(str(exc))
    st.stop()

images = data.val_images(limit=48)
if presenting:  # the URL's image=N (a presenter prepares the link), the default threshold
    source, conf = "Validation image", 0.25
    index = link_image_index(st.query_params.get("image"), len(images))  # ASCII digits only: '²' is image 0
else:
    left, right = st.columns([2, 1])
    source = left.radio("Image", ["Validation image", "Upload an image"], horizontal=True, key="det_source")
    conf = right.slider("Confidence threshold", 0.05, 0.95, 0.25, 0.05, key="det_conf")
image = None
if source == "Validation image":
    if not presenting:
        index = st.slider("Validation image", 0, len(images) - 1, 0, key="det_index")
    image = Image.open(images[index])
    image.load()
else:
    upload = st.file_uploader("Image", type=["png", "jpg", "jpeg", "bmp", "webp"], key="det_upload")
    if upload is not None:
        try:
            image = Image.open(io.BytesIO(upload.getvalue()))
            image.load()
        except (UnidentifiedImageError, OSError):
            st.error(f"{upload.name} is not an image Pillow can read: upload a PNG, JPEG, BMP or WebP file")
if image is None:
    st.stop()

original_boxes, compressed_boxes, count = detections.side_by_side(handle.model, compressed.model, image,
                                                                  handle.imgsz, conf)
scale = max(1, round((720 if presenting else 480) / max(image.size)))
width = "stretch" if presenting else "content"  # on a projector each image fills half the screen
left, right = st.columns(2)
left.subheader(f"Original: {count['original']} boxes")
left.image(detections.draw(image, original_boxes, handle.names, scale), width=width)
right.subheader(f"Compressed: {count['compressed']} boxes")
right.image(detections.draw(image, compressed_boxes, compressed.names, scale), width=width)
st.markdown(f"**{count['vanished']}** box(es) vanished (red on the original) · **{count['appeared']}** appeared "
            "(pink on the compressed) · matched when same class and IoU >= 0.5.")
if presenting:
    st.stop()


@st.cache_data(max_entries=16, show_spinner="Counting boxes on the validation images...")
def per_image_counts(run_id: str, model_ref: str, threshold: float) -> list[dict]:
    return detections.changed_images(handle.model, compressed.model, images, handle.imgsz, threshold)


with st.expander("Per-image counts on the first validation images (most changed first)"):
    table = per_image_counts(run["id"], spec["model"], conf)
    st.caption("Set the 'Validation image' slider to an image number to see its boxes.")
    st.dataframe(table, hide_index=True, width="stretch", key="det_counts")
