"""Runs page: the engine's queue with live progress, stage, elapsed time, the change from the original (and the ONNX
Runtime latency before -> after), full log lines, cancel and re-run; the members of a sweep grouped under their
sweep (complab/ui/runs.py words it)."""

import time

import streamlit as st
from complab import engine
from complab.analysis.ga_progress import ga_rows, has_ga
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui.figures import ga_figure
from complab.ui.navigation import page_setup
from complab.ui.report import plain_markdown
from complab.ui.runs import change_from_original, grouped, latency_help, latency_summary, sweep_heading
from complab.ui.state import home

page_setup()
st.title("Runs")
st.caption("Jobs run in background worker processes; closing or reloading this page loses nothing.")
FINAL = ("succeeded", "failed", "cancelled")
LOG_LINES = 40  # the popover is drawn (closed) every second for every run: its last lines, each whole
ICONS = {"queued": ":material/schedule:", "running": ":material/autorenew:", "succeeded": ":material/check_circle:",
         "failed": ":material/error:", "cancelled": ":material/block:"}

notice = st.session_state.pop("runs_notice", None)  # what a Cancel or Re-run did: said at the top, and as a toast
if notice:
    (st.success if notice["kind"] == "success" else st.error)(notice["text"])
    st.toast(notice.get("toast") or notice["text"],
             icon=":material/check_circle:" if notice["kind"] == "success" else ":material/error:")


def elapsed(run: dict) -> str:
    start = run.get("started") or run.get("created")
    end = run.get("finished") or time.time()
    return f"{max(0.0, end - start):.0f} s" if start else ""


def act(what: str, run_id: str) -> None:
    """A Cancel or Re-run button's callback; the outcome goes to the top of the page."""
    try:
        if what == "rerun":
            new = engine.rerun(run_id, root=home())
            st.session_state["runs_notice"] = {"kind": "success", "text": f"Run {new} queued (a re-run of {run_id}).",
                                               "toast": f"Queued: run {new}"}
        else:
            engine.cancel(run_id, root=home())
            st.session_state["runs_notice"] = {"kind": "success", "text": f"Run {run_id}: cancel requested."}
    except CompressionLabError as exc:  # a read-only or full data folder
        st.session_state["runs_notice"] = {"kind": "error", "text": str(exc)}


def draw_run(run: dict, where: str) -> None:
    """One run's row (`where` keeps its widgets' keys apart when a reused run is in two sweeps)."""
    job = run.get("job", {})
    with st.container(border=True):
        cols = st.columns([3, 3, 3, 1.2, 1])
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
            change = change_from_original(metrics, finds_boxes(metrics.get("task")))
            lines = []
            if change is not None:
                noise = f" ({change['noise']})" if change["noise"] else ""
                lines.append(f"{change['text']} · :{change['colour']}[{change['change']}{noise}]")
            lines.append(f"{metrics['after']['compressed_bytes']:,} B · {metrics['compression_ratio']:.1f}x")
            runtime = latency_summary(metrics)
            if runtime:  # the deployment runtime's latency before -> after, or why it has none (text escaped)
                lines.append(plain_markdown(runtime))
            timing = latency_help(metrics)
            helps = [text for text in ((change or {}).get("interval"), timing and plain_markdown(timing)) if text]
            cols[1].markdown("  \n".join(lines), help="  \n".join(helps) or None)
        elif run["state"] == "failed":
            cols[1].markdown(f":red[{plain_markdown((run.get('error') or 'failed')[:120])}]")
        if run["state"] not in FINAL:
            cols[3].button("Cancel", key=f"cancel_{where}_{run['id']}", on_click=act, args=("cancel", run["id"]))
        else:
            cols[3].button("Re-run", key=f"rerun_{where}_{run['id']}", on_click=act, args=("rerun", run["id"]))
        with cols[4].popover("Log"):  # whole lines, wrapped: nothing cut at the popover's edge
            log = engine.log_tail(run["id"], LOG_LINES, root=home()) or "(empty)"
            st.code(log, language=None, wrap_lines=True, height=400 if log.count("\n") > 16 else "content")
        if run["kind"] == "compress" and has_ga(job):  # channel pruning's GA: fitness per generation
            ga = ga_rows(engine.events(run["id"], root=home()))
            if not ga.empty:
                with st.expander("GA fitness per generation", expanded=run["state"] == "running"):
                    st.plotly_chart(ga_figure(ga), key=f"ga_{where}_{run['id']}")


def draw_sweep(sweep: dict, members: list[dict]) -> None:
    """A sweep: its label and counts, and (open while it runs, or when asked) its members' rows."""
    with st.container(border=True, key=f"sweep_{sweep['id']}"):
        st.markdown(f":material/timeline: **{plain_markdown(sweep_heading(sweep))}**")
        if st.toggle(f"Show its {len(members)} runs", value=bool(sweep.get("active")),
                     key=f"sweep_open_{sweep['id']}"):
            for run in members:
                draw_run(run, sweep["id"])


@st.fragment(run_every=1.0)
def run_list() -> None:
    if st.session_state.get("runs_notice"):  # a button in here left a notice: rerun the page to show it at the top
        st.rerun()
    try:
        runs = engine.list_runs(root=home())
        sweeps = engine.list_sweeps(root=home(), runs=runs)
        if engine.settings(home())["read_only"]:
            st.warning(f"The data folder {home()} is read-only: runs are listed, but nothing can be started, "
                       "cancelled or re-run until it is writable.")
    except CompressionLabError as exc:  # an unusable data folder (not a folder, unreadable): say so, no traceback
        st.error(str(exc))
        return
    if not runs:
        st.info("No runs yet: launch one from the Plan or Sensitivity page.")
        return
    for kind, item, members in grouped(runs, sweeps):
        if kind == "sweep":
            draw_sweep(item, members)
        else:
            draw_run(item, "run")


run_list()
