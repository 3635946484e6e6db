"""The Streamlit layer: session state, forms and figures for pages/ and app.py (the only part that imports streamlit).

Nothing else in `compression` imports this package (but cli.py, which imports report.py alone: plotly, never
Streamlit); the library below it runs without Streamlit or plotly.
    state.py       the active model/data spec, cached loaders, the sidebar, job builders
    navigation.py  page_setup(): the one workaround for Streamlit's pages/ folder handling
    plan_form.py   per-layer widget settings <-> Plan;  channels.py  the plan page's channel section
    figures.py     every plotly figure the pages draw
    present.py     presentation mode (?present=1&run=ID): the projector view's CSS, exit button, run from the URL
    report.py      the self-contained HTML report (no Streamlit: the CLI's `report` imports it, the one exception)
"""
