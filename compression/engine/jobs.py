"""Job kinds: validation at submit time (in the caller's process, cheap) and execution (in a worker process)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from compression.errors import CompressionLabError

MODEL_PREFIXES = ("demo:", "torchvision:", "torchscript:")
DATA_PREFIXES = ("digits", "imagefolder:", "cifar10:", "cifar100:")


def validate(job: dict) -> dict:
    """Check a job without loading anything heavy; returns a normalised copy or raises CompressionLabError."""
    if not isinstance(job, dict):
        raise CompressionLabError("a job must be a JSON object with a 'kind'")
    kind = job.get("kind")
    if kind not in RUNNERS:
        raise CompressionLabError(f"unknown job kind {kind!r}: use one of {', '.join(RUNNERS)}")
    model = job.get("model")
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIXES):
        raise CompressionLabError(f"job model {model!r} is not a model reference: use demo:NAME, "
                                  "torchvision:ARCH (with weights) or torchscript:FILE")
    if model.startswith("demo:"):
        from compression.models.zoo import DEMO_MODELS

        if model[5:] not in DEMO_MODELS:
            raise CompressionLabError(f"unknown demo model {model[5:]!r}: choose one of {', '.join(DEMO_MODELS)}")
    for path in (job.get("weights"), model[12:] if model.startswith("torchscript:") else None):
        if path and not Path(path).is_file():
            raise CompressionLabError(f"model file {path} does not exist: check the path")
    data = job.get("data")
    if not isinstance(data, str) or not data.startswith(DATA_PREFIXES):
        raise CompressionLabError(f"job data {data!r} is not a dataset reference: use digits, imagefolder:DIR, "
                                  "cifar10:DIR or cifar100:DIR")
    if ":" in data and not Path(data.split(":", 1)[1]).expanduser().is_dir():
        raise CompressionLabError(f"dataset folder {data.split(':', 1)[1]} does not exist: check the path")
    out = {"model": model, "weights": job.get("weights"), "data": data, "input_size": job.get("input_size"),
           "mean": job.get("mean"), "std": job.get("std"), "kind": kind}
    if kind == "compress":
        from compression.plan import Plan

        out["plan"] = Plan.from_dict(job.get("plan")).to_dict()
        out["latency"] = bool(job.get("latency", True))
    else:
        from compression.analysis.sensitivity import SensitivityConfig

        config = job.get("config") or {}
        known = {f.name for f in fields(SensitivityConfig)}
        if not isinstance(config, dict) or set(config) - known:
            raise CompressionLabError(f"sensitivity config keys must be among {sorted(known)}")
        out["config"] = config
    return out


def _load(job: dict):
    from compression.data import load_data
    from compression.models.handle import check_data_fits, load_model

    handle = load_model(job["model"], job.get("weights"), job.get("input_size"))
    data = load_data(job["data"], input_size=job.get("input_size") or handle.input_shape[-1],
                     mean=tuple(job["mean"]) if job.get("mean") else handle.mean,
                     std=tuple(job["std"]) if job.get("std") else handle.std, in_channels=handle.input_shape[0])
    check_data_fits(handle, data.num_classes)
    return handle, data


def run_compress(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable) -> dict:
    from compression.pipeline import compress
    from compression.plan import Plan

    handle, data = _load(job)
    result = compress(handle, Plan.from_dict(job["plan"]), data, run_dir, on_progress=progress, on_log=log,
                      cancel_requested=cancelled, latency=job.get("latency", True))
    return result.metrics


def cached_sensitivity_path(job: dict, root: Path, handle=None) -> Path:
    from compression.analysis.sensitivity import SensitivityConfig, weights_digest

    config = SensitivityConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})
    if handle is None:
        handle, _ = _load(job)
    key = config.key(job["model"], job["data"], weights_digest(handle))
    return Path(root) / "cache" / f"sensitivity-{key}.json"


def run_sensitivity(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable) -> dict:
    from compression.analysis.sensitivity import SensitivityConfig, analyze
    from compression.engine.store import write_atomic

    handle, data = _load(job)
    cache = cached_sensitivity_path(job, run_dir.parents[1], handle)
    if cache.exists():
        log(f"served from the cache ({cache.name})")
        shutil.copyfile(cache, run_dir / "sensitivity.json")
        report = json.loads(cache.read_text())
    else:
        config = SensitivityConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})
        report = analyze(handle, data, config, on_progress=progress, cancel_requested=cancelled).to_dict()
        text = json.dumps(report)
        write_atomic(run_dir / "sensitivity.json", text)
        write_atomic(cache, text)
    progress("done", 1.0, {})
    return {"base_accuracy": report["base_accuracy"], "layers": len(report["layers"])}


RUNNERS: dict[str, Callable] = {"compress": run_compress, "sensitivity": run_sensitivity}
