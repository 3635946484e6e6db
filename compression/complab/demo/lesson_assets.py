"""Recompute the lesson's two shipped runs (assets/lesson/prune, assets/lesson/share) with the real LESSON settings.

    python -m complab.demo.lesson_assets [--out assets/lesson] [--check]

Each folder gets what an engine run of that lesson step writes: `model.clab` (the compact file), `metrics.json`
(the pipeline's measurements, written as the worker writes them) and `plan.json` (byte for byte what the run store
writes for lesson.step_plan(step, LESSON)). The Lesson page imports them into the run store as finished runs
(precomputed, checked on the machine first: complab/analysis/lesson_shipped.py), so a first class does not wait
minutes for its runs. Seeded, CPU-only, one thread: the same command gives the same numbers on the same software.
`--check` recomputes into a temporary folder and compares with the shipped files (plans, accuracies, bytes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from complab import sources
from complab.analysis import lesson
from complab.analysis.lesson_shipped import RUNS, SHIPPED, plan_text


def generate(run: str, out: Path) -> dict:
    """Run lesson step `run` ("prune" or "share") with the LESSON settings into `out`; returns its metrics."""
    from complab.pipeline import compress  # (the pipeline imports every method: only when generating)

    job = lesson.step_job(run, lesson.LESSON)
    handle = sources.load_model(job)
    data = sources.load_data(job, handle)
    with tempfile.TemporaryDirectory() as scratch:
        result = compress(handle, lesson.step_plan(run, lesson.LESSON), data, scratch, latency=False)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(scratch) / "model.clab", out / "model.clab")
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))  # as the engine's worker writes it
    (out / "plan.json").write_text(plan_text(run))  # as the run store writes a compress job's plan.json
    return result.metrics


def compare(shipped: Path, fresh: Path) -> list[str]:
    """What differs between a shipped run folder and a recomputed one (empty: the same results)."""
    problems = []
    if (shipped / "plan.json").read_bytes() != (fresh / "plan.json").read_bytes():
        problems.append("plan.json differs")
    old, new = (json.loads((folder / "metrics.json").read_text())["after"] for folder in (shipped, fresh))
    if abs(old["accuracy"] - new["accuracy"]) > 1e-9:
        problems.append(f"accuracy {old['accuracy']:.6f} shipped, {new['accuracy']:.6f} recomputed")
    if (shipped / "model.clab").read_bytes() != (fresh / "model.clab").read_bytes():
        problems.append(f"model.clab differs ({old['compressed_bytes']:,} bytes shipped, "
                        f"{new['compressed_bytes']:,} recomputed)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SHIPPED, help="folder to write prune/ and share/ into")
    parser.add_argument("--check", action="store_true", help="recompute and compare with --out, writing nothing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one thread: the sums run in one order, so the same software gives the same bytes
    failed = False
    for run in RUNS:
        started = time.perf_counter()
        if args.check:
            with tempfile.TemporaryDirectory() as scratch:
                generate(run, Path(scratch))
                problems = compare(args.out / run, Path(scratch))
            failed = failed or bool(problems)
            said = "; ".join(problems) or "the same plan, accuracy and bytes"
            print(f"{run}: {said} ({time.perf_counter() - started:.0f} s)")
            continue
        measured = generate(run, args.out / run)
        sizes = {path.name: path.stat().st_size for path in sorted((args.out / run).iterdir())}
        print(f"{run}: accuracy {measured['before']['accuracy']:.4f} -> {measured['after']['accuracy']:.4f}, "
              f"files {sizes} ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
