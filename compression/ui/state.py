"""Streamlit session state the pages share: the active model/data spec, cached loaders, sidebar, job builders.

Cached objects (st.cache_resource) are shared by every session: pages must never change them in
place (use handle.clone()). Only the small spec dict lives in st.session_state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import streamlit as st

from compression import engine, paths, sources
from compression.data import DataBundle
from compression.errors import CompressionLabError
from compression.models.handle import ModelHandle
from compression.models.zoo import DEMO_MODELS

DEFAULT_SPEC = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None,
                "mean": None, "std": None}


def home() -> Path:
    """The engine's data folder: `streamlit run app.py -- --home DIR`, else $COMPRESSION_LAB_HOME, else per user."""
    if "--home" in sys.argv[:-1]:
        return Path(sys.argv[sys.argv.index("--home") + 1]).expanduser()
    return paths.home()


def save_upload(blob: bytes, name: str) -> Path:
    """Keep an uploaded file under the data folder (named by its content hash) and return its path.

    Uploads are never deleted or overwritten: what a user gave the app is not lost.
    """
    import hashlib

    from compression.paths import OutputError, describe_os_error, write_bytes_atomic

    folder = home() / "uploads"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, folder)) from None
    path = folder / f"{hashlib.sha256(blob).hexdigest()[:12]}-{Path(name).name[-100:]}"
    if not path.exists():
        write_bytes_atomic(path, blob)  # a full or read-only data folder: an OutputError naming it
    return path


def demo_choices() -> dict[str, str]:
    return {name: spec.description for name, spec in DEMO_MODELS.items()}


def shareable(spec: dict) -> bool:
    """Whether the spec is a built-in model on its built-in data (safe to keep in the URL)."""
    return spec.get("model") in sources.demo_sources() and sources.demo_sources()[spec["model"]] == spec.get("data")


def active_spec() -> dict:
    """The model + data the pages work on (the sidebar shows it).

    A built-in model and dataset are also kept in the URL (?model=...&data=...), so a browser reload or
    a shared link opens on the same model. Uploaded files never go in the URL: a link must not be able
    to load a pickle.
    """
    if "active" not in st.session_state:
        spec = dict(DEFAULT_SPEC)
        linked = {"model": st.query_params.get("model"), "data": st.query_params.get("data")}
        if shareable(linked):
            spec.update(linked)
        st.session_state["active"] = spec
    spec = st.session_state["active"]
    if shareable(spec) and (
            st.query_params.get("model") != spec["model"] or st.query_params.get("data") != spec["data"]):
        st.query_params.update(model=spec["model"], data=spec["data"])  # navigation clears them: put them back
    return spec


def set_active(spec: dict) -> None:
    st.session_state["active"] = spec
    if shareable(spec):
        st.query_params.update(model=spec["model"], data=spec["data"])
    else:
        st.query_params.clear()


def spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


@st.cache_resource(show_spinner="Loading the model and data...", max_entries=8)
def _load(key: str) -> tuple[ModelHandle, DataBundle]:
    return sources.load(json.loads(key))


def load_active(spec: dict | None = None) -> tuple[ModelHandle, DataBundle]:
    return _load(spec_key(spec or active_spec()))


@st.cache_data(show_spinner="Measuring the model...", max_entries=16)
def baseline(key: str) -> dict:
    from compression.analysis.layers import layer_table

    handle, data = _load(key)
    return {**handle.measure(data), "layers": layer_table(handle)}


@st.cache_resource(show_spinner="Preparing the size estimate...", max_entries=8)
def model_stats(key: str, fold_bn: bool = False):
    from compression.analysis.estimate import model_stats as compute

    handle, _ = _load(key)
    if fold_bn and handle.task == sources.DETECT:  # estimate the file a fold_bn step writes
        from compression import metrics
        from compression.models.detector import fuse

        work = handle.clone()
        fuse(work.model)
        stats = compute(work)
        stats.fp32_bytes = metrics.fp32_bytes(handle.model)  # ratios stay against the original's fp32 bytes
        return stats
    return compute(handle)


def sidebar() -> None:
    spec = active_spec()
    with st.sidebar:
        st.caption("Active model")
        st.markdown(f"**{spec['model']}**  \n{spec['data']}")
        st.caption(f"Runs are stored in `{home()}`")


def sensitivity_job(spec: dict, config: dict) -> dict:
    return {"kind": "sensitivity", **spec, "config": config}


def compress_job(spec: dict, plan: dict) -> dict:
    return {"kind": "compress", **spec, "plan": plan}


def _same_model(job: dict, spec: dict) -> bool:
    spec = engine.absolute_paths(spec)  # submit stores paths made absolute
    return all(job.get(key) == spec.get(key) for key in ("model", "weights", "data", "input_size"))


def run_task(run_id: str) -> str:
    """'detect' or 'classify', from the run's metrics (or its job)."""
    row = engine.status(run_id, root=home())
    metrics = row.get("metrics") or {}
    if metrics.get("task"):
        return metrics["task"]
    return sources.task_of(row.get("job", {}))


def latest_sensitivity(spec: dict, any_state: bool = False):
    """The newest sensitivity run for this model and data: its row (any_state) or its succeeded report."""
    for run in engine.list_runs(root=home(), kind="sensitivity"):
        if not _same_model(run.get("job", {}), spec):
            continue
        if any_state:
            return run
        if run["state"] == "succeeded":
            try:
                path = engine.run_file(run["id"], "sensitivity.json", root=home())
            except CompressionLabError:  # listed from the index but its folder is gone
                continue
            if path.is_file():
                return json.loads(path.read_text())
    return None


@st.cache_resource(max_entries=16, show_spinner="Decoding the compact file...")
def decoded_run(run_id: str) -> ModelHandle:
    return sources.load_file(engine.run_file(run_id, "model.clab", root=home()))


@st.cache_data(max_entries=8, show_spinner="Exporting...")
def run_exports(run_id: str) -> dict:
    from compression.export import onnx_bytes, torchscript_bytes

    if run_task(run_id) == "detect":
        message = ("TorchScript / ONNX export of a detector: load the decoded model in Python "
                   "(compression.models.detector.load_detector_file) and use Ultralytics' exporter")
        return {"torchscript": None, "onnx": None, "onnx_error": message}
    handle = decoded_run(run_id)
    out = {"torchscript": torchscript_bytes(handle)}
    try:
        out["onnx"] = onnx_bytes(handle)
    except CompressionLabError as exc:
        out["onnx"], out["onnx_error"] = None, str(exc)
    return out

