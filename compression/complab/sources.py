"""One way to load what a user points at: a source spec -> checked -> (handle, data), and compact files back.

A source spec is the JSON-friendly dict a job, the CLI and the app all use:

    {"model": "demo:lenet5" | "torchvision:ARCH" | "torchscript:FILE" | "detector:demo" | "detector:FILE.pt",
     "weights": FILE or None, "data": "digits" | "imagefolder:DIR" | "cifar10:DIR" | "cifar100:DIR"
     | "shapes" | "yolo:FILE.yaml", "input_size": int or None, "mean": [..] or None, "std": [..] or None,
     "trust": bool (an Ultralytics pickle or a TorchScript file, both code, loads only with trust)}

`check(spec)` validates it without loading anything heavy (the engine calls it at submit time, so a bad
path never queues; `compress=True` for a compression run or a sensitivity analysis, which change a model's
weights and so cannot take TorchScript); `load(spec)` returns (handle, data), and `load(spec, isolated=True)`
(the Streamlit server's) never runs a model file's code in this process (compression/complab/models/codeload.py);
`load_file(path)` decodes a compact file of either task. This module is the only place that tells a
classifier from a detector by its reference: everything else asks a handle for its `task` ("classify" or
"detect").
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from complab.errors import CompressionLabError

MODEL_PREFIXES = ("demo:", "torchvision:", "torchscript:", "detector:")
DATA_PREFIXES = ("digits", "imagefolder:", "cifar10:", "cifar100:")
DETECTION_DATA_PREFIXES = ("shapes", "yolo:")
# a classifier's side in pixels: beyond this one batch of images alone needs gigabytes
MAX_INPUT_SIZE = 1024
DETECT, CLASSIFY = "detect", "classify"


@functools.cache
def demo_sources() -> dict[str, str]:
    """The built-in models and their data: safe to put in a shared link (never an uploaded file)."""
    from complab.models.zoo import DEMO_MODELS  # (imports torch: not at import time, the CLI starts fast)

    return {**{f"demo:{name}": "digits" for name in DEMO_MODELS}, "detector:demo": "shapes"}


def task_of(spec: dict) -> str:
    """"detect" for a detector:... model reference, else "classify"."""
    return DETECT if str(spec.get("model", "")).startswith("detector:") else CLASSIFY


def evaluation_only(spec: dict) -> bool:
    """Whether the spec's model can be measured but not compressed (TorchScript: handle.EVALUATION_ONLY); the app
    measures such a model in a child process (models/codeload.py) and never makes it the active model."""
    return str(spec.get("model", "")).startswith("torchscript:")


def default_data(model: str) -> str:
    """The dataset a model reference goes with when the user has not picked one (the demo data)."""
    return "shapes" if task_of({"model": model}) == DETECT else "digits"


def fits(model: str, data: str) -> bool:
    """Whether a dataset reference is of the kind a model reference needs (detection data for a detector)."""
    detection_data = str(data).startswith(DETECTION_DATA_PREFIXES)
    return detection_data == (task_of({"model": model}) == DETECT)


def _check_detector(spec: dict) -> dict:
    """detector:demo or detector:FILE.pt (an Ultralytics pickle: only with trust=true) on shapes or yolo:FILE."""
    model = spec["model"]
    source = model[len("detector:"):]
    trust = bool(spec.get("trust", False))
    if source != "demo":
        if not Path(source).expanduser().is_file():
            raise CompressionLabError(f"detector file {source} does not exist: check the path")
        if not trust:
            from complab.models.detector import untrusted

            raise untrusted(source)
    data = spec.get("data")
    if not isinstance(data, str) or not data.startswith(DETECTION_DATA_PREFIXES):
        raise CompressionLabError(f"job data {data!r} is not a detection dataset: use shapes (the demo) or "
                                  "yolo:PATH/data.yaml")
    if data.startswith("yolo:") and not Path(data[5:]).expanduser().is_file():
        raise CompressionLabError(f"dataset yaml {data[5:]} does not exist: check the path after 'yolo:'")
    size = spec.get("input_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 4096
                             or size % 32):
        raise CompressionLabError(f"input_size {size!r} must be a multiple of 32 from 32 to 4096 for a detector")
    if spec.get("mean") or spec.get("std"):
        raise CompressionLabError("a YOLO detector scales pixels to 0..1 itself and takes no mean/std: "
                                  "drop --mean/--std")
    return {"model": model, "weights": None, "data": data, "input_size": size, "mean": None, "std": None,
            "trust": trust}


def check(spec: dict, compress: bool = False) -> dict:
    """A normalised copy of the source spec, or a CompressionLabError naming the bad value and the fix.

    Trust is the spec's own `trust` key, which only the person's command or session sets (--trust, the app's
    checkbox): a TorchScript file or an Ultralytics pickle without it is refused here, before it queues.
    `compress`: the spec is for a compression run or a sensitivity analysis: both change the model's weights,
    which TorchScript cannot take (handle.EVALUATION_ONLY)."""
    if task_of(spec) == DETECT:
        return _check_detector(spec)
    model = spec.get("model")
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIXES):
        raise CompressionLabError(f"job model {model!r} is not a model reference: use demo:NAME, "
                                  "torchvision:ARCH (with weights), torchscript:FILE or detector:demo|FILE.pt")
    size = spec.get("input_size")
    if model.startswith("demo:"):
        from complab.models.zoo import DEMO_MODELS

        if model[5:] not in DEMO_MODELS:
            raise CompressionLabError(f"unknown demo model {model[5:]!r}: choose one of {', '.join(DEMO_MODELS)}")
        side = DEMO_MODELS[model[5:]].input_shape[-1]
        if size is not None and size != side:
            raise CompressionLabError(f"{model} reads {side}x{side} images and cannot take input_size {size!r}: "
                                      "drop --input-size")
    if model.startswith("torchvision:") and not spec.get("weights"):
        raise CompressionLabError("a torchvision model needs its weights: set 'weights' to a .pt/.pth/.safetensors")
    for path in (spec.get("weights"), model[12:] if model.startswith("torchscript:") else None):
        if path and not Path(path).expanduser().is_file():
            raise CompressionLabError(f"model file {path} does not exist: check the path")
    trust = spec.get("trust") is True and model.startswith("torchscript:")  # only --trust / the checkbox set it
    if model.startswith("torchscript:"):
        from complab.models.handle import EVALUATION_ONLY, untrusted_code

        if not trust:
            raise untrusted_code(model[12:])
        if compress:
            raise CompressionLabError(EVALUATION_ONLY)
    data = spec.get("data")
    if not isinstance(data, str) or not data.startswith(DATA_PREFIXES):
        raise CompressionLabError(f"unknown dataset {str(data)[:80]!r}: use digits, imagefolder:DIR, cifar10:DIR or "
                                  "cifar100:DIR (for a detector: shapes or yolo:PATH/data.yaml)")
    if ":" in data:
        folder = Path(data.split(":", 1)[1]).expanduser()
        if not folder.exists():
            raise CompressionLabError(f"dataset folder {folder} does not exist: check the path")
        if not folder.is_dir():
            raise CompressionLabError(f"dataset path {folder} is a file, not a folder: give the folder that holds "
                                      "the class folders (or the CIFAR batches)")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= MAX_INPUT_SIZE):
        raise CompressionLabError(f"input_size {size!r} must be an integer number of pixels from 8 to "
                                  f"{MAX_INPUT_SIZE} for a classifier")
    for key in ("mean", "std"):
        value = spec.get(key)
        if value is None:
            continue
        if (not isinstance(value, list | tuple) or len(value) not in (1, 3)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                           for v in value)):
            raise CompressionLabError(f"{key} {str(value)[:60]} must be 1 or 3 per-channel numbers, e.g. 0.5,0.5,0.5")
        if key == "std" and min(value) <= 0:
            raise CompressionLabError(f"std {list(value)} must be positive (images are divided by it)")
        if data == "digits":
            raise CompressionLabError("the digits are normalised with their own mean and std (the demo models were "
                                      "trained so): drop --mean/--std")
    return {"model": model, "weights": spec.get("weights"), "data": data, "input_size": size,
            "mean": list(spec["mean"]) if spec.get("mean") else None,
            "std": list(spec["std"]) if spec.get("std") else None, **({"trust": True} if trust else {})}


def load_model(spec: dict, isolated: bool = False):
    """The model handle of a checked spec (a classifier's ModelHandle or a DetectorHandle).

    `isolated` (the Streamlit server's setting): a model file's code never runs in this process. A trusted
    Ultralytics pickle is opened in a one-shot child process that hands back its architecture record and
    tensors (models/codeload.py); TorchScript, whose code is the model, is refused (codeload.IN_SERVER)."""
    if task_of(spec) == DETECT:
        from complab.models.detector import load_detector

        source = spec["model"][len("detector:"):]
        if isolated and source != "demo":
            from complab.codeload import detector_in_child
            from complab.models.detector import untrusted

            if not spec.get("trust"):
                raise untrusted(source)
            return detector_in_child(source, imgsz=spec.get("input_size"))
        return load_detector(None if source == "demo" else source, trust=bool(spec.get("trust")),
                             imgsz=spec.get("input_size"))
    from complab.models.handle import load_model as load_classifier

    if isolated and str(spec["model"]).startswith("torchscript:"):
        from complab.codeload import IN_SERVER

        raise CompressionLabError(IN_SERVER)
    return load_classifier(spec["model"], spec.get("weights"), spec.get("input_size"), trust=bool(spec.get("trust")))


def load_data(spec: dict, handle):
    """The dataset a checked spec names, prepared for `handle` (its input size, channels and normalisation)."""
    from complab.models.handle import check_data_fits, check_model_fits

    if handle.task == DETECT:
        from complab.data.detection import load_detection_data

        data = load_detection_data(spec["data"])
        check_data_fits(handle, data.num_classes)
        return data
    from complab.data import load_data as load_classification_data

    channels = handle.input_shape[0]
    for key in ("mean", "std"):
        if spec.get(key) and len(spec[key]) not in (1, channels):
            raise CompressionLabError(f"{key} has {len(spec[key])} values but {spec['model']} reads {channels}-channel "
                                      f"images: give {channels} value{'s' if channels > 1 else ''} (or one)")
    data = load_classification_data(spec["data"], input_size=spec.get("input_size") or handle.input_shape[-1],
                                    mean=tuple(spec["mean"]) if spec.get("mean") else handle.mean,
                                    std=tuple(spec["std"]) if spec.get("std") else handle.std,
                                    in_channels=handle.input_shape[0])
    check_model_fits(handle, data)  # channels, classes, input size: one line with the fix, before any measurement
    return data


def load(spec: dict, isolated: bool = False):
    """(handle, data) for a source spec, checked first (`isolated`: see load_model)."""
    spec = check(spec)
    handle = load_model(spec, isolated)
    return handle, load_data(spec, handle)


def file_task(path: str | Path) -> str:
    """The task a compact file records ("classify" or "detect"), read from its header only."""
    from complab.storage import inspect_header

    path = Path(path)
    if not path.is_file():
        raise CompressionLabError(f"file {path} does not exist: check the path")
    return str(inspect_header(path.read_bytes())["meta"].get("task", CLASSIFY))


def load_file(path: str | Path, base_file: str | Path | None = None, trust: bool = False):
    """Decode a compact file of either task into a working handle (our own parser; nothing is unpickled).

    A TorchScript model's file needs its original `base_file`, code that loads only with `trust` (--trust).
    The header and CRC are checked first, torch-free: a foreign file costs no import of the decoder."""
    from complab.storage.header import check_file_header

    check_file_header(path)
    from complab.models.tasks import read_compact

    return read_compact(path, base_file, trust)


def data_for_file(handle, ref: str | None = None, input_size: int | None = None, mean=None, std=None):
    """The dataset to measure a decoded file on: `ref`, else the one its meta records, at the input size and with
    the normalisation (mean, std) the file records (what its run used) unless given here (see override_note)."""
    ref = ref or (handle.file_meta or {}).get("data")
    if not isinstance(ref, str) or not ref:
        hint = "yolo:PATH.yaml" if handle.task == DETECT else "DATASET"
        raise CompressionLabError(f"the file does not say which dataset it was made on: add --data {hint}")
    if handle.task == DETECT:
        return load_data({"data": ref}, handle)
    spec = {"model": handle.label, "data": ref, "input_size": input_size,
            "mean": list(mean) if mean else None, "std": list(std) if std else None}
    return load_data(spec, handle)


def _numbers(values) -> str:
    return ",".join(f"{float(v):g}" for v in values)


def override_note(handle, ref: str | None = None, input_size: int | None = None, mean=None, std=None) -> str | None:
    """One line saying where the measurement of a decoded classifier differs from what its file records (a flag
    overriding the recorded input size or normalisation), or that an older file records no normalisation; None
    when it is measured as its run measured it."""
    if handle.task != CLASSIFY:
        return None
    ref = ref or (handle.file_meta or {}).get("data")
    parts = []
    side = handle.input_shape[-1]
    if input_size is not None and input_size != side:
        parts.append(f"--input-size {input_size} overrides the file's {side}")
    if ref != "digits":  # the digits have their own normalisation: flags do not reach them
        for flag, given, recorded in (("mean", mean, handle.mean), ("std", std, handle.std)):
            if given and (recorded is None or [float(v) for v in given] != [float(v) for v in recorded]):
                parts.append(f"--{flag} {_numbers(given)} overrides the file's "
                             + (_numbers(recorded) if recorded else "unrecorded one (ImageNet's by default)"))
        if not parts and (handle.mean is None or handle.std is None) and not (mean and std):
            return ("note: the file records no mean/std (written by an older release): measured with ImageNet's "
                    "(0.485,0.456,0.406 / 0.229,0.224,0.225); give --mean/--std if its run used others")
    return "note: " + "; ".join(parts) + " (what its run used)" if parts else None


# --- the files and folders a spec names (the engine resolves, ships and fingerprints them by these) ---------------
MODEL_FILE_PREFIXES = ("torchscript:", "detector:")  # a model reference whose rest is a file (detector:demo is not)
DATA_PATH_PREFIXES = ("imagefolder:", "cifar10:", "cifar100:", "yolo:")  # a dataset reference whose rest is a path
DATA_FOLDER_PREFIXES = ("imagefolder:", "cifar10:", "cifar100:")  # ... a folder (yolo:'s is a yaml file)


def named_files(spec: dict) -> list[tuple[str, str, str]]:
    """(key, prefix, path) for each file or folder on disk a spec names: ("weights", "", FILE), ("model",
    "torchscript:" | "detector:", FILE), ("data", "imagefolder:" | "cifar10:" | "cifar100:" | "yolo:", DIR or yaml).
    Built-in names (demo:NAME, detector:demo, digits, shapes) name none. Never raises: any dict may be given."""
    if not isinstance(spec, dict):
        return []
    out = []
    if isinstance(spec.get("weights"), str) and spec["weights"]:
        out.append(("weights", "", spec["weights"]))
    model, data = spec.get("model"), spec.get("data")
    if isinstance(model, str) and model != "detector:demo":
        out += [("model", prefix, model[len(prefix):]) for prefix in MODEL_FILE_PREFIXES
                if model.startswith(prefix) and model[len(prefix):]]
    if isinstance(data, str):
        out += [("data", prefix, data[len(prefix):]) for prefix in DATA_PATH_PREFIXES
                if data.startswith(prefix) and data[len(prefix):]]
    return out


def with_files(spec: dict, new_path) -> dict:
    """A copy of `spec` with each file or folder it names (named_files) at `new_path(key, prefix, path)`, its
    prefix kept (e.g. made absolute, or where a Ray node unpacked it)."""
    if not isinstance(spec, dict):
        return spec
    out = dict(spec)
    for key, prefix, path in named_files(spec):
        out[key] = prefix + str(new_path(key, prefix, path))
    return out


def file_root(prefix: str, path: str) -> Path:
    """What has to travel with a named path for it to be read on another machine: a yolo yaml's whole folder (it
    names its images relative to itself), else the file or folder itself."""
    return Path(path).parent if prefix == "yolo:" else Path(path)


def data_files(ref) -> tuple[str, str] | None:
    """What a dataset reference reads on disk: ("folder", DIR) for imagefolder:, cifar10: and cifar100:, ("yaml",
    FILE) for yolo:FILE, None for a built-in dataset (digits, shapes) or anything else. Never raises."""
    if isinstance(ref, str):
        for prefix in DATA_PATH_PREFIXES:
            if ref.startswith(prefix) and ref[len(prefix):]:
                return ("folder" if prefix in DATA_FOLDER_PREFIXES else "yaml"), ref[len(prefix):]
    return None
