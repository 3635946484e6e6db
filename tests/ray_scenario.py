"""The Ray backend's scenario on a real two-node cluster, run by tests/test_ray.py inside a private network (and pid)
namespace, so Ray binds to 127.0.0.1 and everything it starts dies with the namespace.

    unshare --net --pid --fork --mount-proc bash -c 'ip link set lo up; exec python tests/ray_scenario.py OUT_DIR'

Starts a head (`ray start --head`, 1 CPU) and a second node (`ray start --address`, its own temp folder, 1 CPU),
then: quick compress runs (one on a shipped image folder) and a small sensitivity analysis, twice (the second
served from the cache), through the CLI (`--ray 127.0.0.1:PORT`); a folder the second node cannot see; cancel
(queued runs never start, the running one stops and frees its CPU); a SIGKILLed dispatcher; and the second
node's raylet killed while a run is on it. Prints one JSON line with what it saw (the test asserts on it and on
OUT_DIR).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "compression"))  # this checkout's package, not another one installed
BIN = Path(sys.executable).parent
PORT = 6380
ADDRESS = f"127.0.0.1:{PORT}"
started = time.time()


def say(message: str) -> None:
    print(f"[scenario {time.time() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def ray_start(*args: str, temp_dir: Path, hide: Path | None = None) -> None:
    """`ray start` with 1 CPU; `hide`: a folder this node does not see (an empty tmpfs over it, in a mount namespace
    of its own), as a machine without the storage the app's machine has."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_health_check_period_ms="1000",
               RAY_health_check_failure_threshold="3")
    command = [str(BIN / "ray"), "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--temp-dir", str(temp_dir), "--disable-usage-stats", *args]
    if hide is not None:
        command = ["unshare", "--mount", "bash", "-c", f'mount -t tmpfs none "{hide}" && exec "$@"', "-", *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise SystemExit(f"ray start {' '.join(args)} failed: {done.stderr[-2000:]}")


def cli(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([str(BIN / "complab"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)
    if done.returncode:
        raise SystemExit(f"complab {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def node_of(engine, run_id: str, home: Path) -> str | None:
    """The Ray node id a run's first events name (None before the task has started)."""
    for event in engine.events(run_id, root=home):
        if event.get("values", {}).get("node_id"):
            return event["values"]["node_id"]
    return None


def wait_final(engine, run_ids: list[str], home: Path, timeout: float) -> dict[str, dict]:
    deadline = time.time() + timeout
    while True:
        rows = {row["id"]: row for row in engine.list_runs(root=home) if row["id"] in run_ids}
        if all(row["state"] in engine.FINAL_STATES for row in rows.values()) or time.time() > deadline:
            return rows
        time.sleep(0.5)


def raylet_pid(temp_dir: Path) -> int:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "raylet" in cmdline.split("\0")[0] and str(temp_dir) in cmdline:
                return int(name)
    raise SystemExit(f"no raylet with {temp_dir} in its command line")


def write_images(folder: Path) -> Path:
    """Ten classes of six random 28x28 grey images (an image folder for demo:lenet5)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(10):
        (folder / f"class{label}").mkdir(parents=True)
        for number in range(6):
            pixels = rng.integers(0, 255, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"class{label}" / f"{number}.png")
    return folder


def scenario_unreadable(engine, out: Path, result: dict, recipe: dict) -> None:
    """A dataset folder too big to ship (limit 0 MB here) that the second node cannot see: the run there fails at
    once saying so; the one on the head, which sees it, succeeds."""
    home = out / "unreadable-home"
    engine.settings(root=home, ray_address=ADDRESS)
    folder = out / "not-on-the-second-node" / "images"
    job = {"kind": "compress", "model": "demo:lenet5", "data": f"imagefolder:{folder}", "plan": recipe,
           "latency": False}
    os.environ["COMPRESSION_LAB_RAY_SHIP_MB"] = "0"  # the dispatcher this process starts inherits it
    try:
        ids = [engine.submit(job, root=home) for _ in range(2)]
        rows = wait_final(engine, ids, home, 180)
    finally:
        del os.environ["COMPRESSION_LAB_RAY_SHIP_MB"]
    result["unreadable"] = {run_id: {"state": row["state"], "error": row["error"],
                                     "node": node_of(engine, run_id, home),
                                     "seconds": (row["finished"] or 0) - (row["started"] or 0)}
                            for run_id, row in rows.items()}
    say(f"unreadable: {[(r['state'], (r['node'] or '')[:8]) for r in result['unreadable'].values()]}")


def scenario_runs(engine, out: Path, result: dict) -> None:
    """Quick compress runs through the CLI, plus one small sensitivity analysis (its cache lands here too)."""
    home = out / "runs-home"
    recipe = json.loads((REPO / "assets" / "recipes" / "quick.json").read_text())
    recipe["steps"][0]["finetune_epochs"] = 1
    recipe["steps"][1]["finetune_epochs"] = 0
    (out / "recipe.json").write_text(json.dumps(recipe))
    ids = [cli("--ray", ADDRESS, "submit", str(out / "recipe.json"), "--model", "demo:lenet5", "--data", "digits",
               "--home", str(home)).strip() for _ in range(3)]
    sensitivity = {"kind": "sensitivity", "model": "demo:lenet5", "data": "digits",
                   "config": {"sparsities": [0.0, 0.8], "n_clusters": [4], "val_size": 64, "bn_batches": 0,
                              "mode": "exact"}}
    ids.append(engine.submit(sensitivity, root=home))
    result["sensitivity_job"] = sensitivity
    images = write_images(out / "images")  # a small image folder: it travels with the task (under 64 MB)
    ids.append(engine.submit({"kind": "compress", "model": "demo:lenet5", "data": f"imagefolder:{images}",
                              "plan": recipe, "latency": False}, root=home))
    result["shipped_run"] = ids[-1]
    say(f"submitted {ids}")
    rows = wait_final(engine, ids, home, 240)
    result["runs"] = {run_id: {"state": row["state"], "error": row["error"], "kind": row["kind"],
                               "node": node_of(engine, run_id, home), "metrics": row["metrics"]}
                      for run_id, row in rows.items()}
    result["runs_home"] = str(home)
    again = engine.submit(sensitivity, root=home)  # the same analysis again: served from the app's cache
    row = wait_final(engine, [again], home, 120)[again]
    result["sensitivity_again"] = {"id": again, "state": row["state"], "error": row["error"],
                                   "metrics": row["metrics"], "log": engine.log_tail(again, 20, root=home)}
    result["runs_listed"] = cli("runs", "--home", str(home))
    say(f"runs: {[(r['state'], (r['node'] or '')[:8]) for r in result['runs'].values()]}")


def scenario_sweep(engine, out: Path, result: dict) -> None:
    """A 4-plan sweep of a quick recipe through the CLI on the cluster (`--ray`), waited for."""
    recipe = json.loads((REPO / "assets" / "recipes" / "quick.json").read_text())
    recipe["steps"][0]["finetune_epochs"] = 1
    recipe["steps"][1]["finetune_epochs"] = 0
    plans = []
    for sparsity in (0.5, 0.7, 0.8, 0.9):  # four different plans (identical ones would share one run)
        plan = json.loads(json.dumps(recipe))
        plan["name"] = f"sweep-{sparsity}"
        plan["steps"][0]["sparsity"]["_default"] = sparsity
        plans.append(plan)
    (out / "plans.json").write_text(json.dumps(plans))
    home = out / "sweep-home"
    printed = cli("--ray", ADDRESS, "sweep", "--recipes", str(out / "plans.json"), "--model", "demo:lenet5",
                  "--data", "digits", "--no-latency", "--wait", "--timeout", "240", "--home", str(home), timeout=300)
    summary = json.loads(printed.strip().splitlines()[-1])
    result["sweep"] = {"id": summary["sweep"], "home": str(home),
                       "members": [{**member, "node": node_of(engine, member["run"], home)}
                                   for member in summary["members"]]}
    say(f"sweep: {[(m['state'], (m['node'] or '')[:8]) for m in result['sweep']['members']]}")


def scenario_split(engine, out: Path, result: dict) -> None:
    """An exact sensitivity analysis split by layer across the cluster: its report equals one measured whole."""
    from complab import sources
    from complab.analysis.sensitivity import analyze
    from complab.engine.jobs import sensitivity_config

    home = out / "split-home"
    engine.settings(root=home, ray_address=ADDRESS)
    config = {"sparsities": [0.0, 0.5, 0.9], "n_clusters": [4], "val_size": 128, "bn_batches": 0, "mode": "exact"}
    job = {"kind": "sensitivity", "model": "demo:lenet300", "data": "digits", "config": config}
    run_id = engine.submit(job, root=home)
    row = wait_final(engine, [run_id], home, 240)[run_id]
    split = json.loads((home / "runs" / run_id / "sensitivity.json").read_text()) if row["state"] == "succeeded" \
        else None
    handle, data = sources.load({"model": "demo:lenet300", "data": "digits"})
    whole = analyze(handle, data, sensitivity_config(config)).to_dict()
    result["split"] = {"state": row["state"], "error": row["error"], "log": engine.log_tail(run_id, 20, root=home),
                       "parts": split and split["config"].get("parts"),
                       "parts_nodes": split and split["config"].get("parts_nodes"),
                       "same_as_whole": split is not None and split["layers"] == whole["layers"]
                       and split["base_accuracy"] == whole["base_accuracy"]}
    say(f"split sensitivity: {result['split']['state']}, parts {result['split']['parts']} on "
        f"{result['split']['parts_nodes']}")


def scenario_cancel(engine, out: Path, result: dict) -> None:
    """One run at a time: the running one is cancelled mid-way, the queued ones never start."""

    home = out / "cancel-home"
    os.environ["COMPRESSION_LAB_WORKERS"] = "1"  # the dispatcher this process starts inherits it
    try:
        engine.settings(root=home, ray_address=ADDRESS)
        sweep_id = engine.submit_sweep([{"kind": "test-sleep", "seconds": 120 + i} for i in range(3)], root=home,
                                       axis="seconds", targets=["s:120", "s:121", "s:122"])
        ids = [member["run"] for member in engine.sweep_status(sweep_id, root=home)["members"]]
        deadline = time.time() + 90
        while node_of(engine, ids[0], home) is None and time.time() < deadline:
            time.sleep(0.3)
        time.sleep(1.0)
        cli("cancel-sweep", sweep_id, "--home", str(home))  # the whole group: queued ones never start
        cancelled_at = time.time()
        rows = wait_final(engine, ids, home, 60)
    finally:
        del os.environ["COMPRESSION_LAB_WORKERS"]
    result["cancel_seconds"] = time.time() - cancelled_at
    cpus_back = seconds_until_cpus_free(cancelled_at, 30)
    result["cancel"] = {run_id: {"state": row["state"], "error": row["error"], "started": row["started"],
                                 "events": len(engine.events(run_id, root=home)), "node": node_of(engine, run_id, home)}
                        for run_id, row in rows.items()}
    result["cancel_order"] = ids
    result["cancel_cpus_free_after_s"] = cpus_back
    say(f"cancel: {[(r['state'], r['events']) for r in result['cancel'].values()]}, CPUs back after {cpus_back}")


def seconds_until_cpus_free(since: float, timeout: float) -> float | None:
    """Seconds from `since` until the cluster's 2 CPUs are free again (None if not within `since` + `timeout`)."""
    import ray

    ray.init(address=ADDRESS, log_to_driver=False, logging_level="WARNING")
    try:
        while time.time() < since + timeout:
            if ray.available_resources().get("CPU", 0) >= 2:
                return time.time() - since
            time.sleep(0.3)
    finally:
        ray.shutdown()
    return None


def scenario_dispatcher_death(engine, out: Path, result: dict) -> None:
    """SIGKILL the dispatcher driving a Ray run: the next listing reaps the run, Ray ends its task (the owner died),
    and the next submit starts a new dispatcher that runs it."""

    home = out / "owner-home"
    engine.settings(root=home, ray_address=ADDRESS)
    run_id = engine.submit({"kind": "test-sleep", "seconds": 120}, root=home)
    deadline = time.time() + 90
    while node_of(engine, run_id, home) is None and time.time() < deadline:
        time.sleep(0.3)
    pid = engine.status(run_id, root=home)["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    row = wait_final(engine, [run_id], home, 30)[run_id]
    cpus_back = seconds_until_cpus_free(killed_at, 60)
    after = engine.submit({"kind": "test-sleep", "seconds": 0.5}, root=home)
    result["owner"] = {"state": row["state"], "error": row["error"], "pid": pid, "cpus_back_s": cpus_back,
                       "next_run": wait_final(engine, [after], home, 90)[after]["state"]}
    say(f"dispatcher killed: {result['owner']}")


def scenario_node_death(engine, out: Path, result: dict, worker_tmp: Path, worker_node: str) -> None:
    """Kill the second node's raylet while a run is on it: that run is retried once on the head node (its second
    attempt logging to log.attempt2.txt), the others succeed."""
    home = out / "death-home"
    engine.settings(root=home, ray_address=ADDRESS)
    ids = [engine.submit({"kind": "test-sleep", "seconds": seconds}, root=home) for seconds in (20, 20, 3)]
    deadline = time.time() + 90
    victim = None
    while victim is None and time.time() < deadline:
        victim = next((run_id for run_id in ids if node_of(engine, run_id, home) == worker_node), None)
        time.sleep(0.3)
    if victim is None:
        raise SystemExit("no run landed on the second node")
    time.sleep(1.0)
    os.kill(raylet_pid(worker_tmp), signal.SIGKILL)
    killed_at = time.time()
    say(f"killed the second node's raylet while {victim} ran on it")
    noticed = None
    while noticed is None and time.time() < killed_at + 90:  # the node's death noticed: the retry event is written
        if any(event["stage"] == "retry" for event in engine.events(victim, root=home)):
            noticed = time.time()
        time.sleep(0.3)
    rows = wait_final(engine, ids, home, 120)
    result["death"] = {run_id: {"state": row["state"], "error": row["error"], "node": node_of(engine, run_id, home),
                                "log": engine.log_tail(run_id, 20, root=home)} for run_id, row in rows.items()}
    result["death_victim"] = victim
    result["death_retry_node"] = next((event["values"].get("node_id") for event in engine.events(victim, root=home)
                                       if event["stage"] == "start" and event["values"].get("attempt") == 2), None)
    result["death_noticed_s"] = (noticed or time.time()) - killed_at
    result["death_home"] = str(home)
    say(f"death: {[(r['state'], (r['node'] or '')[:8]) for r in result['death'].values()]}")


def main(out: Path) -> None:
    os.environ["COMPRESSION_LAB_TEST_JOBS"] = "1"  # the test-sleep kind (the dispatchers inherit it)
    os.environ["COMPRESSION_LAB_CANCEL_GRACE"] = "5"
    os.environ.pop("COMPRESSION_LAB_RAY", None)
    # this checkout, for the CLI, the dispatchers and the Ray workers the raylets start (another one may be installed)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "compression"), os.environ.get("PYTHONPATH")]))
    temp = Path(tempfile.mkdtemp(prefix="clr-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    head_tmp, worker_tmp = temp / "h", temp / "w"
    result: dict = {"ray_temp": str(temp)}  # the test removes it once every Ray process here has gone
    ray_start("--head", "--port", str(PORT), "--include-dashboard", "false", temp_dir=head_tmp)
    hidden = out / "not-on-the-second-node"
    write_images(hidden / "images")
    ray_start("--address", ADDRESS, temp_dir=worker_tmp, hide=hidden)
    result["cluster_up_s"] = time.time() - started
    say("cluster up")
    import ray

    ray.init(address=ADDRESS, log_to_driver=False, logging_level="WARNING")
    nodes = [node for node in ray.nodes() if node["Alive"]]
    result["nodes"] = {node["NodeID"]: node["NodeManagerAddress"] for node in nodes}
    worker_node = next(node["NodeID"] for node in nodes if str(worker_tmp) in json.dumps(node, default=str)
                       or not node["Resources"].get("node:__internal_head__"))
    result["worker_node"] = worker_node
    ray.shutdown()
    from complab import engine

    scenario_runs(engine, out, result)
    result["engine_info"] = engine.engine_info(out / "runs-home")  # what the sidebar shows
    scenario_split(engine, out, result)
    scenario_sweep(engine, out, result)
    scenario_unreadable(engine, out, result, json.loads((out / "recipe.json").read_text()))
    scenario_cancel(engine, out, result)
    scenario_dispatcher_death(engine, out, result)
    scenario_node_death(engine, out, result, worker_tmp, worker_node)
    result["total_s"] = time.time() - started
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
