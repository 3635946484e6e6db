"""Run one job in its own process: `python -m complab.engine.worker ROOT RUN_ID`.

Progress goes to events.jsonl (at most ~5 events a second; the first and the last always go) and
to the index row; cancellation is polled from the index; the final state is written only after the
result files are in place. A crash leaves `failed` with the message and the traceback in log.txt;
a full disk leaves `failed` saying "disk full" (exit status EXIT_DISK_FULL when even that cannot be
written); a kill is noticed by the dispatcher (or by any later listing).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

from complab.engine.jobs import runners
from complab.engine.protocol import CANCELLED, CANCELLED_BEFORE, DISK_FULL, EXIT_DISK_FULL, GONE
from complab.engine.recording import Progress, disk_full, end_run, say
from complab.engine.store import RunStore, StoreError, write_atomic
from complab.errors import CompressionLabError

CANCEL_POLL = 0.5  # seconds between reads of the cancel flag


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _print_traceback() -> None:
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except OSError:
        pass


def main(root: str, run_id: str) -> int:
    store = RunStore(root)
    row = store.row(run_id)
    if row is None or row["state"] != "running":
        print(f"[worker] run {run_id} is not running in {root}", file=sys.stderr)
        return 2
    if row["pid"] != os.getpid():  # the dispatcher records it too; this covers one killed right after starting us
        try:
            store.update(run_id, only_if_state=("running",), pid=os.getpid())
        except StoreError:  # the index held by another program: the dispatcher's record stands
            pass
    job = row["job"]
    run_dir = store.run_dir(run_id)
    progress = Progress(store, run_id)
    poll = {"time": 0.0, "cancel": False}

    def log(message: str) -> None:
        print(message, flush=True)

    def cancelled() -> bool:
        now = time.time()
        if now - poll["time"] >= CANCEL_POLL:
            poll["time"] = now
            current = store.row(run_id)
            poll["cancel"] = bool(current is None or current["cancel"])
        return poll["cancel"]

    import torch  # here, not at the top: torch takes seconds to import and `main` may refuse the run first

    # several workers share the cores: give each its share instead of oversubscribing them
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // store.max_workers()))
    from complab.methods.context import Cancelled  # (imports torch and the methods: as above)

    say(f"[worker] run {run_id} ({job['kind']}) started, pid {os.getpid()}")
    try:
        progress("start", 0.0)
        if cancelled():
            raise Cancelled(CANCELLED_BEFORE)
        metrics = runners()[job["kind"]](job, run_dir, progress, log, cancelled)
        if not (run_dir / "metrics.json").exists():
            write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    except Cancelled:
        end_run(store, run_id, progress, "cancelled", CANCELLED)
        say("[worker] cancelled; results discarded")
        return 0
    except BaseException as exc:  # noqa: BLE001 - any crash must leave the run failed, with its log
        _print_traceback()
        if disk_full(exc, run_dir):
            store.discard_results(run_id)  # frees the space a half-written result took, before recording
            end_run(store, run_id, progress, "failed", DISK_FULL)
            return EXIT_DISK_FULL
        if not run_dir.is_dir():  # its folder was deleted under it: say so, not the FileNotFoundError that followed
            end_run(store, run_id, progress, "failed", GONE)
            return 1
        if isinstance(exc, CompressionLabError):  # a user-facing message: show it as it is
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {_one_line(exc)} (see the log)"
        end_run(store, run_id, progress, "failed", message)
        return 1
    if not end_run(store, run_id, progress, "succeeded", metrics=metrics):
        return 1
    say("[worker] succeeded")
    return 0


def _exit(code: int) -> None:
    """Exit with `code`, even when the log's disk is full (Python would turn a failed final flush into 120)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1], sys.argv[2]) if len(sys.argv) == 3 else 2)
