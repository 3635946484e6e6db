"""Cached loaders the Streamlit pages share (the cached objects are shared by every session: never mutate)."""

from __future__ import annotations

import streamlit as st

from compression.data import DataBundle, load_data
from compression.models.handle import ModelHandle, load_model
from compression.models.zoo import DEMO_MODELS


def demo_choices() -> dict[str, str]:
    return {name: spec.description for name, spec in DEMO_MODELS.items()}


@st.cache_resource(show_spinner="Loading the model and data...")
def load_demo(name: str) -> tuple[ModelHandle, DataBundle]:
    handle = load_model(f"demo:{name}")
    data = load_data("digits", input_size=handle.input_shape[-1])
    return handle, data


@st.cache_data(show_spinner="Measuring the model...")
def measure_baseline(name: str) -> dict:
    from compression.analysis.layers import layer_table
    from compression.pipeline import measure

    handle, data = load_demo(name)
    return {**measure(handle, data, "test"), "layers": layer_table(handle)}
