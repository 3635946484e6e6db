"""Model page: choose a demo model or upload one, pick the data; layers, size, FLOPs, accuracy, latency."""

import hashlib

import streamlit as st

from compression.app_state import (
    active_spec,
    baseline,
    demo_choices,
    ensure_app_navigation,
    home,
    load_active,
    spec_key,
)
from compression.errors import CompressionLabError

ensure_app_navigation()
st.title("Model")
spec = active_spec()
source = st.radio("Model source", ["Demo model", "Upload a file"], horizontal=True, key="model_source")
new = dict(spec)
if source == "Demo model":
    names = list(demo_choices())
    current = spec["model"].removeprefix("demo:") if spec["model"].startswith("demo:") else names[0]
    name = st.selectbox("Demo model", names, index=names.index(current) if current in names else 0,
                        key="demo_model", format_func=lambda n: f"{n}: {demo_choices()[n]}")
    new.update(model=f"demo:{name}", weights=None, input_size=None, mean=None, std=None)
else:
    kind = st.selectbox("File type", ["torchvision state dict / safetensors", "TorchScript"], key="upload_kind")
    upload = st.file_uploader("Model file", type=["pt", "pth", "safetensors", "ts"], key="upload_file")
    arch = st.text_input("torchvision architecture", "resnet18", key="upload_arch",
                         disabled=kind == "TorchScript", help="a name from torchvision.models.list_models()")
    size = st.number_input("Input size (pixels)", 8, 1024, 224, key="upload_size")
    if upload is not None:
        data = upload.getvalue()
        folder = home() / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(data).hexdigest()[:12]}-{upload.name}"
        if not path.exists():
            path.write_bytes(data)  # kept: an upload the user made is never lost
        if kind == "TorchScript":
            new.update(model=f"torchscript:{path}", weights=None)
        else:
            new.update(model=f"torchvision:{arch}", weights=str(path))
        new.update(input_size=int(size))

dataset = st.radio("Data", ["Demo digits", "Local folder"], horizontal=True, key="data_source")
if dataset == "Demo digits":
    new["data"] = "digits"
else:
    cols = st.columns([1, 3])
    data_kind = cols[0].selectbox("Format", ["imagefolder", "cifar10", "cifar100"], key="data_kind")
    folder = cols[1].text_input("Folder", key="data_folder", placeholder="/path/to/dataset")
    new["data"] = f"{data_kind}:{folder}" if folder else spec["data"]

if spec_key(new) != spec_key(spec):
    try:
        load_active(new)
        st.session_state["active"] = spec = new
    except CompressionLabError as exc:
        st.error(str(exc))
        st.caption(f"Still using {spec['model']} on {spec['data']}.")

handle, data = load_active(spec)
try:
    from compression.models.handle import check_data_fits

    check_data_fits(handle, data.num_classes)
except CompressionLabError as exc:
    st.error(str(exc))
    st.stop()
measured = baseline(spec_key(spec))
cols = st.columns(5)
cols[0].metric("Test accuracy", f"{measured['accuracy']:.2%}")
cols[1].metric("Parameters", f"{measured['params']:,}")
cols[2].metric("FLOPs", f"{measured['flops']:,}")
cols[3].metric("fp32 bytes", f"{measured['fp32_bytes']:,}")
cols[4].metric("CPU latency (batch 1)", f"{measured['latency_ms']:.2f} ms")
st.caption(f"{handle.label} on {data.ref}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test "
           f"images, input {'x'.join(map(str, handle.input_shape))}. Every figure is measured on this machine.")
st.subheader("Layers")
st.dataframe(measured["layers"], hide_index=True, width="stretch",
             column_config={"flops_share": st.column_config.ProgressColumn("FLOPs share", min_value=0, max_value=1)})
