"""Plan page: per-layer settings in groups (filter, bulk set, sensitivity sparklines), a global target, a live
size / FLOPs / predicted-accuracy estimate, launch, and a sweep (N targets as one group of runs). The rows and
the estimate are one st.fragment: a slider redraws only them, and rows of closed groups are not drawn at all
(their values live in the page's store, and in a draft file in the data folder, ui/plan_draft.py, that a page
change or a reload reads back). The rows' columns are the steps' declared per-layer fields (ui/plan_rows.py); the
sections are drawn by ui/plan_page.py."""

import streamlit as st
from complab.analysis.suggest import suggest
from complab.ui.channels import channel_section
from complab.ui.navigation import page_setup
from complab.ui.plan_draft import draft_path, report_id
from complab.ui.plan_form import ONE_GROUP_UP_TO, filter_layers, layer_groups
from complab.ui.plan_page import (
    PlanPage,
    apply_recipe_from_run,
    draft_notes,
    estimate_panel,
    launch_section,
    layer_groups_section,
    live_estimate,
    notice_rerun,
    restore_draft,
    save_draft,
    step_options,
    target_section,
    top_notice,
)
from complab.ui.plan_rows import LayerRows
from complab.ui.state import (
    active_spec,
    home,
    latest_sensitivity,
    load_active,
    model_stats,
    prediction_history,
    spec_key,
)

page_setup()
st.title("Plan")
spec = active_spec()
handle, data = load_active(spec)
layers = list(handle.prunable_layers())
stats_fold_bn = handle.kind.folds_batch_norm and st.session_state.get("plan_fold_bn", True)
stats = model_stats(spec_key(spec), stats_fold_bn)
report = latest_sensitivity(spec)
history = prediction_history(spec) if report is not None else []  # this model's runs calibrate the prediction
prefix = f"plan::{spec_key(spec)}::"
fresh = prefix + "init" not in st.session_state
rows = LayerRows(prefix, layers)  # every layer's settings, kept while its row is hidden
if fresh and report:  # the first view: the suggestion from the model's sensitivity analysis
    rows.set_settings(suggest(report))
reported = report_id(report)  # the draft is kept per model + data and the analysis its settings came from
page = PlanPage(spec, spec_key(spec), handle, stats, report, history, rows,
                draft_path(home(), spec_key(spec), reported), reported)
restore_draft(page, fresh)  # a reload or a page change finds the target and the settings as they were left
apply_recipe_from_run(page)  # the Compare page's "Start a plan from this recipe": its run's recipe over the draft
top_notice()  # what a launch, a sweep or a reset did: at the top, where it is seen
draft_notes()
target_section(page)
groups = layer_groups(layers)
many = len(layers) > ONE_GROUP_UP_TO


@st.fragment
def rows_and_estimate() -> None:
    """The layer rows, the channel section, the live estimate and the launch: a slider reruns only this."""
    notice_rerun()  # a launch or a sweep in here left a notice: the whole page reruns to show it at the top
    rows.sync_from_widgets()
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
    settings, quantizers, options = rows.settings(step_options())
    bias_clusters = int(options.get("bias_clusters", 0))
    est = live_estimate(page, settings, quantizers, bias_clusters, options.get("rate"))
    layer_groups_section(page, groups, shown, compact, many, est["per_layer_bytes"])
    channel_choice = channel_section(handle, spec_key(spec), lazy=many)  # "channels kept" per channel group
    est = channel_choice.apply(est, stats, settings)
    prediction = estimate_panel(page, est, settings, quantizers, bias_clusters, options.get("rate"))
    launch_section(page, channel_choice, prediction, stats_fold_bn)
    save_draft(page)  # the target and every layer's settings, for the next visit or a reload


rows_and_estimate()
