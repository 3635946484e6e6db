"""Job kinds: validation at submit time (in the caller's process, cheap) and execution (in a worker process).

    compress     {"kind": "compress", "model", "weights", "data", "input_size", "mean", "std",
                  "plan": Plan.to_dict(), "latency": true}
                 (any kind may carry "sweep": {"id", "index", "target"}: the group it was submitted in, see sweeps.py;
                  and "origin": {"kind": "rerun" | "recipe", "run"}: the run it was re-run from or whose recipe its
                  plan started from, drawn by the Compare page's map, analysis/lineage.py)
    sensitivity  {"kind": "sensitivity", "model", ..., "config": {sparsities, n_clusters, val_size, seed, bn_batches,
                  mode: "exact" | "estimate", calibration_seconds}}
                 progress after every point: values {layer, point, done, total, eta_s}; a cancel stops
                 within one point; bad input (no layers, too few validation images, too little memory)
                 fails the run with its one-line message

A runner is `run(job, run_dir, progress, log, cancelled, split=None) -> metrics dict`; it writes its result
files whole (temporary name, then rename). `split` is what a Ray task passes (ray_backend.split_here): a way to
spread an exact sensitivity analysis over the cluster, `split(handle, data, config, progress, cancelled, log)`
-> the report, or None to measure it here; nothing in this module imports a backend. With
COMPRESSION_LAB_TEST_JOBS=1 more kinds exist for the engine's own tests: `test-sleep` ({"seconds"}),
`test-hang` (ignores cancel) and `test-crash` (raises).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from complab import runfolder, sources
from complab.engine.keys import content_key
from complab.engine.store import write_atomic
from complab.errors import CompressionLabError
from complab.plan import Plan

JOB_KEYS = {"kind", "model", "weights", "data", "input_size", "mean", "std", "plan", "latency", "config", "seconds",
            "trust", "predicted", "sweep", "content_key",  # content_key: accepted and dropped (submit computes it)
            "origin"}
# a compress job's predicted accuracy (fractions; accuracy_low/high: its range, issue 26's, absent in older jobs)
PREDICTED_NUMBERS = ("accuracy", "drop", "low", "high", "raw_drop", "accuracy_low", "accuracy_high")
PREDICTED_TEXTS = ("model", "basis", "warning")


def sensitivity_config(config: dict):
    """SensitivityConfig from a job's config dict, or a CompressionLabError naming the bad value."""
    from complab.analysis.sensitivity import SensitivityConfig  # (imports torch: validating a job must not)

    known = {f.name for f in fields(SensitivityConfig)}
    if not isinstance(config, dict) or set(config) - known:
        raise CompressionLabError(f"sensitivity config keys must be among {sorted(known)}")
    out = SensitivityConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    if not out.sparsities or not all(isinstance(s, int | float) and 0 <= s < 1 for s in out.sparsities):
        raise CompressionLabError(f"sensitivity sparsities {list(out.sparsities)} must be numbers from 0 to 0.999")
    if not out.n_clusters or not all(isinstance(k, int) and 2 <= k <= 256 for k in out.n_clusters):
        raise CompressionLabError(f"sensitivity n_clusters {list(out.n_clusters)} must be integers from 2 to 256")
    if not all(isinstance(b, int) and not isinstance(b, bool) and 2 <= b <= 8 for b in out.bits):
        raise CompressionLabError(f"sensitivity bits {list(out.bits)[:10]} must be integers from 2 to 8")
    if not isinstance(out.val_size, int) or out.val_size < 1 or not isinstance(out.seed, int):
        raise CompressionLabError("sensitivity val_size must be a positive integer and seed an integer")
    if isinstance(out.bn_batches, bool) or not isinstance(out.bn_batches, int) or not 0 <= out.bn_batches <= 1000:
        raise CompressionLabError(f"sensitivity bn_batches {str(out.bn_batches)[:20]} must be an integer from 0 "
                                  "(keep the original batch-norm statistics) to 1000")
    if out.mode not in ("exact", "estimate"):
        raise CompressionLabError(f"sensitivity mode {str(out.mode)[:20]!r} must be 'exact' or 'estimate'")
    if isinstance(out.calibration_seconds, bool) or not isinstance(out.calibration_seconds, int | float) \
            or not 0 <= out.calibration_seconds <= 86_400:
        raise CompressionLabError(f"sensitivity calibration_seconds {str(out.calibration_seconds)[:20]} must be a "
                                  "number of seconds from 0 to 86400")
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
    tag = {"sweep": sweep_tag(job["sweep"])} if job.get("sweep") is not None else {}
    if job.get("origin") is not None:
        tag["origin"] = origin_tag(job["origin"])
    if kind.startswith("test-"):
        return {"kind": kind, "seconds": float(job.get("seconds", 0.0)), **tag}
    out = {"kind": kind, **sources.check(job, compress=True), **tag}  # both kinds change weights: no TorchScript
    if kind == "compress":
        out["plan"] = Plan.from_dict(job.get("plan")).to_dict()  # an impossible plan never queues
        out["latency"] = bool(job.get("latency", True))
        if job.get("predicted") is not None:
            out["predicted"] = _predicted(job["predicted"])
    else:
        config = sensitivity_config(job.get("config") or {})
        out["config"] = {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
                         for f in fields(config)}
    return out


SWEEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def sweep_tag(tag) -> dict:
    """A job's sweep membership {"id", "index", "target"}: a short id, a whole index and a short label only."""
    if not isinstance(tag, dict) or set(tag) - {"id", "index", "target"}:
        raise CompressionLabError("a job's 'sweep' must be an object with id, index and target")
    sweep_id, index, target = tag.get("id"), tag.get("index"), tag.get("target", "")
    if not isinstance(sweep_id, str) or not SWEEP_ID.fullmatch(sweep_id):
        raise CompressionLabError(f"a job's sweep id {str(sweep_id)[:70]!r} must be letters, digits, - and _")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1000:
        raise CompressionLabError(f"a job's sweep index {str(index)[:20]!r} must be a whole number from 0 to 999")
    if not isinstance(target, str | int | float) or isinstance(target, bool) or len(str(target)) > 80:
        raise CompressionLabError("a job's sweep target must be a short label, e.g. ratio:20")
    return {"id": sweep_id, "index": index, "target": str(target)}


def origin_tag(origin) -> dict:
    """A job's provenance {"kind": "rerun" | "recipe", "run": RUN_ID}: checked like the folder's (runfolder), refused
    here at submit time with what to fix. It never changes what the run computes (keys.py leaves it out)."""
    checked = runfolder.check_origin(origin)
    if checked is None:
        raise CompressionLabError(f"a job's origin {str(origin)[:80]!r} must be {{'kind': 'rerun' or 'recipe', "
                                  "'run': a run id (letters, digits, - and _)}")
    return checked


def _predicted(predicted) -> dict:
    """The plan page's predicted accuracy, kept with the run so the Compare page can set it against the measured
    one: finite numbers and the model's description only."""
    if not isinstance(predicted, dict):
        raise CompressionLabError("a job's 'predicted' must be an object of numbers (predict()'s result)")
    out = {}
    for key in PREDICTED_NUMBERS:
        value = predicted.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CompressionLabError(f"a job's predicted {key} {str(value)[:20]!r} must be a finite number")
        out[key] = float(value)
    for key in PREDICTED_TEXTS:
        if isinstance(predicted.get(key), str):
            out[key] = predicted[key][:500]
    return out


def run_compress(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable,
                 split: Callable | None = None) -> dict:
    from complab.pipeline import compress  # (imports torch: only in a worker)

    handle = sources.load_model(job)
    data = sources.load_data(job, handle)
    result = compress(handle, Plan.from_dict(job["plan"]), data, run_dir, on_progress=progress, on_log=log,
                      cancel_requested=cancelled, latency=job.get("latency", True), make_out_dir=False)
    return result.metrics


def sensitivity_data_ref(job: dict) -> str | None:
    """What the sensitivity cache key says about the data: the reference and the job's content key (its data's
    files, model files, settings and the code version: keys.py), so a report of changed data, other weights or
    another release is never served. `job` is as submitted (its recorded content_key is used when it has one).
    None: the data is too big to fingerprint, so nothing is cached."""
    key = job.get("content_key") if isinstance(job.get("content_key"), str) else content_key(validate(job))
    return None if key is None else f"{job.get('data')}#{key}"


def sensitivity_cache_path(job: dict, root: str | Path, handle=None) -> Path | None:
    """ROOT/cache/sensitivity-<key>.json; the key covers the model, its weights, the data's files and the
    settings (None when the data is too big to fingerprint: no cache)."""
    from complab.analysis.sensitivity import weights_digest  # (imports torch)

    data_ref = sensitivity_data_ref(job)
    if data_ref is None:
        return None
    job = validate(job)
    handle = handle if handle is not None else sources.load_model(job)
    key = sensitivity_config(job["config"]).key(job["model"], data_ref, weights_digest(handle))
    return Path(root) / "cache" / f"sensitivity-{key}.json"


def run_sensitivity(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable,
                    split: Callable | None = None) -> dict:
    from complab.analysis.sensitivity import analyze  # (imports torch: only in a worker)

    handle = sources.load_model(job)
    cache = sensitivity_cache_path(job, run_dir.parents[1], handle)
    cached = cache is not None and cache.exists()
    if cached:
        log(f"served from the cache ({cache.name})")
        tmp = run_dir / ".sensitivity.json.tmp"
        shutil.copyfile(cache, tmp)
        tmp.replace(run_dir / "sensitivity.json")
        report = json.loads(cache.read_text())
    else:
        config = sensitivity_config(job["config"])
        data = sources.load_data(job, handle)
        # inside a Ray task on a cluster with CPUs to spare, `split` measures groups of layers as tasks of their own
        report = split(handle, data, config, progress, cancelled, log) if split is not None else None
        if report is None:
            report = analyze(handle, data, config, on_progress=progress, cancel_requested=cancelled).to_dict()
        text = json.dumps(report)
        write_atomic(run_dir / "sensitivity.json", text)
        if cache is not None:
            write_atomic(cache, text)
    return {"base_accuracy": report["base_accuracy"], "layers": len(report["layers"]),
            "cached": cached}


def _test_sleep(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable,
                split: Callable | None = None) -> dict:
    from complab.methods.context import Cancelled  # (imports torch)

    started = time.time()
    while (elapsed := time.time() - started) < job["seconds"]:
        if cancelled():
            raise Cancelled("cancelled")
        progress("sleep", elapsed / job["seconds"], {"elapsed": elapsed})
        time.sleep(0.05)
    return {"slept": job["seconds"]}


def _test_hang(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable,
               split: Callable | None = None) -> dict:
    progress("hang", 0.5, {})
    time.sleep(job["seconds"])  # never looks at the cancel flag: the dispatcher has to stop it
    return {"slept": job["seconds"]}


def _test_crash(job: dict, run_dir: Path, progress: Callable, log: Callable, cancelled: Callable,
                split: Callable | None = None) -> dict:
    progress("crash", 0.5, {})
    raise RuntimeError("test-crash: a deliberate failure\nsecond line")


def runners() -> dict[str, Callable]:
    """Job kind -> runner (the test kinds only with COMPRESSION_LAB_TEST_JOBS=1)."""
    out: dict[str, Callable] = {"compress": run_compress, "sensitivity": run_sensitivity}
    if os.environ.get("COMPRESSION_LAB_TEST_JOBS") == "1":
        out.update({"test-sleep": _test_sleep, "test-hang": _test_hang, "test-crash": _test_crash})
    return out
