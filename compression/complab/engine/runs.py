"""Runs: submit, status, cancel, list, wait, and the files of a run (the engine's public verbs, re-exported by
complab.engine; sweeps.py builds on them). Listing and status calls reap dead workers and start a dispatcher when
runs wait (reaper.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from complab import runfolder, sources
from complab.engine.jobs import sensitivity_cache_path, validate
from complab.engine.keys import content_key
from complab.engine.protocol import CANCELLED_BEFORE, FINAL_STATES, RAY_SETTING
from complab.engine.reaper import kick, reap, try_lock
from complab.engine.store import RunStore, StoreError
from complab.errors import CompressionLabError

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # a run folder's name (never a path)
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _store(root: str | Path | None) -> RunStore:
    return RunStore(root)


def _ensure_dispatcher(store: RunStore) -> dict:
    """Reap dead workers; start a dispatcher when runs are queued and none is running. Returns the dead runs
    that could not be recorded (a read-only data folder, a full disk) as {run_id: {state, error, finished}}."""
    if store.read_only:
        return reap(store, lock_held=True, dry_run=True)
    try:
        lock = try_lock(store.root)
    except OSError:  # the lock file cannot be created (a full disk): show what is there, start nothing
        return reap(store, lock_held=True, dry_run=True)
    if lock is None:  # a dispatcher is alive: it starts the queued runs; still reap for a fresh view
        return reap(store)
    try:
        unrecorded = reap(store, lock_held=True)
    finally:
        lock.close()
    try:
        if store.count("queued"):  # checked after letting go, so a dispatcher turned away meanwhile is replaced
            kick(store.root)
    except (OSError, StoreError):  # a full disk: the runs stay queued and the next call tries again
        pass
    return unrecorded


def _missing(run_id: str, store: RunStore) -> CompressionLabError:
    return CompressionLabError(f"no run {run_id!r} in {store.root}: list runs with `complab runs`")


def _view(store: RunStore, row: dict, unrecorded: dict | None = None) -> dict:
    row.update((unrecorded or {}).get(row["id"], {}))
    row["dir"] = str(store.run_dir(row["id"]))
    row["model"] = row["job"].get("model")
    return row


def absolute_paths(job: dict, cwd: str | Path | None = None) -> dict:
    """The job with every file or folder it names (weights, torchscript:/detector: files, dataset folders and
    yaml) made absolute against `cwd` (default: the caller's working folder), so that a dispatcher started
    elsewhere finds them. Built-in names (demo:, digits, shapes) and absolute paths are left as they are."""
    if not isinstance(job, dict):
        return job
    base = Path(cwd) if cwd is not None else Path(os.getcwd())

    def absolute(path: str) -> str:
        path_obj = Path(path).expanduser()
        return str(path_obj if path_obj.is_absolute() else base / path_obj)

    return sources.with_files(job, lambda key, prefix, path: absolute(path))


def submit(job: dict, root: str | Path | None = None) -> str:
    """Validate and queue a job; returns its run id. Raises CompressionLabError for a bad job (nothing queued),
    StoreError when the data folder is full or read-only. Relative paths are resolved here, where they were typed.
    Always a new run (submit_or_reuse and submit_sweep find an identical one first)."""
    job = validate(absolute_paths(job))
    return insert(job, _store(root), content_key(job))


def insert(job: dict, store: RunStore, key: str | None) -> str:
    """Queue a validated job with its content key (kept in its job.json as "content_key": what later submissions
    compare with, see keys.py; None: never reused) and wake the dispatcher; returns the run id."""
    run_id = store.insert({**job, "content_key": key} if key else job)
    try:
        kick(store.root)
    except OSError:  # queued all the same: the next listing or status call starts a dispatcher
        pass
    return run_id


def status(run_id: str, root: str | Path | None = None) -> dict:
    """The run's row: state, times, pid, error, job, metrics (summary), progress (the last event), dir."""
    store = _store(root)
    unrecorded = _ensure_dispatcher(store)
    row = store.row(run_id)
    if row is None:
        raise _missing(run_id, store)
    return _view(store, row, unrecorded)


def list_runs(root: str | Path | None = None, kind: str | None = None) -> list[dict]:
    """Every run, newest first (optionally of one kind); every run folder is listed, even with a lost index."""
    store = _store(root)
    unrecorded = _ensure_dispatcher(store)
    rows = store.rows(kind=kind)
    store.refresh_records(rows)
    return [_view(store, row, unrecorded) for row in rows]


def cancel(run_id: str, root: str | Path | None = None) -> None:
    """Queued: cancelled at once. Running: the job stops at its next check (killed after 30 s if it does not)."""
    store = _store(root)
    if store.row(run_id) is None:
        raise _missing(run_id, store)
    if store.update(run_id, only_if_state=("queued",), state="cancelled", finished=time.time(),
                    error=CANCELLED_BEFORE):
        return
    store.update(run_id, only_if_state=("running",), cancel=time.time())


def rerun(run_id: str, root: str | Path | None = None) -> str:
    """Submit the same job again; returns the new run id. The new run records where it came from
    (job "origin": {"kind": "rerun", "run": run_id}), which the Compare page's map draws."""
    store = _store(root)
    row = store.row(run_id)
    if row is None:
        raise _missing(run_id, store)
    job = {k: v for k, v in row["job"].items() if k not in ("sweep", "origin")}  # a new run of no sweep
    return submit({**job, "origin": {"kind": "rerun", "run": run_id}}, store.root)


def events(run_id: str, root: str | Path | None = None) -> list[dict]:
    return _store(root).events(run_id)


def log_tail(run_id: str, n: int = 50, root: str | Path | None = None) -> str:
    return _store(root).log_tail(run_id, n)


def run_dir(run_id: str, root: str | Path | None = None) -> Path:
    return _store(root).run_dir(run_id)


def run_file(run_id: str, name: str, root: str | Path | None = None) -> Path:
    """The path of the file `name` (e.g. "model.clab", "plan.json") in a run's folder; it may not exist yet.

    Raises CompressionLabError for an id that is not a run of this data folder or a name that is not a plain
    file name, so a caller (a page, a link) can never reach outside the run's folder."""
    store = _store(root)
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or not store.run_dir(run_id).is_dir():
        raise _missing(str(run_id)[:80], store)
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
        raise CompressionLabError(f"{str(name)[:80]!r} is not a file name in a run's folder: use e.g. model.clab")
    return store.run_dir(run_id) / name


def settings(root: str | Path | None = None, max_workers: int | None = None, ray_address: str | None = None) -> dict:
    """The engine settings (max_workers, ray_address, root, read_only), after storing `max_workers` and
    `ray_address` ("local" for the local workers) when given ($COMPRESSION_LAB_WORKERS and $COMPRESSION_LAB_RAY
    override them). Every process using this data folder (the app, the CLI, the dispatcher) reads the same ones."""
    store = _store(root)
    if max_workers is not None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise CompressionLabError(f"max_workers {max_workers!r} must be a whole number of at least 1")
        store.set_setting("max_workers", str(max_workers))
    if ray_address is not None:
        if not isinstance(ray_address, str) or not re.fullmatch(r"[\w.:/\[\]-]{0,300}", ray_address.strip()):
            raise CompressionLabError(f"Ray address {str(ray_address)[:80]!r} is not an address: use HOST:PORT "
                                      "(the head's, e.g. 10.0.0.5:6379), auto, or local")
        if ray_address.strip() != (store.get_setting(RAY_SETTING) or ""):
            store.set_setting(RAY_SETTING, ray_address.strip())
    return {"max_workers": store.max_workers(), "ray_address": store.ray_address(), "root": str(store.root),
            "read_only": store.read_only}


def engine_info(root: str | Path | None = None) -> dict:
    """Which engine runs jobs, for the sidebar: {"engine": "local", "workers"} or {"engine": "ray", "address",
    "nodes", "cpus", "gpus"} ("error" instead when the cluster cannot be reached). Asks the cluster in a short-lived
    process, so the caller (the Streamlit server) never becomes a Ray driver; call it at most every ~30 s."""
    store = _store(root)
    addr = store.ray_address()
    if addr is None:
        return {"engine": "local", "workers": store.max_workers()}
    try:
        done = subprocess.run([sys.executable, "-m", "complab.engine.ray_backend", addr], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        found = {"error": f"cannot reach the Ray cluster at {addr} (no answer within 30 s)"}
    return {"engine": "ray", "address": addr, **found}


def cached_sensitivity(job: dict, root: str | Path | None = None) -> dict | None:
    """The cached sensitivity report for this job (same model, weights, data and settings), or None.
    Loads the model in the calling process to fingerprint its weights."""
    path = sensitivity_cache_path(absolute_paths(job), _store(root).root)  # the key submit() will use
    if path is None or not path.is_file():
        return None
    report, problem = runfolder.read_json(path)  # bounded in size and depth, like every JSON the store reads
    return report if problem is None and isinstance(report, dict) else None


def wait(run_id: str, timeout: float = 600.0, root: str | Path | None = None, poll: float = 0.5) -> dict:
    """Poll until the run reaches a final state; raises CompressionLabError after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        row = status(run_id, root)
        if row["state"] in FINAL_STATES:
            return row
        if time.time() > deadline:
            raise CompressionLabError(f"run {run_id} is still {row['state']} after {timeout:.0f} s: "
                                      "see `complab runs`")
        time.sleep(poll)

