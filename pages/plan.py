"""Plan page: per-layer sliders in groups (filter, bulk set, sensitivity sparklines), a global target, a live
size / FLOPs / predicted-accuracy estimate, launch, and a sweep (N targets as one group of runs). The rows and
the estimate are one st.fragment: a slider redraws only them, and rows of closed groups are not drawn at all
(their values live in the page's store)."""

import streamlit as st
from complab import engine
from complab.analysis.estimate import estimate, estimated_waterfall
from complab.analysis.predict import predict
from complab.analysis.suggest import suggest
from complab.analysis.targets import solve_target
from complab.errors import CompressionLabError, PlanError
from complab.methods.vq import check_layer
from complab.plan import (
    DEFAULT_CODEWORDS,
    DEFAULT_SEGMENT_LENGTH,
    DEFAULT_STAGES,
    ClusterStep,
    FoldBNStep,
    Plan,
    PruneStep,
    QuantizeStep,
    validate_recipe,
)
from complab.ui.channels import channel_section, load_channels
from complab.ui.figures import bytes_waterfall
from complab.ui.navigation import page_setup
from complab.ui.numbers import human
from complab.ui.plan_form import (
    CLUSTER_CHOICES,
    CODEWORD_CHOICES,
    ONE_GROUP_UP_TO,
    QUANTIZER_CHOICES,
    SPARSITY_MAX,
    filter_layers,
    layer_groups,
    plan_from_settings,
    quantizers_from_plan,
    settings_from_plan,
    with_choice,
    with_fold_bn,
)
from complab.ui.sparkline import layer_curve, sparkline
from complab.ui.state import (
    active_spec,
    compress_job,
    home,
    latest_sensitivity,
    load_active,
    model_stats,
    prediction_history,
    spec_key,
)
from complab.ui.sweep import sweep_button

page_setup()
st.title("Plan")
spec = active_spec()
handle, data = load_active(spec)
detector = handle.kind.folds_batch_norm
layers = list(handle.prunable_layers())
stats_fold_bn = detector and st.session_state.get("plan_fold_bn", True)
stats = model_stats(spec_key(spec), stats_fold_bn)
PRUNE, CLUSTER, QUANTIZE = PruneStep(), ClusterStep(), QuantizeStep()  # the settings' defaults are the steps' own
report = latest_sensitivity(spec)
history = prediction_history(spec) if report is not None else []  # this model's runs calibrate the prediction
prefix = f"plan::{spec_key(spec)}::"
FIELDS = ("sp", "k", "q", "qk", "qs", "qa")  # sparsity, clusters, quantizer, its k, its s / t, its axis
# every layer's settings: widgets of hidden rows are not drawn (and Streamlit forgets a widget's value when it
# is not drawn), so the values live here and a widget is seeded from here when its row is drawn again
store = st.session_state.setdefault(prefix + "values", {layer: {} for layer in layers})


def set_value(layer: str, field: str, value) -> None:
    store.setdefault(layer, {})[field] = value
    st.session_state[prefix + field + "::" + layer] = value


def set_layers(settings: dict) -> None:
    for layer, (sparsity, k) in settings.items():
        set_value(layer, "sp", float(sparsity))
        set_value(layer, "k", "off" if k is None else k)


def set_quantizers(quantizers: dict) -> None:
    """Per-layer quantizer widgets (Gong et al.): method, k, s (pq) or t (rq), axis."""
    for layer, q in quantizers.items():
        q = q or {}
        method = q.get("quantizer", "none")
        set_value(layer, "q", method)
        set_value(layer, "qk", int(q.get("n_codewords") or DEFAULT_CODEWORDS["kmeans"]))
        set_value(layer, "qs", int((q.get("stages") if method == "rq" else q.get("segment_length"))
                                   or (DEFAULT_STAGES if method == "rq" else DEFAULT_SEGMENT_LENGTH)))
        set_value(layer, "qa", q.get("axis") or "in")


def quantizer_chosen(layer: str) -> None:
    """A quantizer replaces clustering on its layer; binary/pq/rq codewords cannot keep pruned zeros."""
    method = st.session_state[prefix + "q::" + layer]
    store[layer]["q"] = method
    if method != "none":
        set_value(layer, "k", "off")
    if method in ("binary", "pq", "rq"):
        set_value(layer, "sp", 0.0)


if prefix + "init" not in st.session_state:
    st.session_state[prefix + "init"] = True
    set_layers(suggest(report) if report else {layer: (0.5, 32) for layer in layers})
    set_quantizers({layer: None for layer in layers})


def sync_from_widgets() -> None:
    """Widgets drawn in the last run hold the newest values: copy them into the store."""
    for layer in layers:
        for field in FIELDS:
            key = prefix + field + "::" + layer
            if key in st.session_state:
                store[layer][field] = st.session_state[key]


def current_settings() -> tuple[dict, dict]:
    """(settings {layer: (sparsity, clusters)}, quantizers {layer: settings or None}) from the store."""
    settings, quantizers = {}, {}
    for layer in layers:
        values = store[layer]
        k = values["k"]
        settings[layer] = (float(values["sp"]), None if k == "off" else k)
        method = values["q"]
        quantizers[layer] = None if method == "none" else {
            "quantizer": method, "n_codewords": 2 if method == "binary" else int(values["qk"]),
            "segment_length": int(values["qs"]), "stages": int(values["qs"]), "axis": values["qa"]}
    return settings, quantizers


def apply_target() -> None:
    result = solve_target(stats, report, st.session_state["plan_target_kind"], st.session_state["plan_target_value"])
    set_layers(result["settings"])
    st.session_state["plan_solver_note"] = (
        f"Solver: predicted accuracy drop {100 * result['predicted_drop']:.2f} pts (layers measured alone), "
        f"{result['ratio']:.1f}x" + ("" if result["met"] else " - target not reachable on this grid"))


def apply_bulk(group: str, members: list[str]) -> None:
    """The group's bulk setter: every listed layer gets the group's sparsity / clusters (/ quantizer)."""
    sparsity = float(st.session_state[prefix + "bulk_sp::" + group])
    k = st.session_state[prefix + "bulk_k::" + group]
    method = st.session_state.get(prefix + "bulk_q::" + group)
    for layer in members:
        set_value(layer, "sp", sparsity)
        set_value(layer, "k", k)
        if method is not None:
            set_value(layer, "q", method)
            if method != "none":
                set_value(layer, "k", "off")
            if method in ("binary", "pq", "rq"):
                set_value(layer, "sp", 0.0)


def load_recipe() -> None:
    upload = st.session_state.get("plan_upload")
    if upload is None:
        return
    try:
        plan = validate_recipe(upload.getvalue(), layers)  # bytes: a non-UTF-8 file is named as such
        if not detector and any(step.type == "fold_bn" for step in plan.steps):
            raise PlanError("this recipe folds batch norm (fold_bn), which is implemented for YOLO detectors: "
                            "remove the step for this classifier")
    except CompressionLabError as exc:
        st.session_state["plan_load_error"] = str(exc)
        return
    st.session_state["plan_load_error"] = None
    set_layers(settings_from_plan(plan, layers))
    set_quantizers(quantizers_from_plan(plan, layers))
    load_channels(plan, handle, spec_key(spec))
    st.session_state["plan_name"] = plan.name
    cluster = next((step for step in plan.steps if step.type == "cluster"), None)
    st.session_state["plan_bias_clusters"] = cluster.bias_clusters if cluster is not None else 0
    st.session_state["plan_fold_bn"] = any(step.type == "fold_bn" for step in plan.steps)


with st.container(border=True):
    st.markdown("**Global target**")
    if report is None:
        st.caption("Run the sensitivity analysis to let the solver choose per-layer settings for a target.")
    else:
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

groups = layer_groups(layers)
many = len(layers) > ONE_GROUP_UP_TO
WATERFALL_UP_TO = 50  # layers: above this the estimated waterfall waits for its toggle
first_open = next((g for g, members in groups.items() if len(members) > 1), next(iter(groups), None))


def seeded(field: str, layer: str) -> str:
    key = prefix + field + "::" + layer
    if key not in st.session_state:
        st.session_state[key] = store[layer][field]
    return key


def draw_row(layer: str, compact: bool, widths: list[float], per_layer: dict) -> None:
    cols = st.columns(widths, vertical_alignment="center")
    cols[0].markdown(f"`{layer}`")
    cols[1].markdown(human(stats.layers[layer].numel, exact_below=1e4))
    values = store[layer]
    curve = layer_curve(report, layer, "sparsity")
    if curve is not None:
        cols[2].markdown(sparkline(curve, float(values["sp"])), unsafe_allow_html=True)
    else:
        cols[2].caption("no analysis")
    sparsity = cols[3].slider("sparsity", 0.0, SPARSITY_MAX, step=0.001, format="%.3f", key=seeded("sp", layer),
                              label_visibility="collapsed")
    k = cols[4].selectbox("clusters", with_choice(CLUSTER_CHOICES, values.get("k")), key=seeded("k", layer),
                          label_visibility="collapsed")
    values["sp"], values["k"] = sparsity, k
    if not compact:
        method = cols[5].selectbox("quantizer", QUANTIZER_CHOICES, key=seeded("q", layer),
                                   label_visibility="collapsed", on_change=quantizer_chosen, args=(layer,),
                                   help="Gong et al.: binary (sign x scale), kmeans (scalar), pq (product: segments "
                                        "of s values), rq (residual: t stages)")
        values["q"] = method
        values["qk"] = cols[6].selectbox("k", with_choice(CODEWORD_CHOICES, values.get("qk")), key=seeded("qk", layer),
                                         label_visibility="collapsed", disabled=method in ("none", "binary"))
        values["qs"] = cols[7].number_input("s / t", 1, 64, key=seeded("qs", layer), label_visibility="collapsed",
                                            disabled=method not in ("pq", "rq"),
                                            help="pq: segment length s; rq: stages t")
        values["qa"] = cols[8].selectbox("axis", ["in", "out"], key=seeded("qa", layer), label_visibility="collapsed",
                                         disabled=method not in ("pq", "rq"), help="in: vectors are rows of W (one "
                                         "output's inputs, the paper's); out: columns")
    elif values["q"] != "none":
        cols[5].caption(f"quantizer: {values['q']}")
    cols[-1].markdown(f"{per_layer[layer]:,.0f}")


@st.fragment
def rows_and_estimate() -> None:
    """The layer rows, the channel section, the live estimate and the launch: a slider reruns only this."""
    sync_from_widgets()
    c = st.columns([3, 2, 2])
    pattern = c[0].text_input("Filter layers", key="plan_filter", placeholder="name pattern, e.g. layer3|fc",
                              help="a regular expression searched in the layer names (case-insensitive)")
    min_params = c[1].number_input("only layers above N parameters", 0, 10**10, 0, step=10_000,
                                   key="plan_min_params")
    compact = c[2].toggle("Compact rows", value=many, key="plan_compact",
                          help="sparsity and clusters only; the quantizer columns are hidden (their settings stay)")
    shown, problem = filter_layers(layers, pattern, int(min_params), {n: s.numel for n, s in stats.layers.items()})
    if problem:
        st.warning(problem)
    settings, quantizers = current_settings()
    numeric = {layer: (s, 32 if k == "auto" else k) for layer, (s, k) in settings.items()}
    chosen = {layer: q for layer, q in quantizers.items() if q}
    # the bias setting's widget sits in the settings expander below, in this fragment: read its last value
    est = estimate(stats, numeric, chosen, int(st.session_state.get("plan_bias_clusters", CLUSTER.bias_clusters)))
    per_layer = est["per_layer_bytes"]
    widths = ([2.2, 0.8, 1.6, 2.6, 1.3] if compact else [1.6, 0.8, 1.4, 2.2, 1.5, 1.5, 1.1, 1.0, 1.0]) + [1.1]
    head = ["layer", "params", "sensitivity", "sparsity", "clusters"] + (
        [] if compact else ["quantizer", "k", "s / t", "axis"]) + ["est. bytes"]
    shown_set = set(shown)
    for group, members in groups.items():
        visible = [layer for layer in members if layer in shown_set]
        if not visible:
            continue
        group_bytes = sum(per_layer[layer] for layer in members)
        params = sum(stats.layers[layer].numel for layer in members)
        label = (f"**{group}** · {len(visible)} of {len(members)} layers · {human(params)} weights · "
                 f"est. {human(group_bytes, 'B')}")
        is_open = st.toggle(label, value=group == first_open or not many, key=prefix + "open::" + group)
        if not is_open:
            continue
        with st.container(border=True):
            bulk = st.columns([2.2, 1.6, 1.3, 1.3, 1.2, 3])
            bulk[0].caption(f"set the {len(visible)} layers shown")
            bulk[1].number_input("sparsity", 0.0, SPARSITY_MAX, 0.5, 0.05, key=prefix + "bulk_sp::" + group)
            bulk[2].selectbox("clusters", CLUSTER_CHOICES, index=CLUSTER_CHOICES.index(32),
                              key=prefix + "bulk_k::" + group)
            if not compact:
                bulk[3].selectbox("quantizer", QUANTIZER_CHOICES, key=prefix + "bulk_q::" + group)
            bulk[4].button("Set group", key=prefix + "bulk::" + group, on_click=apply_bulk, args=(group, visible),
                           help="every layer of the group shown under the filter gets these settings")
            header = st.columns(widths)
            for col, title in zip(header, head, strict=True):
                col.caption(title)
            for layer in visible:
                draw_row(layer, compact, widths, per_layer)
    if report is not None:
        st.caption("Sensitivity: accuracy of the layer alone at each sparsity (filled: measured, hollow: "
                   "estimated; red: the current setting).")
    channel_choice = channel_section(handle, spec_key(spec), lazy=many)  # "channels kept" per channel group
    est = channel_choice.apply(est, stats, settings)
    prediction = predict(report, settings, quantizers, history) if report is not None else None
    with st.container(border=True, key="plan_estimate"):
        cols = st.columns(5)
        cols[0].metric("Estimated file", human(est["compressed_bytes"], "B"),
                       help=f"{est['compressed_bytes']:,} bytes")
        cols[1].metric("Estimated ratio", f"{est['ratio']:.1f}x")
        cols[2].metric("Sparse FLOPs", human(est["sparse_flops"]), f"{est['sparse_flops'] / est['flops'] - 1:.0%}",
                       help=f"{est['sparse_flops']:,} of {est['flops']:,} dense FLOPs")
        if prediction is not None:
            base = prediction["accuracy"] + prediction["drop"]
            low, high = base - prediction["high"], base - prediction["low"]
            cols[3].metric("Predicted accuracy", f"{prediction['accuracy']:.2%}",
                           f"{-100 * prediction['drop']:+.2f} pts", help=f"range {low:.2%} - {high:.2%}")
        else:
            cols[3].metric("Predicted accuracy", "-", help="needs a sensitivity analysis")
        cols[4].metric("fp32 size", human(est["fp32_bytes"], "B"), help=f"{est['fp32_bytes']:,} bytes")
        if "channel_flops" in est:
            fewer = est["flops"] / max(1, est["channel_flops"])
            st.caption(f"Channels removed: {est['weights_removed_by_channels']:,} weights, dense FLOPs "
                       f"{est['flops']:,} -> {est['channel_flops']:,} ({fewer:.1f}x fewer, on any CPU).")
        if prediction is not None:
            st.caption(f"Predicted accuracy {prediction['accuracy']:.2%}, range {low:.2%} - {high:.2%} "
                       f"(model: {prediction['model']}).")
        else:
            st.caption("Predicted accuracy: run the sensitivity analysis (Sensitivity page) to see the accuracy "
                       "these settings are predicted to keep.")
        st.caption(f"Estimated file {est['compressed_bytes']:,} B of {est['fp32_bytes']:,} B fp32. Analytic "
                   "estimate from the weights (no model run); 'auto' clusters are estimated at k=32. The run "
                   "measures the real file.")
        # where the estimated bytes go, part by part as the file will count them; the bars add up to the total above.
        # Off by default on very big models: a fresh server process spends ~4 s on plotly's first figure (measured)
        if st.toggle("Where the bytes go (estimated)", value=len(layers) <= WATERFALL_UP_TO, key="plan_waterfall_on"):
            st.plotly_chart(bytes_waterfall(estimated_waterfall(
                stats, numeric, chosen, est["compressed_bytes"],
                bias_clusters=int(st.session_state.get("plan_bias_clusters", CLUSTER.bias_clusters))),
                estimated=True, height=380), key="plan_waterfall",
                config={"staticPlot": True})  # no hover layers to rebuild: a slider move redraws it quicker
    launch_section(settings, quantizers, channel_choice, prediction)


def launch(job: dict) -> None:
    """The launch button's callback: submit the run, keep (run id, error) for the redraw to show."""
    try:
        st.session_state["plan_launched"] = (engine.submit(job, root=home()), None)
    except CompressionLabError as exc:
        st.session_state["plan_launched"] = (None, str(exc))


def launch_section(settings: dict, quantizers: dict, channel_choice, prediction: dict | None) -> None:
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
        bias_clusters = c[3].number_input(
            "bias shared values", 0, 256, CLUSTER.bias_clusters, key="plan_bias_clusters",
            help="0: biases stay fp32; 2-256: each clustered layer's bias is shared among that many values and "
                 "fine-tuned with the weights (at 100x+ the biases are a fifth of a LeNet's file)")
        fold = detector and st.checkbox(
            "Fold batch norm into the convolutions after pruning", value=True, key="plan_fold_bn",
            help="One bias per convolution instead of five batch-norm vectors in the file (measured on the demo "
                 "detector: 16% smaller at the same mAP); done after pruning, whose fine-tuning needs batch norm.")
        if fold != stats_fold_bn:  # the estimate's statistics depend on it: rerun the whole page
            st.rerun()
    name = st.text_input("Plan name", "my-plan", key="plan_name")

    def make_plan() -> Plan:
        try:
            return plan_from_settings(
                settings, name, {"iterations": int(iterations), "finetune_epochs": int(prune_epochs)},
                {"finetune_epochs": int(cluster_epochs), "tolerance": float(tolerance),
                 "bias_clusters": int(bias_clusters)},
                quantizers, {"finetune_epochs": int(codebook_epochs)})
        except PlanError as exc:  # a detector's plan may only fold batch norm
            if fold and "has no steps" in str(exc):
                return Plan(steps=(FoldBNStep(),), name=name).validate(layers)
            raise

    plan = None
    try:
        plan = channel_choice.build(make_plan, layers)  # adds the channels / distill steps in order
        if fold:
            plan = with_fold_bn(plan)
        for layer, quantizer in quantizers.items():  # shape limits (k <= vectors, s <= vector length)
            if quantizer:
                check_layer(layer, stats.layers[layer].shape, quantizer)
    except CompressionLabError as exc:  # said, and Load stays drawn: another recipe may fix it
        st.error(str(exc))
        plan = None
    cols = st.columns(4)
    cols[0].download_button("Save recipe (JSON)", plan.to_json() if plan else "", f"{name}.json",
                            "application/json", key="plan_save", disabled=plan is None)
    cols[1].file_uploader("Load recipe", type=["json"], key="plan_upload", on_change=load_recipe)
    if st.session_state.get("plan_load_error"):
        st.error(st.session_state["plan_load_error"])
    # a callback (it runs before the page redraws), as the sweep's: a button inside the fragment read by `if`
    # was never seen pressed by Streamlit's AppTest, so no test could launch the plan the page built
    cols[2].button("Launch run", type="primary", key="plan_launch", on_click=launch, disabled=plan is None,
                   help=None if plan else "the settings above make no valid plan: see the message above",
                   args=(compress_job(spec, plan.to_dict(), predicted=prediction),) if plan else ())
    launched = st.session_state.pop("plan_launched", None)
    if launched and launched[0]:
        st.success(f"Run {launched[0]} queued.")
        st.page_link("pages/runs.py", label="Follow it on the Runs page", icon=":material/play_circle:")
    elif launched:
        st.error(launched[1])
    with cols[3]:  # N targets solved into N plans with these fine-tuning settings, submitted as one group
        sweep_button(spec, stats, report, history, name,
                     {"iterations": int(iterations), "finetune_epochs": int(prune_epochs)},
                     {"finetune_epochs": int(cluster_epochs), "tolerance": float(tolerance),
                      "bias_clusters": int(bias_clusters)}, bool(fold))


rows_and_estimate()
