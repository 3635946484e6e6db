"""The Plan page's sections (pages/plan.py only lays them out): the global target, the layer groups and their rows
(ui/plan_rows.py), the live estimate, the fine-tuning settings and the launch / save / load / sweep buttons.

Nothing here names a step's per-layer field: the rows come from the steps' declarations, and the plan is the rows'
steps plus the channel section's (ui/channels.py), in the order complab.plan.ordered() gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from complab import engine
from complab.analysis.estimate import estimate, estimated_waterfall
from complab.analysis.predict import predict
from complab.analysis.targets import solve_target
from complab.errors import CompressionLabError, PlanError
from complab.layermap import OptionField
from complab.plan import FoldBNStep, Plan, ordered, validate_recipe
from complab.ui.channels import ChannelChoice, load_channels
from complab.ui.figures import bytes_waterfall
from complab.ui.numbers import human
from complab.ui.plan_form import with_fold_bn
from complab.ui.plan_rows import LayerRows, plan_order
from complab.ui.state import compress_job, home
from complab.ui.sweep import sweep_button

WATERFALL_UP_TO = 50  # layers: above this the estimated waterfall waits for its toggle


@dataclass
class PlanPage:
    """What every section reads: the active model's spec, handle, statistics, analysis and the rows' store."""

    spec: dict
    key: str  # the model's key (ui.state.spec_key): the channel section's widgets are keyed by it
    handle: object
    stats: object
    report: object
    history: list
    rows: LayerRows

    @property
    def layers(self) -> list[str]:
        return self.rows.layers

    @property
    def detector(self) -> bool:
        return self.handle.kind.folds_batch_norm


def option_fields() -> list[tuple[type, OptionField]]:
    """(config class, field) of every plan-wide setting the steps declare, the steps in plan order."""
    return [(config, f) for config in plan_order() for f in getattr(config, "option_fields", ())]


def step_options() -> dict[str, dict]:
    """Each step's options (its declared option_fields) from the settings expander's widgets, else its defaults."""
    out: dict[str, dict] = {}
    for config, f in option_fields():
        default = getattr(config(), f.name)
        out.setdefault(config.type, {})[f.name] = type(default)(st.session_state.get(f.key, default))
    return out


def target_section(page: PlanPage) -> None:
    """The solver: one global target (ratio, FLOPs, accuracy budget) -> every layer's settings."""

    def apply_target() -> None:
        result = solve_target(page.stats, page.report, st.session_state["plan_target_kind"],
                              st.session_state["plan_target_value"])
        page.rows.set_settings(result["settings"])
        st.session_state["plan_solver_note"] = (
            f"Solver: predicted accuracy drop {100 * result['predicted_drop']:.2f} pts (layers measured alone), "
            f"{result['ratio']:.1f}x" + ("" if result["met"] else " - target not reachable on this grid"))

    with st.container(border=True):
        st.markdown("**Global target**")
        if page.report is None:
            st.caption("Run the sensitivity analysis to let the solver choose per-layer settings for a target.")
            return
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


def layer_groups_section(page: PlanPage, groups: dict[str, list[str]], shown: list[str], compact: bool, many: bool,
                         per_layer: dict[str, float]) -> None:
    """Each group as a toggle (closed groups draw no rows), its bulk setter and its layers' rows."""
    first_open = next((g for g, members in groups.items() if len(members) > 1), next(iter(groups), None))
    shown_set = set(shown)
    for group, members in groups.items():
        visible = [layer for layer in members if layer in shown_set]
        if not visible:
            continue
        params = sum(page.stats.layers[layer].numel for layer in members)
        label = (f"**{group}** · {len(visible)} of {len(members)} layers · {human(params)} weights · "
                 f"est. {human(sum(per_layer[layer] for layer in members), 'B')}")
        if not st.toggle(label, value=group == first_open or not many, key=page.rows.prefix + "open::" + group):
            continue
        with st.container(border=True):
            page.rows.draw_bulk(group, visible, compact)
            for col, title in zip(st.columns(page.rows.widths(compact)), page.rows.header(compact), strict=True):
                col.caption(title)
            for layer in visible:
                page.rows.draw_row(layer, page.stats.layers[layer].numel, page.report, compact, per_layer[layer])
    if page.report is not None:
        st.caption("Sensitivity: accuracy of the layer alone at each sparsity (filled: measured, hollow: "
                   "estimated; red: the current setting).")


def estimate_panel(page: PlanPage, est: dict, settings: dict, quantizers: dict, bias_clusters: int) -> dict | None:
    """The live estimate (file, ratio, FLOPs, predicted accuracy) and where the bytes go; returns the prediction."""
    prediction = predict(page.report, settings, quantizers, page.history) if page.report is not None else None
    with st.container(border=True, key="plan_estimate"):
        cols = st.columns(5)
        cols[0].metric("Estimated file", human(est["compressed_bytes"], "B"), help=f"{est['compressed_bytes']:,} bytes")
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
        if st.toggle("Where the bytes go (estimated)", value=len(page.layers) <= WATERFALL_UP_TO,
                     key="plan_waterfall_on"):
            st.plotly_chart(bytes_waterfall(estimated_waterfall(
                page.stats, settings, {k: q for k, q in quantizers.items() if q}, est["compressed_bytes"],
                bias_clusters=bias_clusters), estimated=True, height=380), key="plan_waterfall",
                config={"staticPlot": True})  # no hover layers to rebuild: a slider move redraws it quicker
    return prediction


def live_estimate(page: PlanPage, settings: dict, quantizers: dict, bias_clusters: int) -> dict:
    return estimate(page.stats, settings, {k: q for k, q in quantizers.items() if q}, bias_clusters)


def load_recipe(page: PlanPage) -> None:
    """The "Load recipe" uploader's callback: every widget from the recipe, or its one-line refusal."""
    upload = st.session_state.get("plan_upload")
    if upload is None:
        return
    try:
        plan = validate_recipe(upload.getvalue(), page.layers)  # bytes: a non-UTF-8 file is named as such
        if not page.detector and any(step.type == "fold_bn" for step in plan.steps):
            raise PlanError("this recipe folds batch norm (fold_bn), which is implemented for YOLO detectors: "
                            "remove the step for this classifier")
    except CompressionLabError as exc:
        st.session_state["plan_load_error"] = str(exc)
        return
    st.session_state["plan_load_error"] = None
    page.rows.load_plan(plan)
    load_channels(plan, page.handle, page.key)
    st.session_state["plan_name"] = plan.name
    steps = {step.type: step for step in plan.steps}
    for config, f in option_fields():  # the recipe's own settings; its steps' defaults where it has no such step
        st.session_state[f.key] = getattr(steps.get(config.type) or config(), f.name)
    st.session_state["plan_fold_bn"] = any(step.type == "fold_bn" for step in plan.steps)


def launch(job: dict) -> None:
    """The launch button's callback: submit the run, keep (run id, error) for the redraw to show."""
    try:
        st.session_state["plan_launched"] = (engine.submit(job, root=home()), None)
    except CompressionLabError as exc:
        st.session_state["plan_launched"] = (None, str(exc))


def settings_expander(page: PlanPage, stats_fold_bn: bool) -> bool:
    """The fine-tuning and search settings (step_options reads them); returns whether batch norm is folded."""
    with st.expander("Fine-tuning and search settings"):
        c = st.columns(4)
        for index, (config, f) in enumerate(option_fields()):  # defaults live in the session state (load_recipe)
            st.session_state.setdefault(f.key, getattr(config(), f.name))
            c[index % len(c)].number_input(f.label, f.low, f.high, step=f.step, format=f.fmt, key=f.key, help=f.help)
        fold = page.detector and st.checkbox(
            "Fold batch norm into the convolutions after pruning", value=True, key="plan_fold_bn",
            help="One bias per convolution instead of five batch-norm vectors in the file (measured on the demo "
                 "detector: 16% smaller at the same mAP); done after pruning, whose fine-tuning needs batch norm.")
        if fold != stats_fold_bn:  # the estimate's statistics depend on it: rerun the whole page
            st.rerun()
    return bool(fold)


def build_plan(page: PlanPage, name: str, channel_choice: ChannelChoice, fold: bool) -> Plan:
    """The rows' steps, the channel section's and fold_bn, ordered and validated; each step's shape checks."""
    options = step_options()

    def make_plan() -> Plan:
        try:
            return Plan(steps=ordered(page.rows.steps(options)), name=name).validate(page.layers)
        except PlanError as exc:  # a detector's plan may only fold batch norm
            if fold and "has no steps" in str(exc):
                return Plan(steps=(FoldBNStep(),), name=name).validate(page.layers)
            raise

    plan = channel_choice.build(make_plan, page.layers)  # adds the channels / distill steps in order
    if fold:
        plan = with_fold_bn(plan)
    shapes = {layer: page.stats.layers[layer].shape for layer in page.layers}
    for step in plan.steps:  # shape limits (a quantizer's k <= vectors, s <= vector length)
        if hasattr(step, "check_shapes"):
            step.check_shapes(shapes)
    return plan


def launch_section(page: PlanPage, channel_choice: ChannelChoice, prediction: dict | None,
                   stats_fold_bn: bool) -> None:
    fold = settings_expander(page, stats_fold_bn)
    name = st.text_input("Plan name", "my-plan", key="plan_name")
    try:
        plan = build_plan(page, name, channel_choice, fold)
    except CompressionLabError as exc:  # said, and Load stays drawn: another recipe may fix it
        st.error(str(exc))
        plan = None
    cols = st.columns(4)
    cols[0].download_button("Save recipe (JSON)", plan.to_json() if plan else "", f"{name}.json",
                            "application/json", key="plan_save", disabled=plan is None)
    cols[1].file_uploader("Load recipe", type=["json"], key="plan_upload", on_change=load_recipe, args=(page,))
    if st.session_state.get("plan_load_error"):
        st.error(st.session_state["plan_load_error"])
    # a callback (it runs before the page redraws), as the sweep's: a button inside the fragment read by `if`
    # was never seen pressed by Streamlit's AppTest, so no test could launch the plan the page built
    cols[2].button("Launch run", type="primary", key="plan_launch", on_click=launch, disabled=plan is None,
                   help=None if plan else "the settings above make no valid plan: see the message above",
                   args=(compress_job(page.spec, plan.to_dict(), predicted=prediction),) if plan else ())
    launched = st.session_state.pop("plan_launched", None)
    if launched and launched[0]:
        st.success(f"Run {launched[0]} queued.")
        st.page_link("pages/runs.py", label="Follow it on the Runs page", icon=":material/play_circle:")
    elif launched:
        st.error(launched[1])
    options = step_options()
    with cols[3]:  # N targets solved into N plans with these fine-tuning settings, submitted as one group
        sweep_button(page.spec, page.stats, page.report, page.history, name, options.get("prune", {}),
                     options.get("cluster", {}), fold)
