"""Compression Lab's Streamlit entry: the navigation over pages/ and the sidebar with the active model."""

import streamlit as st

st.set_page_config(page_title="Compression Lab", page_icon=":material/compress:", layout="wide")

pages = [st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True)]
st.navigation(pages).run()
