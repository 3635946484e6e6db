"""Compare page: Pareto fronts (accuracy vs bytes, FLOPs, latency), the run table, histograms, downloads."""

import json

import streamlit as st

from compression import engine
from compression.analysis.pareto import prediction_error, runs_table
from compression.errors import CompressionLabError
from compression.ui import figures
from compression.ui.navigation import page_setup
from compression.ui.state import decoded_run, home, load_active, run_exports

page_setup()
st.title("Compare")
try:
    runs = engine.list_runs(root=home(), kind="compress")
except CompressionLabError as exc:  # an unusable data folder (not a folder, unreadable): say so, no traceback
    st.error(str(exc))
    st.stop()
table = runs_table(runs)
if table.empty:
    st.info("No finished compression runs yet: launch one from the Plan page.")
    st.stop()
models = sorted(table["model"].unique())
model = st.selectbox("Model", models, key="compare_model") if len(models) > 1 else models[0]
table = table[table["model"] == model]
tabs = st.tabs(["Accuracy vs bytes", "Accuracy vs FLOPs", "Accuracy vs CPU latency"])
tabs[0].plotly_chart(figures.pareto_figure(table, "compressed_bytes", "compressed bytes (file on disk)"),
                     key="pareto_bytes")
tabs[1].plotly_chart(figures.pareto_figure(table, "sparse_flops", "FLOPs (zero weights skipped)"), key="pareto_flops")
tabs[2].plotly_chart(figures.pareto_figure(table, "latency_ms", "CPU latency, batch 1 (ms, dense kernels)"),
                     key="pareto_latency")
st.caption("Each method family (prune+cluster, vq quantizers, channels) is its own series, its thin line that "
           "family's own front. Dimmed points are dominated (another run is both smaller and at least as accurate); "
           "the dashed line joins the overall Pareto front. Accuracy is measured on the model decoded from each file"
           + (" (for a detector: mAP50 on its validation images)." if (table["task"] == "detect").any() else "."))
st.dataframe(table, hide_index=True, width="stretch", key="compare_table",
             column_config={"ratio": st.column_config.NumberColumn(format="%.1fx"),
                            "accuracy": st.column_config.NumberColumn(format="%.4f")})

error = prediction_error(table)
if error is not None:  # how far to trust the plan page's predicted accuracy, learned from these runs
    st.subheader("Predicted vs measured accuracy")
    st.plotly_chart(figures.prediction_figure(table), key="compare_prediction")
    st.caption(f"{error['runs']} run(s) launched with a prediction: mean absolute error {error['mae_pts']:.2f} "
               f"points (measured minus predicted on average {error['bias_pts']:+.2f}), "
               f"{error['within_range']:.0%} inside the predicted range. The prediction is made at launch from the "
               "sensitivity report (validation subset); the measurement is the decoded file on the plan's split. "
               "The Plan page refits its fine-tuning calibration on this model's runs once it has three.")

run_id = st.selectbox("Run", list(table["run"]), key="compare_run")
try:
    decoded = decoded_run(run_id)
    job = json.loads(engine.run_file(run_id, "job.json", root=home()).read_text())
except CompressionLabError as exc:
    st.error(str(exc))
    st.stop()
original, _ = load_active({k: job.get(k) for k in ("model", "weights", "data", "input_size", "mean", "std")}
                          | ({"trust": job["trust"]} if "trust" in job else {}))
layers = list(decoded.prunable_layers())
layer = st.selectbox("Layer", layers, key="compare_layer")
before = original.prunable_layers()[layer].detach().flatten().numpy()
after = decoded.prunable_layers()[layer].detach().flatten().numpy()
st.plotly_chart(figures.weight_histogram(before, after, layer), key="compare_hist")

st.subheader("Downloads")
cols = st.columns(4)
cols[0].download_button("Compact file (.clab)", engine.run_file(run_id, "model.clab", root=home()).read_bytes(),
                        f"{run_id}.clab", key="dl_clab")
cols[1].download_button("Recipe (JSON)", engine.run_file(run_id, "plan.json", root=home()).read_text(),
                        f"{run_id}-recipe.json", "application/json", key="dl_recipe")
exports = run_exports(run_id)
if exports.get("torchscript") is not None:
    cols[2].download_button("TorchScript", exports["torchscript"], f"{run_id}.pt", key="dl_ts")
if exports.get("onnx") is not None:
    cols[3].download_button("ONNX", exports["onnx"], f"{run_id}.onnx", key="dl_onnx")
else:
    cols[3].caption(exports.get("onnx_error", ""))
