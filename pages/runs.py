"""Runs page: the engine's queue with live progress, stage, elapsed time, log tail, cancel and re-run."""

import time

import streamlit as st
from complab import engine
from complab.analysis.ga_progress import ga_rows, has_ga
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui.figures import ga_figure
from complab.ui.navigation import page_setup
from complab.ui.report import plain_markdown
from complab.ui.state import home

page_setup()
st.title("Runs")
st.caption("Jobs run in background worker processes; closing or reloading this page loses nothing.")
FINAL = ("succeeded", "failed", "cancelled")
ICONS = {"queued": ":material/schedule:", "running": ":material/autorenew:", "succeeded": ":material/check_circle:",
         "failed": ":material/error:", "cancelled": ":material/block:"}


def elapsed(run: dict) -> str:
    start = run.get("started") or run.get("created")
    end = run.get("finished") or time.time()
    return f"{max(0.0, end - start):.0f} s" if start else ""


@st.fragment(run_every=1.0)
def run_list() -> None:
    try:
        runs = engine.list_runs(root=home())
        if engine.settings(home())["read_only"]:
            st.warning(f"The data folder {home()} is read-only: runs are listed, but nothing can be started, "
                       "cancelled or re-run until it is writable.")
    except CompressionLabError as exc:  # an unusable data folder (not a folder, unreadable): say so, no traceback
        st.error(str(exc))
        return
    if not runs:
        st.info("No runs yet: launch one from the Plan or Sensitivity page.")
        return
    for run in runs[:30]:
        job = run.get("job", {})
        with st.container(border=True):
            cols = st.columns([3, 2, 4, 1, 1])
            # every value here was checked by complab/runfolder.py; text from a folder is shown as plain text
            plan_name = (f" · {plain_markdown((job.get('plan') or {}).get('name') or '')}"
                         if run["kind"] == "compress" else "")
            cols[0].markdown(f"{ICONS.get(run['state'], '')} **{plain_markdown(run['id'])}**  \n"
                             f"{plain_markdown(run['kind'])} · {plain_markdown(job.get('model') or '')}{plan_name}")
            progress = run.get("progress") or {}
            fraction = 1.0 if run["state"] == "succeeded" else float(progress.get("progress") or 0.0)
            stage = plain_markdown(progress.get("stage") or "starting")
            cols[2].progress(min(1.0, max(0.0, fraction)), text=f"{run['state']} · {stage} · {elapsed(run)}")
            metrics = run.get("metrics") or {}
            if run.get("damaged"):  # one folder never hides another: this one is shown as damaged (or gone)
                cols[1].markdown(f":red[{plain_markdown(run['damaged'][:160])}]")
            elif run["state"] == "succeeded" and "after" in metrics:
                score = (f"mAP50 {metrics['after']['accuracy']:.3f}" if finds_boxes(metrics.get("task"))
                         else f"acc {metrics['after']['accuracy']:.2%}")
                cols[1].markdown(f"{score}  \n"
                                 f"{metrics['after']['compressed_bytes']:,} B · {metrics['compression_ratio']:.1f}x")
            elif run["state"] == "failed":
                cols[1].markdown(f":red[{plain_markdown((run.get('error') or 'failed')[:120])}]")
            if run["state"] not in FINAL:
                if cols[3].button("Cancel", key=f"cancel_{run['id']}"):
                    try:
                        engine.cancel(run["id"], root=home())
                    except CompressionLabError as exc:  # a read-only or full data folder
                        st.error(str(exc))
            elif cols[3].button("Re-run", key=f"rerun_{run['id']}"):
                try:
                    engine.rerun(run["id"], root=home())
                except CompressionLabError as exc:
                    st.error(str(exc))
            with cols[4].popover("Log"):
                st.code(engine.log_tail(run["id"], 40, root=home()) or "(empty)")
            if run["kind"] == "compress" and has_ga(job):  # channel pruning's GA: fitness per generation
                ga = ga_rows(engine.events(run["id"], root=home()))
                if not ga.empty:
                    with st.expander("GA fitness per generation", expanded=run["state"] == "running"):
                        st.plotly_chart(ga_figure(ga), key=f"ga_{run['id']}")


run_list()
