"""Start and supervise worker processes: `python -m compression.engine.dispatcher ROOT`.

One dispatcher at a time holds ROOT/dispatcher.lock (fcntl). It reaps runs whose worker died,
claims queued runs oldest first while fewer than max_workers run, starts each in its own process
(never a fork of the app: CUDA and Streamlit's threads do not survive one), notices exits and
kills, enforces cancellation, and exits when nothing is queued or running. Every submit starts a
dispatcher; a second one exits at once, and the holder re-checks the queue after releasing the lock,
so no queued run is stranded.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from compression.engine.store import RunStore

POLL = 0.3
CANCEL_GRACE = 30.0  # seconds a running job gets to stop by itself after cancel, before SIGTERM / SIGKILL


def worker_alive(pid: int | None, run_id: str) -> bool:
    """True when `pid` is a live worker for `run_id` (checks the command line, so a reused pid is not it)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return run_id in cmdline and "compression.engine.worker" in cmdline


def reap(store: RunStore, own: set[str] = frozenset(), lock_held: bool = False) -> None:
    """Mark `failed` every running run whose worker is gone (killed, crashed, machine restarted)."""
    for row in store.rows(states=("running",)):
        if row["id"] in own:
            continue
        if row["pid"] is None and not lock_held:
            continue  # being started by the dispatcher right now
        if not worker_alive(row["pid"], row["id"]):
            store.update(row["id"], only_if_state=("running",), state="failed", finished=time.time(),
                         error="the worker process died (killed by SIGKILL, out of memory, or the machine "
                               "restarted); see the log; re-run it")


def try_lock(root: Path):
    handle = open(root / "dispatcher.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def kick(root: Path) -> None:
    """Start a dispatcher in the background (it exits at once if another one is running)."""
    root = Path(root)
    log = open(root / "dispatcher.log", "a")
    code = "import sys; from compression.engine.dispatcher import serve; serve(sys.argv[1])"
    subprocess.Popen([sys.executable, "-c", code, str(root)], stdin=subprocess.DEVNULL,
                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    log.close()


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def serve(root: str | Path) -> None:
    store = RunStore(root)
    children: dict[str, subprocess.Popen] = {}
    lock = try_lock(store.root)
    if lock is None:
        return
    try:
        reap(store, lock_held=True)
        while True:
            while (run_id := store.claim_next(store.max_workers())) is not None:
                log = open(store.run_dir(run_id) / "log.txt", "ab")
                proc = subprocess.Popen([sys.executable, "-m", "compression.engine.worker", str(store.root), run_id],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, close_fds=True)
                log.close()
                children[run_id] = proc
                store.update(run_id, pid=proc.pid)
            for run_id, proc in list(children.items()):
                code = proc.poll()
                row = store.row(run_id)
                if code is None:
                    if row and row["cancel"] and time.time() - row["cancel"] > CANCEL_GRACE:
                        proc.send_signal(signal.SIGTERM if time.time() - row["cancel"] < CANCEL_GRACE + 10
                                         else signal.SIGKILL)
                    continue
                del children[run_id]
                if code < 0:
                    reason = f"the worker process was killed by {_signal_name(code)}"
                    reason += "" if code != -signal.SIGKILL else " (out of memory, or killed by a user)"
                else:
                    reason = f"the worker process exited with code {code} without a result"
                if row and row["cancel"]:
                    store.update(run_id, only_if_state=("running",), state="cancelled", finished=time.time(),
                                 error="cancelled by the user")
                else:
                    store.update(run_id, only_if_state=("running",), state="failed", finished=time.time(),
                                 error=reason + "; see the log")
            reap(store, own=set(children))
            if not children and not store.rows(states=("queued",)):
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()
                lock = None
                if not store.rows(states=("queued",)):
                    return
                lock = try_lock(store.root)  # a run arrived as we were leaving
                if lock is None:
                    return  # and another dispatcher has it
            time.sleep(POLL)
    finally:
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
    os._exit(0)
