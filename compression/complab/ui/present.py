"""Presentation mode for the classroom and the meeting room: `?present=1` in the URL (and `run=ID` for the run).

When it is on, a page that supports it (Model, Compare, Detections) calls present_css(): the sidebar, Streamlit's
header and toolbar, input widgets and captions are hidden, metrics and headings are drawn large for a projector,
and an "Exit presentation" button stays pinned in the corner. Pages pass figures through projector() (taller,
larger text) and ask chosen_run() for the run to show, which in presentation mode is read from the URL (never a
widget), so a presenter can open a prepared link such as /compare?present=1&run=20261201-101500-ab12.

The state lives in the URL so the link can be shared; the session remembers it only because Streamlit drops the
query on a page switch (see state._show_link), so moving between pages stays in presentation mode.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import streamlit as st

from complab.analysis.report import headline_numbers
from complab.ui.links import link_presenting, link_run_id
from complab.ui.numbers import human
from complab.ui.report import headline

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


def present_css() -> None:
    """Hide everything but the numbers, plots and detections, draw them large, and pin the exit button."""
    st.markdown(CSS.replace("HIDDEN", ",\n".join(HIDDEN), 1), unsafe_allow_html=True)
    st.button("Exit presentation", key="present_exit", icon=":material/close_fullscreen:",
              on_click=set_presenting, args=(False,))


def projector(fig):
    """A plotly figure made for a projector: taller, with larger text."""
    fig.update_layout(height=max(PRESENT_HEIGHT, fig.layout.height or 0), font={"size": 17},
                      title_font={"size": 22}, legend_font={"size": 16})
    for axes in (fig.update_xaxes, fig.update_yaxes):  # Streamlit's chart theme sets the axes' own fonts
        axes(tickfont={"size": 16}, title_font={"size": 19})
    return fig


def chosen_run(options: Sequence, key: str, label: str = "Run", id_of: Callable = str,
               format_func: Callable = str):
    """The run to show: in presentation mode the URL's `run` (the newest, options[0], when it names none of
    them), else a selectbox that starts on the URL's run and writes the choice back, so the URL can be shared."""
    ids = [id_of(option) for option in options]
    given = st.query_params.get(RUN_PARAM)
    wanted = link_run_id(given)  # a run folder's name, or None (complab.ui.links)
    if presenting():
        if given is not None and wanted not in ids:
            st.warning(f"The link's run {str(given)[:40]!r} is not among these runs: showing the newest.")
        return options[ids.index(wanted)] if wanted in ids else options[0]
    index = ids.index(wanted) if wanted in ids else 0
    choice = st.selectbox(label, options, index=index, key=key, format_func=format_func)
    if st.query_params.get(RUN_PARAM) != id_of(choice):
        st.query_params[RUN_PARAM] = id_of(choice)
    return choice


def headline_metrics(metrics: dict) -> None:
    """A run's headline as big metric boxes (ratio, file, FLOPs, latency where measured, score) and its sentence."""
    numbers = headline_numbers(metrics)
    boxes = [("Smaller file", f"{numbers['ratio']:.1f}x", None),
             ("Compact file", human(numbers["compressed_bytes"], "B"),
              f"from {human(numbers['fp32_bytes'], 'B')} fp32")]
    if numbers["flops_times"]:
        boxes.append(("Fewer FLOPs", f"{numbers['flops_times']:.1f}x", "zero weights skipped"))
    if numbers["speed_times"]:
        speed = numbers["speed_times"]
        boxes.append(("CPU latency", f"{speed:.1f}x faster" if speed >= 1 else f"{1 / speed:.1f}x slower", None))
    score = numbers["score_name"]
    after = f"{numbers['score_after']:.2%}" if score == "top-1" else f"{numbers['score_after']:.3f}"
    boxes.append((f"{score} after", after, f"{-numbers['drop_pts']:+.2f} pts"))
    for col, (label, value, delta) in zip(st.columns(len(boxes)), boxes, strict=True):
        scored = bool(delta) and "pts" in delta  # the score's change is good or bad; the other notes are facts
        col.metric(label, value, delta, delta_color="normal" if scored else "off",
                   delta_arrow="auto" if scored else "off")
    st.markdown(f'<div class="present-headline">{html.escape(headline(metrics))}</div>', unsafe_allow_html=True)
