"""The Ray backend: runs and sensitivity analyses as Ray tasks on a cluster the user already runs.

    COMPRESSION_LAB_RAY=ADDRESS (or auto), `complab --ray ADDRESS ...`, `streamlit run app.py -- --ray ADDRESS`
    (the last two store it in the data folder's settings, so the app, the CLI and the dispatcher agree)

The dispatcher stays where the app runs and keeps the store: it claims queued runs up to what the cluster can run
at once and drives each as one Ray task (a streaming generator, `run_job`). The task names its node first, then
sends progress events and log lines while it runs and its result files (bytes) when it ends; the dispatcher
writes them into the run folder exactly as a local worker would (recording.Progress, recording.end_run). Files and
folders the job names (weights, model files, dataset folders) travel with the task when they are small
(COMPRESSION_LAB_RAY_SHIP_MB, default 64 MB in all); bigger ones must be readable on the node at the same path,
else the run fails at once saying so. Each task asks for COMPRESSION_LAB_RAY_CPUS CPUs (default 1, also torch's
thread count there) and, when the cluster has GPUs, COMPRESSION_LAB_RAY_GPUS GPUs (default 1: a job uses CUDA
whenever it sees it). A cancel reaches the task (ray.cancel; forced after the grace); a run whose node dies is run
once more on another node (its log in log.attempt2.txt), and fails naming both attempts if that node dies too;
nothing else changes. Importing this module does not import ray.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import socket
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from complab import sources
from complab.engine.jobs import runners, sensitivity_config
from complab.engine.protocol import (
    ITEM_CACHED,
    ITEM_CANCELLED,
    ITEM_ERROR,
    ITEM_LOG,
    ITEM_NODE,
    ITEM_PROGRESS,
    ITEM_RESULT,
    RAY_ENV,
    RAY_LOCAL,
    RAY_SETTING,
)
from complab.engine.protocol import event as progress_event
from complab.engine.recording import disk_full
from complab.errors import CompressionLabError, first_line

ENV, SETTING, LOCAL = RAY_ENV, RAY_SETTING, RAY_LOCAL  # (protocol's: which backend runs the jobs)
NAMESPACE = "compression-lab"
LOCAL = ("", "local", "none", "off")  # values that mean: the local workers
SHIP_MB = 64.0  # files the job names travel with the task up to this many MB in all ($COMPRESSION_LAB_RAY_SHIP_MB)
EVENT_INTERVAL = 0.2  # seconds between progress events a task sends (the store side rate-limits again)
TASK_CANCEL_JOIN = 20.0  # seconds a cancelled task waits for its job thread to stop before it returns anyway
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


# --- which engine -----------------------------------------------------------------------------------------------

def address(store=None, strict: bool = False) -> str | None:
    """The Ray address in use (RunStore.ray_address; without a store, $COMPRESSION_LAB_RAY only)."""
    if store is not None:
        return store.ray_address(strict)
    value = (os.environ.get(RAY_ENV) or "").strip()
    return None if value.lower() in RAY_LOCAL else value


def connect(addr: str) -> None:
    """Join the cluster at `addr` as a driver (once per process); CompressionLabError naming the address and the fix."""
    import ray  # (here: importing this module never imports ray, an optional dependency slow to import)

    if ray.is_initialized():
        return
    _probe(addr)
    try:
        ray.init(address=addr, namespace=NAMESPACE, log_to_driver=False, ignore_reinit_error=True,
                 logging_level="WARNING")
    except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError: all mean "not reachable"
        raise CompressionLabError(
            f"cannot reach the Ray cluster at {addr} ({first_line(exc)}): start it (`ray start --head` on the head "
            f"machine, then use HEAD_IP:6379), or use the local workers (unset {ENV}, or pass --ray local)") from exc


def _probe(addr: str, timeout: float = 5.0) -> None:
    """Fail in seconds when nothing listens at HOST:PORT (ray.init would wait minutes for a GCS that is not there)."""
    host, _, port = addr.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: ray.init resolves them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise CompressionLabError(
            f"cannot reach the Ray cluster at {addr} ({exc.strerror or type(exc).__name__}): start it (`ray start "
            f"--head` on the head machine, then use HEAD_IP:6379), or use the local workers (unset {ENV}, or pass "
            "--ray local)") from exc


def resources() -> dict:
    """What the connected cluster has: {"nodes", "cpus", "gpus"} over the live nodes."""
    import ray  # (as in connect)

    alive = [node for node in ray.nodes() if node.get("Alive")]
    return {"nodes": len(alive), "cpus": sum(node["Resources"].get("CPU", 0) for node in alive),
            "gpus": sum(node["Resources"].get("GPU", 0) for node in alive)}


def _number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def task_cpus() -> int:
    return max(1, int(_number("COMPRESSION_LAB_RAY_CPUS", 1)))


def task_gpus(cluster_gpus: float) -> float:
    """GPUs a task asks for: none on a cluster without GPUs, else $COMPRESSION_LAB_RAY_GPUS (default 1)."""
    return 0.0 if cluster_gpus < 1 else max(0.0, _number("COMPRESSION_LAB_RAY_GPUS", 1))


# --- files the job names ------------------------------------------------------------------------------------------

def local_paths(job: dict) -> list[tuple[str, str, str]]:
    """(key, prefix, path) for each file or folder the job names on disk (sources.named_files)."""
    return sources.named_files(job)


def _over(roots: set[str], limit: float) -> bool:
    """True once the files under `roots` pass `limit` bytes (stops counting there: a big dataset is not walked)."""
    total = 0
    for root in roots:
        path = Path(root)
        for item in [path] if path.is_file() else path.rglob("*"):
            if item.is_file():
                total += item.stat().st_size
                if total > limit:
                    return True
    return False


def pack(job: dict, limit_mb: float | None = None) -> dict[str, bytes]:
    """{path: tar bytes} of the files and folders the job names when they total at most the limit, else {}
    (then each must be readable on the node at the same path)."""
    limit = (limit_mb if limit_mb is not None else ship_limit_mb()) * 1e6
    roots = {str(sources.file_root(prefix, path)) for _, prefix, path in local_paths(job)}
    try:
        if not roots or _over(roots, limit):
            return {}
    except OSError:
        return {}
    out = {}
    for root in sorted(roots):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(root, arcname=Path(root).name)
        out[root] = buffer.getvalue()
    return out


def ship_limit_mb() -> float:
    return _number("COMPRESSION_LAB_RAY_SHIP_MB", SHIP_MB)


def localize(job: dict, shipped: dict[str, bytes], into: Path, node: str, limit_mb: float | None = None) -> dict:
    """The job with its shipped paths unpacked under `into` and rewritten; a path neither shipped nor readable
    here raises CompressionLabError saying what to do (`limit_mb`: the dispatcher's shipping limit, named there)."""
    out = dict(job)
    unpacked: dict[str, Path] = {}
    for number, (root, blob) in enumerate(sorted(shipped.items())):
        target = into / f"shipped-{number}"
        target.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(target, filter="data")
        unpacked[root] = target / Path(root).name
    limit = ship_limit_mb() if limit_mb is None else limit_mb
    for key, prefix, path in local_paths(job):
        root = sources.file_root(prefix, path)
        if str(root) in unpacked:  # the path as unpacked here (a yolo yaml inside its unpacked folder)
            out[key] = prefix + str(unpacked[str(root)] / Path(path).relative_to(root))
        elif not os.access(path, os.R_OK):
            what = "dataset folder" if key == "data" else "model file"
            raise CompressionLabError(
                f"the {what} {path} is not readable on Ray node {node}: put it on storage every node mounts at "
                f"the same path, or keep what the job names under {limit:g} MB in all so it is shipped with the "
                "task ($COMPRESSION_LAB_RAY_SHIP_MB)")
    return out


# --- the task (runs on a node) ---------------------------------------------------------------------------------

class _Latest:
    """The job's on_progress inside a task: keeps the latest event; the task sends it at most every EVENT_INTERVAL."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.event: dict | None = None

    def __call__(self, stage: str, fraction: float, values: dict | None = None) -> None:
        sent = {k: v for k, v in progress_event(stage, fraction, values).items() if k != "time"}  # the driver's time
        with self.lock:
            self.event = sent

    def take(self) -> dict | None:
        with self.lock:
            event, self.event = self.event, None
        return event


# inside a run_job task: the job as submitted, its shipped files and options (for a runner that splits its work
# into tasks of its own: split_sensitivity); empty elsewhere
_TASK: dict = {}
MAX_SENSITIVITY_PARTS = 64


def sensitivity_parts(config, n_layers: int) -> int:
    """How many tasks an exact sensitivity analysis run by this task splits into: one per CPU the cluster has
    (each part asks for the task's CPUs), at most one per layer; 1 outside a Ray task, in estimate mode (its
    gradients cover every layer at once) or on a one-CPU cluster."""
    if not _TASK or config.mode != "exact" or n_layers < 2:
        return 1
    cpus = max(1, int(_TASK["options"].get("cpus", 1)))
    return max(1, min(n_layers, int(resources()["cpus"] // cpus), MAX_SENSITIVITY_PARTS))


def sensitivity_part(job: dict, shipped: dict, config: dict, layers: list[str], cpus: int) -> dict:
    """One part of a split analysis (a Ray task): the job's files unpacked here as run_job does, then the exact
    analysis of `layers` only. Returns the part's report, with the node it ran on."""
    import ray  # (in a function: importing this module never imports ray, nor torch and the analysis)
    import torch

    from complab.analysis.sensitivity import analyze

    torch.set_num_threads(max(1, int(cpus)))
    ip = ray.util.get_node_ip_address()
    with tempfile.TemporaryDirectory(prefix="clab-part-") as tmp:
        job = localize(job, {root: ray.get(ref) for root, ref in shipped.items()}, Path(tmp), ip)
        handle = sources.load_model(job)
        data = sources.load_data(job, handle)
        report = analyze(handle, data, sensitivity_config(config), layers=layers).to_dict()
    report["node"] = f"{ip} ({ray.get_runtime_context().get_node_id()[:12]})"
    return report


def split_sensitivity(handle, data, config, parts: int, progress, cancelled, log) -> dict:
    """An exact analysis split by layer across the cluster (called by the sensitivity runner inside a run_job task):
    `parts` groups of consecutive layers (sensitivity.layer_groups); this task measures the first group itself (on
    the CPU it holds) while one task per other group runs elsewhere, then the parts are merged into the report one
    task would write. Progress: per point in this task's group, then per finished part; a cancel cancels every part."""
    import ray  # (ray, torch and the analysis only in a task: see sensitivity_part)

    from complab.analysis.sensitivity import analyze, layer_groups, merge_reports
    from complab.methods.context import Cancelled

    names = list(handle.prunable_layers())
    groups = layer_groups(names, parts)
    cpus = max(1, int(_TASK["options"].get("cpus", 1)))
    remote = ray.remote(sensitivity_part).options(num_cpus=cpus, max_retries=0)
    config_dict = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    pending = {remote.remote(_TASK["job"], _TASK["shipped"], config_dict, group, cpus): group for group in groups[1:]}
    log(f"sensitivity split into {len(groups)} parts of {', '.join(str(len(g)) for g in groups)} layers "
        "(the first measured by this task, the others as tasks of their own)")
    started, done_layers = time.monotonic(), 0

    def step(stage: str, fraction: float, values: dict) -> None:  # this task's own group, scaled to the whole
        progress(stage, fraction * len(groups[0]) / len(names),
                 {**values, "done": round(fraction * len(groups[0]), 1), "total": len(names), "parts": len(groups),
                  "eta_s": None})

    try:
        own = analyze(handle, data, config, on_progress=step, cancel_requested=cancelled, layers=groups[0]).to_dict()
        own["node"] = f"{_TASK.get('node')} (this task)"
        results = [own]
        done_layers = len(groups[0])
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            if cancelled():
                raise Cancelled("the sensitivity analysis was cancelled")
            for ref in ready:
                group = pending.pop(ref)
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:  # a part's own message (a bad dataset...), as it is
                    if isinstance(getattr(exc, "cause", None), CompressionLabError):
                        raise exc.cause from None
                    raise
                done_layers += len(group)
                elapsed = time.monotonic() - started
                log(f"part of {len(group)} layers ({group[0]}..{group[-1]}) done on {results[-1]['node']}")
                progress("sensitivity", done_layers / len(names),
                         {"layer": group[-1], "done": done_layers, "total": len(names), "parts": len(groups),
                          "eta_s": round(elapsed / done_layers * (len(names) - done_layers), 1)})
    finally:
        for ref in pending:
            ray.cancel(ref)
    report = merge_reports(results, names)
    report["config"]["parts_nodes"] = sorted({part["node"] for part in results})
    return report


def split_here(handle, data, config, progress, cancelled, log) -> dict | None:
    """The sensitivity runner's `split` inside a run_job task (jobs.run_sensitivity): the report of an analysis
    split across the cluster, or None when it is not worth splitting (sensitivity_parts) and runs in this task."""
    parts = sensitivity_parts(config, len(handle.prunable_layers()))
    if parts <= 1:
        return None
    return split_sensitivity(handle, data, config, parts, progress, cancelled, log)


def run_job(job: dict, run_id: str, shipped: dict, options: dict):
    """The Ray task (a streaming generator): yields {"type": "node"}, then "progress" and "log" items, and last a
    "result" (metrics and the result files' bytes) or an "error". A cancel (KeyboardInterrupt) stops the job."""
    import ray  # (runs in a Ray task: ray is imported there already)

    node = {"type": ITEM_NODE, "node_id": ray.get_runtime_context().get_node_id(),
            "ip": ray.util.get_node_ip_address(), "pid": os.getpid()}
    yield node
    if options.get("test_jobs"):
        os.environ["COMPRESSION_LAB_TEST_JOBS"] = "1"
    with tempfile.TemporaryDirectory(prefix="clab-") as tmp:
        as_submitted = job
        try:
            job = localize(job, {root: ray.get(ref) for root, ref in shipped.items()}, Path(tmp), node["ip"],
                           options.get("ship_mb"))
            cache_name = _cache_name(as_submitted, job) if job["kind"] == "sensitivity" else None
        except CompressionLabError as exc:
            yield {"type": ITEM_ERROR, "message": str(exc)}
            return
        if cache_name in options.get("cache_names", ()):
            yield {"type": ITEM_CACHED, "name": cache_name}  # the app's cache has this report: nothing to compute
            return
        run_dir = Path(tmp) / "runs" / run_id  # the runners find ROOT/cache two folders up, as in a data folder
        run_dir.mkdir(parents=True)
        (Path(tmp) / "cache").mkdir()
        lines: queue.Queue = queue.Queue()
        progress, stop, outcome = _Latest(), threading.Event(), {}

        def body() -> None:
            import torch  # (in the task only: see split_sensitivity)

            from complab.methods.context import Cancelled  # (imports torch)

            torch.set_num_threads(int(options.get("cpus", 1)))
            _TASK.update(job=as_submitted, shipped=shipped, options=options, node=node["ip"])
            try:
                outcome["metrics"] = runners()[job["kind"]](job, run_dir, progress, lambda line: lines.put(line),
                                                            stop.is_set, split=split_here)
            except Cancelled:
                outcome["cancelled"] = True
            except BaseException as exc:  # noqa: BLE001 - sent back as the run's error, with the traceback
                outcome["error"] = exc
                outcome["traceback"] = traceback.format_exc()
            finally:
                _TASK.clear()  # Ray reuses this worker process for other tasks

        thread = threading.Thread(target=body, name=f"job-{run_id}", daemon=True)
        thread.start()
        progress("start", 0.0)
        try:
            while thread.is_alive():
                thread.join(EVENT_INTERVAL)
                while not lines.empty():
                    yield {"type": ITEM_LOG, "line": lines.get()}
                if (event := progress.take()) is not None:
                    yield {"type": ITEM_PROGRESS, **event}
        finally:  # a cancel (KeyboardInterrupt) or the driver going away: stop the job before the folder goes
            stop.set()
            thread.join(TASK_CANCEL_JOIN)
        while not lines.empty():
            yield {"type": ITEM_LOG, "line": lines.get()}
        if (event := progress.take()) is not None:
            yield {"type": ITEM_PROGRESS, **event}
        if outcome.get("cancelled"):
            yield {"type": ITEM_CANCELLED}
            return
        if "error" in outcome:
            exc = outcome["error"]
            message = str(exc) if isinstance(exc, CompressionLabError) else \
                f"{type(exc).__name__}: {first_line(exc, 300)} (see the log)"
            yield {"type": ITEM_ERROR, "message": message, "traceback": outcome["traceback"],
                   "disk_full": disk_full(exc, run_dir)}
            return
        files = {path.name: path.read_bytes() for path in run_dir.iterdir()
                 if path.is_file() and _FILE_NAME.fullmatch(path.name)}
        # the report under the key the app computes (from the paths as submitted, not where they were unpacked)
        made = sorted((Path(tmp) / "cache").glob("sensitivity-*.json"))
        cache = {cache_name: made[0].read_bytes()} if cache_name and made else {}
        yield {"type": ITEM_RESULT, "metrics": outcome.get("metrics"), "files": files, "cache": cache}


def _cache_name(as_submitted: dict, here: dict) -> str | None:
    """The sensitivity cache file's name for this job as the app names it: the key covers the model and data as
    submitted (the paths on the app's machine, and the content key recorded there) and the weights, read from the
    model as loaded here. None for a job with no recorded content key (nothing cached)."""
    from complab.analysis.sensitivity import weights_digest  # (imports torch: only in a task)

    # the stored job was validated at submit; validating it again here would look for the app's paths on this node
    if not isinstance(as_submitted.get("content_key"), str):
        return None
    data_ref = f"{as_submitted['data']}#{as_submitted['content_key']}"  # as jobs.sensitivity_data_ref
    key = sensitivity_config(as_submitted["config"]).key(as_submitted["model"], data_ref,
                                                         weights_digest(sources.load_model(here)))
    return f"sensitivity-{key}.json"  # as jobs.sensitivity_cache_path names it


if __name__ == "__main__":  # `python -m complab.engine.ray_backend ADDRESS`: the cluster's resources as JSON
    try:
        connect(sys.argv[1])
        print(json.dumps(resources()))
    except CompressionLabError as exc:
        print(json.dumps({"error": str(exc)}))
