"""Who is alive in a data folder: the dispatcher lock, starting a dispatcher, and reaping runs whose process died.

Every holder of the dispatcher lock (the dispatcher, and a listing or status call in engine.runs) reaps: a run left
`running` by a worker that died (killed, crashed, machine restarted) is marked failed saying how, so no run stays
`running` forever. Kept apart from dispatcher.py, which is run as `python -m complab.engine.dispatcher` and so must
not be imported by the package itself.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from pathlib import Path

from complab.engine.local import find_worker, kill_for_cancel, worker_alive
from complab.engine.recording import dead_outcome
from complab.engine.store import RunStore, StoreError


def dispatcher_alive(pid: int | None, root: Path) -> bool:
    """True when `pid` is a live dispatcher of the data folder `root`: the owner of the Ray runs it drives (their
    tasks end with it, so a run whose dispatcher is gone is reaped as failed)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
    except OSError:
        return False
    return "complab.engine.dispatcher" in args and str(root) in args


def reap(store: RunStore, own: set[str] = frozenset(), lock_held: bool = False, dry_run: bool = False) -> dict:
    """Mark `failed` every running run whose worker is gone (killed, crashed, machine restarted), and stop
    workers that ignore a cancel. `own` runs are supervised by the caller. With the dispatcher lock held, a
    running row without a pid was claimed by a dispatcher that died before its worker recorded one.
    Returns {run_id: {state, error}} for the dead runs it did not record (`dry_run`, for a read-only data
    folder, or a full disk): the caller shows them so, and a later pass records them."""
    unrecorded = {}
    for row in store.rows(states=("running",)):
        if row["id"] in own:
            continue
        if row["pid"] is None:
            if not lock_held:
                continue  # a dispatcher is starting its worker right now
            row["pid"] = find_worker(row["id"])  # started, but killed before it recorded the pid
            if row["pid"] is not None and not dry_run:
                try:
                    store.update(row["id"], only_if_state=("running",), pid=row["pid"])
                except StoreError:
                    pass
        if worker_alive(row["pid"], row["id"]):
            if row["cancel"] and not dry_run:
                kill_for_cancel(row["pid"], row["cancel"])
            continue
        if dispatcher_alive(row["pid"], store.root):
            continue  # a Ray run: the dispatcher that drives it enforces its cancel
        state, reason, metrics = dead_outcome(store, row)
        if not dry_run:
            try:
                if store.finish(row["id"], state, reason, metrics=metrics) and reason:
                    store.append_log(row["id"], f"[engine] {reason}")
                continue
            except StoreError:
                pass
        unrecorded[row["id"]] = {"state": state, "error": reason, "finished": time.time()}
    return unrecorded


def try_lock(root: Path):
    """The dispatcher lock as an open file, or None when another process holds it."""
    handle = open(Path(root) / "dispatcher.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def kick(root: Path) -> None:
    """Start a dispatcher in the background, detached (it exits at once if another one is running)."""
    root = Path(root)
    with open(root / "dispatcher.log", "a") as log:  # creating it can fail on a full disk: the caller says so
        subprocess.Popen([sys.executable, "-m", "complab.engine.dispatcher", str(root)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True, close_fds=True)
