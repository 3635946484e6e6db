"""page_setup(), which every page calls first: the one workaround for Streamlit's handling of a pages/ folder.

The Streamlit behaviour it answers (still there in Streamlit 1.67): when a `pages/` folder sits next to the
main script, Streamlit starts in its old automatic multipage mode (`PagesManager.uses_pages_directory` is
True) and stays in it until the main script has called `st.navigation` once. A first visit straight to a
page URL (e.g. http://host/plan on a freshly started server) therefore runs pages/plan.py alone, without
app.py: no sidebar with the active model and a page list made from the folder instead of app.py's. The fix
switches the server to app.py's navigation and reruns, which lands on the same page through app.py.
Drop this module (and the pages' page_setup() calls) once Streamlit no longer has that mode.
"""

from __future__ import annotations

import streamlit as st


def page_setup() -> None:
    """Make this page run through app.py's st.navigation, even on a first visit straight to its URL."""
    from streamlit.runtime.pages_manager import PagesManager  # private API: the flag of the old pages/ mode

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
