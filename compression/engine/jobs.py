"""Job kinds: validation at submit time (in the caller's process, cheap) and execution (in a worker process).

    compress     {"kind": "compress", "model", "weights", "data", "input_size", "mean", "std",
                  "plan": Plan.to_dict(), "latency": true}
    sensitivity  {"kind": "sensitivity", "model", ..., "config": {sparsities, n_clusters, val_size, seed}}

A runner is `run(job, run_dir, progress, log, cancelled) -> metrics dict`; it writes its result files
whole (temporary name, then rename). With COMPRESSION_LAB_TEST_JOBS=1 two more kinds exist for the
engine's own tests: `test-sleep` ({"seconds"}), `test-hang` (ignores cancel) and `test-crash` (raises).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from compression.errors import CompressionLabError

MODEL_PREFIXES = ("demo:", "torchvision:", "torchscript:", "detector:")
DATA_PREFIXES = ("digits", "imagefolder:", "cifar10:", "cifar100:")
DETECTION_DATA_PREFIXES = ("shapes", "yolo:")
# a classifier's side in pixels: beyond this one batch of images alone needs gigabytes
MAX_INPUT_SIZE = 1024
JOB_KEYS = {"kind", "model", "weights", "data", "input_size", "mean", "std", "plan", "latency", "config", "seconds",
            "trust"}


def is_detector_job(job: dict) -> bool:
    return str(job.get("model", "")).startswith("detector:")


def _check_detector_source(job: dict) -> dict:
    """detector:demo or detector:FILE.pt (an Ultralytics pickle: only with trust=true) on shapes or yolo:FILE."""
    model = job["model"]
    source = model[len("detector:"):]
    trust = bool(job.get("trust", False))
    if source != "demo":
        if not Path(source).expanduser().is_file():
            raise CompressionLabError(f"detector file {source} does not exist: check the path")
        if not trust:
            from compression.models.detector import untrusted

            raise untrusted(source)
    data = job.get("data")
    if not isinstance(data, str) or not data.startswith(DETECTION_DATA_PREFIXES):
        raise CompressionLabError(f"job data {data!r} is not a detection dataset: use shapes (the demo) or "
                                  "yolo:PATH/data.yaml")
    if data.startswith("yolo:") and not Path(data[5:]).expanduser().is_file():
        raise CompressionLabError(f"dataset yaml {data[5:]} does not exist: check the path after 'yolo:'")
    size = job.get("input_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 4096
                             or size % 32):
        raise CompressionLabError(f"input_size {size!r} must be a multiple of 32 from 32 to 4096 for a detector")
    if job.get("mean") or job.get("std"):
        raise CompressionLabError("a YOLO detector scales pixels to 0..1 itself and takes no mean/std: "
                                  "drop --mean/--std")
    return {"model": model, "weights": None, "data": data, "input_size": size, "mean": None, "std": None,
            "trust": trust}


def check_source(job: dict) -> dict:
    if is_detector_job(job):
        return _check_detector_source(job)
    model = job.get("model")
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIXES):
        raise CompressionLabError(f"job model {model!r} is not a model reference: use demo:NAME, "
                                  "torchvision:ARCH (with weights), torchscript:FILE or detector:demo|FILE.pt")
    size = job.get("input_size")
    if model.startswith("demo:"):
        from compression.models.zoo import DEMO_MODELS

        if model[5:] not in DEMO_MODELS:
            raise CompressionLabError(f"unknown demo model {model[5:]!r}: choose one of {', '.join(DEMO_MODELS)}")
        side = DEMO_MODELS[model[5:]].input_shape[-1]
        if size is not None and size != side:
            raise CompressionLabError(f"{model} reads {side}x{side} images and cannot take input_size {size!r}: "
                                      "drop --input-size")
    if model.startswith("torchvision:") and not job.get("weights"):
        raise CompressionLabError("a torchvision model needs its weights: set 'weights' to a .pt/.pth/.safetensors")
    for path in (job.get("weights"), model[12:] if model.startswith("torchscript:") else None):
        if path and not Path(path).expanduser().is_file():
            raise CompressionLabError(f"model file {path} does not exist: check the path")
    data = job.get("data")
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
        value = job.get(key)
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
    return {"model": model, "weights": job.get("weights"), "data": data, "input_size": size,
            "mean": list(job["mean"]) if job.get("mean") else None,
            "std": list(job["std"]) if job.get("std") else None}


def sensitivity_config(config: dict):
    """SensitivityConfig from a job's config dict, or a CompressionLabError naming the bad value."""
    from compression.analysis.sensitivity import SensitivityConfig

    known = {f.name for f in fields(SensitivityConfig)}
    if not isinstance(config, dict) or set(config) - known:
        raise CompressionLabError(f"sensitivity config keys must be among {sorted(known)}")
    out = SensitivityConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    if not out.sparsities or not all(isinstance(s, int | float) and 0 <= s < 1 for s in out.sparsities):
        raise CompressionLabError(f"sensitivity sparsities {list(out.sparsities)} must be numbers from 0 to 0.999")
    if not out.n_clusters or not all(isinstance(k, int) and 2 <= k <= 256 for k in out.n_clusters):
        raise CompressionLabError(f"sensitivity n_clusters {list(out.n_clusters)} must be integers from 2 to 256")
    if not isinstance(out.val_size, int) or out.val_size < 1 or not isinstance(out.seed, int):
        raise CompressionLabError("sensitivity val_size must be a positive integer and seed an integer")
    if isinstance(out.bn_batches, bool) or not isinstance(out.bn_batches, int) or not 0 <= out.bn_batches <= 1000:
        raise CompressionLabError(f"sensitivity bn_batches {str(out.bn_batches)[:20]} must be an integer from 0 "
                                  "(keep the original batch-norm statistics) to 1000")
    return out


def validate(job: dict) -> dict:
    """Check a job without loading anything heavy; returns a normalised copy or raises CompressionLabError."""
    if not isinstance(job, dict):
        raise CompressionLabError("a job must be a JSON object with a 'kind'")
    kind = job.get("kind")
    if kind not in runners():
        raise CompressionLabError(f"unknown job kind {kind!r}: use one of {', '.join(runners())}")
    unknown = set(job) - JOB_KEYS
    if unknown:
        raise CompressionLabError(f"job has unknown keys {sorted(unknown)}: remove them")
    if kind.startswith("test-"):
        return {"kind": kind, "seconds": float(job.get("seconds", 0.0))}
    out = {"kind": kind, **check_source(job)}
    if kind == "compress":
        from compression.plan import Plan

        out["plan"] = Plan.from_dict(job.get("plan")).to_dict()  # an impossible plan never queues
        out["latency"] = bool(job.get("latency", True))
    else:
        config = sensitivity_config(job.get("config") or {})
        out["config"] = {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
                         for f in fields(config)}
    return out


def load_job_model(job: dict):
    if is_detector_job(job):
        from compression.models.detector import load_detector

        source = job["model"][len("detector:"):]
        return load_detector(None if source == "demo" else source, trust=bool(job.get("trust")),
                             imgsz=job.get("input_size"))
    from compression.models.handle import load_model

    return load_model(job["model"], job.get("weights"), job.get("input_size"))


def load_job_data(job: dict, handle):
    if is_detector_job(job):
        from compression.data.detection import load_detection_data

        return load_detection_data(job["data"])
    from compression.data import load_data
    from compression.models.handle import check_data_fits

    channels = handle.input_shape[0]
    for key in ("mean", "std"):
        if job.get(key) and len(job[key]) not in (1, channels):
            raise CompressionLabError(f"{key} has {len(job[key])} values but {job['model']} reads {channels}-channel "
                                      f"images: give {channels} value{'s' if channels > 1 else ''} (or one)")
    data = load_data(job["data"], input_size=job.get("input_size") or handle.input_shape[-1],
                     mean=tuple(job["mean"]) if job.get("mean") else handle.mean,
                     std=tuple(job["std"]) if job.get("std") else handle.std, in_channels=handle.input_shape[0])
    check_data_fits(handle, data.num_classes)
    return data


def run_compress(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable) -> dict:
    from compression.pipeline import compress
    from compression.plan import Plan

    handle = load_job_model(job)
    data = load_job_data(job, handle)
    result = compress(handle, Plan.from_dict(job["plan"]), data, run_dir, on_progress=progress, on_log=log,
                      cancel_requested=cancelled, latency=job.get("latency", True))
    return result.metrics


def sensitivity_cache_path(job: dict, root: str | Path, handle=None) -> Path:
    """ROOT/cache/sensitivity-<key>.json; the key covers the model, its weights, the data and the settings."""
    from compression.analysis.sensitivity import weights_digest

    job = validate(job)
    handle = handle if handle is not None else load_job_model(job)
    key = sensitivity_config(job["config"]).key(job["model"], job["data"], weights_digest(handle))
    return Path(root) / "cache" / f"sensitivity-{key}.json"


def run_sensitivity(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable) -> dict:
    from compression.analysis.sensitivity import analyze
    from compression.engine.store import write_atomic

    handle = load_job_model(job)
    cache = sensitivity_cache_path(job, run_dir.parents[1], handle)
    cached = cache.exists()
    if cached:
        log(f"served from the cache ({cache.name})")
        tmp = run_dir / ".sensitivity.json.tmp"
        shutil.copyfile(cache, tmp)
        tmp.replace(run_dir / "sensitivity.json")
        report = json.loads(cache.read_text())
    else:
        data = load_job_data(job, handle)
        report = analyze(handle, data, sensitivity_config(job["config"]), on_progress=progress,
                         cancel_requested=cancelled).to_dict()
        text = json.dumps(report)
        write_atomic(run_dir / "sensitivity.json", text)
        write_atomic(cache, text)
    return {"base_accuracy": report["base_accuracy"], "layers": len(report["layers"]),
            "cached": cached}


def _test_sleep(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable) -> dict:
    from compression.methods.context import Cancelled

    started = time.time()
    while (elapsed := time.time() - started) < job["seconds"]:
        if cancelled():
            raise Cancelled("cancelled")
        progress("sleep", elapsed / job["seconds"], {"elapsed": elapsed})
        time.sleep(0.05)
    return {"slept": job["seconds"]}


def _test_hang(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable) -> dict:
    progress("hang", 0.5, {})
    time.sleep(job["seconds"])  # never looks at the cancel flag: the dispatcher has to stop it
    return {"slept": job["seconds"]}


def _test_crash(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable) -> dict:
    progress("crash", 0.5, {})
    raise RuntimeError("test-crash: a deliberate failure\nsecond line")


def runners() -> dict[str, Callable]:
    """Job kind -> runner (the test kinds only with COMPRESSION_LAB_TEST_JOBS=1)."""
    out: dict[str, Callable] = {"compress": run_compress, "sensitivity": run_sensitivity}
    if os.environ.get("COMPRESSION_LAB_TEST_JOBS") == "1":
        out.update({"test-sleep": _test_sleep, "test-hang": _test_hang, "test-crash": _test_crash})
    return out
