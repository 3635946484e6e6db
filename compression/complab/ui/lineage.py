"""The Compare page's "Map of the experiments": the runs of one model drawn as the graph of where each came from
(complab.analysis.lineage: sweeps, re-runs, plans started from a run's recipe, the lesson's steps, same recipes),
coloured by accuracy and sized by file bytes; a click on a node selects that run on the page. Beside it, the recipe
diff of the selected run against a second one (by default its parent on the map), and a button that starts a Plan
page draft from the selected run's recipe (the run launched from it records that origin)."""

from __future__ import annotations

import html
import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from complab import engine, runfolder, service
from complab.analysis.lineage import Graph, experiment_graph, layer_names, recipe_diff, setting_text
from complab.errors import CompressionLabError
from complab.models.tasks import finds_boxes
from complab.ui.numbers import human, percent
from complab.ui.present import RUN_PARAM
from complab.ui.report import plain_markdown
from complab.ui.state import active_spec, decoded_run, home, spec_key

MAP_KEY = "lineage_map"  # the chart's selection lives under this key
RUN_SELECT_KEY = "compare_run"  # the Compare page's run select (present.chosen_run)
STAGED_KEY = "lineage_staged"  # what the button's callback did: "staged", or why it could not
PENDING_KEY = "plan_from_run"  # a recipe waiting for the Plan page: {"run", "plan", "spec"}
SMALLEST_PX, LARGEST_PX = 9, 34  # marker diameters: the smallest and the largest file on the map
EDGE_STYLE = {  # kind -> (legend name, colour, dash, width)
    "original": ("starts from the original", "#b0b0b0", "dot", 1),
    "sweep": ("member of a sweep", "#e08a1e", "solid", 1.5),
    "rerun": ("re-run", "#1f77b4", "solid", 2.5),
    "recipe": ("plan started from its recipe", "#2ca02c", "solid", 2.5),
    "lesson": ("lesson step", "#9467bd", "solid", 2.5),
    "same-recipe": ("same recipe (no origin recorded)", "#7f7f7f", "dash", 1.5),
}


def _size_px(size: int | None, largest: int) -> float:
    """Marker diameter with the area proportional to the file's bytes (the largest file: LARGEST_PX)."""
    if not size or largest <= 0:
        return SMALLEST_PX
    return max(SMALLEST_PX, LARGEST_PX * math.sqrt(size / largest))


def _hover(node: dict, score: str) -> str:
    """A node's hover text (plotly's small HTML): its label escaped, as every text a run folder holds."""
    lines = [f"<b>{html.escape(node['label'])}</b>"]
    if node["kind"] == "run":
        lines.append(html.escape(f"run {node['run']} · {node['state']}" + (" · damaged" if node.get("damaged")
                                                                              else "")))
    if node["accuracy"] is not None:
        lines.append(f"{score} {percent(node['accuracy'])}")
    if node["bytes"] is not None:
        lines.append(("fp32 " if node["kind"] == "original" else "file ") + human(node["bytes"], "B"))
    return "<br>".join(lines)


def map_figure(graph: Graph, selected: str | None = None) -> go.Figure:
    """The map: edges by kind (one legend entry each), runs coloured by accuracy (colour bar) and sized by file
    bytes, sweeps as diamonds, the original model as a square, the selected run ringed. A run's point carries its
    id as customdata (what a click hands back)."""
    fig = go.Figure()
    by_id = {node["id"]: node for node in graph.nodes}
    for kind, (name, colour, dash, width) in EDGE_STYLE.items():
        xs, ys = [], []
        for edge in graph.edges:
            if edge["kind"] == kind:
                source, target = by_id[edge["source"]], by_id[edge["target"]]
                xs += [source["x"], target["x"], None]
                ys += [source["y"], target["y"], None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip",
                                     line={"color": colour, "dash": dash, "width": width}))
    runs = [n for n in graph.nodes if n["kind"] == "run"]
    detector = bool(runs) and all(finds_boxes(n.get("task")) for n in runs)
    score = "mAP50" if detector else "accuracy"
    largest = max((n["bytes"] or 0 for n in runs), default=0)
    measured = [n for n in runs if n["accuracy"] is not None]
    if measured:
        fig.add_trace(go.Scatter(
            x=[n["x"] for n in measured], y=[n["y"] for n in measured], mode="markers", name="run",
            customdata=[n["run"] for n in measured], hovertext=[_hover(n, score) for n in measured],
            hoverinfo="text",
            marker={"color": [100 * n["accuracy"] for n in measured], "colorscale": "Viridis", "showscale": True,
                    "size": [_size_px(n["bytes"], largest) for n in measured], "line": {"width": 1, "color": "white"},
                    "colorbar": {"title": {"text": f"{score} (%)"}, "thickness": 12}}))
    unmeasured = [n for n in runs if n["accuracy"] is None]
    if unmeasured:
        fig.add_trace(go.Scatter(
            x=[n["x"] for n in unmeasured], y=[n["y"] for n in unmeasured], mode="markers",
            name="not finished, failed or damaged", customdata=[n["run"] for n in unmeasured],
            hovertext=[_hover(n, score) for n in unmeasured], hoverinfo="text",
            marker={"color": "#c8c8c8", "size": SMALLEST_PX, "symbol": "circle-open", "line": {"width": 2}}))
    for kind, symbol, name in (("sweep", "diamond", "sweep"), ("original", "square", "original model")):
        nodes = [n for n in graph.nodes if n["kind"] == kind]
        if nodes:
            fig.add_trace(go.Scatter(
                x=[n["x"] for n in nodes], y=[n["y"] for n in nodes], mode="markers+text", name=name,
                text=[n["label"] if kind == "sweep" else "" for n in nodes], textposition="top center",
                customdata=["" for _ in nodes], hovertext=[_hover(n, score) for n in nodes], hoverinfo="text",
                marker={"symbol": symbol, "size": 14, "color": "#444" if kind == "original" else "#e08a1e"}))
    chosen = by_id.get(f"run:{selected}") if selected else None
    if chosen is not None:
        fig.add_trace(go.Scatter(x=[chosen["x"]], y=[chosen["y"]], mode="markers", name="the run shown",
                                 hoverinfo="skip", customdata=[chosen["run"]],
                                 marker={"symbol": "circle-open", "size": _size_px(chosen["bytes"], largest) + 12,
                                         "color": "crimson", "line": {"width": 3}}))
    rows = len({round(n["y"], 3) for n in graph.nodes})
    # the legend above the plot: below it, its wrapped rows ran over the axis title
    fig.update_layout(height=max(380, min(960, 120 + 34 * rows)), margin={"l": 10, "r": 10, "t": 90, "b": 40},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
                      clickmode="event+select", dragmode="pan")
    fig.update_xaxes(title_text="generation (0: the original model; each edge one step from where a run came from)",
                     dtick=1, zeroline=False)
    fig.update_yaxes(visible=False)
    return fig


def clicked_run(selection, known: set[str]) -> str | None:
    """The run id of the first clicked point that is a run on the map, from a chart's selection state (untrusted:
    whatever the browser sent), else None."""
    points = selection.get("points") if isinstance(selection, dict) else getattr(selection, "points", None)
    for point in points if isinstance(points, list) else []:
        custom = point.get("customdata") if isinstance(point, dict) else None
        run_id = custom[0] if isinstance(custom, list) and custom else custom
        if isinstance(run_id, str) and run_id in known:
            return run_id
    return None


def pick_run(run_id: str, selectable: set[str] | None = None) -> None:
    """Show `run_id` on the Compare page: the URL's run and the run select's value. Called from a callback, before
    the select is drawn again (a widget's state cannot be set after it is drawn). The select's state is set, not
    dropped: a keyed select keeps its identity when its index changes, so the browser would send its old value back
    on the next rerun (any button) and the page would jump back to the run shown before the click. A run the select
    does not offer (`selectable`: its options; failed or damaged runs are on the map too) only moves the URL."""
    st.query_params[RUN_PARAM] = run_id
    if selectable is None or run_id in selectable:
        st.session_state[RUN_SELECT_KEY] = run_id
    else:
        st.session_state.pop(RUN_SELECT_KEY, None)


def _on_map_select(known: set[str], selectable: set[str] | None = None) -> None:
    event = st.session_state.get(MAP_KEY)
    selection = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
    run_id = clicked_run(selection, known)
    if run_id is not None:
        pick_run(run_id, selectable)


def _plan_of(run: dict) -> dict | None:
    """A run's recipe: its plan.json (bounded, checked reader), else the plan its job.json holds."""
    try:
        plan, problem = runfolder.read_json(engine.run_file(run["id"], "plan.json", root=home()))
    except CompressionLabError:
        plan, problem = None, "gone"
    if problem is None and isinstance(plan, dict):
        return plan
    job_plan = (run.get("job") or {}).get("plan")
    return job_plan if isinstance(job_plan, dict) else None


def _layers_of(run_id: str) -> list[str] | None:
    """The model's layer names: the run's decoded file's (our parser, cached for the page), else its metrics.json's
    tensors (the checked reader); None when neither can be read."""
    try:
        return list(decoded_run(run_id).prunable_layers())
    except CompressionLabError:
        pass
    try:
        metrics, problem = runfolder.load(engine.run_file(run_id, "metrics.json", root=home()), kind="compress")
    except CompressionLabError:
        return None
    return layer_names(metrics) if problem is None else None


def diff_table(rows: list[dict], first: str, second: str) -> pd.DataFrame:
    """The recipe diff as the page's table: step, layer, setting, and the value in each run (as the recipe wrote
    it); an added or removed step is one row."""
    out = []
    for row in rows:
        if row["change"] in ("added", "removed", "truncated"):
            out.append({"step": row["step"], "layer": "", "setting": row["text"], first: "", second: ""})
        else:
            out.append({"step": row["step"], "layer": row["layer"] or "(all layers)", "setting": row["setting"],
                        first: setting_text(row["a"]), second: setting_text(row["b"])})
    return pd.DataFrame(out, columns=["step", "layer", "setting", first, second])


def stage_recipe(run: dict) -> str | None:
    """Keep the run's recipe for the Plan page (ui/plan_page.apply_recipe_from_run loads it there and the run
    launched from it records {"kind": "recipe", "run"}); returns why it cannot, or None."""
    spec = active_spec()
    if not service.same_model(run.get("job") or {}, spec):
        return "this run is of another model: make its model the active one (Model page) first"
    plan = _plan_of(run)
    if plan is None:
        return "this run's recipe cannot be read"
    st.session_state[PENDING_KEY] = {"run": run["id"], "plan": plan, "spec": spec_key(spec)}
    return None


def _start_plan(run: dict) -> None:
    """The "Start a plan from this recipe" button's callback: stage the recipe (or say why not) for the page."""
    st.session_state[STAGED_KEY] = stage_recipe(run) or "staged"


def map_section(runs: list[dict], sweeps: list[dict], model: str, run_id: str | None,
                shown_runs: set[str] | None = None) -> None:
    """The section: the map of `model`'s runs (those of its jobs, and `shown_runs`: the run table's) with the chosen
    run ringed, and beside it the recipe diff and the "Start a plan from this recipe" button."""
    st.subheader("Map of the experiments")
    mine = [run for run in runs if (run.get("job") or {}).get("model") == model or run["id"] in (shown_runs or ())]
    graph = experiment_graph(mine, sweeps)
    known = set(graph.runs())
    if not known:
        st.info("No run of this model to map yet.")
        return
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(map_figure(graph, run_id), on_select=lambda: _on_map_select(known, shown_runs),
                        selection_mode="points", key=MAP_KEY)
        runs_bytes = [n["bytes"] for n in graph.nodes if n["kind"] == "run" and n["bytes"]]
        st.caption("Each run hangs under where it came from: a sweep, the run it re-ran, the run whose recipe its plan "
                   "started from, the lesson's prune step (under its share step), or an earlier run with the same "
                   "recipe (dashed); else the original model. Colour: the run's measured score on its decoded file; "
                   "area: its file's bytes"
                   + (f" (the largest, {human(max(runs_bytes), 'B')}, is drawn {LARGEST_PX} px wide)"
                      if runs_bytes else "")
                   + ". Click a run to show it on this page." + (f" {graph.note}" if graph.note else ""))
    with right:
        if run_id is None or run_id not in known:
            st.caption("Choose a run to compare its recipe with another's.")
            return
        others = [r for r in sorted(known) if r != run_id]
        parent = graph.parent_run(run_id)
        if not others:
            st.caption("This model has one run: nothing to compare its recipe with.")
        else:
            other = st.selectbox("Compare its recipe with", others, key=f"lineage_other::{run_id}",
                                 index=others.index(parent) if parent in others else 0,
                                 format_func=lambda r: f"{(graph.node(f'run:{r}') or {}).get('label', r)} · {r}"
                                 + (" (its parent on the map)" if r == parent else ""))
            by_id = {run["id"]: run for run in mine}
            plan_a, plan_b = _plan_of(by_id[other]), _plan_of(by_id[run_id])
            names = _layers_of(run_id) or _layers_of(other)
            try:
                rows = recipe_diff(plan_a, plan_b, names)
            except CompressionLabError as exc:
                st.error(plain_markdown(str(exc)))
                rows = None
            if rows is not None and not rows:
                st.caption(f"Same recipe: no setting differs between {other} and {run_id}.")
            elif rows:
                st.dataframe(diff_table(rows, f"in {other}", f"in {run_id}"), hide_index=True, width="stretch",
                             key="lineage_diff")
                st.caption(f"What changed from run {other}'s recipe to run {run_id}'s"
                           + (", per layer (patterns and _default resolved against the model's layers)." if names
                              else " (per-layer keys as the recipes wrote them)."))
        # a callback (as the Plan page's launch): it runs before the page is drawn again, so the switch below sees it
        st.button("Start a plan from this recipe", key="lineage_edit_in_plan", on_click=_start_plan,
                  args=(next(run for run in mine if run["id"] == run_id),),
                  help="Loads this run's recipe into the Plan page, where you can change it; the run you launch "
                       "from there is drawn under this one on the map.")
        outcome = st.session_state.pop(STAGED_KEY, None)
        if outcome == "staged":
            st.switch_page("pages/plan.py")
        elif outcome:
            st.error(outcome)
