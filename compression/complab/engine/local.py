"""The local backend (the embedded default): one worker process per run on this machine, up to max_workers.

Each claimed run gets its own process, `python -m complab.engine.worker ROOT RUN_ID` (never a fork of the app:
CUDA and Streamlit's threads do not survive one), leading a session of its own so that stopping it stops its
helpers too. The dispatcher drives it (LocalWorkers: start, supervise) and reaps runs whose worker died
(worker_alive, find_worker). It imports the protocol, the store and the recording helpers, never the Ray backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from complab.engine.protocol import CANCEL_GRACE, DISK_FULL, GONE, KILL_GRACE
from complab.engine.recording import dead_outcome
from complab.engine.store import RunStore, low_space


def worker_alive(pid: int | None, run_id: str) -> bool:
    """True when `pid` is a live worker for `run_id` (checks the command line, so a reused pid is not it)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):  # a zombie has exited
                return False
    except OSError:
        return False
    return run_id in cmdline and "complab.engine.worker" in cmdline


def find_worker(run_id: str) -> int | None:
    """The pid of a live worker for `run_id`, looked up in /proc (for a row whose pid was never recorded)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    return next((pid for pid in pids if worker_alive(pid, run_id)), None)


def kill_for_cancel(pid: int, cancel_time: float) -> None:
    """Past the cancel grace, SIGTERM the worker's process group; past KILL_GRACE more, SIGKILL it."""
    waited = time.time() - cancel_time
    if waited > CANCEL_GRACE:
        sig = signal.SIGTERM if waited < CANCEL_GRACE + KILL_GRACE else signal.SIGKILL
        try:
            os.killpg(pid, sig)  # the worker leads its own session: take its helpers down too
        except OSError:
            pass


def start_worker(store: RunStore, run_id: str) -> subprocess.Popen | None:
    """The worker process of a claimed run (its output into the run's log.txt), or None when it cannot start (the
    run is failed saying why)."""
    try:
        with open(store.run_dir(run_id) / "log.txt", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "complab.engine.worker", str(store.root), run_id],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
    except OSError as exc:
        reason = (GONE if not store.run_dir(run_id).is_dir() else DISK_FULL if low_space(store.run_dir(run_id))
                  else f"could not start a worker process: {exc}")
        store.finish(run_id, "failed", reason)
        return None
    store.update(run_id, pid=proc.pid)
    return proc


def _supervise(store: RunStore, children: dict[str, subprocess.Popen]) -> None:
    """One pass over our workers: enforce cancels, record exits that left the run `running`. A run whose end
    cannot be recorded yet (a full disk, a locked index) stays in `children` and is tried again next pass."""
    for run_id, proc in list(children.items()):
        code = proc.poll()
        row = store.row(run_id)
        if code is None:
            if row and row["cancel"]:  # (a run whose folder was deleted is shown gone with a cancel: store.GONE)
                kill_for_cancel(proc.pid, row["cancel"])
            elif row is None and not store.run_dir(run_id).is_dir():  # gone and dropped: nothing left to work for
                kill_for_cancel(proc.pid, 0.0)
            continue
        if row and row["state"] == "running":
            state, reason, metrics = dead_outcome(store, row, code)
            if store.finish(run_id, state, reason, metrics=metrics) and reason:
                store.append_log(run_id, f"[engine] {reason}")
        del children[run_id]


class LocalWorkers:
    """The embedded default: one worker process per run on this machine, up to max_workers."""

    address = None  # not a Ray cluster (the backend's address, compared with the setting by serve())

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen] = {}

    def ids(self) -> set[str]:
        return set(self.children)

    def capacity(self, store: RunStore) -> int:
        return store.max_workers()

    def start(self, store: RunStore, run_id: str) -> None:
        proc = start_worker(store, run_id)
        if proc is not None:
            self.children[run_id] = proc

    def supervise(self, store: RunStore) -> None:
        _supervise(store, self.children)
