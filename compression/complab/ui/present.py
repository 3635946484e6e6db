"""Presentation mode for the classroom and the meeting room: `?present=1` in the URL (and `run=ID` for the run).

When it is on, a page that supports it (Model, Compare, Detections, Lesson) calls present_css(): the sidebar,
Streamlit's header and toolbar, input widgets and captions are hidden, metrics and headings are drawn large,
and an "Exit presentation" button stays pinned in the corner. Pages pass figures through projector() (taller,
larger text) and ask chosen_run() for the run to show, which in presentation mode is read from the URL (never a
widget), so a presenter can open a prepared link such as /compare?present=1&run=20261201-101500-ab12.

The state lives in the URL so the link can be shared; the session remembers it only because Streamlit drops the
query on a page switch (see state._show_link), so moving between pages stays in presentation mode.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from complab.analysis.report import headline_numbers
from complab.intervals import difference
from complab.ui.links import link_presenting, link_run_id
from complab.ui.numbers import change, count, delta_color, human, ms, percent, points, speed, times
from complab.ui.report import headline, verdict_sentence

PARAM, RUN_PARAM = "present", "run"
SESSION_KEY = "presenting"
PRESENT_HEIGHT = 560  # px: plots on a projector (the pages' own heights are 320-420)

# every input widget Streamlit draws, by its data-testid: none of them belongs on a projector
INPUT_WIDGETS = ("stSelectbox", "stMultiSelect", "stSlider", "stRadio", "stTextInput", "stNumberInput",
                 "stFileUploader", "stCheckbox", "stDownloadButton", "stExpander", "stButton")
HIDDEN = ('[data-testid="stSidebar"]', '[data-testid="stSidebarCollapsedControl"]', '[data-testid="stHeader"]',
          '[data-testid="stToolbar"]', '[data-testid="stDecoration"]', '[data-testid="stCaptionContainer"]',
          *(f'[data-testid="{widget}"]' for widget in INPUT_WIDGETS))
CSS = """<style>
HIDDEN { display: none !important; }
.st-key-present_exit, .st-key-present_exit [data-testid="stButton"] { display: block !important; }
.st-key-present_exit { position: fixed; top: 0.6rem; right: 1.2rem; z-index: 1000000; width: auto !important; }
[data-testid="stMainBlockContainer"], .block-container { padding-top: 1.5rem !important; max-width: 100% !important; }
h1 { font-size: 3.2rem !important; }
h2, h3 { font-size: 2.2rem !important; }
[data-testid="stMetric"] { padding: 0.4rem 0.2rem; }
[data-testid="stMetricLabel"] p { font-size: 1.6rem !important; }
[data-testid="stMetricValue"] { font-size: 3.8rem !important; line-height: 1.15 !important; }
[data-testid="stMetricDelta"] { font-size: 1.5rem !important; }
.present-headline { font-size: 1.9rem; line-height: 1.35; margin: 0.6rem 0 1rem 0; }
[data-testid="stMarkdown"] p { font-size: 1.35rem; line-height: 1.45; }
</style>"""


def presenting() -> bool:
    """Whether this page is shown in presentation mode (`?present=1`; kept across a page switch)."""
    if link_presenting(st.query_params.get(PARAM)):
        st.session_state[SESSION_KEY] = True
        return True
    if st.session_state.get(SESSION_KEY):  # a page switch dropped the query: put it back, so the URL says it
        st.query_params[PARAM] = "1"
        return True
    return False


def set_presenting(on: bool) -> None:
    """Turn presentation mode on (the URL gets present=1) or off (present and run leave the URL)."""
    st.session_state[SESSION_KEY] = on
    if on:
        st.query_params[PARAM] = "1"
    else:
        for key in (PARAM, RUN_PARAM):
            if key in st.query_params:
                del st.query_params[key]


def present_toggle() -> None:
    """The sidebar's switch (the sidebar is hidden in presentation mode: present_css draws the way out)."""
    st.session_state["present_toggle"] = presenting()
    st.toggle("Presentation mode", key="present_toggle", on_change=lambda: set_presenting(
        bool(st.session_state["present_toggle"])),
              help="A projector view of the Model, Compare and Detections pages: big numbers and plots, no "
                   "widgets. The URL (?present=1&run=...) opens it again, e.g. on the meeting-room machine.")


def present_css(keep: Sequence[str] = ()) -> None:
    """Hide everything but the numbers, plots and detections, draw them large, and pin the exit button. `keep`:
    the key prefixes of buttons the presenter still needs (the Lesson's Next buttons)."""
    shown = "".join(f'[class*="st-key-{prefix}"], [class*="st-key-{prefix}"] [data-testid="stButton"] '
                    "{ display: block !important; }\n" for prefix in keep)
    st.markdown(CSS.replace("HIDDEN", ",\n".join(HIDDEN), 1).replace("</style>", shown + "</style>"),
                unsafe_allow_html=True)
    st.button("Exit presentation", key="present_exit", icon=":material/close_fullscreen:",
              on_click=set_presenting, args=(False,))


def projector(fig):
    """A plotly figure made for a projector: taller, with larger text."""
    fig.update_layout(height=max(PRESENT_HEIGHT, fig.layout.height or 0), font={"size": 17},
                      title_font={"size": 22}, legend_font={"size": 16})
    if not fig.layout.title.text:  # the legend above the plot (where a title would be): the plot keeps the width
        fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0})
    for axes in (fig.update_xaxes, fig.update_yaxes):  # Streamlit's chart theme sets the axes' own fonts
        axes(tickfont={"size": 16}, title_font={"size": 19})
    return fig


def layer_chart(layers: pd.DataFrame) -> go.Figure:
    """The model's size at a glance: weights per prunable layer (layer_table rows), each bar labelled with its
    exact count, in model order from the top."""
    fig = go.Figure(go.Bar(
        x=[int(n) for n in layers["params"]], y=list(layers["layer"]), orientation="h",
        text=[count(n) for n in layers["params"]], textposition="outside", cliponaxis=False, textfont={"size": 18},
        marker={"color": "#1f77b4"},
        customdata=layers[["shape", "flops"]], hovertemplate="%{y}: %{x:,} weights, shape %{customdata[0]}, "
                                                            "%{customdata[1]:,} FLOPs<extra></extra>"))
    fig.update_layout(title="Weights per layer", xaxis_title="weights",
                      height=max(PRESENT_HEIGHT, 90 + 30 * len(layers)), margin={"t": 50, "l": 10, "r": 10})
    fig.update_yaxes(autorange="reversed", type="category")
    if len(layers):  # room for the largest bar's label
        fig.update_xaxes(range=[0, 1.15 * float(layers["params"].max())])
    return fig


def chosen_run(options: Sequence, key: str, label: str = "Run", id_of: Callable = str,
               format_func: Callable = str, default: int = 0, default_name: str = "the newest"):
    """The run to show: in presentation mode the URL's `run` (options[default] when it names none of them),
    else a selectbox that starts on the URL's run (else on options[default]) and writes the choice back, so the
    URL can be shared. `default_name` says in a warning which run a link that names none is shown instead."""
    ids = [id_of(option) for option in options]
    given = st.query_params.get(RUN_PARAM)
    wanted = link_run_id(given)  # a run folder's name, or None (complab.ui.links)
    if presenting():
        if given is not None and wanted not in ids:
            st.warning(f"The link's run {str(given)[:40]!r} is not among these runs: showing {default_name}.")
        return options[ids.index(wanted)] if wanted in ids else options[default]
    index = ids.index(wanted) if wanted in ids else default
    choice = st.selectbox(label, options, index=index, key=key, format_func=format_func)
    if st.query_params.get(RUN_PARAM) != id_of(choice):
        st.query_params[RUN_PARAM] = id_of(choice)
    return choice


def headline_metrics(metrics: dict) -> None:
    """A run's headline as big metric boxes (ratio, file, FLOPs, PyTorch and ONNX Runtime latency where measured,
    score) and its sentences (the report's headline and verdict), written by the formatter (complab.ui.numbers):
    green means better (fewer bytes or FLOPs too), a score's change grey when its 95% interval includes zero, "same
    speed" for a latency ratio within noise of 1."""
    n = headline_numbers(metrics)
    boxes = [("Smaller file", times(n["ratio"]), None, "off"),
             ("Compact file", human(n["compressed_bytes"], "B"),
              f"{change(n['fp32_bytes'], n['compressed_bytes'])} from {human(n['fp32_bytes'], 'B')} fp32",
              _colour("compressed_bytes", n["fp32_bytes"], n["compressed_bytes"]))]
    if n["flops_times"]:
        boxes.append(("FLOPs (zeros skipped)", human(n["flops_after"]), change(n["flops_before"], n["flops_after"]),
                      _colour("sparse_flops", n["flops_before"], n["flops_after"])))
    for label, after, ratio in (("PyTorch latency", n["latency_after"], n["speed_times"]),
                                ("ONNX Runtime latency", n["ort_after"], n["ort_times"])):
        if ratio:  # "same speed" (grey) within noise of 1; faster green, slower red (no arrow)
            said = speed(ratio)
            boxes.append((label, ms(after), said, "off" if said == speed(1.0) else "normal" if ratio > 1
                          else "inverse"))
    moved = n["score_after"] - n["score_before"]
    within_noise = False
    if n["has_interval"]:
        low, high = difference(n["score_before"], n["images_before"], n["score_after"], n["images_after"])
        within_noise = low <= 0 <= high
    span_before, span_after = n.get("map_spans") or (None, None)
    if span_before and span_after:  # a detector's two 95% bootstrap intervals overlap: noise (conservative)
        within_noise = max(span_before[0], span_after[0]) <= min(span_before[1], span_after[1])
    value = percent(n["score_after"]) if n["score_name"] == "top-1" else f"{n['score_after']:.3f}"
    boxes.append((f"{n['score_name']} after", value, points(moved),
                  "off" if within_noise or points(moved) == "no change" else delta_color("accuracy", moved)))
    for col, (label, shown, delta, colour) in zip(st.columns(len(boxes)), boxes, strict=True):
        words = bool(delta) and delta[0] not in "+-"  # "1.4x faster": a colour says which way, an arrow would not
        col.metric(label, shown, delta, delta_color=colour,
                   delta_arrow="off" if colour == "off" or words else "auto")
    said = f"{headline(metrics)} {verdict_sentence(metrics)}"
    st.markdown(f'<div class="present-headline">{html.escape(said)}</div>', unsafe_allow_html=True)


def _colour(metric: str, before: float, after: float) -> str:
    """st.metric's delta_color for a change of `metric` (green better), grey where the formatter says no change."""
    if change(before, after) in ("no change", "-"):
        return "off"
    return delta_color(metric, float(after) - float(before))
