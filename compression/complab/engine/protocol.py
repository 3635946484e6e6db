"""The engine's lowest layer: run states, the messages a run ends with, exit codes, event and task-item shapes.

Both backends import this module as peers and never each other: the local one (local.py starts a worker.py
process per run) and the Ray one (ray_dispatch.py drives a ray_backend.run_job task per run); the dispatcher
above them picks one, and the store below keeps what they record. Nothing here imports another engine module.

    a run's states        queued -> running -> succeeded | failed | cancelled   (STATES, FINAL_STATES)
    a progress event      {"time", "stage", "progress" (0..1), "values": {name: number | text | bool}}
    a Ray task's items    {"type": "node" | "log" | "progress" | "cancelled" | "cached" | "error" | "result", ...}
    attempts              a Ray run whose node died is run once more elsewhere (MAX_ATTEMPTS); attempt n logs to
                          log_name(n): log.txt, then log.attempt2.txt, and its "start" event says {"attempt": n}
"""

from __future__ import annotations

import os
import time

from complab import runfolder

STATES = runfolder.STATES  # ("queued", "running", "succeeded", "failed", "cancelled"): state.json is checked so
FINAL_STATES = ("succeeded", "failed", "cancelled")

# --- exit codes and timings ----------------------------------------------------------------------------------------
EXIT_DISK_FULL = 28  # a worker's exit status when its disk filled up (ENOSPC's errno), for the dispatcher
# seconds a running job gets to stop by itself after cancel, before it is forced ($COMPRESSION_LAB_CANCEL_GRACE: tests)
CANCEL_GRACE = float(os.environ.get("COMPRESSION_LAB_CANCEL_GRACE", "30"))
KILL_GRACE = 10.0  # further seconds after SIGTERM before SIGKILL (local workers)

# --- which backend runs the jobs (a setting every process using the data folder reads) --------------------------
RAY_ENV = "COMPRESSION_LAB_RAY"  # a Ray address (HOST:PORT, auto) overriding the data folder's setting
RAY_SETTING = "ray_address"  # the data folder's setting (`--ray ADDRESS`, the app's -- --ray ADDRESS)
RAY_LOCAL = ("", "local", "none", "off")  # values that mean: the local workers

# --- what a run ends with (its row's error) ------------------------------------------------------------------------
CANCELLED = "cancelled by the user"
CANCELLED_BEFORE = "cancelled before it started"
DIED = ("the worker process died (killed by SIGKILL?, out of memory, or the machine restarted); "
        "the log is kept; re-run it")
DIED_RAY = ("the dispatcher driving this Ray run died (killed, or the machine running the app restarted), and Ray "
            "ended its task with it; the log is kept; re-run it")
DISK_FULL = ("disk full: the disk holding the run folder filled up during the run (no space left on device); "
             "the log is kept; free some space, then re-run it")
GONE = "gone: its run folder was deleted; nothing of it is left to show (dropped from the list at the next listing)"
RAY_STARTED = "started on Ray node"  # in a Ray run's log once its task runs (a dead dispatcher's run: DIED_RAY)
RECOVERED = ("the run index was rebuilt from the run folders and this run's outcome was not recorded there; "
             "the log is kept; re-run it")

# --- events --------------------------------------------------------------------------------------------------------
EVENT_VALUE_TYPES = (int, float, str, bool)


def event(stage: str, fraction: float, values: dict | None = None, at: float | None = None) -> dict:
    """A progress event as events.jsonl keeps it: the fraction clamped to 0..1, only plain values kept."""
    return {"time": time.time() if at is None else at, "stage": stage,
            "progress": min(1.0, max(0.0, float(fraction))),
            "values": {k: v for k, v in (values or {}).items() if isinstance(v, EVENT_VALUE_TYPES)}}


# --- a Ray task's stream (ray_backend.run_job sends them, ray_dispatch.RayRun reads them) --------------------------
ITEM_NODE, ITEM_LOG, ITEM_PROGRESS = "node", "log", "progress"  # which node runs it (first); a log line; an event
ITEM_CANCELLED, ITEM_CACHED = "cancelled", "cached"  # the job stopped at a cancel; the app's cache has the report
ITEM_ERROR, ITEM_RESULT = "error", "result"  # the last item: why it failed, or the metrics and result files


# --- attempts (a Ray run whose node died is retried once elsewhere) ------------------------------------------------
MAX_ATTEMPTS = 2


def log_name(attempt: int) -> str:
    """The log file of a run's attempt: log.txt for the first (every run has one), log.attempt2.txt for a retry."""
    return "log.txt" if attempt <= 1 else f"log.attempt{int(attempt)}.txt"


def log_names() -> tuple[str, ...]:
    """Every attempt's log file name, first attempt first."""
    return tuple(log_name(attempt) for attempt in range(1, MAX_ATTEMPTS + 1))


def retry_after_node_death(attempt: int, cancel_asked: bool) -> bool:
    """Whether a run whose Ray node died during `attempt` runs again elsewhere: once, and not when the user asked
    it to stop (a cancel is honoured, not retried)."""
    return not cancel_asked and attempt < MAX_ATTEMPTS


def node_death_reason(where: str, attempt: int, detail: str | None = None) -> str:
    """The run's error when its node died and no retry is left: which node, which attempt, which logs to read."""
    said = f" ({detail})" if detail else ""
    if attempt <= 1:
        return (f"the {where} running this run died{said}; the log is kept; other runs are not affected; re-run it")
    logs = ", ".join(log_names()[:attempt])
    return (f"the {where} running this run died{said} during attempt {attempt}, the retry after the node of "
            f"attempt 1 died too; each attempt's log is kept ({logs}); other runs are not affected; re-run it "
            "when the cluster is healthy")
