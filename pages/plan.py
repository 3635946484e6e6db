"""Plan page: per-layer sliders (sparsity, clusters), a global target, a live size/FLOPs estimate, launch."""

import streamlit as st

from compression import engine
from compression.analysis.estimate import estimate, layer_bytes, vq_layer_bytes
from compression.analysis.solver import grids_from_report, solve
from compression.analysis.suggest import suggest
from compression.errors import CompressionLabError
from compression.methods.vq import check_layer
from compression.plan import (
    DEFAULT_CODEWORDS,
    DEFAULT_SEGMENT_LENGTH,
    DEFAULT_STAGES,
    ClusterStep,
    Plan,
    PruneStep,
    QuantizeStep,
)
from compression.ui.channels import channel_section, load_channels
from compression.ui.navigation import page_setup
from compression.ui.plan_form import (
    CLUSTER_CHOICES,
    CODEWORD_CHOICES,
    QUANTIZER_CHOICES,
    plan_from_settings,
    quantizers_from_plan,
    settings_from_plan,
    with_fold_bn,
)
from compression.ui.state import (
    active_spec,
    compress_job,
    home,
    latest_sensitivity,
    load_active,
    model_stats,
    spec_key,
)

page_setup()
st.title("Plan")
spec = active_spec()
handle, data = load_active(spec)
detector = handle.task == "detect"
layers = list(handle.prunable_layers())
stats = model_stats(spec_key(spec), detector and st.session_state.get("plan_fold_bn", True))
PRUNE, CLUSTER, QUANTIZE = PruneStep(), ClusterStep(), QuantizeStep()  # the settings' defaults are the steps' own
report = latest_sensitivity(spec)
prefix = f"plan::{spec_key(spec)}::"


def set_layers(settings: dict) -> None:
    for layer, (sparsity, k) in settings.items():
        st.session_state[prefix + "sp::" + layer] = float(sparsity)
        st.session_state[prefix + "k::" + layer] = "off" if k is None else k


def set_quantizers(quantizers: dict) -> None:
    """Per-layer quantizer widgets (Gong et al.): method, k, s (pq) or t (rq), axis."""
    for layer, q in quantizers.items():
        q = q or {}
        method = q.get("quantizer", "none")
        st.session_state[prefix + "q::" + layer] = method
        st.session_state[prefix + "qk::" + layer] = int(q.get("n_codewords") or DEFAULT_CODEWORDS["kmeans"])
        st.session_state[prefix + "qs::" + layer] = int(
            (q.get("stages") if method == "rq" else q.get("segment_length"))
            or (DEFAULT_STAGES if method == "rq" else DEFAULT_SEGMENT_LENGTH))
        st.session_state[prefix + "qa::" + layer] = q.get("axis") or "in"


def quantizer_chosen(layer: str) -> None:
    """A quantizer replaces clustering on its layer; binary/pq/rq codewords cannot keep pruned zeros."""
    method = st.session_state[prefix + "q::" + layer]
    if method != "none":
        st.session_state[prefix + "k::" + layer] = "off"
    if method in ("binary", "pq", "rq"):
        st.session_state[prefix + "sp::" + layer] = 0.0


if prefix + "init" not in st.session_state:
    st.session_state[prefix + "init"] = True
    set_layers(suggest(report) if report else {layer: (0.5, 32) for layer in layers})
if prefix + "q::" + layers[0] not in st.session_state:
    set_quantizers({layer: None for layer in layers})


def apply_target() -> None:
    kind = st.session_state["plan_target_kind"]
    value = st.session_state["plan_target_value"]
    if kind == "ratio":
        result = solve(stats, grids, "compressed_bytes", stats.fp32_bytes / value)
    elif kind == "flops":
        result = solve(stats, grids, "sparse_flops", stats.flops / value)
    else:
        result = solve(stats, grids, "accuracy_drop", value / 100)
    set_layers(result["settings"])
    st.session_state["plan_solver_note"] = (
        f"Solver: predicted accuracy drop {100 * result['predicted_drop']:.2f} pts (layers measured alone), "
        f"{result['ratio']:.1f}x" + ("" if result["met"] else " - target not reachable on this grid"))


def load_recipe() -> None:
    upload = st.session_state.get("plan_upload")
    if upload is None:
        return
    try:
        plan = Plan.from_json(upload.getvalue()).validate(layers)  # bytes: a non-UTF-8 file is named as such
    except CompressionLabError as exc:
        st.session_state["plan_load_error"] = str(exc)
        return
    st.session_state["plan_load_error"] = None
    set_layers(settings_from_plan(plan, layers))
    set_quantizers(quantizers_from_plan(plan, layers))
    load_channels(plan, handle, spec_key(spec))
    st.session_state["plan_name"] = plan.name
    st.session_state["plan_fold_bn"] = any(step.type == "fold_bn" for step in plan.steps)


with st.container(border=True):
    st.markdown("**Global target**")
    if report is None:
        st.caption("Run the sensitivity analysis to let the solver choose per-layer settings for a target.")
    else:
        grids = grids_from_report(report)
        cols = st.columns([2, 3, 1])
        cols[0].selectbox("Target", ["ratio", "flops", "accuracy"], key="plan_target_kind",
                          format_func={"ratio": "compression ratio (x)", "flops": "FLOPs reduction (x)",
                                       "accuracy": "accuracy budget (points)"}.get)
        kind = st.session_state["plan_target_kind"]
        bounds = {"ratio": (2.0, 100.0, 40.0), "flops": (1.0, 20.0, 3.0), "accuracy": (0.0, 10.0, 1.0)}[kind]
        cols[1].slider("Target value", bounds[0], bounds[1], bounds[2], key="plan_target_value")
        cols[2].button("Apply", on_click=apply_target, key="plan_apply", type="primary")
        if st.session_state.get("plan_solver_note"):
            st.caption(st.session_state["plan_solver_note"])

settings = {}
quantizers = {}
widths = [2, 1, 3, 1.6, 1.6, 1.3, 1.1, 1.1, 1.2]
head = st.columns(widths)
for col, title in zip(head, ["layer", "params", "sparsity", "clusters", "quantizer", "k", "s / t", "axis",
                             "est. bytes"], strict=True):
    col.caption(title)
for layer in layers:
    cols = st.columns(widths)
    cols[0].markdown(f"`{layer}`")
    cols[1].markdown(f"{stats.layers[layer].numel:,}")
    sparsity = cols[2].slider("sparsity", 0.0, 0.99, step=0.01, key=prefix + "sp::" + layer,
                              label_visibility="collapsed")
    k = cols[3].selectbox("clusters", CLUSTER_CHOICES, key=prefix + "k::" + layer, label_visibility="collapsed")
    settings[layer] = (sparsity, None if k == "off" else k)
    method = cols[4].selectbox("quantizer", QUANTIZER_CHOICES, key=prefix + "q::" + layer,
                               label_visibility="collapsed", on_change=quantizer_chosen, args=(layer,),
                               help="Gong et al.: binary (sign x scale), kmeans (scalar), pq (product: segments of "
                                    "s values), rq (residual: t stages)")
    n_codewords = cols[5].selectbox("k", CODEWORD_CHOICES, key=prefix + "qk::" + layer, label_visibility="collapsed",
                                    disabled=method in ("none", "binary"))
    s_or_t = cols[6].number_input("s / t", 1, 64, key=prefix + "qs::" + layer, label_visibility="collapsed",
                                  disabled=method not in ("pq", "rq"), help="pq: segment length s; rq: stages t")
    axis = cols[7].selectbox("axis", ["in", "out"], key=prefix + "qa::" + layer, label_visibility="collapsed",
                             disabled=method not in ("pq", "rq"), help="in: vectors are rows of W (one output's "
                             "inputs, the paper's); out: columns")
    quantizers[layer] = None if method == "none" else {
        "quantizer": method, "n_codewords": 2 if method == "binary" else int(n_codewords),
        "segment_length": int(s_or_t), "stages": int(s_or_t), "axis": axis}
    if quantizers[layer]:
        layer_estimate = vq_layer_bytes(stats.layers[layer], sparsity, quantizers[layer])
    else:
        layer_estimate = layer_bytes(stats.layers[layer], sparsity, 32 if k == 'auto' else settings[layer][1])
    cols[8].markdown(f"{layer_estimate:,.0f}")

numeric = {layer: (s, 32 if k == "auto" else k) for layer, (s, k) in settings.items()}
channel_choice = channel_section(handle, spec_key(spec))  # "channels kept" per group (structured pruning)
est = estimate(stats, numeric, {layer: q for layer, q in quantizers.items() if q})
est = channel_choice.apply(est, stats, settings)
with st.container(border=True):
    cols = st.columns(4)
    cols[0].metric("Estimated file", f"{est['compressed_bytes']:,} B")
    cols[1].metric("Estimated ratio", f"{est['ratio']:.1f}x")
    cols[2].metric("Sparse FLOPs", f"{est['sparse_flops']:,}", f"{est['sparse_flops'] / est['flops'] - 1:.0%}")
    if "channel_flops" in est:
        st.caption(f"Channels removed: {est['weights_removed_by_channels']:,} weights, dense FLOPs "
                   f"{est['flops']:,} -> {est['channel_flops']:,} ({est['flops'] / max(1, est['channel_flops']):.1f}x "
                   "fewer, on any CPU).")
    cols[3].metric("fp32 size", f"{est['fp32_bytes']:,} B")
    st.caption("Analytic estimate from the weights (no model run); 'auto' clusters are estimated at k=32. "
               "The run measures the real file.")

with st.expander("Fine-tuning and search settings"):
    c = st.columns(4)
    iterations = c[0].number_input("prune rounds", 1, 20, PRUNE.iterations, key="plan_iterations")
    prune_epochs = c[1].number_input("epochs per round", 0, 200, PRUNE.finetune_epochs, key="plan_prune_epochs")
    cluster_epochs = c[2].number_input("shared-value epochs", 0, 200, CLUSTER.finetune_epochs,
                                       key="plan_cluster_epochs")
    codebook_epochs = c[2].number_input("codebook epochs (quantizers)", 0, 200, QUANTIZE.finetune_epochs,
                                        key="plan_codebook_epochs")
    tolerance = c[3].number_input("auto-k tolerance (acc. drop)", 0.0, 0.2, CLUSTER.tolerance, step=0.001,
                                  format="%.3f", key="plan_tolerance")
    fold = detector and st.checkbox(
        "Fold batch norm into the convolutions after pruning", value=True, key="plan_fold_bn",
        help="One bias per convolution instead of five batch-norm vectors in the file (measured on the demo "
             "detector: 16% smaller at the same mAP); done after pruning, whose fine-tuning needs batch norm.")
name = st.text_input("Plan name", "my-plan", key="plan_name")
try:
    plan = channel_choice.build(lambda: plan_from_settings(  # adds the channels / distill steps in order
        settings, name, {"iterations": int(iterations), "finetune_epochs": int(prune_epochs)},
        {"finetune_epochs": int(cluster_epochs), "tolerance": float(tolerance)},
        quantizers, {"finetune_epochs": int(codebook_epochs)}), layers)
    if fold:
        plan = with_fold_bn(plan)
    for layer, quantizer in quantizers.items():  # shape limits (k <= vectors, s <= vector length)
        if quantizer:
            check_layer(layer, stats.layers[layer].shape, quantizer)
except CompressionLabError as exc:
    st.error(str(exc))
    st.stop()

cols = st.columns(3)
cols[0].download_button("Save recipe (JSON)", plan.to_json(), f"{name}.json", "application/json", key="plan_save")
cols[1].file_uploader("Load recipe", type=["json"], key="plan_upload", on_change=load_recipe)
if st.session_state.get("plan_load_error"):
    st.error(st.session_state["plan_load_error"])
if cols[2].button("Launch run", type="primary", key="plan_launch"):
    try:
        run_id = engine.submit(compress_job(spec, plan.to_dict()), root=home())
        st.success(f"Run {run_id} queued.")
        st.page_link("pages/runs.py", label="Follow it on the Runs page", icon=":material/play_circle:")
    except CompressionLabError as exc:
        st.error(str(exc))
