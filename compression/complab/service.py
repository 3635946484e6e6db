"""What a user asks for, written once for both front ends: the CLI (cli.py) and the app (ui/, pages/) call these.

    source_spec(model, weights, data, ...)            the source spec a job names (complab/sources.py)
    compress_job(spec, plan) / sensitivity_job(spec, config)   the engine job of a run / of an analysis
    submit_run(job, root, reuse=False)                a new run, or (reuse) the run computing the same thing
    latest_analysis(spec, root) / latest_analysis_run(spec, root)   this model's newest analysis: report / row
    prediction_history(spec, root)                    this model's runs that carried a predicted accuracy
    analysis_config(task, handle, mode, **flags)      the analysis settings (a detector's defaults, auto mode)
    sweep_analysis(spec, root, handle, ...)           the report a sweep's targets are solved on: given, found,
                                                      or run now as an engine job (reused by its content key)
    plan_sweep(spec, stats, report, axis, values, ...)   one axis of targets solved into N compress jobs
    submit_sweep(jobs, labels, root, ...)             those jobs queued as one sweep

A "spec" is a source spec (model, weights, data, input_size, mean, std, trust). Nothing here imports Streamlit
or argparse: a front end turns its widgets or flags into these arguments and draws or prints what comes back.
Errors a user can cause are CompressionLabError with one line naming the problem and the fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from complab import engine, runfolder
from complab.analysis.sensitivity_report import SensitivityReportError, parse_report, read_report
from complab.engine import jobs as job_kinds
from complab.errors import CompressionLabError, first_line
from complab.plan import Plan

Root = str | Path | None
SAME_MODEL_KEYS = ("model", "weights", "data", "input_size")  # what makes two runs "of this model and data"
ANALYSIS_FLAGS = ("val_size", "sparsities", "n_clusters", "bits", "bn_batches", "seed", "calibration_seconds")
ANALYSIS_WAIT_S = 24 * 3600.0  # a sweep waits this long for the analysis it started (the CLI's --timeout)
POLL_S = 0.5


# --- jobs ------------------------------------------------------------------------------------------------------

def source_spec(model: str, weights: str | None = None, data: str | None = None, input_size: int | None = None,
                mean=None, std=None, trust: bool = False) -> dict:
    """The source spec of a job. Paths stay as typed: engine.submit makes them absolute in the caller's folder."""
    return {"model": model, "weights": weights, "data": data, "input_size": input_size,
            "mean": list(mean) if mean else None, "std": list(std) if std else None,
            **({"trust": True} if trust else {})}


def compress_job(spec: dict, plan: dict | Plan, predicted: dict | None = None, latency: bool | None = None,
                 origin: dict | None = None) -> dict:
    """The engine job of a compression run. `predicted` (the plan's predicted accuracy) rides along once the engine
    knows the key (complab.engine.jobs.JOB_KEYS), so a run can be checked against it; `latency` None: the
    engine's default (measured); `origin` ({"kind": "recipe", "run": RUN_ID}: the run whose recipe the plan started
    from) is recorded with the run for the Compare page's map (the engine checks it at submit)."""
    job = {"kind": "compress", **spec, "plan": plan.to_dict() if isinstance(plan, Plan) else plan}
    if latency is not None:
        job["latency"] = bool(latency)
    if predicted is not None and "predicted" in job_kinds.JOB_KEYS:  # read at call time
        job["predicted"] = predicted
    if origin is not None:
        job["origin"] = origin
    return job


def sensitivity_job(spec: dict, config: dict) -> dict:
    """The engine job of a sensitivity analysis (`config`: SensitivityConfig's fields, any left to defaults)."""
    return {"kind": "sensitivity", **spec, "config": config}


def submit_run(job: dict, root: Root = None, reuse: bool = False) -> tuple[str, bool]:
    """(run id, reused): queue `job`, or with `reuse` the newest run computing the same thing (same content key)
    that succeeded or is still on its way (engine.submit_or_reuse). A bad job queues nothing."""
    if reuse:
        return engine.submit_or_reuse(job, root=root)
    return engine.submit(job, root=root), False


def same_model(job: dict, spec: dict) -> bool:
    """Whether a run's job is of this spec's model, weights, data and input size (paths compared absolute, as
    submit stored them)."""
    spec = engine.absolute_paths(spec)
    return all(job.get(key) == spec.get(key) for key in SAME_MODEL_KEYS)


# --- this model's analyses and runs ------------------------------------------------------------------------------

def latest_analysis_run(spec: dict, root: Root = None) -> dict | None:
    """The newest sensitivity run of this model and data, in any state (its engine row), or None."""
    for run in engine.list_runs(root=root, kind="sensitivity"):
        if same_model(run.get("job", {}), spec):
            return run
    return None


def analysis_report(run_id: str, root: Root = None) -> dict:
    """A succeeded analysis run's report, read bounded and checked (SensitivityReportError when damaged or missing,
    CompressionLabError when the run's folder is gone)."""
    path = engine.run_file(run_id, "sensitivity.json", root=root)
    data, problem = runfolder.read_bytes(path)  # bounded, never a pipe or a link (complab/runfolder.py)
    if problem is not None:
        raise SensitivityReportError(f"the report of analysis run {run_id} is {problem}")
    return parse_report(data, f"the report of analysis run {run_id}")


def latest_analysis(spec: dict, root: Root = None, on_problem: Callable[[str], None] | None = None) -> dict | None:
    """The report of the newest succeeded sensitivity run of this model and data, or None. A run whose folder or
    report is gone is skipped; a damaged report is said (`on_problem`, one line) and skipped."""
    for run in engine.list_runs(root=root, kind="sensitivity"):
        if run["state"] != "succeeded" or not same_model(run.get("job", {}), spec):
            continue
        try:
            if not engine.run_file(run["id"], "sensitivity.json", root=root).is_file():
                continue
            return analysis_report(run["id"], root)
        except SensitivityReportError as exc:
            if on_problem is not None:
                on_problem(str(exc))
        except CompressionLabError:  # listed from the index but its folder is gone
            pass
    return None


def prediction_history(spec: dict, root: Root = None) -> list[tuple[float, float]]:
    """(raw predicted drop, measured drop) in points of this model's finished runs that carried a prediction:
    the predicted accuracy refits its fine-tuning calibration on them (complab/analysis/predict.py)."""
    from complab.analysis.predict import history_from_runs  # imports torch: not at CLI start-up

    try:
        runs = engine.list_runs(root=root, kind="compress")
    except CompressionLabError:
        return []
    return history_from_runs([run for run in runs if same_model(run.get("job", {}), spec)])


# --- the sensitivity analysis ------------------------------------------------------------------------------------

def analysis_settings(task: str, handle=None, mode: str = "auto", **flags) -> dict:
    """An analysis's config dict: a detector's defaults (a coarser grid on fewer images) unless `flags` say
    otherwise; `mode` "auto" is decided from the loaded model (`handle`), and checks as exact before it is loaded."""
    from complab.models.tasks import task_kind  # imports torch: not at CLI start-up

    unknown = set(flags) - set(ANALYSIS_FLAGS)
    if unknown:
        raise TypeError(f"unknown analysis settings {sorted(unknown)}")
    config = dict(task_kind(task).analysis_defaults)
    for key, value in flags.items():
        if value is not None:
            config[key] = list(value) if isinstance(value, tuple) else value
    if mode == "auto":
        from complab.analysis.fisher import default_mode  # imports torch

        mode = default_mode(handle) if handle is not None else "exact"
    config["mode"] = mode
    return config


def analysis_config(task: str, handle=None, mode: str = "auto", **flags):
    """SensitivityConfig of analysis_settings(), checked as an engine job's is (CompressionLabError naming the bad
    value)."""
    return job_kinds.sensitivity_config(analysis_settings(task, handle, mode, **flags))


def wait_run(run_id: str, root: Root = None, timeout: float = ANALYSIS_WAIT_S,
             on_progress: Callable[[str, float, dict], None] | None = None) -> dict:
    """Poll a run until it ends; `on_progress(stage, fraction, values)` with each new progress event. Returns its
    final row; CompressionLabError after `timeout` seconds (the run goes on)."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        row = engine.status(run_id, root=root)
        event = row.get("progress") or {}
        if on_progress is not None and event and event.get("time") != seen:
            seen = event.get("time")
            on_progress(str(event.get("stage") or row["state"]), float(event.get("progress") or 0.0),
                        event.get("values") or {})
        if row["state"] in engine.FINAL_STATES:
            return row
        if time.monotonic() > deadline:
            raise CompressionLabError(f"run {run_id} is still {row['state']} after {timeout:.0f} s: it goes on in "
                                      "the background; see `complab runs`, or allow longer")
        time.sleep(POLL_S)


def run_analysis(spec: dict, root: Root, handle, on_start: Callable[[str, bool], None] | None = None,
                 on_progress: Callable[[str, float, dict], None] | None = None,
                 timeout: float = ANALYSIS_WAIT_S) -> dict:
    """Run (or reuse, by the engine's content key: a succeeded one, or one still on its way) the default analysis
    of this model and data as an engine job, wait for it and return its report. `on_start(run_id, reused)` is
    told which run it waits for."""
    job = sensitivity_job(spec, analysis_settings(handle.task, handle))
    run_id, reused = submit_run(job, root, reuse=True)
    if on_start is not None:
        on_start(run_id, reused)
    row = wait_run(run_id, root, timeout, on_progress)
    if row["state"] != "succeeded":
        reason = first_line(row.get("error") or "no message")
        raise CompressionLabError(f"the sensitivity analysis of {spec['model']} (run {run_id}) {row['state']}: "
                                  f"{reason}; its log is in `complab runs`; fix it, or pass --sensitivity FILE "
                                  "from `complab analyze`")
    return analysis_report(run_id, root)


def sweep_analysis(spec: dict, root: Root, handle, report_path: str | Path | None = None,
                   on_start: Callable[[str, bool], None] | None = None,
                   on_progress: Callable[[str, float, dict], None] | None = None,
                   on_problem: Callable[[str], None] | None = None, timeout: float = ANALYSIS_WAIT_S) -> dict:
    """The sensitivity report a sweep's targets are solved on: the file at `report_path` when given, else the
    newest succeeded analysis of this model and data in the run store, else one run now (run_analysis). A
    report that names none of the model's layers is refused."""
    if report_path is not None:
        report = read_report(report_path)  # the one checked reader: schema, finite numbers, ranges
    else:
        report = latest_analysis(spec, root, on_problem)
        if report is None:
            report = run_analysis(spec, root, handle, on_start, on_progress, timeout)
    if not set(report["layers"]) & set(handle.prunable_layers()):
        raise CompressionLabError(f"the sensitivity report names none of {spec['model']}'s layers: it is for "
                                  "another model; analyze this one")
    return report


# --- sweeps ------------------------------------------------------------------------------------------------------

def plan_sweep(spec: dict, stats, report: dict, axis: str, values: list[float], name: str = "sweep",
               history: list | None = None, prune_options: dict | None = None, cluster_options: dict | None = None,
               base: Plan | None = None, adjust: Callable[[Plan], Plan] | None = None,
               latency: bool | None = None, int_options: dict | None = None) -> tuple[list[dict], list[str]]:
    """(jobs, labels): one compress job per target value, its plan solved on `report` for the model `stats`
    describe (analysis.estimate.model_stats), with its predicted accuracy riding along. `base` gives the seed
    and evaluation split (its fine-tuning settings come in as `prune_options` / `cluster_options`:
    analysis.targets.step_options); `adjust` changes each solved plan (the app adds a fold_bn step)."""
    from complab.analysis.predict import predict  # both import torch: not at CLI start-up
    from complab.analysis.targets import target_plan

    fixed = {"seed": base.seed, "eval_split": base.eval_split} if base is not None else {}
    jobs, labels = [], []
    for value in values:
        member = target_plan(stats, report, axis, value, name, prune_options or {}, cluster_options or {}, **fixed,
                             int_options=int_options)
        plan = adjust(member.plan) if adjust is not None else member.plan
        jobs.append(compress_job(spec, plan, predicted=predict(report, member.settings, member.quantizers or None,
                                                               history),
                                 latency=latency))
        labels.append(member.label)
    return jobs, labels


def submit_sweep(jobs: list[dict], labels: list[str], root: Root = None, axis: str = "plans",
                 name: str | None = None, reuse: bool = True) -> dict:
    """Queue the jobs as one sweep (members identical to earlier runs reused unless `reuse` is off); returns the
    sweep's status (engine.sweep_status: id, label, members)."""
    sweep_id = engine.submit_sweep(jobs, root=root, axis=axis, targets=labels, name=name, reuse=reuse)
    return engine.sweep_status(sweep_id, root=root)


# --- how long a run takes, from this model's measured runs --------------------------------------------------------

FIXED_STAGES = ("start", "measure original", "write compact file", "measure compressed", "done")
TIMED_RUNS = 10  # the newest succeeded runs of this model a time estimate reads


def _whole(step: dict, name: str) -> int:
    value = step.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def plan_epochs(plan: dict | Plan | None) -> int:
    """The fine-tuning epochs a plan asks for, all steps together: a pruning step's per round times its rounds, a
    channel step's per layer times its layers plus its final ones, every other step's `finetune_epochs`."""
    if not isinstance(plan, Plan):
        try:  # the steps' defaults filled in (a recipe may leave finetune_epochs out)
            plan = Plan.from_dict({"schema_version": 1, **plan} if isinstance(plan, dict) else plan)
        except (CompressionLabError, TypeError, ValueError, AttributeError):
            pass
    if isinstance(plan, Plan):
        plan = plan.to_dict()
    if not isinstance(plan, dict):
        return 0
    total = 0
    for step in plan.get("steps") or []:
        if not isinstance(step, dict):
            continue
        epochs = _whole(step, "finetune_epochs")
        if step.get("type") == "prune":
            epochs *= max(1, _whole(step, "iterations"))
        elif step.get("type") == "channels":
            layers = step.get("keep_ratio")
            epochs = epochs * (len(layers) if isinstance(layers, dict) else 1) + _whole(step, "final_epochs")
        total += epochs
    return total


def run_timing(row: dict, events: list[dict]) -> dict | None:
    """What one finished run measured: {"seconds" (started -> finished), "epochs" (its plan's), "overhead" (the
    seconds outside its steps: loading, measuring the original, writing and measuring the file; None when its
    events do not say), "steps" (its step types)}; None for a run without both times."""
    started, finished = row.get("started"), row.get("finished")
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (started, finished)):
        return None
    if finished <= started:
        return None
    plan = (row.get("job") or {}).get("plan") or {}
    steps = tuple(sorted(str(s.get("type")) for s in plan.get("steps") or [] if isinstance(s, dict)))
    first_step = next((e["time"] for e in events if e.get("stage") not in FIXED_STAGES), None)
    write = next((e["time"] for e in events if e.get("stage") == "write compact file"), None)
    overhead = None
    if write is not None and started <= write <= finished:
        step_start = first_step if first_step is not None and started <= first_step <= write else write
        overhead = (step_start - started) + (finished - write)
    return {"seconds": float(finished - started), "epochs": plan_epochs(plan), "overhead": overhead,
            "steps": steps}


def run_timings(spec: dict, root: Root = None, limit: int = TIMED_RUNS) -> list[dict]:
    """run_timing of this model's newest succeeded compression runs (at most `limit`), newest first."""
    try:
        runs = engine.list_runs(root=root, kind="compress")
    except CompressionLabError:
        return []
    out = []
    for row in runs:
        if row.get("state") != "succeeded" or row.get("damaged") or not same_model(row.get("job") or {}, spec):
            continue
        try:
            events = engine.events(row["id"], root=root)
        except CompressionLabError:
            events = []
        timing = run_timing(row, events)
        if timing is not None:
            out.append(timing)
        if len(out) >= limit:
            break
    return out


def _median(values: list[float]) -> float:
    ordered_values = sorted(values)
    middle = len(ordered_values) // 2
    return ordered_values[middle] if len(ordered_values) % 2 else (ordered_values[middle - 1] +
                                                                   ordered_values[middle]) / 2


def time_estimate(timings: list[dict], epochs: int, runs: int = 1, workers: int = 1,
                  steps: tuple[str, ...] | None = None) -> dict:
    """How long `runs` runs of a plan with `epochs` fine-tuning epochs take on `workers` workers, from measured
    runs of the same model (run_timings): seconds = overhead + epochs x seconds per epoch (medians over the runs;
    runs with the same step types preferred when `steps` is given), times the waves of `workers` runs at once.

    Returns {"seconds", "per_run", "per_epoch", "overhead", "basis" (runs it read), "same_steps"}, or
    {"seconds": None, "why": ...} when nothing measured supports one."""
    if not timings:
        return {"seconds": None, "why": "no estimate yet: first run of this model"}
    alike = [t for t in timings if steps is not None and t["steps"] == tuple(sorted(steps))]
    chosen = alike or timings
    overheads = [t["overhead"] for t in chosen if t["overhead"] is not None]
    overhead = _median(overheads) if overheads else 0.0
    per_epoch = [(t["seconds"] - (t["overhead"] if t["overhead"] is not None else overhead)) / t["epochs"]
                 for t in chosen if t["epochs"] > 0]
    if epochs > 0 and not per_epoch:
        return {"seconds": None, "why": "no estimate yet: no earlier run of this model fine-tuned"}
    if epochs > 0:
        epoch = max(0.0, _median(per_epoch))
        per_run = overhead + epochs * epoch
    else:
        epoch = _median(per_epoch) if per_epoch else None
        quick = [t["seconds"] for t in chosen if t["epochs"] == 0]
        per_run = _median(quick) if quick else overhead
    waves = -(-max(1, runs) // max(1, workers))
    return {"seconds": per_run * waves, "per_run": per_run, "per_epoch": epoch, "overhead": overhead,
            "basis": len(chosen), "same_steps": bool(alike)}


# --- behaviour diff (issue 28) -------------------------------------------------------------------------------------

BEHAVIOUR_DIR = "behaviour"  # <root>/behaviour/KEY.json: the behaviour diffs, one per pair of files


def finished_model_file(ref: str | Path, root: Root = None) -> Path:
    """The model.clab of a finished run: `ref` is a run folder (a path that is a folder) or a run id of the data
    folder; a CompressionLabError naming the problem otherwise (unknown id, a run not finished, no model file)."""
    folder = Path(ref)
    if folder.is_dir():
        metrics, problem = runfolder.load(folder / "metrics.json")
        if problem is not None or not isinstance(metrics, dict):
            raise CompressionLabError(f"run folder {folder} holds no finished run ({problem or 'no metrics.json'}): "
                                      "give a finished run's folder or id (`complab runs` lists them)")
    elif "/" in str(ref) or "\\" in str(ref):
        raise CompressionLabError(f"no run folder {ref}: give a finished run's folder or its id "
                                  "(`complab runs` lists them)")
    else:
        row = engine.status(str(ref), root=root)  # an unknown id: "no run ... list runs with `complab runs`"
        if row["state"] != "succeeded":
            reason = f" ({first_line(row['error'])})" if row.get("error") else ""
            raise CompressionLabError(f"run {ref} is {row['state']}{reason}: a behaviour diff needs finished "
                                      "runs; list them with `complab runs`")
        folder = Path(row["dir"])
    model = folder / "model.clab"
    if model.is_symlink() or not model.is_file():
        raise CompressionLabError(f"run {ref} has no model.clab (it was a sensitivity analysis, or its folder is "
                                  "damaged): compare compression runs")
    return model


def analysis_of_run(ref: str | Path, root: Root = None) -> dict | None:
    """The newest sensitivity report of the model and data a run (by id) compressed, or None (a run folder given by
    path, no analysis, or a damaged one). The run's job only matches analysis runs in the store: it builds nothing."""
    if Path(ref).is_dir() or "/" in str(ref):
        return None
    try:
        job = engine.status(str(ref), root=root).get("job") or {}
        return latest_analysis(job, root) if job.get("model") else None
    except CompressionLabError:
        return None


def behaviour_diff(run_a: str, run_b: str | None = None, root: Root = None, original=None, data=None,
                   sensitivity: dict | None = None, gallery: int = 48, compute: bool = True) -> dict | None:
    """The behaviour diff (analysis/behaviour.py, schema "behaviour/1") of two finished runs' model files, or of
    run_a's file against `original` (a handle the caller loaded: the app's active model or the person's --model,
    never one a run folder names) when run_b is None; cached in <root>/behaviour/. compute=False: the cached diff
    or None, no model run (what the Compare page shows on opening)."""
    from complab.analysis.behaviour import diff_files

    file_a = finished_model_file(run_a, root)
    file_b = finished_model_file(run_b, root) if run_b is not None else None
    if sensitivity is None:  # what the trace falls back on when the architectures differ (channels removed)
        sensitivity = analysis_of_run(run_b if run_b is not None else run_a, root)
    cache = Path(root) if root is not None else engine.default_root()
    diff = diff_files(file_a, file_b, original=original, data=data, cache_dir=cache / BEHAVIOUR_DIR,
                      sensitivity=sensitivity, gallery=gallery, compute=compute)
    if diff is None:
        return None
    # each side named as the person named it (a run id or folder); the cached dict is keyed by the files alone
    diff = {**diff, "a": dict(diff["a"]), "b": dict(diff["b"])}
    diff["b" if run_b is None else "a"]["label"] = Path(str(run_a)).name
    if run_b is not None:
        diff["b"]["label"] = Path(str(run_b)).name
    return diff
