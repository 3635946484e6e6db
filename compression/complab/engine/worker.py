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
import threading
import time
import traceback

from complab.engine.store import EXIT_DISK_FULL, GONE, RunStore, StoreError, low_space, problem, write_atomic

EVENT_INTERVAL = 0.2  # seconds between written progress events: at most ~5 a second
CANCEL_POLL = 0.5  # seconds between reads of the cancel flag


class Progress:
    """The job's on_progress: at most one event per EVENT_INTERVAL; an event held back is written when the
    interval is over (by a timer, so a job that goes quiet still shows where it is) and never lost. A write that
    fails in the timer (a full disk) is raised in the job at its next call, so the job stops there."""

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.lock = threading.Lock()
        self.last_written = 0.0
        self.pending: dict | None = None
        self.timer: threading.Timer | None = None
        self.last: dict | None = None
        self.failed: BaseException | None = None

    def __call__(self, stage: str, fraction: float, values: dict | None = None) -> None:
        if self.failed is not None:
            failed, self.failed = self.failed, None
            raise failed
        event = {"time": time.time(), "stage": stage, "progress": min(1.0, max(0.0, float(fraction))),
                 "values": {k: v for k, v in (values or {}).items() if isinstance(v, int | float | str | bool)}}
        with self.lock:
            wait = self.last_written + EVENT_INTERVAL - event["time"]
            if self.last is None or wait <= 0:
                self._write(event)
                return
            self.pending = event
            if self.timer is None:
                self.timer = threading.Timer(wait, self._write_pending)
                self.timer.daemon = True
                self.timer.start()

    def _write_pending(self) -> None:
        with self.lock:
            self.timer = None
            if self.pending is not None:
                try:
                    self._write(self.pending)
                except Exception as exc:  # noqa: BLE001 - handed to the job's thread at its next call
                    self.failed = exc

    def _write(self, event: dict) -> None:
        self.pending, self.last, self.last_written = None, event, time.time()
        self.store.append_event(self.run_id, event)  # a full disk fails the job here: events.jsonl is the record
        try:
            self.store.update(self.run_id, progress=event)
        except StoreError:  # the index locked by another program for long, or full: the next event catches up
            pass

    def flush(self, final_stage: str | None = None) -> None:
        """Write the held-back event, then (for a success) a final event at 1.0 unless that was the last one."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.pending is not None:
                self._write(self.pending)
            last = self.last
            if final_stage and not (last and last["stage"] == final_stage and last["progress"] == 1.0):
                self._write({"time": time.time(), "stage": final_stage, "progress": 1.0, "values": {}})


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _say(message: str) -> None:
    """Print to the log; a full disk loses the line, never the run's end."""
    try:
        print(message, flush=True)
    except OSError:
        pass


def _print_traceback() -> None:
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except OSError:
        pass


def disk_full(exc: BaseException, run_dir) -> bool:
    """True when `exc` comes from a full disk: ENOSPC anywhere in its chain, or SQLite's I/O error with no room left."""
    if problem(exc) == "full":
        return True
    return problem(exc) == "io" and "disk I/O error" in str(exc) and low_space(run_dir)


def _end(store: RunStore, run_id: str, progress: Progress, state: str, error: str | None = None,
         metrics: dict | None = None) -> bool:
    """Write the last event and move the row to its final state; False when the index cannot be written
    (the dispatcher, or any later listing, then records it from the exit status and the log)."""
    try:
        progress.flush("done" if state == "succeeded" else None)
    except (OSError, StoreError):
        pass
    for _ in range(3):  # a locked index is waited for (BUSY_TIMEOUT each); a full disk is not
        try:
            store.finish(run_id, state, error, metrics=metrics)
            return True
        except StoreError as exc:
            _say(f"[worker] could not record the run's end ({state}): {exc}")
            if exc.reason != "locked":
                return False
    return False


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

    import torch

    # several workers share the cores: give each its share instead of oversubscribing them
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // store.max_workers()))
    from complab.engine.jobs import runners
    from complab.errors import CompressionLabError
    from complab.methods.context import Cancelled

    _say(f"[worker] run {run_id} ({job['kind']}) started, pid {os.getpid()}")
    try:
        progress("start", 0.0)
        if cancelled():
            raise Cancelled("cancelled before it started")
        metrics = runners()[job["kind"]](job, run_dir, progress, log, cancelled)
        if not (run_dir / "metrics.json").exists():
            write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    except Cancelled:
        _end(store, run_id, progress, "cancelled", "cancelled by the user")
        _say("[worker] cancelled; results discarded")
        return 0
    except BaseException as exc:  # noqa: BLE001 - any crash must leave the run failed, with its log
        _print_traceback()
        if disk_full(exc, run_dir):
            from complab.engine.dispatcher import DISK_FULL

            store.discard_results(run_id)  # frees the space a half-written result took, before recording
            _end(store, run_id, progress, "failed", DISK_FULL)
            return EXIT_DISK_FULL
        if not run_dir.is_dir():  # its folder was deleted under it: say so, not the FileNotFoundError that followed
            _end(store, run_id, progress, "failed", GONE)
            return 1
        if isinstance(exc, CompressionLabError):  # a user-facing message: show it as it is
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {_one_line(exc)} (see the log)"
        _end(store, run_id, progress, "failed", message)
        return 1
    if not _end(store, run_id, progress, "succeeded", metrics=metrics):
        return 1
    _say("[worker] succeeded")
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
