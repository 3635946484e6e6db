"""Model page: choose a demo model or upload one, pick the data; layers, size, FLOPs, accuracy, latency.
In presentation mode (?present=1): the summary numbers only, large."""

import streamlit as st
from complab import sources
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui import present
from complab.ui.navigation import page_setup
from complab.ui.numbers import human, map_help
from complab.ui.state import (
    active_spec,
    baseline,
    demo_choices,
    load_active,
    measure_code_model,
    save_upload,
    set_active,
    spec_key,
)

page_setup()


def saved(upload):
    """The uploaded file's path in the data folder, or None (nothing uploaded, or the folder cannot take it)."""
    if upload is None:
        return None
    try:
        return save_upload(upload.getvalue(), upload.name)
    except CompressionLabError as exc:  # a full or read-only data folder
        st.error(str(exc))
        return None


def summary(spec: dict) -> tuple:
    """The active model's measured numbers as metric boxes with a caption; returns (handle, measured)."""
    handle, data = load_active(spec)
    if handle.kind.finds_boxes:
        measured = baseline(spec_key(spec))
        cols = st.columns(6)
        for col, (label, key) in zip(cols[:2], (("mAP50", "map50"), ("mAP50-95", "map50_95")), strict=True):
            # the help: its 95% bootstrap interval over the validation images
            col.metric(label, f"{measured[key]:.3f}", help=map_help(measured, key))
        cols[2].metric("Parameters", human(measured["params"]), help=f"{measured['params']:,}")
        cols[3].metric("FLOPs", human(measured["flops"]), help=f"{measured['flops']:,} (batch 1)")
        cols[4].metric("fp32 bytes", human(measured["fp32_bytes"], "B"), help=f"{measured['fp32_bytes']:,} bytes")
        cols[5].metric("CPU latency (batch 1)", f"{measured['latency_ms']:.2f} ms")
        st.caption(f"{handle.label} on {data.ref}: {len(data.val_images())} validation images, input {handle.imgsz} "
                   f"px, classes {', '.join(handle.names.values())}. mAP from Ultralytics' validator, measured here.")
        return handle, measured
    measured = baseline(spec_key(spec))  # the load checked that the model fits the data (sources.load_data)
    cols = st.columns(5)
    cols[0].metric("Test accuracy", f"{measured['accuracy']:.2%}")
    cols[1].metric("Parameters", human(measured["params"]), help=f"{measured['params']:,}")
    cols[2].metric("FLOPs", human(measured["flops"]), help=f"{measured['flops']:,} (batch 1)")
    cols[3].metric("fp32 bytes", human(measured["fp32_bytes"], "B"), help=f"{measured['fp32_bytes']:,} bytes")
    cols[4].metric("CPU latency (batch 1)", f"{measured['latency_ms']:.2f} ms")
    st.caption(f"{handle.label} on {data.ref}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
               f"images, input {'x'.join(map(str, handle.input_shape))}. Every figure is measured on this machine.")
    return handle, measured


def code_model_summary(candidate: dict, active: dict) -> None:
    """A trusted TorchScript file's numbers, measured in a separate process; it does not become the active model."""
    result = measure_code_model(spec_key(candidate))
    if "error" in result:
        st.error(result["error"])
        st.caption(f"Still using {active['model']} on {active['data']}.")
        return
    measured = result["measured"]
    cols = st.columns(5)
    cols[0].metric("Test accuracy", f"{measured['accuracy']:.2%}")
    cols[1].metric("Parameters", human(measured.get("params", 0)), help=f"{measured.get('params', 0):,}")
    cols[2].metric("FLOPs", human(measured.get("flops", 0)), help=f"{measured.get('flops', 0):,} (batch 1)")
    cols[3].metric("fp32 bytes", human(measured.get("fp32_bytes", 0), "B"))
    cols[4].metric("CPU latency (batch 1)", f"{measured.get('latency_ms', 0):.2f} ms")
    train, val, test = result["images"]
    st.caption(f"{result['label']} on {result['data']}: {train} train / {val} val / {test} test images, input "
               f"{'x'.join(map(str, result['input_shape']))}. Measured in a separate process: TorchScript is code, "
               "and the app never runs an uploaded model's code in its server.")
    st.info("TorchScript is for evaluation only: its compiled modules cannot take the pruning masks, shared values "
            "and channel surgery of the compression steps. To compress this model, save its state dict with "
            "torch.save(model.state_dict()) and upload it with its torchvision architecture. The active model stays "
            f"{active['model']} on {active['data']}.")
    st.subheader("Layers")
    st.dataframe(measured["layers"], hide_index=True, width="stretch",
                 column_config={"flops_share": st.column_config.ProgressColumn("FLOPs share", min_value=0,
                                                                               max_value=1)})


spec = active_spec()
if present.presenting():  # the projector view of the active model (the lesson's, during the lesson): numbers, layers
    present.present_css()
    from complab.analysis.report import data_name, model_name

    st.title(f"{model_name(load_active(spec)[0].label)} on {data_name(spec['data'])}")
    _, shown = summary(spec)
    st.plotly_chart(present.projector(present.layer_chart(shown["layers"])), key="present_layers")
    st.stop()
st.title("Model")
st.page_link("pages/lesson.py", label="Teaching? The Lesson page walks a class through Deep Compression, step by step",
             icon=":material/school:")
SOURCES = ["Demo model", "Upload a file", "Demo detector (YOLO)", "Upload a YOLO detector"]
detector_now, demo_now = finds_boxes(sources.task_of(spec)), spec["model"] in sources.demo_sources()
source_index = (2 if detector_now and demo_now else 3 if detector_now
                else 0 if demo_now else 1)  # a revisit shows what is active
source = st.radio("Model source", SOURCES, index=source_index, horizontal=True, key="model_source")
new = dict(spec)
new.pop("trust", None)
if source == "Demo detector (YOLO)":
    new.update(model="detector:demo", weights=None, input_size=None, mean=None, std=None)
elif source == "Upload a YOLO detector":
    st.warning("An Ultralytics .pt file is a pickle: loading it can run any code its author put in it. "
               "Load only files you made or whose source you trust. It is opened in a separate process, never in "
               "this server, which keeps only its architecture and weights.")
    upload = st.file_uploader("Ultralytics checkpoint (.pt: YOLOv3u, v5u, v8, 11)", type=["pt"], key="upload_yolo")
    trust = st.checkbox("I trust this file", key="upload_yolo_trust")
    path = saved(upload)
    if path is not None:
        if trust:
            new.update(model=f"detector:{path}", weights=None, input_size=None, mean=None, std=None, trust=True)
        else:
            st.info("Tick 'I trust this file' to load it; until then the active model stays as it is.")
elif source == "Demo model":
    names = list(demo_choices())
    current = next((index for index, name in enumerate(names) if f"demo:{name}" == spec["model"]), 0)
    name = st.selectbox("Demo model", names, index=current, key="demo_model",
                        format_func=lambda n: f"{n}: {demo_choices()[n]}")
    new.update(model=f"demo:{name}", weights=None, input_size=None, mean=None, std=None)
else:
    kind = st.selectbox("File type", ["torchvision state dict / safetensors", "TorchScript"], key="upload_kind")
    upload = st.file_uploader("Model file", type=["pt", "pth", "safetensors", "ts"], key="upload_file")
    kind_now, _, arch_now = spec["model"].partition(":")  # a reopened link shows the active model's own values
    arch = st.text_input("torchvision architecture", arch_now if kind_now == "torchvision" else "resnet18",
                         key="upload_arch",
                         disabled=kind == "TorchScript", help="a name from torchvision.models.list_models()")
    size = st.number_input("Input size (pixels)", 8, 1024, int(spec.get("input_size") or 224), key="upload_size")
    trust = False
    if kind == "TorchScript":
        st.warning("A TorchScript file is a program: loading it runs whatever code its author compiled into it, "
                   "which can write files. Load only files you made or whose source you trust. It is measured in a "
                   "separate process, never in this server, and is for evaluation only.")
        trust = st.checkbox("I trust this file", key="upload_ts_trust")
    path = saved(upload)
    if path is not None:
        if kind != "TorchScript":
            new.update(model=f"torchvision:{arch}", weights=str(path), input_size=int(size))
        elif trust:
            new.update(model=f"torchscript:{path}", weights=None, input_size=int(size), trust=True)
        else:
            st.info("Tick 'I trust this file' to measure it; until then the active model stays as it is.")

demo_data = sources.default_data(new["model"])  # "digits" for a classifier, "shapes" for a detector
if not sources.fits(new["model"], new["data"]):  # the model changed task: start on its demo data
    new["data"] = demo_data
if finds_boxes(sources.task_of(new)):
    dataset = st.radio("Data", ["Demo shapes", "YOLO dataset yaml"], horizontal=True, key="det_data_source",
                       index=0 if new["data"] == demo_data else 1)
    if dataset == "Demo shapes":
        new["data"] = demo_data
    else:
        yaml_path = st.text_input("Dataset yaml", key="det_data_yaml", placeholder="/path/to/data.yaml",
                                  help="a YOLO data yaml whose train/val folders are on this machine")
        if yaml_path:
            new["data"] = f"yolo:{yaml_path}"
    dataset = None
else:
    dataset = st.radio("Data", ["Demo digits", "Local folder"], horizontal=True, key="data_source",
                       index=0 if new["data"] == demo_data else 1)
if dataset is None:
    pass
elif dataset == "Demo digits":
    new["data"] = demo_data
else:
    cols = st.columns([1, 3])
    data_kind = cols[0].selectbox("Format", ["imagefolder", "cifar10", "cifar100"], key="data_kind")
    folder = cols[1].text_input("Folder", key="data_folder", placeholder="/path/to/dataset")
    if folder:
        new["data"] = f"{data_kind}:{folder}"

if sources.evaluation_only(new):  # TorchScript: measured in a child process, never made active
    code_model_summary(new, spec)
    st.stop()
if spec_key(new) != spec_key(spec):
    try:
        load_active(new)
        set_active(new)
        st.rerun()  # the sidebar (drawn before this page) then shows the new model too
    except CompressionLabError as exc:
        st.error(str(exc))
        st.caption(f"Still using {spec['model']} on {spec['data']}.")

handle, measured = summary(spec)
st.subheader("Layers")
if handle.skipped_layers():
    st.caption("Kept out of compression (pruning or sharing them distorts every box and score directly, with no "
               "later layer to absorb the error): the Detect head's final box and class convolutions and its "
               f"fixed DFL projection: {', '.join(handle.skipped_layers())}.")
st.dataframe(measured["layers"], hide_index=True, width="stretch",
             column_config={"flops_share": st.column_config.ProgressColumn("FLOPs share", min_value=0, max_value=1)})
