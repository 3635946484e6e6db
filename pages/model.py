"""Model page: choose a demo model; its layers, parameters, FLOPs, bytes, accuracy and CPU latency."""

import streamlit as st

from compression.app_state import demo_choices, load_demo, measure_baseline
from compression.errors import CompressionLabError

st.title("Model")
name = st.selectbox("Demo model", demo_choices(), key="demo_model",
                    format_func=lambda n: f"{n}: {demo_choices()[n]}")
try:
    handle, data = load_demo(name)
except CompressionLabError as exc:
    st.error(str(exc))
    st.stop()

baseline = measure_baseline(name)
cols = st.columns(5)
cols[0].metric("Test accuracy", f"{baseline['accuracy']:.2%}")
cols[1].metric("Parameters", f"{baseline['params']:,}")
cols[2].metric("FLOPs", f"{baseline['flops']:,}")
cols[3].metric("fp32 bytes", f"{baseline['fp32_bytes']:,}")
cols[4].metric("CPU latency (batch 1)", f"{baseline['latency_ms']:.2f} ms")
st.caption(f"Data: {data.ref}, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, "
           f"input {'x'.join(map(str, handle.input_shape))}. Every figure is measured on this machine.")
st.subheader("Layers")
st.dataframe(baseline["layers"], hide_index=True, width="stretch",
             column_config={"flops_share": st.column_config.ProgressColumn("FLOPs share", min_value=0, max_value=1)})
