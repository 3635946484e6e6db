"""The Lesson page on a fresh data folder: its first render, then steps 2 and 3 with and without the shipped runs.

    .venv/bin/python benchmarks/lesson_first_render.py [--rounds 1]

Each round runs the app in Streamlit's AppTest in a new process (so imports and caches start cold, as a first
visitor's would), with the real lesson settings, on a new empty data folder:
- "shipped": the page as it ships: the steps' runs are imported from assets/lesson after the on-machine check;
- "run here": the shipped folder replaced by an empty one, so the check refuses it and the steps run in the engine
  (what a first class waited for before the runs were shipped).
Prints per round and mode: first_render_s (app, then the Lesson page), step2_s (Next to the pruned step drawn),
step3_s (Next to the shared step drawn), imported (runs marked precomputed). The last line is one JSON object with
the worst first render and the medians (target: first render <= 10 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ROUND = r"""
import json, os, sys, tempfile, time
from pathlib import Path
os.environ["COMPRESSION_LAB_HOME"] = tempfile.mkdtemp(prefix="lesson-bench-")
os.environ.pop("COMPRESSION_LAB_LESSON_FAST", None)
from streamlit.testing.v1 import AppTest  # the server has Streamlit loaded before a first visitor comes

def until(at, label):
    while not any(m.label == label for m in at.metric):
        assert not at.exception, [e.value for e in at.exception]
        time.sleep(0.5)
        at.run()

started = time.perf_counter()
at = AppTest.from_file(str(Path(sys.argv[1]) / "app.py"), default_timeout=300)
at.run()
at.switch_page("pages/lesson.py").run()
assert not at.exception, [e.value for e in at.exception]
assert any(m.label == "Original accuracy" for m in at.metric)
first = time.perf_counter() - started
from complab import engine
from complab.analysis import lesson_shipped
if sys.argv[2] == "run here":
    lesson_shipped.SHIPPED = Path(tempfile.mkdtemp())  # empty: the check refuses it, the steps run in the engine
started = time.perf_counter()
at.button(key="lesson_next_prune").click().run()
until(at, "Accuracy after pruning")
step2 = time.perf_counter() - started
started = time.perf_counter()
at.button(key="lesson_next_share").click().run()
until(at, "Accuracy after sharing")
step3 = time.perf_counter() - started
runs = engine.list_runs(root=os.environ["COMPRESSION_LAB_HOME"])
print(json.dumps({"first_render_s": round(first, 2), "step2_s": round(step2, 2), "step3_s": round(step3, 2),
                  "imported": sum(bool(r["job"].get("precomputed")) for r in runs), "runs": len(runs)}))
"""


def one_round(mode: str) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "round.py"
        script.write_text(ROUND)
        done = subprocess.run([sys.executable, str(script), str(ROOT), mode], capture_output=True, text=True,
                              timeout=900, env={**__import__("os").environ,
                                                "PYTHONPATH": str(ROOT / "compression")})
    if done.returncode != 0:
        raise SystemExit(f"{mode}: the round failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"shipped": [], "run here": []}
    for _ in range(args.rounds):
        for mode in results:
            found = one_round(mode)
            results[mode].append(found)
            print(f"{mode}: {found}", flush=True)
    summary = {"rounds": args.rounds,
               "first_render_s_worst": max(r["first_render_s"] for rows in results.values() for r in rows)}
    for mode, rows in results.items():
        tag = mode.replace(" ", "_")
        for key in ("first_render_s", "step2_s", "step3_s"):
            summary[f"{tag}_{key}_median"] = round(statistics.median(r[key] for r in rows), 2)
        summary[f"{tag}_imported"] = rows[-1]["imported"]
    summary["first_render_within_10_s"] = summary["first_render_s_worst"] <= 10
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
