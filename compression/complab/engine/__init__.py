"""The engine: background jobs (compression runs, sensitivity analyses) that survive crashes and restarts.

    run_id = submit(job); status(run_id); cancel(run_id); list_runs(); wait(run_id, timeout)
    run_file(run_id, "model.clab")   (a file in the run's folder: callers never build runs/<id>/ paths)
    submit_sweep(jobs, axis=, targets=); sweep_status(id); list_sweeps(); cancel_sweep(id)   (sweeps.py)
    submit_or_reuse(job) -> (run_id, reused): a succeeded or active run with the same content key, else a new one
    import_or_reuse(job, files, metrics, note) -> (run_id, reused): the same, else a finished run made of results
        computed elsewhere and checked by the caller (marked "precomputed"; the lesson's shipped runs)

Jobs run in worker processes started by a dispatcher process, never in the caller (the Streamlit
server). `root` is the data folder (default $COMPRESSION_LAB_HOME, else a per-user data folder).
Listing and status calls also reap runs whose worker died and restart the dispatcher when runs
wait, so a crash, a kill or a reboot never leaves a run `running` forever. A read-only data folder
is listed without writing; a full disk, a read-only folder or a locked index raise StoreError.
Relative paths in a job are resolved against the caller's working folder when it is submitted.
"""

from complab.engine.keys import content_key
from complab.engine.protocol import FINAL_STATES, STATES
from complab.engine.runs import (
    absolute_paths,
    cached_sensitivity,
    cancel,
    engine_info,
    events,
    list_runs,
    log_tail,
    rerun,
    run_dir,
    run_file,
    settings,
    status,
    submit,
    wait,
)
from complab.engine.store import StoreError, default_root
from complab.engine.sweeps import (
    cancel_sweep,
    find_reusable,
    import_or_reuse,
    list_sweeps,
    submit_or_reuse,
    submit_sweep,
    sweep_status,
    wait_sweep,
)

__all__ = ["FINAL_STATES", "STATES", "StoreError", "absolute_paths", "cached_sensitivity", "cancel",
           "default_root", "engine_info", "events", "list_runs", "log_tail", "rerun", "run_dir", "run_file", "settings",
           "status", "submit", "wait"]
__all__ += ["find_reusable", "import_or_reuse"]
__all__ += ["cancel_sweep", "content_key", "list_sweeps", "submit_or_reuse", "submit_sweep", "sweep_status",
            "wait_sweep"]
