"""Engine under load: 20 compression runs submitted at once, then a consistency check of the run store.

    .venv/bin/python benchmarks/engine_load.py [--runs 20] [--workers 2]

Runs demo:lenet300 on digits with a small plan (prune 90%: 1 round of 1 fine-tuning epoch; cluster
k=16, no fine-tuning; latency not measured) in a temporary data folder. The last line is one JSON
object: succeeded, lost (runs not in a final state or missing files), store_consistent (every index
row matches its folder: final states, metrics.json present for succeeded runs and equal to the
index's metrics, no stray folders or rows), seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from complab import engine
from complab.engine.dispatcher import try_lock
from complab.engine.store import summary_metrics

PLAN = {"schema_version": 1, "name": "engine-load", "seed": 0, "eval_split": "test", "steps": [
    {"type": "prune", "sparsity": {"_default": 0.9, "re:fc3": 0.5}, "iterations": 1, "finetune_epochs": 1},
    {"type": "cluster", "n_clusters": {"_default": 16}, "finetune_epochs": 0}]}
JOB = {"kind": "compress", "model": "demo:lenet300", "data": "digits", "plan": PLAN, "latency": False}


def check_store(root: Path, ids: list[str]) -> tuple[int, bool, list[str]]:
    """(lost, consistent, problems) from the index rows and the run folders."""
    problems: list[str] = []
    rows = {row["id"]: row for row in engine.list_runs(root=root)}
    folders = {path.name for path in (root / "runs").iterdir() if path.is_dir()}
    if set(rows) != set(ids):
        problems.append(f"rows {sorted(set(rows) ^ set(ids))} differ from the submitted ids")
    if folders != set(rows):
        problems.append(f"stray folders or rows: {sorted(folders ^ set(rows))}")
    lost = 0
    for run_id in ids:
        row, folder = rows.get(run_id), root / "runs" / run_id
        needed = ["job.json", "plan.json", "events.jsonl", "log.txt"]
        if row is not None and row["state"] == "succeeded":
            needed += ["metrics.json", "model.clab"]
        missing = [name for name in needed if not (folder / name).is_file()]
        if row is None or row["state"] not in engine.FINAL_STATES or missing:
            lost += 1
            problems.append(f"{run_id}: state {row and row['state']}, missing {missing}")
            continue
        if row["state"] == "succeeded":
            on_disk = summary_metrics(json.loads((folder / "metrics.json").read_text()))
            if on_disk != row["metrics"]:
                problems.append(f"{run_id}: index metrics differ from metrics.json")
            if on_disk["after"]["compressed_bytes"] != (folder / "model.clab").stat().st_size:
                problems.append(f"{run_id}: compressed_bytes differs from the file size")
            events = engine.events(run_id, root=root)
            if not events or events[-1]["progress"] != 1.0:
                problems.append(f"{run_id}: no final progress event")
        leftovers = [path.name for path in folder.glob(".*.tmp")]
        if leftovers:
            problems.append(f"{run_id}: temporary files left: {leftovers}")
    return lost, not problems, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="max_workers (2 on a 2-core machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine-load-") as tmp:
        root = Path(tmp)
        engine.settings(root, max_workers=args.workers)
        started = time.time()
        with ThreadPoolExecutor(4) as pool:  # four clients at once, like several app tabs and a CLI
            ids = list(pool.map(lambda _: engine.submit(JOB, root=root), range(args.runs)))
        submitted = time.time() - started
        deadline = started + 540
        while time.time() < deadline:
            rows = engine.list_runs(root=root)
            if all(row["state"] in engine.FINAL_STATES for row in rows):
                break
            time.sleep(1.0)
        seconds = time.time() - started
        rows = engine.list_runs(root=root)
        for _ in range(50):  # let the dispatcher leave before the folder is deleted
            if (lock := try_lock(root)) is not None:
                lock.close()
                break
            time.sleep(0.2)
        lost, consistent, problems = check_store(root, ids)
        for problem in problems:
            print("problem:", problem, file=sys.stderr)
        succeeded = [row for row in rows if row["state"] == "succeeded"]
        for row in rows:
            if row["state"] != "succeeded":
                print(f"{row['id']}: {row['state']}: {row['error']}", file=sys.stderr)
        run_seconds = [row["finished"] - row["started"] for row in succeeded]
        accuracies = sorted({round(row["metrics"]["after"]["accuracy"], 6) for row in succeeded})
        print(f"{len(ids)} runs submitted in {submitted:.2f} s by 4 threads; max_workers {args.workers}; "
              f"per run {min(run_seconds, default=0):.1f}-{max(run_seconds, default=0):.1f} s (worker start "
              f"included); distinct accuracies after {accuracies}")
        print(json.dumps({"succeeded": len(succeeded), "lost": lost, "store_consistent": consistent,
                          "seconds": round(seconds, 1), "max_workers": args.workers, "runs": len(ids)}))
    return 0 if len(succeeded) == len(ids) and lost == 0 and consistent else 1


if __name__ == "__main__":
    sys.exit(main())
