"""The Plan page's sections (pages/plan.py only lays them out): the global target, the layer groups and their rows
(ui/plan_rows.py), the live estimate, the fine-tuning settings and the launch / save / load / sweep buttons.

Nothing here names a step's per-layer field: the rows come from the steps' declarations, and the plan is the rows'
steps plus the channel section's (ui/channels.py), in the order complab.plan.ordered() gives.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from complab import engine, service
from complab.analysis.estimate import estimate, estimated_waterfall
from complab.analysis.predict import predict
from complab.analysis.solver import DEFAULT_AXES, SOLVER_AXES
from complab.analysis.suggest import suggest
from complab.analysis.targets import solve_target
from complab.errors import CompressionLabError, PlanError
from complab.layermap import OptionField
from complab.paths import OutputError
from complab.plan import FoldBNStep, Plan, ordered, validate_recipe
from complab.steps.cluster import ClusterStep
from complab.ui import plan_draft
from complab.ui.channels import ChannelChoice, load_channels
from complab.ui.figures import bytes_waterfall
from complab.ui.numbers import delta_color, duration, human, percent, points
from complab.ui.plan_draft import TARGETS
from complab.ui.plan_form import with_fold_bn
from complab.ui.plan_rows import LayerRows, plan_order, step_fields
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
    draft: Path | None = None  # where the page keeps its target and settings (ui/plan_draft.py); None: nowhere
    report_key: str = "none"  # plan_draft.report_id of the report the settings were made from

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


TARGET_LABELS = {"ratio": "compression ratio (x)", "flops": "FLOPs reduction (x)",
                 "accuracy": "accuracy budget (points)", "bits": "average bits (mixed-precision integers)"}
TARGET_KEYS = ("plan_target_kind", "plan_target_value")


def _target_kind_changed(page: PlanPage) -> None:
    """A new kind of target starts at that kind's default (a ratio of 40 is no accuracy budget)."""
    st.session_state["plan_target_value"] = TARGETS[st.session_state["plan_target_kind"]][2]
    save_draft(page)


def target_section(page: PlanPage) -> None:
    """The solver: one global target (ratio, FLOPs, accuracy budget) -> every layer's settings. The value is typed
    (or stepped: 1x for ratios, 0.5x for FLOPs, 0.1 point for a budget); both are kept in the draft."""

    def apply_target() -> None:
        try:
            cluster = ClusterStep.from_rows({"_": {"k": 2}}, step_options().get("cluster"))  # its rate options
            result = solve_target(page.stats, page.report, st.session_state["plan_target_kind"],
                                  st.session_state["plan_target_value"],
                                  SOLVER_AXES if st.session_state.get("plan_solver_int") else DEFAULT_AXES,
                                  rate=cluster.estimate_options().get("rate"))
        except CompressionLabError as exc:  # e.g. a bits target on a report made before the bits axis
            st.session_state["plan_solver_note"] = f"Solver: {exc}"
            return
        page.rows.set_settings(result["settings"], result.get("bits"))
        drop = points(-result["predicted_drop"])
        st.session_state["plan_solver_note"] = (
            f"Solver: predicted accuracy drop {drop} (layers measured alone), "
            f"{result['ratio']:.1f}x" + ("" if result["met"] else " - target not reachable on this grid"))

    with st.container(border=True):
        head = st.columns([4, 2], vertical_alignment="center")
        head[0].markdown("**Global target**")
        head[1].button("Reset to the suggestion" if page.report is not None else "Reset to the defaults",
                       key="plan_reset", on_click=reset_to_suggestion, args=(page,), icon=":material/restart_alt:",
                       use_container_width=True,
                       help="every layer back to what the sensitivity analysis suggests (1-point budget per layer) "
                            "and the target to its default; your saved draft is replaced")
        if page.report is None:
            st.caption("Run the sensitivity analysis to let the solver choose per-layer settings for a target.")
            return
        if st.session_state.get("plan_target_kind") not in TARGETS:
            st.session_state["plan_target_kind"] = "ratio"
        kind = st.session_state["plan_target_kind"]
        low, high, default, step = TARGETS[kind]
        value = st.session_state.get("plan_target_value")
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            st.session_state["plan_target_value"] = default
        cols = st.columns([2, 3, 1], vertical_alignment="bottom")
        cols[0].selectbox("Target", list(TARGETS), key="plan_target_kind", format_func=TARGET_LABELS.get,
                          on_change=_target_kind_changed, args=(page,))
        cols[1].number_input(f"Target value: {TARGET_LABELS[kind]}", low, high, step=step, format="%.1f",
                             key="plan_target_value", on_change=save_draft, args=(page,),
                             help=f"type a value from {low:g} to {high:g}, or step by {step:g}")
        cols[2].button("Apply", on_click=apply_target, key="plan_apply", type="primary")
        has_bits = any((row or {}).get("bits") for row in (page.report.get("layers") or {}).values())
        st.checkbox("The solver may store layers as integers (mixed-precision bits per layer)", key="plan_solver_int",
                    disabled=not has_bits or kind == "bits",
                    help="integer widths from the sensitivity's bits curves, beside sparsity and shared values (the "
                         "average-bits target uses integers only)" if has_bits else
                         "the sensitivity analysis has no bits curves: run it again to measure integer widths")
        if st.session_state.get("plan_solver_note"):
            st.caption(st.session_state["plan_solver_note"])


# ---- the draft: the target and every layer's settings, kept across page changes and reloads ----------------------

def _draft_fields() -> tuple[list, list]:
    return [f for _, f in step_fields()], [f for _, f in option_fields()]


def current_draft(page: PlanPage) -> dict:
    """What the page shows now: its target, every layer's settings (shown or not) and the fine-tuning settings."""
    kind = st.session_state.get("plan_target_kind")
    kind = kind if kind in TARGETS else "ratio"
    target = {"kind": kind, "value": st.session_state.get("plan_target_value", TARGETS[kind][2])}
    kept = {f.key: st.session_state.get(f.key, getattr(config(), f.name)) for config, f in option_fields()}
    return plan_draft.make_draft(page.key, page.report_key, target,
                                 {layer: page.rows.store.get(layer, {}) for layer in page.layers}, kept)


def _seed_widgets(draft: dict, force: bool) -> None:
    """The draft's target and fine-tuning settings into their widgets' keys: all of them (`force`, a restored
    draft) or those Streamlit forgot (a widget not drawn on the last page is dropped from the session)."""
    target = plan_draft.check_target(draft.get("target"))
    if target is not None and (force or any(key not in st.session_state for key in TARGET_KEYS)):
        st.session_state["plan_target_kind"], st.session_state["plan_target_value"] = target["kind"], target["value"]
    _, options = _draft_fields()
    defaults = {f.key: getattr(config(), f.name) for config, f in option_fields()}
    for f in options:
        if f.key in (draft.get("options") or {}) and (force or f.key not in st.session_state):
            st.session_state[f.key] = type(defaults[f.key])(draft["options"][f.key])


def restore_draft(page: PlanPage, fresh: bool) -> None:
    """Before the widgets are drawn: on the page's first view in this session, the saved draft (if any, and
    usable) over the suggestion, or a note saying why it was ignored; on a later view, the target and settings
    Streamlit forgot while another page was open."""
    kept = st.session_state.get(page.rows.prefix + "draft")
    if not fresh:
        if kept is not None:
            _seed_widgets(kept, force=False)
        return
    if page.draft is None:
        return
    fields, options = _draft_fields()
    draft, note = plan_draft.read_draft(page.draft, page.key, page.report_key, page.layers, fields, options)
    if note:
        st.session_state["plan_draft_note"] = note
    if draft is None:
        return
    before = plan_draft.dumps(current_draft(page))
    page.rows.set_rows(draft["rows"])
    _seed_widgets(draft, force=True)
    if plan_draft.dumps(current_draft(page)) == before:  # the draft is the suggestion itself: nothing to say
        return
    when = draft.get("saved")
    ago = f", saved {_ago(time.time() - when)} ago" if when and when <= time.time() else ""
    st.session_state["plan_draft_restored"] = (
        f"Your draft of this plan is back (target and per-layer settings{ago}). "
        "'Reset to the suggestion' starts again from the sensitivity analysis.")


def _ago(seconds: float) -> str:
    """A time since, in words: "12 s", "5 min", "3 h", "2 days"."""
    for size, unit in ((86400, " days"), (3600, " h"), (60, " min")):
        if seconds >= size:
            value = int(seconds // size)
            return f"{value}{unit if value != 1 or unit != ' days' else ' day'}"
    return f"{int(seconds)} s"


def save_draft(page: PlanPage) -> None:
    """After the rows are drawn, and in the target's and settings' change callbacks: the draft written when it
    changed (a read-only data folder: kept in the session only, said once). The callbacks matter: a change reruns
    the page (or its fragment), and a click on another page while that rerun is still drawing a big model's rows
    stops it before its end, where the draft is written; a callback runs first, so the change is never lost."""
    draft = current_draft(page)
    key = page.rows.prefix + "draft"
    if st.session_state.get(key) is not None and plan_draft.dumps(st.session_state[key]) == plan_draft.dumps(draft):
        return
    st.session_state[key] = draft
    if page.draft is None:
        return
    try:
        plan_draft.write_draft(page.draft, draft)
    except (OutputError, OSError) as exc:
        if not st.session_state.get("plan_draft_unsaved"):
            st.session_state["plan_draft_unsaved"] = True
            st.caption(f"Your settings are kept while this tab is open, not across a reload: {exc}")


def reset_to_suggestion(page: PlanPage) -> None:
    """The reset button's callback: every layer to the sensitivity suggestion (or the defaults without one), the
    target to its default."""
    page.rows.reset(suggest(page.report) if page.report is not None else None)
    kind = st.session_state.get("plan_target_kind") if st.session_state.get("plan_target_kind") in TARGETS else "ratio"
    st.session_state["plan_target_kind"], st.session_state["plan_target_value"] = kind, TARGETS[kind][2]
    for name in ("plan_solver_note", "plan_draft_restored", "plan_draft_note", ORIGIN_KEY):
        st.session_state.pop(name, None)
    st.session_state["plan_notice"] = {"kind": "info", "text": "Back to the suggestion of the sensitivity analysis."
                                       if page.report is not None else "Back to the default settings."}


def draft_notes() -> None:
    """Under the title: a restored draft, or one that was ignored and why (each said once)."""
    restored = st.session_state.pop("plan_draft_restored", None)
    if restored:
        st.caption(restored)
    note = st.session_state.pop("plan_draft_note", None)
    if note:
        st.warning(note)


# ---- what a button did, said at the top of the page ----------------------------------------------------------------

def top_notice() -> None:
    """Under the title: what the last launch, sweep or reset did (a toast too: the button may be far down the
    page). Buttons inside the rows' fragment rerun only the fragment; notice_rerun() reruns the page for this."""
    notice = st.session_state.pop("plan_notice", None)
    if not notice:
        return
    show = {"success": st.success, "error": st.error, "info": st.info}[notice["kind"]]
    show(notice["text"])
    icon = {"success": ":material/check_circle:", "error": ":material/error:"}.get(notice["kind"], ":material/info:")
    st.toast(notice.get("toast") or notice["text"], icon=icon)
    if notice.get("link") == "runs":
        st.page_link("pages/runs.py", label="Follow it on the Runs page", icon=":material/play_circle:")
    elif notice.get("link") == "compare":
        st.page_link("pages/compare.py", label="Watch its curve fill in on the Compare page",
                     icon=":material/monitoring:")


def notice_rerun() -> None:
    """In the fragment: a button there left a notice for the top of the page: rerun the whole page to show it."""
    if st.session_state.get("plan_notice"):
        st.rerun()


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
        st.caption("Sensitivity: accuracy of the layer alone at each sparsity, or at each integer width for a layer "
                   "with int bits (filled: measured, hollow: estimated; red: the current setting).")


NO_BASIS = ("no measured basis for this prediction yet (the predictor says so): read it as a rough range until "
            "a run of this model is measured")


def shown_prediction(prediction: dict) -> dict:
    """How the page shows predict()'s result: the accuracy, its range as text ("40.0-95.0%"), the basis, the
    warning, and whether the number may be shown alone (`confident`: a basis and no warning). The range is
    predict()'s accuracy_low / accuracy_high (measurement noise included) when it gives them, else the drop's
    range turned into accuracies; both clamped to [0, 100%]."""
    accuracy, drop = float(prediction["accuracy"]), float(prediction["drop"])
    low, high = prediction.get("accuracy_low"), prediction.get("accuracy_high")
    if low is None or high is None:
        base = accuracy + drop
        low, high = base - float(prediction["high"]), base - float(prediction["low"])
    low, high = sorted((min(1.0, max(0.0, float(low))), min(1.0, max(0.0, float(high)))))
    basis = prediction.get("basis") or ((prediction.get("calibration") or {}).get("source") or "")
    warning = str(prediction.get("warning") or "")
    if basis == "none" and not warning:
        warning = NO_BASIS
    text = f"{100 * low:.1f}-{100 * high:.1f}%"  # as numbers.interval writes a range
    return {"accuracy": min(1.0, max(0.0, accuracy)), "low": low, "high": high, "range": text,
            "basis": basis or "demo runs", "warning": warning, "confident": not warning}


def estimate_panel(page: PlanPage, est: dict, settings: dict, quantizers: dict, bias_clusters: int,
                   rate: dict | None = None) -> dict | None:
    """The live estimate (file, ratio, FLOPs, predicted accuracy) and where the bytes go; returns the prediction."""
    prediction = predict(page.report, settings, quantizers, page.history) if page.report is not None else None
    with st.container(border=True, key="plan_estimate"):
        cols = st.columns(5)
        cols[0].metric("Estimated file", human(est["compressed_bytes"], "B"), help=f"{est['compressed_bytes']:,} bytes")
        cols[1].metric("Estimated ratio", f"{est['ratio']:.1f}x")
        flops_change = est["sparse_flops"] / est["flops"] - 1
        cols[2].metric("Sparse FLOPs", human(est["sparse_flops"]), f"{flops_change:.0%}",
                       delta_color=delta_color("sparse_flops", flops_change, 0.005),
                       help=f"{est['sparse_flops']:,} of {est['flops']:,} dense FLOPs")
        shown = shown_prediction(prediction) if prediction is not None else None
        if shown is None:
            cols[3].metric("Predicted accuracy", "-", help="needs a sensitivity analysis")
        elif shown["confident"]:
            change = points(-prediction["drop"])
            cols[3].metric("Predicted accuracy", percent(shown["accuracy"]), change,
                           delta_color="off" if change == "no change" else delta_color("accuracy", -prediction["drop"]),
                           help=f"range {shown['range']} ({shown['basis']})")
        else:  # no basis, or a warning: the range, never a confident number
            cols[3].metric("Predicted accuracy", shown["range"], "uncertain", delta_color="off",
                           help=f"point estimate {percent(shown['accuracy'])}; {shown['warning']}")
        cols[4].metric("fp32 size", human(est["fp32_bytes"], "B"), help=f"{est['fp32_bytes']:,} bytes")
        if "channel_flops" in est:
            fewer = est["flops"] / max(1, est["channel_flops"])
            st.caption(f"Channels removed: {est['weights_removed_by_channels']:,} weights, dense FLOPs "
                       f"{est['flops']:,} -> {est['channel_flops']:,} ({fewer:.1f}x fewer, on any CPU).")
        if shown is not None:
            if shown["warning"]:
                st.warning(f"Predicted accuracy {shown['range']}: {shown['warning']}", icon=":material/warning:")
            st.caption(f"Predicted accuracy {percent(shown['accuracy'])}, range {shown['range']} "
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
                bias_clusters=bias_clusters, rate=rate), estimated=True, height=380), key="plan_waterfall",
                config={"staticPlot": True})  # no hover layers to rebuild: a slider move redraws it quicker
    return prediction


def live_estimate(page: PlanPage, settings: dict, quantizers: dict, bias_clusters: int,
                  rate: dict | None = None) -> dict:
    return estimate(page.stats, settings, {k: q for k, q in quantizers.items() if q}, bias_clusters, rate)


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
    st.session_state.pop(ORIGIN_KEY, None)  # an uploaded recipe is no run's: the next launch records no origin
    _apply_plan(page, plan)


def _apply_plan(page: PlanPage, plan: Plan) -> None:
    """Every widget from a validated recipe."""
    page.rows.load_plan(plan)
    load_channels(plan, page.handle, page.key)
    st.session_state["plan_name"] = plan.name
    steps = {step.type: step for step in plan.steps}
    for config, f in option_fields():  # the recipe's own settings; its steps' defaults where it has no such step
        st.session_state[f.key] = getattr(steps.get(config.type) or config(), f.name)
    st.session_state["plan_fold_bn"] = any(step.type == "fold_bn" for step in plan.steps)


ORIGIN_KEY = "plan_origin"  # {"kind": "recipe", "run", "spec"}: the run whose recipe this draft started from
PENDING_KEY = "plan_from_run"  # set by the Compare page's "Start a plan from this recipe" (ui/lineage.stage_recipe)


def apply_recipe_from_run(page: PlanPage) -> None:
    """A recipe the Compare page handed over (its run's plan.json, untrusted): validated against this model's layers
    like an uploaded one, loaded into every widget, and its run remembered, so the run launched from this draft
    records {"kind": "recipe", "run"} (the Compare page's map draws it under that run). Called before any widget."""
    pending = st.session_state.pop(PENDING_KEY, None)
    if not isinstance(pending, dict):
        return
    run_id = pending.get("run")
    try:
        if pending.get("spec") != page.key:
            raise PlanError("it is of another model or data than the active one")
        plan = validate_recipe(json.dumps(pending.get("plan")), page.layers)
        if not page.detector and any(step.type == "fold_bn" for step in plan.steps):
            raise PlanError("it folds batch norm (fold_bn), which is implemented for YOLO detectors")
        _apply_plan(page, plan)
    except (CompressionLabError, TypeError, ValueError) as exc:
        st.session_state["plan_notice"] = {"kind": "error", "text": f"Run {str(run_id)[:100]}'s recipe was not "
                                           f"loaded: {exc}", "toast": "Recipe not loaded: see the top of the page"}
        return
    st.session_state[ORIGIN_KEY] = {"kind": "recipe", "run": run_id, "spec": page.key}
    st.session_state["plan_notice"] = {"kind": "success", "text": f"Loaded run {run_id}'s recipe: change what you "
                                       "like and launch; the new run is drawn under it on the Compare page's map."}


def launch_origin(page: PlanPage) -> dict | None:
    """The origin the launched run records: the run whose recipe this model's draft started from, or None."""
    origin = st.session_state.get(ORIGIN_KEY)
    if isinstance(origin, dict) and origin.get("spec") == page.key:
        return {"kind": "recipe", "run": origin["run"]}
    return None


def launch(job: dict) -> None:
    """The launch button's callback: submit the run; what happened is said at the top of the page (top_notice)."""
    try:
        run_id = engine.submit(job, root=home())
        st.session_state["plan_notice"] = {"kind": "success", "text": f"Run {run_id} queued.", "link": "runs",
                                           "toast": f"Queued: run {run_id}"}
    except CompressionLabError as exc:
        st.session_state["plan_notice"] = {"kind": "error", "text": str(exc), "toast": "Not launched: see the top of "
                                                                                       "the page"}


@st.cache_data(ttl=20, show_spinner=False, max_entries=16)
def model_timings(root: str, key: str) -> list[dict]:
    """This model's measured run times (service.run_timings), read at most every 20 s: a slider move reruns the
    page's fragment, and the engine's listing and events are not read again for it."""
    import json

    return service.run_timings(json.loads(key), root)


@st.cache_data(ttl=5, show_spinner=False, max_entries=4)
def runs_ahead(root: str) -> int:
    """Runs queued or running in the engine now (read at most every 5 s)."""
    return sum(run["state"] in ("queued", "running") for run in engine.list_runs(root=root))


def time_text(estimate: dict, runs: int = 1, workers: int = 1) -> str:
    """One line for the estimate (service.time_estimate): "about 0:28 (7 s to load, measure and write + 4 epochs x
    5.1 s, timed on 1 earlier run of this model)", or why there is none."""
    if estimate.get("seconds") is None:
        return str(estimate.get("why") or "no estimate yet")
    parts = [f"{estimate['overhead']:.0f} s to load, measure and write"]
    if estimate.get("epochs") and estimate.get("per_epoch") is not None:
        parts.append(f"{estimate['epochs']} epochs x {estimate['per_epoch']:.1f} s")
    basis = estimate["basis"]
    how = (f"timed on {basis} earlier run{'s' if basis != 1 else ''} of this model"
           + ("" if estimate.get("same_steps") else ", with other steps: rough"))
    head = f"about {duration(estimate['seconds'])}"
    if runs > 1:
        head += f" for {runs} runs ({duration(estimate['per_run'])} each, {workers} at a time)"
    return f"{head} ({' + '.join(parts)}; {how})"


def plan_time(page: PlanPage, plan: Plan | None, runs: int = 1) -> str:
    """The estimated time of `runs` runs of `plan` on this engine, in words."""
    if plan is None:
        return ""
    try:
        settings = engine.settings(home())
        workers = 1 if settings.get("ray_address") else int(settings.get("max_workers") or 1)
        timings = model_timings(str(home()), page.key)
    except CompressionLabError:
        return ""
    steps = tuple(step.type for step in plan.steps)
    epochs = service.plan_epochs(plan)
    estimate = service.time_estimate(timings, epochs, runs, workers, steps)
    text = time_text({**estimate, "epochs": epochs}, runs, workers)
    try:
        ahead = runs_ahead(str(home()))
    except CompressionLabError:
        ahead = 0
    if ahead:
        text += (f"; {ahead} run{'s' if ahead != 1 else ''} already queued or running"
                 + ("" if settings.get("ray_address") else f" on {workers} worker{'s' if workers != 1 else ''}"))
    return text


def settings_expander(page: PlanPage, stats_fold_bn: bool) -> bool:
    """The fine-tuning and search settings (step_options reads them); returns whether batch norm is folded."""
    with st.expander("Fine-tuning and search settings"):
        c = st.columns(4)
        for index, (config, f) in enumerate(option_fields()):  # defaults live in the session state (load_recipe)
            st.session_state.setdefault(f.key, getattr(config(), f.name))
            if f.choices:
                c[index % len(c)].selectbox(f.label, list(f.choices), key=f.key, help=f.help, on_change=save_draft,
                                            args=(page,))
            else:
                c[index % len(c)].number_input(f.label, f.low, f.high, step=f.step, format=f.fmt, key=f.key,
                                               help=f.help, on_change=save_draft, args=(page,))
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
    origin = launch_origin(page)
    cols[2].button("Launch run", type="primary", key="plan_launch", on_click=launch, disabled=plan is None,
                   help=None if plan else "the settings above make no valid plan: see the message above",
                   args=(compress_job(page.spec, plan.to_dict(), predicted=prediction, origin=origin),)
                   if plan else ())
    if origin is not None:
        st.caption(f"This plan started from run {origin['run']}'s recipe: the run launched records it.")
    if plan is not None:
        st.caption(f"Estimated time of a run: {plan_time(page, plan)}.")
    options = step_options()
    with cols[3]:  # N targets solved into N plans with these fine-tuning settings, submitted as one group
        sweep_button(page.spec, page.stats, page.report, page.history, name, options.get("prune", {}),
                     options.get("cluster", {}), fold, timing=lambda runs: plan_time(page, plan, runs),
                     int_options=options.get("int", {}))
