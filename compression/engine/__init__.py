"""The engine: background jobs (compression runs, sensitivity analyses) that survive crashes and restarts.

    run_id = submit(job); status(run_id); cancel(run_id); list_runs(); wait(run_id, timeout)

Jobs run in worker processes started by a dispatcher process, never in the caller (the Streamlit
server). `root` is the data folder (default $COMPRESSION_LAB_HOME, else a per-user data folder).
"""

from __future__ import annotations

import time
from pathlib import Path

from compression.engine.dispatcher import kick, reap, try_lock
from compression.engine.jobs import validate
from compression.engine.store import FINAL_STATES, RunStore
from compression.errors import CompressionLabError

__all__ = ["FINAL_STATES", "cancel", "events", "list_runs", "log_tail", "rerun", "run_dir", "set_max_workers",
           "status", "submit", "wait"]


def _store(root) -> RunStore:
    return RunStore(root)


def _ensure_dispatcher(store: RunStore) -> None:
    """Reap dead workers; start a dispatcher when runs are queued and none is running."""
    lock = try_lock(store.root)
    if lock is not None:
        reap(store, lock_held=True)
        queued = bool(store.rows(states=("queued",)))
        lock.close()
        if queued:
            kick(store.root)
    else:
        reap(store)


def submit(job: dict, root: str | Path | None = None) -> str:
    """Validate and queue a job; returns its run id. Raises CompressionLabError for a bad job."""
    store = _store(root)
    run_id = store.insert(validate(job))
    kick(store.root)
    return run_id


def _with_progress(store: RunStore, row: dict) -> dict:
    row["dir"] = str(store.run_dir(row["id"]))
    return row


def status(run_id: str, root: str | Path | None = None) -> dict:
    store = _store(root)
    _ensure_dispatcher(store)
    row = store.row(run_id)
    if row is None:
        raise CompressionLabError(f"no run {run_id!r} in {store.root}: list runs with `compression-lab runs`")
    return _with_progress(store, row)


def list_runs(root: str | Path | None = None, kind: str | None = None) -> list[dict]:
    store = _store(root)
    _ensure_dispatcher(store)
    return [_with_progress(store, row) for row in store.rows(kind=kind)]


def cancel(run_id: str, root: str | Path | None = None) -> None:
    store = _store(root)
    if store.row(run_id) is None:
        raise CompressionLabError(f"no run {run_id!r}: list runs with `compression-lab runs`")
    store.update(run_id, only_if_state=("queued",), state="cancelled", finished=time.time(),
                 error="cancelled before it started")
    store.update(run_id, only_if_state=("running",), cancel=time.time())


def rerun(run_id: str, root: str | Path | None = None) -> str:
    store = _store(root)
    row = store.row(run_id)
    if row is None:
        raise CompressionLabError(f"no run {run_id!r}: list runs with `compression-lab runs`")
    return submit(row["job"], store.root)


def events(run_id: str, root: str | Path | None = None) -> list[dict]:
    return _store(root).events(run_id)


def log_tail(run_id: str, lines: int = 50, root: str | Path | None = None) -> str:
    return _store(root).log_tail(run_id, lines)


def run_dir(run_id: str, root: str | Path | None = None) -> Path:
    return _store(root).run_dir(run_id)


def set_max_workers(count: int, root: str | Path | None = None) -> None:
    if count < 1:
        raise CompressionLabError("max_workers must be at least 1")
    _store(root).set_setting("max_workers", str(count))


def wait(run_id: str, timeout: float = 600.0, root: str | Path | None = None, poll: float = 0.5) -> dict:
    """Poll until the run reaches a final state; raises CompressionLabError after `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        row = status(run_id, root)
        if row["state"] in FINAL_STATES:
            return row
        if time.time() > deadline:
            raise CompressionLabError(f"run {run_id} still {row['state']} after {timeout:.0f} s")
        time.sleep(poll)
