"""Streamlit session state the pages share: the active model/data spec, cached loaders, sidebar, job builders.

Cached objects (st.cache_resource) are shared by every session: pages must never change them in
place (use handle.clone()). Only the small spec dict lives in st.session_state.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import streamlit as st

from complab import engine, paths, service, sources
from complab.data import DataBundle
from complab.errors import CompressionLabError, MismatchError
from complab.models.handle import ModelHandle
from complab.models.zoo import DEMO_MODELS
from complab.ui import links
from complab.ui.present import present_toggle

DEFAULT_SPEC = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None,
                "mean": None, "std": None}


def home() -> Path:
    """The engine's data folder: `streamlit run app.py -- --home DIR`, else $COMPRESSION_LAB_HOME, else per user.
    An empty DIR is a CompressionLabError (it would make the server's working folder the data folder)."""
    if "--home" in sys.argv[:-1]:
        return paths.home_option(sys.argv[sys.argv.index("--home") + 1])
    return paths.home()


def link_roots() -> list[Path]:
    """The folders a link's dataset may lie under: the data folder, `--data-root DIR`, $COMPRESSION_LAB_DATA_ROOTS
    (complab.ui.links)."""
    return links.data_roots(home())


@st.cache_resource(show_spinner=False)
def use_engine_args() -> str | None:
    """`streamlit run app.py -- --ray ADDRESS` (HOST:PORT, auto, or local): stored in the data folder's settings once
    per server process, so the dispatcher it starts and the CLI use the same engine. Returns the address given."""
    if "--ray" not in sys.argv[:-1]:
        return None
    address = sys.argv[sys.argv.index("--ray") + 1]
    engine.settings(root=home(), ray_address=address)
    return address


@st.cache_data(ttl=30, show_spinner=False)
def engine_line(root: str, address: str | None) -> tuple[str, str | None]:
    """(what the sidebar says about the engine, a problem to show or None); the cluster is asked at most every 30 s
    (keyed by the address, so a changed setting shows at once)."""
    info = engine.engine_info(root)
    if info["engine"] == "local":
        workers = info["workers"]
        return f"Engine: local, {workers} worker{'s' if workers != 1 else ''}", None
    if "error" in info:
        return f"Engine: Ray at `{info['address']}`", info["error"]
    return (f"Engine: Ray at `{info['address']}`, {info['nodes']} node{'s' if info['nodes'] != 1 else ''}, "
            f"{info['cpus']:g} CPUs, {info['gpus']:g} GPUs"), None


def save_upload(blob: bytes, name: str) -> Path:
    """Keep an uploaded file under the data folder (named by its content hash) and return its path.

    Uploads are never deleted or overwritten: what a user gave the app is not lost.
    """
    import hashlib

    from complab.paths import OutputError, describe_os_error, write_bytes_atomic

    folder = uploads_folder()
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


UPLOAD_HASH = re.compile(r"[0-9a-f]{12}")
LINK_DATA_PREFIXES = links.FOLDER_PREFIXES
LINK_KEYS = ("model", "data", "arch", "size")


def uploads_folder() -> Path:
    return home() / "uploads"


def upload_hash(path: str | Path | None, folder: Path) -> str | None:
    """The content hash an upload kept by save_upload is named by, or None for a file from anywhere else."""
    if not path:
        return None
    path = Path(path)
    name = path.name
    if path.parent.resolve() != folder.resolve() or not UPLOAD_HASH.fullmatch(name[:12]) or name[12:13] != "-":
        return None
    return name[:12]


def link_params(spec: dict, folder: Path, roots: list[Path] | None = None) -> dict[str, str] | None:
    """The URL query that reopens `spec` on this server, or None when it cannot be linked.

    Linkable: a built-in model on its data, and a torchvision state dict uploaded here (`model=upload:<hash>`,
    its architecture and input size) on the demo digits or a dataset folder under `roots` (link_roots(): what
    spec_from_link accepts back). A state dict is read with weights_only / safetensors, never unpickled;
    TorchScript files and Ultralytics pickles stay out of links.
    """
    if shareable(spec):
        return {"model": spec["model"], "data": spec["data"]}
    kind, _, arch = str(spec.get("model", "")).partition(":")
    data = str(spec.get("data", ""))
    digest = upload_hash(spec.get("weights"), folder)
    if kind != "torchvision" or digest is None or spec.get("mean") or spec.get("std"):
        return None
    if links.link_data_problem(data, link_roots() if roots is None else roots) is not None:
        return None
    params = {"model": f"upload:{digest}", "arch": arch, "data": data}
    if spec.get("input_size"):
        params["size"] = str(int(spec["input_size"]))
    return params


def spec_from_link(params: dict, folder: Path, roots: list[Path] | None = None) -> tuple[dict | None, str | None]:
    """(spec, None) for a URL query link_params made; (None, message) for one naming an upload that is not
    here or a bad value; (None, None) when the query names no model. No model file outside `folder` (the uploads)
    is ever opened, and no dataset outside `roots` (default link_roots()); numbers are parsed strictly
    (complab.ui.links). The query's values may be anything (str, None, lists): they come from a URL."""
    model, data = params.get("model"), params.get("data")
    if not model:
        return None, None
    if not isinstance(model, str):
        return None, f"The link's model {str(model)[:60]!r} is not a model name."
    if not str(model).startswith("upload:"):
        linked = {**DEFAULT_SPEC, "model": model, "data": data}
        if shareable(linked):
            return linked, None
        return None, f"The link's model {str(model)[:60]!r} on {str(data)[:60]!r} is not a built-in pair."
    digest = str(model)[len("upload:"):]
    if not UPLOAD_HASH.fullmatch(digest):
        return None, f"The link's upload {digest[:40]!r} is not an upload name (12 hexadecimal digits)."
    matches = sorted(path for path in folder.glob(f"{digest}-*") if path.is_file()) if folder.is_dir() else []
    matches = [path for path in matches if upload_hash(path, folder) == digest]
    if not matches:
        return None, (f"The link names uploaded model {digest}, which this server does not have (uploads are kept "
                      f"in {folder}): upload the file again on the Model page.")
    arch = str(params.get("arch") or "")
    if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", arch):
        return None, f"The link's architecture {arch[:40]!r} is not a torchvision model name."
    size = params.get("size")
    if size is not None and links.link_int(size, 8, sources.MAX_INPUT_SIZE) is None:
        return None, (f"The link's input size {str(size)[:20]!r} is not a number of pixels from 8 to "
                      f"{sources.MAX_INPUT_SIZE}.")
    problem = links.link_data_problem(data, link_roots() if roots is None else roots)
    if problem is not None:
        return None, problem
    return {**DEFAULT_SPEC, "model": f"torchvision:{arch}", "weights": str(matches[0]), "data": data,
            "input_size": int(size) if size is not None else None}, None


def _show_link(spec: dict) -> None:
    wanted = link_params(spec, uploads_folder())
    if wanted is None:
        return
    if any(st.query_params.get(key) != wanted.get(key) for key in LINK_KEYS):
        _drop_link()  # navigation clears them: put them back (and drop a previous model's keys)
        st.query_params.update(wanted)


def _drop_link() -> None:
    """Take the model's keys out of the URL; the others (present.py's present and run) stay."""
    for key in LINK_KEYS:
        if key in st.query_params:
            del st.query_params[key]


def active_spec() -> dict:
    """The model + data the pages work on (the sidebar shows it).

    The URL carries it (link_params): a built-in model and dataset, or a state dict uploaded to this
    server (?model=upload:<hash>&arch=...&size=...&data=...), so a browser reload, a new tab or a shared
    link opens on the same model. A link never loads a pickle or a file outside the uploads folder; one
    that names an upload this server lacks falls back to the demo with a message (link_problem()).
    """
    if "active" not in st.session_state:
        spec = dict(DEFAULT_SPEC)
        linked, problem = spec_from_link({key: st.query_params.get(key) for key in LINK_KEYS}, uploads_folder())
        if linked is not None:
            try:
                _load(spec_key(linked))  # a bad architecture or dataset: say so and stay on the demo
                spec = linked
            except CompressionLabError as exc:
                problem = f"The link's model could not be opened: {exc}"
        st.session_state["link_problem"] = problem
        st.session_state["active"] = spec
    spec = st.session_state["active"]
    _show_link(spec)
    return spec


def link_problem() -> str | None:
    """Why the URL's model was not opened (the demo was instead), or None."""
    return st.session_state.get("link_problem")


def set_active(spec: dict) -> None:
    st.session_state["active"] = spec
    st.session_state["link_problem"] = None
    if link_params(spec, uploads_folder()) is None:
        _drop_link()
    else:
        _show_link(spec)


def spec_key(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True)


@st.cache_resource(show_spinner="Loading the model and data...", max_entries=8)
def _loaded(key: str) -> tuple[ModelHandle, DataBundle] | str:
    """(handle, data), or the message of a model that does not fit its data (kept: the Model page's widgets
    still name that pair on the next rerun, which then says it again without loading both again)."""
    # isolated: no model file's code runs in the server (a trusted Ultralytics pickle is opened in a child
    # process and rebuilt here from its tensors; TorchScript is refused: measure_code_model measures it)
    try:
        return sources.load(json.loads(key), isolated=True)
    except MismatchError as exc:  # the text only: the exception's frames would keep the model and data alive
        return str(exc)


def _load(key: str) -> tuple[ModelHandle, DataBundle]:
    """The spec's (handle, data); a CompressionLabError (a MismatchError: the model does not fit the data) when
    it cannot be loaded, checked before anything is measured (sources.load_data)."""
    loaded = _loaded(key)
    if isinstance(loaded, str):
        raise MismatchError(loaded)
    return loaded


@st.cache_data(show_spinner="Measuring the TorchScript model in a separate process...", max_entries=8)
def measure_code_model(key: str) -> dict:
    """A trusted TorchScript spec's numbers, measured in a one-shot child process (models/codeload.py), or
    {"error": message}."""
    from complab.measure_child import measure_in_child

    try:
        return measure_in_child(json.loads(key))
    except CompressionLabError as exc:  # kept, so a rerun of the page does not start the process again
        return {"error": str(exc)}


def load_active(spec: dict | None = None) -> tuple[ModelHandle, DataBundle]:
    return _load(spec_key(spec or active_spec()))


@st.cache_data(show_spinner="Measuring the model...", max_entries=16)
def baseline(key: str) -> dict:
    from complab.analysis.layers import layer_table

    handle, data = _load(key)
    return {**handle.measure(data), "layers": layer_table(handle)}


@st.cache_resource(show_spinner="Preparing the size estimate...", max_entries=8)
def model_stats(key: str, fold_bn: bool = False):
    from complab.analysis.estimate import model_stats as compute

    handle, _ = _load(key)
    if fold_bn and handle.kind.folds_batch_norm:  # estimate the file a fold_bn step writes
        from complab import metrics
        from complab.models.detector import fuse

        work = handle.clone()
        fuse(work.model)
        stats = compute(work)
        stats.fp32_bytes = metrics.fp32_bytes(handle.model)  # ratios stay against the original's fp32 bytes
        return stats
    return compute(handle)


BEFORE_LESSON = "before_lesson"  # session key: the model that was active when the Lesson page made its own active


def use_lesson_model() -> None:
    """The Lesson page's model (LeNet-300-100 on the digits) becomes the active model while the lesson is open, so
    the sidebar, the Model page and Compare (presentation mode included) show the model the class is looking at.
    The model active before is kept for the sidebar's way back (shown on the other pages)."""
    from complab.analysis.lesson import LESSON_SPEC

    spec = active_spec()
    if spec_key(spec) != spec_key(LESSON_SPEC):
        st.session_state[BEFORE_LESSON] = spec
        set_active(dict(LESSON_SPEC))


MODEL_PAGE_CHOICES = ("model_source", "demo_model", "data_source", "det_data_source")  # pages/model.py's widgets


def _back_from_lesson() -> None:
    """The sidebar's way back: the model from before the lesson becomes active again. The Model page's choices,
    if it is open, still say the lesson's model and would make it active again: they are dropped, so the page
    draws them afresh from the active model."""
    set_active(st.session_state.pop(BEFORE_LESSON))
    for key in MODEL_PAGE_CHOICES:
        st.session_state.pop(key, None)


def sidebar(lesson: bool = False) -> None:
    """The active model (the one the page shows), the data folder, the engine and the presentation switch.
    `lesson`: the Lesson page is open, whose model becomes the active one first (use_lesson_model)."""
    try:
        home()  # `-- --home ""` or a kernel folder: say so instead of a traceback on every page
    except CompressionLabError as exc:
        st.error(str(exc))
        st.stop()
    if lesson:
        use_lesson_model()
    spec = active_spec()
    with st.sidebar:
        st.caption("Active model")
        from complab.analysis.report import model_name

        st.markdown(f"**{model_name(spec['model'])}**  \n{spec['model']} on {spec['data']}")
        before = st.session_state.get(BEFORE_LESSON)
        if before is not None and spec_key(before) != spec_key(spec):
            if lesson:
                st.caption("The lesson's model, made active for the lesson.")
            else:
                from complab.analysis.lesson import LESSON_SPEC

                if spec_key(spec) == spec_key(LESSON_SPEC):
                    st.button(f"Back to {before['model']}", key="back_from_lesson", on_click=_back_from_lesson,
                              help="The Lesson page made its model active; this makes the model you had "
                                   f"before active again ({before['model']} on {before['data']}).")
                else:  # another model was chosen since: nothing to go back to
                    st.session_state.pop(BEFORE_LESSON, None)
        if link_problem():
            st.warning(link_problem() + " Opened the demo model instead.")
        st.caption(f"Runs are stored in `{home()}`")
        try:
            use_engine_args()
            line, problem = engine_line(str(home()), engine.settings(root=home())["ray_address"])
        except CompressionLabError as exc:  # a read-only data folder, a bad --ray value
            line, problem = "Engine: unknown", str(exc)
        st.caption(line)
        if problem:
            st.warning(problem)
        present_toggle()


def sensitivity_job(spec: dict, config: dict) -> dict:
    return service.sensitivity_job(spec, config)


def compress_job(spec: dict, plan: dict, predicted: dict | None = None, origin: dict | None = None) -> dict:
    """The engine job of a compression run (complab.service.compress_job: `predicted` and `origin` ride along)."""
    return service.compress_job(spec, plan, predicted=predicted, origin=origin)


def run_task(run_id: str) -> str:
    """'detect' or 'classify', from the run's metrics (or its job)."""
    row = engine.status(run_id, root=home())
    metrics = row.get("metrics") or {}
    if metrics.get("task"):
        return metrics["task"]
    return sources.task_of(row.get("job", {}))


def latest_sensitivity(spec: dict, any_state: bool = False):
    """The newest sensitivity run for this model and data: its row (any_state) or its succeeded report (a damaged
    report is said with st.warning and skipped)."""
    if any_state:
        return service.latest_analysis_run(spec, home())
    return service.latest_analysis(spec, home(), on_problem=st.warning)


def prediction_history(spec: dict) -> list[tuple[float, float]]:
    """(raw predicted drop, measured drop) in points of this model's finished runs that carried a prediction
    (complab.service.prediction_history)."""
    return service.prediction_history(spec, home())


@st.cache_resource(max_entries=16, show_spinner="Decoding the compact file...")
def decoded_run(run_id: str) -> ModelHandle:
    return sources.load_file(engine.run_file(run_id, "model.clab", root=home()))


@st.cache_data(max_entries=16, show_spinner="Measuring the CPU latency of both detectors (PyTorch, ONNX Runtime)...")
def detector_latency(run_id: str, key: str) -> dict:
    """Both detectors' CPU latency measured here (batch 1 at the detector's size, fixed threads), once per run: in
    PyTorch ({"original_ms", "compressed_ms", "threads"}) and in ONNX Runtime ("ort": the same, with its version,
    the CPU's int8 instruction set, or the one-line "error" why it could not run them)."""
    from complab.analysis.detections import latency_pair, ort_latency_pair

    handle, data = _load(key)
    compressed = decoded_run(run_id)
    return {**latency_pair(handle.model, compressed.model, handle.imgsz),
            "ort": ort_latency_pair(handle, compressed, data)}


@st.cache_data(max_entries=8, show_spinner="Exporting...")
def run_exports(run_id: str) -> dict:
    from complab.export import onnx_bytes, torchscript_bytes

    handle = decoded_run(run_id)  # a detector exports its predictions tensor (compression/complab/export.py)
    out = {"torchscript": torchscript_bytes(handle)}
    try:
        out["onnx"] = onnx_bytes(handle)
    except CompressionLabError as exc:
        out["onnx"], out["onnx_error"] = None, str(exc)
    return out

