"""Start and supervise worker processes: `python -m complab.engine.dispatcher ROOT`.

One dispatcher at a time holds ROOT/dispatcher.lock (fcntl). It reaps runs whose worker died,
claims queued runs oldest first while fewer than max_workers run, starts each in its own process
(never a fork of the app: CUDA and Streamlit's threads do not survive one), notices exits and
kills, enforces cancellation, and exits when nothing is queued or running.

Every submit starts a dispatcher; one that finds the lock taken exits at once. No queued run is
stranded because every holder of the lock (a dispatcher leaving, or a status/list call that
reaps) re-checks the queue after releasing it and starts a dispatcher if runs wait.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from complab.engine.store import EXIT_DISK_FULL, GONE, RunStore, StoreError, low_space

POLL = 0.3  # seconds between supervision passes
# seconds a running job gets to stop by itself after cancel, before SIGTERM ($COMPRESSION_LAB_CANCEL_GRACE for tests)
CANCEL_GRACE = float(os.environ.get("COMPRESSION_LAB_CANCEL_GRACE", "30"))
KILL_GRACE = 10.0  # further seconds after SIGTERM before SIGKILL
DIED = ("the worker process died (killed by SIGKILL?, out of memory, or the machine restarted); "
        "the log is kept; re-run it")
DIED_RAY = ("the dispatcher driving this Ray run died (killed, or the machine running the app restarted), and Ray "
            "ended its task with it; the log is kept; re-run it")
DISK_FULL = ("disk full: the disk holding the run folder filled up during the run (no space left on device); "
             "the log is kept; free some space, then re-run it")
STORE_RETRY_FOR = 120.0  # seconds the dispatcher keeps trying through a full disk or a locked index before leaving


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


def find_worker(run_id: str) -> int | None:
    """The pid of a live worker for `run_id`, looked up in /proc (for a row whose pid was never recorded)."""
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    return next((pid for pid in pids if worker_alive(pid, run_id)), None)


def _kill_for_cancel(pid: int, cancel_time: float) -> None:
    waited = time.time() - cancel_time
    if waited > CANCEL_GRACE:
        sig = signal.SIGTERM if waited < CANCEL_GRACE + KILL_GRACE else signal.SIGKILL
        try:
            os.killpg(pid, sig)  # the worker leads its own session: take its helpers down too
        except OSError:
            pass


def dead_outcome(store: RunStore, row: dict, code: int | None = None) -> tuple[str, str | None, dict | None]:
    """(state, error, metrics) for a running run whose worker is gone: the cancel it was asked for, the final state
    its folder recorded, a full disk when its log or its disk says so, else how the process ended."""
    if row["cancel"]:
        return "cancelled", "cancelled by the user", None
    record = store.recorded_state(row["id"])
    if record.get("state") == "succeeded":
        from complab import runfolder

        metrics, _ = runfolder.load(store.run_dir(row["id"]) / "metrics.json", kind=row["kind"])
        if isinstance(metrics, dict):
            return "succeeded", None, metrics
    elif record.get("state") in ("failed", "cancelled") and record.get("error"):
        return record["state"], record["error"], None
    signalled = code is not None and code < 0  # a known signal is reported as such, even on a nearly full disk
    if code == EXIT_DISK_FULL or store.says_disk_full(row["id"]) or (not signalled
                                                                     and low_space(store.run_dir(row["id"]))):
        return "failed", DISK_FULL, None
    if code is None and "started on Ray node" in store.log_tail(row["id"], 200):
        return "failed", DIED_RAY, None
    return "failed", DIED if code is None else _exit_reason(code), None


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
                _kill_for_cancel(row["pid"], row["cancel"])
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


def _exit_reason(code: int) -> str:
    if code >= 0:
        return f"the worker process exited with code {code} without a result; see the log"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    extra = " (killed by a user or by the out-of-memory killer)" if code == -signal.SIGKILL else ""
    return f"the worker process was killed by {name}{extra}; the log is kept; re-run it"


def _start_worker(store: RunStore, run_id: str) -> subprocess.Popen | None:
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
                _kill_for_cancel(proc.pid, row["cancel"])
            elif row is None and not store.run_dir(run_id).is_dir():  # gone and dropped: nothing left to work for
                _kill_for_cancel(proc.pid, 0.0)
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
        proc = _start_worker(store, run_id)
        if proc is not None:
            self.children[run_id] = proc

    def supervise(self, store: RunStore) -> None:
        _supervise(store, self.children)


def backend(store: RunStore):
    """Ray tasks when a Ray address is set (ray_backend.address), else local worker processes."""
    from complab.engine.ray_backend import address

    addr = address(store, strict=True)
    if addr is None:
        return LocalWorkers()
    from complab.engine.ray_dispatch import RayRuns  # imports ray: only here

    return RayRuns(addr)


def serve(root: str | Path) -> None:
    """The dispatcher loop (see the module docstring); returns when nothing is queued or running."""
    store = RunStore(root)
    lock = try_lock(store.root)
    if lock is None:
        return
    from complab.engine.ray_backend import address

    failing_since = None
    try:
        workers = backend(store)
        while True:
            try:
                reap(store, own=workers.ids(), lock_held=True)
                # the engine was switched (--ray ADDRESS, --ray local): claim nothing more, finish ours, hand over
                switching = address(store, strict=True) != workers.address
                while not switching and (run_id := store.claim_next(workers.capacity(store))) is not None:
                    workers.start(store, run_id)
                workers.supervise(store)
                if switching and not workers.ids():
                    fcntl.flock(lock, fcntl.LOCK_UN)
                    lock.close()
                    lock = None
                    if store.count("queued"):
                        kick(store.root)  # a dispatcher for the engine now chosen
                    return
                idle = not workers.ids() and store.count("queued") == 0 and store.count("running") == 0
                failing_since = None
            except StoreError as exc:  # a full disk or a locked index: wait for it, within reason
                failing_since = failing_since or time.time()
                try:
                    print(f"[dispatcher] {exc}", flush=True)
                except OSError:  # dispatcher.log is on the full disk too
                    pass
                if time.time() - failing_since > STORE_RETRY_FOR:
                    return  # the workers finish on their own; the next listing reaps them and starts a dispatcher
                time.sleep(2.0)
                continue
            if idle:
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
                lock = None
                if store.count("queued") == 0:
                    return
                lock = try_lock(store.root)  # a run arrived as we were leaving
                if lock is None:
                    return  # and another process holds the lock: it re-checks the queue when it lets go
                continue
            time.sleep(POLL)
    except Exception:  # noqa: BLE001 - log and leave; the next submit or listing starts a new dispatcher
        traceback.print_exc()
    finally:
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
