"""Search: Optuna's multi-objective NSGA-II sampler proposes per-layer plans, the engine measures them as runs.

    result = search(source, report, budget=12, batch=4, root=...)   -> {"sweep", "evaluated", "front", ...}

The search space is the sensitivity report's grid: per layer a sparsity and a cluster count (or none). Its
first generation starts on the current front: the target solver's plans for a few compression ratios
(SEED_RATIOS), enqueued as trials, so the sampler mutates and crosses plans that are already good instead of
random ones. Every generation (`batch` plans) is submitted as members of ONE sweep (the Compare page draws it
as one curve, filling in as runs finish), then measured: the two objectives are the real file's bytes
(minimised) and the measured accuracy (maximised), from each run's metrics. A failed or cancelled member is
told to the sampler as failed; a generation in which every member was cancelled (the sweep was cancelled)
ends the search. Identical plans reuse finished runs (sweeps.py's content key), so a re-run search with the
same seed costs nothing new. The budget counts runs asked for, reused or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from complab import engine, sources
from complab.engine.store import RunStore, write_atomic
from complab.errors import CompressionLabError

FOLDER = "searches"  # ROOT/searches/<id>/: a background search's settings (search.json) and its log (log.txt)
SEED_RATIOS = (5.0, 10.0, 20.0, 40.0, 80.0)  # the solver's plans the first generation starts from
MAX_BUDGET = 200


def _choices(report: dict) -> dict[str, tuple[list[float], list[int | None]]]:
    from complab.analysis.solver import grids_from_report  # (imports torch: the CLI and the app start without)

    return {layer: (list(grid.sparsities), list(grid.clusters)) for layer, grid in grids_from_report(report).items()}


def _nearest(value, options: list):
    if value in options:
        return value
    if value is None:
        return options[0] if None in options else min(options, key=lambda o: o if o is not None else 0)
    numbers = [o for o in options if o is not None]
    return min(numbers, key=lambda o: abs(float(o) - float(value)))


def check(budget, batch) -> None:
    """CompressionLabError for a budget or generation size out of range."""
    if isinstance(budget, bool) or not isinstance(budget, int) or not 2 <= budget <= MAX_BUDGET:
        raise CompressionLabError(f"search budget {budget!r} must be a whole number of runs from 2 to {MAX_BUDGET}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 2 <= batch <= 50:
        raise CompressionLabError(f"search batch {batch!r} must be a whole number of runs from 2 to 50")


def search(source: dict, report: dict, budget: int, batch: int = 4, root: str | Path | None = None,
           name: str = "search", seed: int = 0, prune_options: dict | None = None,
           cluster_options: dict | None = None, latency: bool = True, timeout: float = 3600.0,
           on_generation: Callable[[dict], None] | None = None) -> dict:
    """Run `budget` plans in generations of `batch` (see the module docstring); returns {"sweep", "evaluated",
    "failed", "front": [{"run", "compressed_bytes", "accuracy"}], "generations"}."""
    import optuna  # an optional dependency, slow to import: only when a search runs
    from optuna.samplers import NSGAIISampler

    from complab.analysis.estimate import model_stats  # (these import torch, as above)
    from complab.analysis.predict import history_from_runs, predict
    from complab.analysis.targets import plan_from_settings, solve_target

    check(budget, batch)
    handle = sources.load_model(source)
    choices = {layer: c for layer, c in _choices(report).items() if layer in handle.prunable_layers()}
    if not choices:
        raise CompressionLabError("the sensitivity report names none of the model's layers: analyze this model")
    stats = model_stats(handle)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "maximize"],
                                sampler=NSGAIISampler(population_size=batch, seed=seed))
    for ratio in SEED_RATIOS[:batch]:  # the first generation: the solver's front
        # the search's trials choose sparsity and clusters: its seeds are the solver's front on those two
        solved = solve_target(stats, report, "ratio", ratio, axes=("sparsity", "clusters"))["settings"]
        params = {}
        for layer, (sparsities, clusters) in choices.items():
            s, k = solved.get(layer, (0.0, None))
            params[f"{layer}|sparsity"] = _nearest(float(s), sparsities)
            params[f"{layer}|clusters"] = _nearest(k, clusters)
        study.enqueue_trial(params)
    model = engine.absolute_paths(source)["model"]
    history = history_from_runs(engine.list_runs(root=root, kind="compress"), model)
    sweep_id, evaluated, failed, generations = None, 0, 0, 0
    while evaluated < budget:
        size = min(batch, budget - evaluated)
        trials = [study.ask() for _ in range(size)]
        jobs, labels = [], []
        for trial in trials:
            settings = {layer: (trial.suggest_categorical(f"{layer}|sparsity", sparsities),
                                trial.suggest_categorical(f"{layer}|clusters", clusters))
                        for layer, (sparsities, clusters) in choices.items()}
            plan = plan_from_settings(settings, f"{name}-{trial.number + 1}", prune_options, cluster_options)
            jobs.append({"kind": "compress", **source, "plan": plan.to_dict(), "latency": latency,
                         "predicted": predict(report, settings, None, history)})
            labels.append(f"search:{trial.number + 1}")
        sweep_id = engine.submit_sweep(jobs, root=root, axis="search", targets=labels, name=name, extend=sweep_id)
        members = engine.wait_sweep(sweep_id, timeout, root=root)["members"][-size:]
        generations += 1
        for trial, member in zip(trials, members, strict=True):
            after = (member.get("metrics") or {}).get("after") or {}
            if member["state"] == "succeeded" and "compressed_bytes" in after and "accuracy" in after:
                study.tell(trial, [float(after["compressed_bytes"]), float(after["accuracy"])])
            else:
                failed += 1
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        evaluated += size
        if on_generation is not None:
            on_generation({"generation": generations, "evaluated": evaluated, "members": members})
        if all(m["state"] == "cancelled" for m in members):
            break  # the sweep was cancelled
    front, members = [], engine.sweep_status(sweep_id, root)["members"]  # member index = trial number
    for trial in study.best_trials:
        run = members[trial.number]["run"]
        front.append({"run": run, "compressed_bytes": int(trial.values[0]), "accuracy": trial.values[1]})
    front.sort(key=lambda point: point["compressed_bytes"])
    return {"sweep": sweep_id, "evaluated": evaluated, "failed": failed, "generations": generations,
            "front": front}


def start(source: dict, report: dict, budget: int, batch: int = 4, root: str | Path | None = None,
          name: str = "search", prune_options: dict | None = None, cluster_options: dict | None = None,
          latency: bool = True) -> Path:
    """Run `search` in a detached background process (the app must not wait for generations of runs): its
    settings go to ROOT/searches/<id>/search.json, its output to log.txt there. The runs appear as one sweep on
    the Compare page, a generation at a time; cancelling that sweep ends the search. Returns the folder.
    Bad settings raise here, before anything starts."""
    check(budget, batch)
    store = RunStore(root)
    folder = store.root / FOLDER / (time.strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex())
    folder.mkdir(parents=True)
    settings = {"source": source, "report": report, "budget": budget, "batch": batch, "root": str(store.root),
                "name": name, "prune_options": prune_options or {}, "cluster_options": cluster_options or {},
                "latency": latency}
    write_atomic(folder / "search.json", json.dumps(settings))
    with open(folder / "log.txt", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "complab.engine.search", str(folder / "search.json")],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         close_fds=True)
    return folder


def _main(path: str) -> int:
    settings = json.loads(Path(path).read_text())

    def generation(done: dict) -> None:
        print(f"generation {done['generation']}: {done['evaluated']} of {settings['budget']} runs measured",
              flush=True)

    try:
        result = search(settings["source"], settings["report"], settings["budget"], settings["batch"],
                        root=settings["root"], name=settings["name"], prune_options=settings["prune_options"],
                        cluster_options=settings["cluster_options"], latency=settings["latency"],
                        on_generation=generation)
    except CompressionLabError as exc:
        print(f"search failed: {exc}", flush=True)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
