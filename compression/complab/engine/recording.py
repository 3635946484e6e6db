"""What a run records while it runs and when it ends, the same for both backends: progress events (rate-limited)
and the final state. The local worker (worker.py) calls these in its own process; the Ray backend's driver
(ray_dispatch.py) calls them for what its task sends back. Neither backend imports the other for them.
"""

from __future__ import annotations

import signal
import threading
import time

from complab import runfolder
from complab.engine.protocol import DIED, DIED_RAY, DISK_FULL, EXIT_DISK_FULL, RAY_STARTED, event
from complab.engine.store import RunStore, StoreError, low_space, problem

EVENT_INTERVAL = 0.2  # seconds between written progress events: at most ~5 a second


def say(message: str) -> None:
    """Print to the log; a full disk loses the line, never the run's end."""
    try:
        print(message, flush=True)
    except OSError:
        pass


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
        new = event(stage, fraction, values)
        with self.lock:
            wait = self.last_written + EVENT_INTERVAL - new["time"]
            if self.last is None or wait <= 0:
                self._write(new)
                return
            self.pending = new
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

    def _write(self, new: dict) -> None:
        self.pending, self.last, self.last_written = None, new, time.time()
        self.store.append_event(self.run_id, new)  # a full disk fails the job here: events.jsonl is the record
        try:
            self.store.update(self.run_id, progress=new)
        except StoreError:  # the index locked by another program for long, or full: the next event catches up
            pass

    def _cancel_timer(self) -> None:
        """Stop the timer that would write the held-back event (the caller holds the lock)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def mark(self, stage: str, fraction: float, values: dict | None = None) -> None:
        """Write an event that must not be replaced by a later one (an attempt's start, a retry): at once, after
        the one held back."""
        with self.lock:
            self._cancel_timer()
            if self.pending is not None:
                self._write(self.pending)
            self._write(event(stage, fraction, values))

    def drop(self) -> None:
        """Forget a held-back event without writing it (an attempt given up: what it said is out of date)."""
        with self.lock:
            self._cancel_timer()
            self.pending = None

    def flush(self, final_stage: str | None = None) -> None:
        """Write the held-back event, then (for a success) a final event at 1.0 unless that was the last one."""
        with self.lock:
            self._cancel_timer()
            if self.pending is not None:
                self._write(self.pending)
            last = self.last
            if final_stage and not (last and last["stage"] == final_stage and last["progress"] == 1.0):
                self._write(event(final_stage, 1.0))


def disk_full(exc: BaseException, run_dir) -> bool:
    """True when `exc` comes from a full disk: ENOSPC anywhere in its chain, or SQLite's I/O error with no room left."""
    if problem(exc) == "full":
        return True
    return problem(exc) == "io" and "disk I/O error" in str(exc) and low_space(run_dir)


def end_run(store: RunStore, run_id: str, progress: Progress, state: str, error: str | None = None,
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
            say(f"[worker] could not record the run's end ({state}): {exc}")
            if exc.reason != "locked":
                return False
    return False


def dead_outcome(store: RunStore, row: dict, code: int | None = None) -> tuple[str, str | None, dict | None]:
    """(state, error, metrics) for a running run whose worker is gone: the cancel it was asked for, the final state
    its folder recorded, a full disk when its log or its disk says so, else how the process ended."""
    if row["cancel"]:
        return "cancelled", "cancelled by the user", None
    record = store.recorded_state(row["id"])
    if record.get("state") == "succeeded":
        metrics, _ = runfolder.load(store.run_dir(row["id"]) / "metrics.json", kind=row["kind"])
        if isinstance(metrics, dict):
            return "succeeded", None, metrics
    elif record.get("state") in ("failed", "cancelled") and record.get("error"):
        return record["state"], record["error"], None
    signalled = code is not None and code < 0  # a known signal is reported as such, even on a nearly full disk
    if code == EXIT_DISK_FULL or store.says_disk_full(row["id"]) or (not signalled
                                                                     and low_space(store.run_dir(row["id"]))):
        return "failed", DISK_FULL, None
    if code is None and RAY_STARTED in store.log_tail(row["id"], 200):
        return "failed", DIED_RAY, None
    return "failed", DIED if code is None else exit_reason(code), None


def exit_reason(code: int) -> str:
    """Why a worker process that left its run `running` ended, from its exit status."""
    if code >= 0:
        return f"the worker process exited with code {code} without a result; see the log"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    extra = " (killed by a user or by the out-of-memory killer)" if code == -signal.SIGKILL else ""
    return f"the worker process was killed by {name}{extra}; the log is kept; re-run it"
