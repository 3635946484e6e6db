"""Compare page: the active model's runs (another model's on request), opened on its best run on the
accuracy-vs-bytes front (complab.analysis.pareto.best_run, said why); Pareto fronts (accuracy vs bytes, FLOPs,
PyTorch and ONNX Runtime latency; int runs by their bits) with each sweep as one line that fills in live while its
members run (and can be cancelled), the run table (both latencies), the map of the experiments (where each run came
from; a click selects a run) with the recipe diff of two runs, the run's behaviour against the original or another
run (complab/ui/behaviour.py: flips, per-class accuracy, calibration), where the bytes went, histograms, downloads
(the self-contained HTML report among them, of the run shown). In presentation mode (?present=1, optionally
&run=ID): that run's headline numbers, two fronts with the run ringed, its waterfall and its per-class behaviour
against the original (cached or computable), large, with no widgets."""

import datetime as dt
import json

import streamlit as st
from complab import engine, runfolder
from complab.analysis import report
from complab.analysis.pareto import best_run, prediction_error, runs_table
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui import behaviour, compare, figures, lineage, present
from complab.ui.behaviour_report import report_diff
from complab.ui.links import link_run_id
from complab.ui.navigation import page_setup
from complab.ui.numbers import points
from complab.ui.report import load_report_runs, plain_markdown, report_html
from complab.ui.state import active_spec, decoded_run, home, load_active, run_exports

LIVE_EVERY_S = 2.0  # seconds between redraws of the fronts while a sweep has members queued or running

page_setup()
presenting = present.presenting()
if presenting:
    present.present_css()
else:
    st.title("Compare")
try:
    runs = engine.list_runs(root=home(), kind="compress")
    sweeps = engine.list_sweeps(root=home(), runs=runs)
except CompressionLabError as exc:  # an unusable data folder (not a folder, unreadable): say so, no traceback
    st.error(str(exc))
    st.stop()
table = runs_table(runs, sweeps)  # damaged runs have no metrics (complab/runfolder.py checked them): not drawn
live = any(sweep["active"] for sweep in sweeps)
damaged = [run for run in runs if run.get("damaged")]
if damaged and not presenting:
    st.warning(f"{len(damaged)} run(s) cannot be compared: "
               + "; ".join(plain_markdown(f"{run['id']}: {run['damaged']}") for run in damaged[:10])
               + ("; ..." if len(damaged) > 10 else ""))
if table.empty and not live:
    st.info("No finished compression runs yet: launch one from the Plan page.")
    st.stop()


spec = active_spec()
active_name = compare.active_model_name(runs, table, spec)  # None: the active model has no finished run
models = sorted(set(table["model"].unique()) if not table.empty else {s["model"] for s in sweeps if s["active"]})
models, model_index = compare.model_options(models, active_name)
if active_name is None and not presenting:
    st.info(f"The active model, {plain_markdown(report.model_name(spec['model']))} on "
            f"{plain_markdown(report.data_name(spec['data']))}, has no finished compression run yet: launch one from "
            "the Plan page. Below: the runs of another model.")


def presentation(rows, best: dict | None, run_id: str) -> None:
    """The projector view of one run: headline numbers, which run and why, accuracy vs bytes and vs FLOPs,
    where the bytes went."""
    metrics = next(run["metrics"] for run in runs if run["id"] == run_id)
    st.title(f"{report.model_name(metrics.get('model'))} · {metrics.get('plan_name') or run_id}")
    present.headline_metrics(metrics)
    st.markdown(compare.choice_text(rows, best, run_id, hint=False))
    left, right = st.columns(2)
    left.plotly_chart(present.projector(compare.pareto(rows, "compressed_bytes", "compressed bytes (file)", run_id)),
                      key="present_pareto_bytes")
    right.plotly_chart(present.projector(compare.pareto(rows, "sparse_flops", "FLOPs (zero weights skipped)",
                                                        run_id)), key="present_pareto_flops")
    try:
        file_rows = report.file_rows(engine.run_dir(run_id, root=home()))
    except CompressionLabError as exc:  # a damaged compact file: said, no traceback
        st.error(plain_markdown(str(exc)))
        return
    waterfall = report.bytes_waterfall(file_rows, metrics["before"]["fp32_bytes"], f"run {run_id}",
                                       report.params_removed(metrics))
    st.plotly_chart(present.projector(figures.bytes_waterfall(waterfall)), key="present_waterfall")
    behaviour.presented(run_id, behaviour.active_original(metrics))


if presenting and not table.empty:
    linked = link_run_id(st.query_params.get(present.RUN_PARAM))  # a prepared link may name any model's run
    if linked in set(table["run"]):
        model = table.loc[table["run"] == linked, "model"].item()
    else:
        model = models[model_index]
        if active_name is None:
            st.warning(f"The active model, {plain_markdown(report.model_name(spec['model']))}, has no finished "
                       f"compression run: showing {plain_markdown(report.model_name(model))}'s.")
    rows = table[table["model"] == model]
    best = best_run(rows)
    presentation(rows, best, present.chosen_run(compare.run_options(rows, best), key="compare_run",
                                                default_name="the best run on the front"))
    st.stop()
model = (st.selectbox("Model", models, index=model_index, key="compare_model",
                      format_func=lambda name: report.model_name(name) + (" · the active model" if name == active_name
                                                                            else ""))
         if len(models) > 1 else models[0])
if not table.empty and model in set(table["model"]):
    model_rows = table[table["model"] == model]
    best = best_run(model_rows)
    run_id = present.chosen_run(compare.run_options(model_rows, best), key="compare_run",  # the URL's run=ID first
                                format_func=compare.run_label(model_rows, best),
                                default_name="the best run on the front")
    st.markdown(compare.choice_text(model_rows, best, run_id))
else:
    run_id = None


@st.fragment(run_every=LIVE_EVERY_S if live else None)
def fronts(runs: list[dict], sweeps: list[dict], shown_run: str | None) -> None:
    """The sweeps' progress, the three fronts and the table; redrawn every few seconds while a sweep runs."""
    if live:  # the timer's redraws (which get the first call's arguments) read the store again
        runs = engine.list_runs(root=home(), kind="compress")
        sweeps = engine.list_sweeps(root=home(), runs=runs)
    rows = runs_table(runs, sweeps)
    rows = rows[rows["model"] == model] if not rows.empty else rows
    listed = set(rows["run"]) if not rows.empty else set()
    shown = [sweep for sweep in sweeps  # this model's: a finished member in the table, or (none yet) its job's model
             if listed & {m["run"] for m in sweep["members"]} or (sweep["active"] and sweep.get("model") == model)]
    for sweep in [s for s in shown if s["active"]]:
        counts = sweep["counts"]
        cols = st.columns([5, 1], vertical_alignment="center")
        cols[0].caption(f"{sweep['label']}: {counts['succeeded']} of {len(sweep['members'])} finished, "
                        f"{counts['running']} running, {counts['queued']} queued"
                        + (f", {counts['failed'] + counts['cancelled']} failed or cancelled"
                           if counts["failed"] + counts["cancelled"] else ""))
        if cols[1].button("Cancel sweep", key=f"cancel_sweep::{sweep['id']}"):
            engine.cancel_sweep(sweep["id"], root=home())
            st.rerun()
    if live and not any(sweep["active"] for sweep in sweeps):
        st.rerun()  # the last member finished: redraw the whole page once (and stop the timer)
    if rows.empty:
        st.info("No member of the sweep has finished yet: its curve appears here as they do.")
        return
    tabs = st.tabs(["Accuracy vs bytes", "Accuracy vs FLOPs", "Accuracy vs PyTorch latency",
                    "Accuracy vs ONNX Runtime latency"])
    tabs[0].plotly_chart(compare.pareto(rows, "compressed_bytes", "compressed bytes (file on disk)", shown_run,
                                        shown), key="pareto_bytes")
    tabs[1].plotly_chart(compare.pareto(rows, "sparse_flops", "FLOPs (zero weights skipped)", shown_run, shown),
                         key="pareto_flops")
    tabs[2].plotly_chart(compare.pareto(rows, "latency_ms", "PyTorch CPU latency, batch 1 (ms, eager, dense kernels)",
                                        shown_run, shown), key="pareto_latency")
    tabs[3].plotly_chart(compare.pareto(rows, "ort_latency_ms", "ONNX Runtime CPU latency, batch 1 (ms)", shown_run,
                                        shown), key="pareto_ort_latency")
    settings = sorted({setting for setting in rows.get("ort_setting", []) if isinstance(setting, str)})
    if settings:
        tabs[3].caption("Measured in " + "; ".join(plain_markdown(setting) for setting in settings) + " (batch 1, "
                        "median of passes alternating between the original and the compressed model).")
    st.caption("Each method family (prune+cluster, vq quantizers, channels, int by its bits) is its own series, "
               "its thin line that "
               "family's own front. Dimmed points are dominated (another run is both smaller and at least as "
               "accurate); the dashed line joins the overall Pareto front; a sweep is one line through its "
               "finished runs; the ringed point is the run chosen above. Accuracy is measured on the model decoded "
               "from each file"
               + (" (for a detector: mAP50 on its validation images)." if rows["task"].map(finds_boxes).any() else "."))
    st.dataframe(compare.display_table(rows), hide_index=True, width="stretch", key="compare_table")


fronts(runs, sweeps, run_id)
lineage.map_section(runs, sweeps, model, run_id, set() if table.empty else set(table["run"][table["model"] == model]))
if run_id is None:
    st.stop()
table = model_rows
error = prediction_error(table)
if error is not None:  # how far to trust the plan page's predicted accuracy, learned from these runs
    st.subheader("Predicted vs measured accuracy")
    st.plotly_chart(figures.prediction_figure(table), key="compare_prediction")
    st.caption(f"{error['runs']} run(s) launched with a prediction: mean absolute error {error['mae_pts']:.1f} "
               f"points (measured minus predicted drop on average {points(error['bias_pts'] / 100)}), "
               f"{error['within_range']:.0%} inside the predicted range. The prediction is made at launch from the "
               "sensitivity report (validation subset); the measurement is the decoded file on the plan's split. "
               "The Plan page refits its fine-tuning calibration on this model's runs once it has three.")

st.subheader("Headline")
run_metrics = next(run["metrics"] for run in runs if run["id"] == run_id)
present.headline_metrics(run_metrics)
latency_lines, latency_caption = compare.latency_lines(run_metrics)
st.markdown("  \n".join(latency_lines))
if latency_caption:
    st.caption(latency_caption)
try:  # only the compact file (our own parser) and the checked metrics: nothing in the folder names a model to load
    decoded = decoded_run(run_id)
    rows = report.file_rows(engine.run_dir(run_id, root=home()))
except CompressionLabError as exc:
    st.error(plain_markdown(str(exc)))
    st.stop()
original = None  # the original's weights come only from the model the person made active in this session
try:
    active, active_data = load_active()
    if report.original_matches(active, run_metrics):
        original = (active, active_data)
except CompressionLabError:
    pass
st.subheader("Behaviour")  # did compression change what the model does (complab/ui/behaviour.py)
behaviour.section(run_id, runs, original)

layers = list(decoded.prunable_layers())
layer = st.selectbox("Layer", layers, key="compare_layer")

st.subheader("Where the bytes went")
left, right = st.columns(2)
left.plotly_chart(figures.bytes_waterfall(report.bytes_waterfall(rows, run_metrics["before"]["fp32_bytes"],
                                                                 f"run {run_id}", report.params_removed(run_metrics))),
                  key="compare_waterfall")
own = next((w for w in report.layer_waterfalls(rows) if w.title == layer), None)
if own is not None:
    right.plotly_chart(figures.bytes_waterfall(own), key="compare_layer_waterfall")
st.caption("From the fp32 model to the compact file, part by part, as the file's own sections count them "
           "(`complab inspect`): green saves bytes, red adds them; the bars add up to the file size exactly. "
           "Right: the layer chosen above.")
after = decoded.prunable_layers()[layer].detach().flatten().numpy()
original_layer = original[0].prunable_layers().get(layer) if original is not None else None
if original_layer is not None and original_layer.numel() == after.size:
    before = original_layer.detach().flatten().numpy()
else:
    before = after[:0]
    st.caption(f"The original's weights are drawn when {plain_markdown(run_metrics.get('model') or 'its model')} "
               "is the active model (Model page): a run folder never names a model to load.")
st.plotly_chart(figures.weight_histogram(before, after, layer), key="compare_hist")

st.subheader("Downloads")
root = home()
chosen_first = [run_id] + [other for other in table["run"] if other != run_id]


def report_file() -> str:
    """The HTML report of the chosen run and the others (a damaged one left out, said so); a detector's boxes side
    by side only with the active model as the original."""
    chosen_runs, left_out = load_report_runs([(engine.run_dir(r, root=root), r) for r in chosen_first])
    return report_html(chosen_runs, generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                       original=original, left_out=left_out,
                       behaviour=report_diff(chosen_runs, original, cache_dir=root / "behaviour"))


st.download_button(  # built when clicked (a detector's report runs both models on a few validation images)
    f"Download report (HTML, {len(chosen_first)} run(s), {table.loc[table['run'] == run_id, 'plan'].item() or run_id} "
    "first)", key="dl_report", mime="text/html", file_name=f"report-{run_id}.html", on_click="ignore",
    data=report_file, help=f"report-{run_id}.html: its headline is the run shown above (run {run_id}); the other runs "
                           "of this model follow.")
cols = st.columns(4)
cols[0].download_button("Compact file (.clab)", engine.run_file(run_id, "model.clab", root=home()).read_bytes(),
                        f"{run_id}.clab", key="dl_clab")
recipe, recipe_problem = runfolder.read_json(engine.run_file(run_id, "plan.json", root=home()))  # bounded
if recipe_problem is None:
    cols[1].download_button("Recipe (JSON)", json.dumps(recipe, indent=2), f"{run_id}-recipe.json",
                            "application/json", key="dl_recipe")
else:
    cols[1].caption(plain_markdown(recipe_problem))
exports = run_exports(run_id)
if exports.get("torchscript") is not None:
    cols[2].download_button("TorchScript", exports["torchscript"], f"{run_id}.pt", key="dl_ts")
if exports.get("onnx") is not None:
    cols[3].download_button("ONNX", exports["onnx"], f"{run_id}.onnx", key="dl_onnx")
else:
    cols[3].caption(exports.get("onnx_error", ""))
