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
ANALYSIS_FLAGS = ("val_size", "sparsities", "n_clusters", "bn_batches", "seed", "calibration_seconds")
ANALYSIS_WAIT_S = 24 * 3600.0  # a sweep waits this long for the analysis it started (the CLI's --timeout)
POLL_S = 0.5


# --- jobs ------------------------------------------------------------------------------------------------------

def source_spec(model: str, weights: str | None = None, data: str | None = None, input_size: int | None = None,
                mean=None, std=None, trust: bool = False) -> dict:
    """The source spec of a job. Paths stay as typed: engine.submit makes them absolute in the caller's folder."""
    return {"model": model, "weights": weights, "data": data, "input_size": input_size,
            "mean": list(mean) if mean else None, "std": list(std) if std else None,
            **({"trust": True} if trust else {})}


def compress_job(spec: dict, plan: dict | Plan, predicted: dict | None = None, latency: bool | None = None) -> dict:
    """The engine job of a compression run. `predicted` (the plan's predicted accuracy) rides along once the engine
    knows the key (complab.engine.jobs.JOB_KEYS), so a run can be checked against it; `latency` None: the
    engine's default (measured)."""
    job = {"kind": "compress", **spec, "plan": plan.to_dict() if isinstance(plan, Plan) else plan}
    if latency is not None:
        job["latency"] = bool(latency)
    if predicted is not None and "predicted" in job_kinds.JOB_KEYS:  # read at call time
        job["predicted"] = predicted
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
               latency: bool | None = None) -> tuple[list[dict], list[str]]:
    """(jobs, labels): one compress job per target value, its plan solved on `report` for the model `stats`
    describe (analysis.estimate.model_stats), with its predicted accuracy riding along. `base` gives the seed
    and evaluation split (its fine-tuning settings come in as `prune_options` / `cluster_options`:
    analysis.targets.step_options); `adjust` changes each solved plan (the app adds a fold_bn step)."""
    from complab.analysis.predict import predict  # both import torch: not at CLI start-up
    from complab.analysis.targets import target_plan

    fixed = {"seed": base.seed, "eval_split": base.eval_split} if base is not None else {}
    jobs, labels = [], []
    for value in values:
        member = target_plan(stats, report, axis, value, name, prune_options or {}, cluster_options or {}, **fixed)
        plan = adjust(member.plan) if adjust is not None else member.plan
        jobs.append(compress_job(spec, plan, predicted=predict(report, member.settings, None, history),
                                 latency=latency))
        labels.append(member.label)
    return jobs, labels


def submit_sweep(jobs: list[dict], labels: list[str], root: Root = None, axis: str = "plans",
                 name: str | None = None, reuse: bool = True) -> dict:
    """Queue the jobs as one sweep (members identical to earlier runs reused unless `reuse` is off); returns the
    sweep's status (engine.sweep_status: id, label, members)."""
    sweep_id = engine.submit_sweep(jobs, root=root, axis=axis, targets=labels, name=name, reuse=reuse)
    return engine.sweep_status(sweep_id, root=root)
