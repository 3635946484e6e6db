"""Compression Lab's Streamlit entry: the navigation over pages/ and the sidebar with the active model.

    streamlit run app.py [-- --home DIR] [--ray ADDRESS] [--data-root ROOT ...]
        DIR: where runs are stored (default $COMPRESSION_LAB_HOME); ADDRESS: run jobs on the Ray cluster there
        (HOST:PORT or auto; local: the local workers again; default $COMPRESSION_LAB_RAY, else the stored setting);
        ROOT: a folder whose datasets a link (?data=imagefolder:PATH) may name, besides DIR/data (repeatable; also
        $COMPRESSION_LAB_DATA_ROOTS, separated by ':'). Links name nothing else on the server.
"""

import sys
from pathlib import Path

import streamlit as st

# the package lives in the source folder compression/ (src layout): a checkout runs without an install too
sys.path.insert(0, str(Path(__file__).resolve().parent / "compression"))

from complab.errors import CompressionLabError  # noqa: E402
from complab.ui.state import sidebar  # noqa: E402

st.set_page_config(page_title="Compression Lab", page_icon=":material/compress:", layout="wide")

pages = [
    st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("pages/sensitivity.py", title="Sensitivity", icon=":material/monitoring:"),
    st.Page("pages/plan.py", title="Plan", icon=":material/tune:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/play_circle:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/scatter_plot:"),
    st.Page("pages/detections.py", title="Detections", icon=":material/center_focus_strong:"),
    st.Page("pages/lesson.py", title="Lesson", icon=":material/school:"),
]
navigation = st.navigation(pages)
sidebar(lesson=navigation.url_path == "lesson")  # the Lesson page's model becomes the active one: all pages follow
try:
    navigation.run()
except CompressionLabError as exc:  # one a page did not catch (the active data folder gone): one line, no traceback
    st.error(str(exc))
