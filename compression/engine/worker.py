"""Run one job in its own process: `python -m compression.engine.worker ROOT RUN_ID`.

Progress goes to events.jsonl (throttled) and the index; cancellation is polled from the index;
the final state is written only after the result files are in place. A crash leaves `failed` with
the message and the traceback in log.txt; a kill is noticed by the dispatcher (or any later listing).
"""

from __future__ import annotations

import sys
import time
import traceback

from compression.engine.store import RunStore, write_atomic

EVENT_INTERVAL = 0.2  # seconds between progress events (the first, stage changes and the last always go)
CANCEL_POLL = 0.5


def main(root: str, run_id: str) -> int:
    store = RunStore(root)
    row = store.row(run_id)
    if row is None:
        print(f"run {run_id} is not in the store", file=sys.stderr)
        return 2
    job = row["job"]
    run_dir = store.run_dir(run_id)
    state = {"last": 0.0, "stage": None, "poll": 0.0, "cancel": False}

    def progress(stage: str, fraction: float, values: dict) -> None:
        now = time.time()
        if stage == state["stage"] and now - state["last"] < EVENT_INTERVAL and fraction < 1.0:
            return
        event = {"time": now, "stage": stage, "progress": float(fraction),
                 "values": {k: v for k, v in values.items() if isinstance(v, int | float | str)}}
        state.update(last=now, stage=stage)
        store.append_event(run_id, event)
        store.update(run_id, progress=event)

    def log(message: str) -> None:
        print(message, flush=True)

    def cancelled() -> bool:
        now = time.time()
        if now - state["poll"] >= CANCEL_POLL:
            state["poll"] = now
            current = store.row(run_id)
            state["cancel"] = bool(current and current["cancel"])
        return state["cancel"]

    from compression.engine.jobs import RUNNERS
    from compression.errors import CompressionLabError
    from compression.methods.context import Cancelled

    print(f"[worker] run {run_id} ({job['kind']}) started, pid {__import__('os').getpid()}", flush=True)
    progress("start", 0.0, {})
    try:
        metrics = RUNNERS[job["kind"]](job, run_dir, progress, log, cancelled)
    except Cancelled:
        store.update(run_id, state="cancelled", finished=time.time(), error="cancelled by the user")
        print("[worker] cancelled", flush=True)
        return 0
    except CompressionLabError as exc:
        traceback.print_exc()
        store.update(run_id, state="failed", finished=time.time(), error=str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - any crash must leave the run failed, with its log
        traceback.print_exc()
        store.update(run_id, state="failed", finished=time.time(),
                     error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''} "
                           "(see the log)")
        return 1
    import json

    if not (run_dir / "metrics.json").exists():
        write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    progress("done", 1.0, {})
    store.update(run_id, state="succeeded", finished=time.time(), metrics=metrics)
    print("[worker] succeeded", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]) if len(sys.argv) == 3 else 2)
