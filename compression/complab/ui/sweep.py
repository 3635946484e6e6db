"""The Plan page's Sweep: one axis (ratio, FLOPs, accuracy budget, average or uniform integer bits) and N
targets, each solved into a plan, submitted as one group (complab.engine.sweeps). The solver runs only when the
button is clicked: nothing is added to the page's reruns but three small widgets."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from complab import engine, service
from complab.analysis.targets import AXES, parse_targets
from complab.engine import search
from complab.errors import CompressionLabError
from complab.ui.plan_form import with_fold_bn
from complab.ui.state import home

DEFAULT_TARGETS = {"ratio": "5,10,20,40,80", "flops": "1.5,2,3,5", "accuracy": "0.5,1,2,4", "bits": "8,6,4,3",
                   "uniform": "8,6,4,3"}


def sweep_button(spec: dict, stats, report: dict | None, history: list, name: str, prune_options: dict,
                 cluster_options: dict, fold_bn: bool, timing: Callable[[int], str] | None = None,
                 int_options: dict | None = None) -> None:
    """A "Sweep" popover: axis, targets, its estimated time (`timing(runs)`: words), submit. The plans take this
    page's fine-tuning settings; the solver sets each one's per-layer values (the sliders are left as they are).
    What the submit did is said at the top of the page (ui/plan_page.py's top_notice)."""
    with st.popover("Sweep", icon=":material/timeline:", use_container_width=True):
        if report is None:
            st.caption("A sweep solves each target on the sensitivity analysis: run it first (Sensitivity page).")
            return
        axes = [*AXES, "search"]
        axis = st.selectbox("Axis", axes, key="plan_sweep_axis",
                            format_func=lambda a: AXES[a][0] if a in AXES else "search (NSGA-II, per-layer plans)")
        if axis == "search":
            budget = st.number_input("Runs in all", 2, search.MAX_BUDGET, 12, key="plan_search_budget")
            st.number_input("Runs per generation", 2, 50, 4, key="plan_search_batch",
                            help="Optuna's NSGA-II sampler proposes per-layer sparsities and cluster counts from the "
                                 "sensitivity grid, starting from the solver's plans at 5-80x; each generation runs, "
                                 "then the next is proposed from the measured bytes and accuracy. Runs in the "
                                 "background: the Compare page draws it as one sweep; cancelling it ends the search.")
            runs = int(budget)
        else:
            text = st.text_input("Targets", DEFAULT_TARGETS[axis], key=f"plan_sweep_targets::{axis}",
                                 help="comma-separated values; one run each (at most 50)")
            runs = len([part for part in str(text).split(",") if part.strip()])
        if timing is not None and runs:
            st.caption(f"Estimated time: {timing(runs)}.")
        st.button("Submit sweep", key="plan_sweep_submit", type="primary", on_click=_submit,
                  args=(spec, stats, report, history, name, prune_options, cluster_options, fold_bn, int_options))


def _submit(spec: dict, stats, report: dict, history: list, name: str, prune_options: dict, cluster_options: dict,
            fold_bn: bool, int_options: dict | None = None) -> None:
    """The button's callback (it runs before the page redraws): solve every target, submit the group
    (complab.service: the CLI's `complab sweep --targets` plans and submits it the same way)."""
    axis = st.session_state["plan_sweep_axis"]
    if axis == "search":
        budget = int(st.session_state.get("plan_search_budget", 12))
        try:
            search.start(engine.absolute_paths(spec), report, budget, int(st.session_state.get("plan_search_batch", 4)),
                         root=home(), name=f"{name}-search", prune_options=prune_options,
                         cluster_options=cluster_options)
            _said("success", f"Search started in the background ({budget} runs); its generations appear as one sweep "
                             "on the Compare page.", f"Search started: {budget} runs")
        except CompressionLabError as exc:
            _said("error", str(exc), "Not started: see the top of the page")
        return
    values = st.session_state.get(f"plan_sweep_targets::{axis}", DEFAULT_TARGETS[axis])
    try:
        axis, targets = parse_targets(f"{axis}:{values}")
        jobs, labels = service.plan_sweep(spec, stats, report, axis, targets, name, history, prune_options,
                                          cluster_options, adjust=with_fold_bn if fold_bn else None,
                                          int_options=int_options)
        sweep = service.submit_sweep(jobs, labels, root=home(), axis=axis, name=name)
    except CompressionLabError as exc:
        _said("error", str(exc), "Not queued: see the top of the page")
        return
    reused = sum(member["reused"] for member in sweep["members"])
    _said("success", f"{sweep['label']} queued: {len(sweep['members'])} runs"
          + (f" ({reused} reused from earlier runs with the same plan)" if reused else "") + ".",
          f"Sweep queued: {len(sweep['members'])} runs")


def _said(kind: str, text: str, toast: str) -> None:
    """The outcome, for the top of the page and a toast (ui/plan_page.py's top_notice shows them)."""
    st.session_state["plan_notice"] = {"kind": kind, "text": text, "toast": toast,
                                       **({"link": "compare"} if kind == "success" else {})}
