"""Start and supervise the runs of a data folder: `python -m complab.engine.dispatcher ROOT`.

One dispatcher at a time holds ROOT/dispatcher.lock (fcntl). It reaps runs whose worker died,
claims queued runs oldest first while fewer than max_workers run, hands each to the backend in use
(local.LocalWorkers: a worker process per run, the default; ray_dispatch.RayRuns: a Ray task per run),
has the backend notice exits, kills and cancels, and exits when nothing is queued or running. The
backends are peers under it: each imports the protocol, the store and the recording helpers, never
the other.

Every submit starts a dispatcher; one that finds the lock taken exits at once. No queued run is
stranded because every holder of the lock (a dispatcher leaving, or a status/list call that
reaps) re-checks the queue after releasing it and starts a dispatcher if runs wait.
"""

from __future__ import annotations

import fcntl
import sys
import time
import traceback
from pathlib import Path

from complab.engine.local import LocalWorkers, worker_alive  # noqa: F401 - worker_alive: importable here as before
from complab.engine.reaper import kick, reap, try_lock
from complab.engine.store import RunStore, StoreError

POLL = 0.3  # seconds between supervision passes
STORE_RETRY_FOR = 120.0  # seconds the dispatcher keeps trying through a full disk or a locked index before leaving


def backend(store: RunStore):
    """Ray tasks when a Ray address is set (RunStore.ray_address), else local worker processes."""
    addr = store.ray_address(strict=True)
    if addr is None:
        return LocalWorkers()
    # here, not at the top: ray_dispatch imports ray, an optional dependency that takes seconds to import
    from complab.engine.ray_dispatch import RayRuns

    return RayRuns(addr)


def serve(root: str | Path) -> None:
    """The dispatcher loop (see the module docstring); returns when nothing is queued or running."""
    store = RunStore(root)
    lock = try_lock(store.root)
    if lock is None:
        return
    failing_since = None
    try:
        workers = backend(store)
        while True:
            try:
                reap(store, own=workers.ids(), lock_held=True)
                # the engine was switched (--ray ADDRESS, --ray local): claim nothing more, finish ours, hand over
                switching = store.ray_address(strict=True) != workers.address
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
