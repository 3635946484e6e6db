"""One 8-plan sweep (ratio targets 5x-80x) on the demo LeNet-5, run three ways in one script.

1. the local engine with 1 worker, 2. the local engine with 2 workers, 3. a local 2-node Ray cluster with 2
CPUs in all (a head and a second node, 1 CPU each, both on 127.0.0.1 inside a private network namespace
made with `unshare`; skipped with the reason when that is not possible here). Each mode gets a fresh data
folder, so nothing is reused between them; every mode runs the same 8 solved plans through the CLI
(`complab sweep --targets ratio:... --wait`), with a short fine-tuning recipe.

Printed (last line, JSON): `runs` (members per mode), `succeeded` and `lost` (runs that did not succeed, over
all modes), `front_points` (runs on the accuracy-vs-bytes Pareto front of the 1-worker sweep), the wall
seconds of each mode, `speedup_2_workers` and `ray_speedup` (1-worker wall time over theirs) and
`ray_overhead_s`: per run, the Ray run's time in the store (started to finished) minus the time the job
itself reported computing (the run's own events, first to last), averaged; the same figure for the local
2-worker mode (`local_overhead_s`) is the baseline it compares against. This machine has 2 cores, so expect
at most ~2x: the point is that nothing is lost and the overhead is small.

    .venv/bin/python benchmarks/sweep.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "compression"))

from complab import engine  # noqa: E402
from complab.analysis.pareto import pareto_mask  # noqa: E402

TARGETS = "ratio:5,8,12,18,27,40,60,80"
PYTHON = sys.executable
CLI = [PYTHON, "-m", "complab.cli"]


def quick_recipe(folder: Path) -> Path:
    base = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    base["steps"][0]["finetune_epochs"] = 1
    base["steps"][1]["finetune_epochs"] = 1
    path = folder / "base.json"
    path.write_text(json.dumps(base))
    return path


def sensitivity(folder: Path) -> Path:
    out = folder / "sensitivity.json"
    subprocess.run([*CLI, "analyze", "--model", "demo:lenet5", "--data", "digits", "--mode", "exact",
                    "--sparsities", "0,0.5,0.7,0.8,0.9,0.95,0.98", "--clusters", "2,4,8,16,32",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    return out


def run_sweep(home: Path, report: Path, recipe: Path, env: dict, extra: list[str] | None = None) -> dict:
    """`extra`: the CLI's global options (e.g. --ray ADDRESS), before the verb."""
    started = time.monotonic()
    done = subprocess.run([*CLI, *(extra or []), "sweep", "--model", "demo:lenet5", "--data", "digits",
                           "--targets", TARGETS,
                           "--sensitivity", str(report), "--base-recipe", str(recipe), "--no-latency", "--home",
                           str(home), "--wait", "--timeout", "500"],
                          capture_output=True, text=True, timeout=560, env=env)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise SystemExit(f"sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    runs = {row["id"]: row for row in engine.list_runs(root=home)}
    overheads, nodes = [], set()
    for member in result["members"]:
        row = runs.get(member["run"])
        if not row or row["state"] != "succeeded" or not row.get("started"):
            continue
        events = engine.events(member["run"], root=home)
        nodes |= {e["values"]["node_id"] for e in events if (e.get("values") or {}).get("node_id")}
        if len(events) >= 2:
            computing = events[-1]["time"] - events[0]["time"]
            overheads.append((row["finished"] - row["started"]) - computing)
    return {"wall_s": round(wall, 1), "members": result["members"],
            "succeeded": sum(m["state"] == "succeeded" for m in result["members"]),
            "overhead_s": round(sum(overheads) / len(overheads), 2) if overheads else None,
            "nodes": sorted(nodes)}


def ray_available() -> str | None:
    """None when a private network namespace can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root: `unshare -n` needs root"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "`unshare` or `ip` is not installed"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install ray==2.60.0, or `bash .ci/setup test`)"
    return None


RAY_PORT = 6390


def ray_cluster_and_sweep(work: Path, report: Path, recipe: Path) -> None:
    """Inside the private namespace: a head and a second node (1 CPU each, own temp folders) on 127.0.0.1, then the
    sweep through the CLI with --ray; prints the mode's JSON. Every Ray process dies with the namespace."""
    address = f"127.0.0.1:{RAY_PORT}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT / "compression")}
    temp = Path(tempfile.mkdtemp(prefix="clb-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    ray = [str(Path(PYTHON).parent / "ray"), "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
           "--disable-usage-stats"]
    started = time.monotonic()
    subprocess.run([*ray, "--head", "--port", str(RAY_PORT), "--include-dashboard", "false", "--temp-dir",
                    str(temp / "h")], check=True, capture_output=True, timeout=180, env=env)
    subprocess.run([*ray, "--address", address, "--temp-dir", str(temp / "w")], check=True, capture_output=True,
                   timeout=180, env=env)
    cluster_s = time.monotonic() - started
    env.pop("COMPRESSION_LAB_WORKERS", None)  # as many at once as the cluster's CPUs
    out = run_sweep(work / "home-ray", report, recipe, {**env, "COMPRESSION_LAB_RAY": address}, ["--ray", address])
    out["cluster_start_s"] = round(cluster_s, 1)
    print(json.dumps(out), flush=True)


def ray_mode(work: Path, report: Path, recipe: Path) -> dict:
    """The same sweep on a 2-node Ray cluster on 127.0.0.1 inside `unshare` (network, pid and mount namespaces)."""
    inner = (f"ip link set lo up && exec {PYTHON} {Path(__file__).resolve()} --inside-namespace {work} {report} "
             f"{recipe}")
    done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", inner],
                          capture_output=True, text=True, timeout=580, cwd=ROOT)
    if done.returncode != 0 or not done.stdout.strip():
        raise SystemExit(f"the Ray sweep failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        report, recipe = sensitivity(work), quick_recipe(work)
        env = {**os.environ, "COMPRESSION_LAB_WORKERS": "1"}
        env.pop("COMPRESSION_LAB_RAY", None)
        one = run_sweep(work / "home-1", report, recipe, env)
        print("1 worker", json.dumps(one), file=sys.stderr)
        two = run_sweep(work / "home-2", report, recipe, {**env, "COMPRESSION_LAB_WORKERS": "2"})
        print("2 workers", json.dumps(two), file=sys.stderr)
        why_not = ray_available()
        ray = None if why_not else ray_mode(work, report, recipe)
        print("ray", json.dumps(ray), file=sys.stderr)
        modes = [one, two] + ([ray] if ray else [])
        members = one["members"]
        bytes_, accuracy = [m["compressed_bytes"] for m in members], [m["accuracy"] for m in members]
        front = sum(pareto_mask(bytes_, accuracy)) if all(v is not None for v in bytes_ + accuracy) else None
        print(json.dumps({
            "runs": len(members), "modes": len(modes),
            "succeeded": sum(mode["succeeded"] for mode in modes),
            "lost": sum(len(mode["members"]) - mode["succeeded"] for mode in modes),
            "front_points": front,
            "wall_s": {"local_1": one["wall_s"], "local_2": two["wall_s"], "ray_2cpu": ray and ray["wall_s"]},
            "speedup_2_workers": round(one["wall_s"] / two["wall_s"], 2),
            "ray_speedup": round(one["wall_s"] / ray["wall_s"], 2) if ray else None,
            "ray_overhead_s": ray and ray["overhead_s"], "local_overhead_s": two["overhead_s"],
            "ray_nodes": ray and len(ray["nodes"]), "ray_cluster_start_s": ray and ray["cluster_start_s"],
            "ray": "measured" if ray else f"skipped: {why_not}",
            "ratios": [m["ratio"] and round(m["ratio"], 1) for m in members],
            "total_s": round(time.monotonic() - started, 1)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--inside-namespace":
        ray_cluster_and_sweep(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
