"""The engine with real worker processes: success, crash, SIGKILL, cancel, concurrency, cache, restart, CLI."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from complab import engine
from complab.engine.dispatcher import try_lock
from complab.engine.store import RunStore
from complab.errors import CompressionLabError

ROOT = Path(__file__).resolve().parents[1]
QUICK = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
pytestmark = pytest.mark.timeout(300)


def quick_job(**prune_changes) -> dict:
    """The quick recipe cut to 1 prune epoch and no cluster fine-tuning (a few seconds per run)."""
    plan = json.loads(json.dumps(QUICK))
    plan["steps"][0].update({"finetune_epochs": 1, **prune_changes})
    plan["steps"][1]["finetune_epochs"] = 0
    return {"kind": "compress", "model": "demo:lenet300", "data": "digits", "plan": plan, "latency": False}


def long_job() -> dict:
    return quick_job(iterations=4, finetune_epochs=60)  # minutes: always stopped by the test


@pytest.fixture
def test_jobs(monkeypatch):
    """The engine's test-only job kinds (the dispatcher and workers inherit the environment)."""
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")


def wait_until(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def snapshot(root: Path, skip: set[str]) -> dict:
    rows = {r["id"]: r for r in engine.list_runs(root=root) if r["id"] not in skip}
    files = {}
    for run in (root / "runs").iterdir():
        if run.name not in skip:
            files.update({f"{run.name}/{path.name}": path.read_bytes() for path in run.iterdir()})
    return {"rows": rows, "files": files}


def test_submit_runs_to_success_and_survives_restart(tmp_path):
    run_id = engine.submit(quick_job(), root=tmp_path)
    assert engine.status(run_id, root=tmp_path)["state"] in ("queued", "running")
    row = engine.wait(run_id, 240, root=tmp_path)
    assert row["state"] == "succeeded", row["error"]
    folder = tmp_path / "runs" / run_id
    for name in ("job.json", "plan.json", "events.jsonl", "log.txt", "metrics.json", "model.clab"):
        assert (folder / name).is_file(), name
    assert not list(folder.glob(".*.tmp"))
    assert json.loads((folder / "plan.json").read_text()) == row["job"]["plan"]
    events = engine.events(run_id, root=tmp_path)
    assert events[0]["progress"] == 0.0 and events[-1] == {**events[-1], "stage": "done", "progress": 1.0}
    assert row["progress"] == events[-1]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert row["metrics"] == {k: v for k, v in metrics.items() if k != "layers"}  # the index keeps the summary
    assert row["metrics"]["after"]["compressed_bytes"] == (folder / "model.clab").stat().st_size
    assert row["metrics"]["after"]["accuracy"] > 0.5 and row["metrics"]["compression_ratio"] > 5
    assert "[worker] succeeded" in engine.log_tail(run_id, root=tmp_path)
    assert [r["id"] for r in engine.list_runs(root=tmp_path, kind="compress")] == [run_id]
    assert engine.list_runs(root=tmp_path, kind="sensitivity") == []
    # a new process (the app restarted) sees the run and its results
    code = ("import json, sys; from complab import engine; "
            "print(json.dumps([(r['id'], r['state'], r['metrics']['compression_ratio']) "
            "for r in engine.list_runs(root=sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[run_id, "succeeded", metrics["compression_ratio"]]]


@pytest.mark.slow  # crashing jobs and a real run after them (55 s at load 10)
def test_failures_keep_message_and_log_and_next_run_succeeds(tmp_path, test_jobs):
    bad_plan = quick_job(sparsity={"fc9": 0.5})  # valid at submit: layers are checked against the model at run time
    bad_id = engine.submit(bad_plan, root=tmp_path)
    crash_id = engine.submit({"kind": "test-crash"}, root=tmp_path)
    good_id = engine.submit(quick_job(), root=tmp_path)
    bad = engine.wait(bad_id, 240, root=tmp_path)
    assert bad["state"] == "failed"
    assert "layer 'fc9' in sparsity is not a layer of this model" in bad["error"]  # the user-facing message as is
    assert "Traceback" in engine.log_tail(bad_id, 200, root=tmp_path)
    crash = engine.wait(crash_id, 240, root=tmp_path)
    assert crash["state"] == "failed"
    assert crash["error"] == "RuntimeError: test-crash: a deliberate failure (see the log)"
    assert "second line" in engine.log_tail(crash_id, root=tmp_path)
    assert engine.wait(good_id, 240, root=tmp_path)["state"] == "succeeded"
    again = engine.rerun(crash_id, root=tmp_path)  # the same job again, under a new id
    rerun_job = engine.status(again, root=tmp_path)["job"]  # the same job, recording where it came from (issue 28)
    assert again != crash_id and rerun_job.pop("origin") == {"kind": "rerun", "run": crash_id}
    assert rerun_job == crash["job"]
    assert engine.wait(again, 240, root=tmp_path)["error"] == crash["error"]


@pytest.mark.slow  # a killed worker and a real run after it (70 s at load 10)
def test_sigkill_leaves_failed_and_next_run_succeeds_store_untouched(tmp_path):
    done = engine.submit(quick_job(), root=tmp_path)
    assert engine.wait(done, 240, root=tmp_path)["state"] == "succeeded"
    victim = engine.submit(long_job(), root=tmp_path)
    after = engine.submit(quick_job(), root=tmp_path)
    running = wait_until(lambda: (r := engine.status(victim, root=tmp_path))["state"] == "running"
                         and r["pid"] and (r["progress"] or {}).get("progress", 0) > 0 and r)
    assert engine.status(after, root=tmp_path)["state"] == "queued"  # max_workers is 1 by default
    before = snapshot(tmp_path, {victim, after})
    os.kill(running["pid"], signal.SIGKILL)
    row = engine.wait(victim, 120, root=tmp_path)
    assert row["state"] == "failed"
    assert "SIGKILL" in row["error"]
    log = engine.log_tail(victim, root=tmp_path)
    assert "started" in log and "SIGKILL" in log  # the log is kept, with the reason at its end
    assert sorted(p.name for p in (tmp_path / "runs" / victim).iterdir()) == \
        ["events.jsonl", "job.json", "log.txt", "plan.json", "state.json"]
    assert engine.wait(after, 240, root=tmp_path)["state"] == "succeeded"
    assert snapshot(tmp_path, {victim, after}) == before


def test_cancel_queued_and_running(tmp_path):
    first = engine.submit(long_job(), root=tmp_path)
    second = engine.submit(quick_job(), root=tmp_path)
    wait_until(lambda: engine.status(first, root=tmp_path)["state"] == "running")
    engine.cancel(second, root=tmp_path)
    assert engine.status(second, root=tmp_path)["state"] == "cancelled"
    wait_until(lambda: (engine.status(first, root=tmp_path)["progress"] or {}).get("progress", 0) > 0)
    engine.cancel(first, root=tmp_path)
    row = engine.wait(first, 60, root=tmp_path)
    assert row["state"] == "cancelled"
    for run_id in (first, second):
        assert not {"model.clab", "metrics.json"} & {p.name for p in (tmp_path / "runs" / run_id).iterdir()}
    engine.cancel(first, root=tmp_path)  # cancelling a finished run changes nothing
    assert engine.status(first, root=tmp_path)["state"] == "cancelled"
    with pytest.raises(CompressionLabError, match="no run 'nope'"):
        engine.cancel("nope", root=tmp_path)


def test_job_ignoring_cancel_is_stopped_by_the_dispatcher(tmp_path, test_jobs, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_CANCEL_GRACE", "1")
    run_id = engine.submit({"kind": "test-hang", "seconds": 120}, root=tmp_path)
    wait_until(lambda: (engine.status(run_id, root=tmp_path)["progress"] or {}).get("stage") == "hang")
    engine.cancel(run_id, root=tmp_path)
    row = engine.wait(run_id, 60, root=tmp_path)
    assert row["state"] == "cancelled" and row["finished"] - row["cancel"] < 20


@pytest.mark.slow  # concurrent client processes (42 s at load 10)
def test_concurrent_clients_get_distinct_ids_and_all_finish(tmp_path, test_jobs):
    engine.settings(tmp_path, max_workers=2)
    assert engine.settings(tmp_path)["max_workers"] == 2
    ids: list[str] = []

    def client():
        ids.append(engine.submit(quick_job(finetune_epochs=0), root=tmp_path))
        ids.append(engine.submit({"kind": "test-sleep", "seconds": 0.5}, root=tmp_path))

    code = ("import sys; from complab import engine; "
            "print(*[engine.submit({'kind': 'test-sleep', 'seconds': 0.5}, root=sys.argv[1]) for _ in range(2)])")
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids += other.communicate(timeout=60)[0].split()
    assert len(ids) == 6 and len(set(ids)) == 6
    for run_id in ids:
        assert engine.wait(run_id, 240, root=tmp_path)["state"] == "succeeded", run_id
    rows = engine.list_runs(root=tmp_path)
    assert [r["created"] for r in rows] == sorted((r["created"] for r in rows), reverse=True)  # newest first
    spans = sorted((r["started"], r["finished"]) for r in rows)
    assert all(sum(s <= t < f for s, f in spans) <= 2 for t, _ in spans)  # never more than max_workers at once


def test_submit_while_lock_held_is_not_stranded_and_progress_is_throttled(tmp_path, test_jobs):
    RunStore(tmp_path)
    lock = try_lock(tmp_path)  # like a dispatcher about to leave: the one this submit starts exits at once
    run_id = engine.submit({"kind": "test-sleep", "seconds": 2.0}, root=tmp_path)
    time.sleep(2.0)
    assert RunStore(tmp_path).row(run_id)["state"] == "queued"
    lock.close()
    row = engine.wait(run_id, 120, root=tmp_path)  # status() sees the queue with no dispatcher and starts one
    assert row["state"] == "succeeded"
    events = engine.events(run_id, root=tmp_path)
    assert events[0]["stage"] == "start" and events[-1]["progress"] == 1.0
    # the job reports 20 times a second for 2 s; at most ~5 events a second are written, plus start and done
    assert 5 <= len(events) <= 2 * 5 + 3


def test_orphaned_runs_are_failed_on_listing(tmp_path):
    """A reboot or a dead dispatcher leaves rows `running` with no worker: the next listing fails them."""
    store = RunStore(tmp_path)
    ids = [store.insert(quick_job()) for _ in range(3)]
    store.update(ids[0], state="running", pid=os.getpid())  # pid reused by an unrelated process
    store.update(ids[1], state="running", pid=2 ** 22 + 12345)  # no such process
    store.update(ids[2], state="running", pid=None)  # claimed by a dispatcher that died before starting it
    (tmp_path / "runs" / ids[0] / "log.txt").write_text("partial output\n")
    rows = {r["id"]: r for r in engine.list_runs(root=tmp_path)}
    for run_id in ids:
        assert rows[run_id]["state"] == "failed" and "worker process died" in rows[run_id]["error"]
    assert engine.log_tail(ids[0], root=tmp_path).startswith("partial output")


@pytest.mark.slow  # 7 s: a real analysis job, twice
def test_sensitivity_job_and_cache(tmp_path):
    job = {"kind": "sensitivity", "model": "demo:lenet300", "data": "digits",
           "config": {"val_size": 100, "sparsities": [0.0, 0.5, 0.9], "n_clusters": [2, 16]}}
    assert engine.cached_sensitivity(job, tmp_path) is None
    first = engine.submit(job, root=tmp_path)
    one = engine.wait(first, 240, root=tmp_path)
    assert one["state"] == "succeeded" and one["metrics"]["cached"] is False
    report = json.loads((tmp_path / "runs" / first / "sensitivity.json").read_text())
    assert set(report["layers"]) == {"fc1", "fc2", "fc3"}  # every prunable layer
    assert set(report["layers"]["fc1"]["sparsity"]) == {"0.0", "0.5", "0.9"}
    assert set(report["layers"]["fc1"]["clusters"]) == {"2", "16"}
    assert report["layers"]["fc1"]["sparsity"]["0.0"] == report["base_accuracy"]
    assert engine.cached_sensitivity(job, tmp_path) == report
    second = engine.submit(job, root=tmp_path)
    two = engine.wait(second, 240, root=tmp_path)
    assert two["state"] == "succeeded" and two["metrics"]["cached"] is True
    assert "served from the cache" in engine.log_tail(second, root=tmp_path)
    assert not [e for e in engine.events(second, root=tmp_path) if e["stage"] == "sensitivity"]  # nothing measured
    assert json.loads((tmp_path / "runs" / second / "sensitivity.json").read_text()) == report


@pytest.mark.parametrize("job, message", [
    ({"kind": "train"}, "unknown job kind 'train'"),
    ("compress", "a job must be a JSON object"),
    ({"kind": "compress", "model": "demo:nope", "data": "digits", "plan": QUICK}, "unknown demo model 'nope'"),
    ({"kind": "compress", "model": "lenet", "data": "digits", "plan": QUICK}, "is not a model reference"),
    ({"kind": "compress", "model": "demo:lenet5", "data": "digits", "plan": {"schema_version": 1, "steps": [
        {"type": "prune", "sparsity": 2}]}}, "sparsity 2 is out of range"),
    ({"kind": "compress", "model": "demo:lenet5", "data": "digits", "plan": None}, "a recipe must be a JSON object"),
    ({"kind": "compress", "model": "demo:lenet5", "data": "imagefolder:/no/such", "plan": QUICK}, "does not exist"),
    ({"kind": "compress", "model": "demo:lenet5", "data": "digits", "plan": QUICK, "epochs": 3}, "unknown keys"),
    ({"kind": "sensitivity", "model": "demo:lenet5", "data": "digits", "config": {"n_clusters": [1]}},
     "n_clusters [1] must be integers from 2 to 256"),
    ({"kind": "sensitivity", "model": "demo:lenet5", "data": "digits", "config": {"grid": 3}}, "config keys"),
])
def test_invalid_jobs_rejected_nothing_queued(tmp_path, job, message):
    with pytest.raises(CompressionLabError) as info:
        engine.submit(job, root=tmp_path)
    assert message in str(info.value)
    assert engine.list_runs(root=tmp_path) == []
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.slow  # the CLI's submit, wait and cancel in processes (27 s at load 10)
def test_cli_submit_runs_cancel(tmp_path, capsys):
    from complab.cli import main

    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(quick_job()["plan"]))
    home = str(tmp_path / "home")
    assert main(["submit", str(recipe), "--model", "demo:lenet300", "--data", "digits", "--wait",
                 "--home", home]) == 0
    out = capsys.readouterr().out.splitlines()
    run_id, result = out[0], json.loads(out[-1])
    assert result["state"] == "succeeded" and result["metrics"]["after"]["compressed_bytes"] > 0
    assert main(["runs", "--home", home]) == 0
    table = capsys.readouterr().out
    assert run_id in table and "succeeded" in table and "demo:lenet300" in table
    assert main(["cancel", run_id, "--home", home]) == 0  # already finished: nothing to do, not an error
    assert main(["cancel", "nope", "--home", home]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["submit", str(recipe), "--model", "demo:nope", "--data", "digits", "--home", home]) == 2
    assert "unknown demo model" in capsys.readouterr().err
    assert len(engine.list_runs(root=home)) == 1


def test_cancel_queued_cancels_a_group_in_one_step(tmp_path):
    """A sweep's queued members are cancelled together: a claim can come before or after, never between."""
    store = RunStore(tmp_path)
    ids = [store.insert(quick_job()) for _ in range(3)]
    assert store.claim_next(1) == ids[0]  # the dispatcher took the first
    assert store.cancel_queued(ids) == ids[1:]  # the running one is not cancelled here, the queued ones are
    assert store.claim_next(5) is None  # nothing left to start
    for run_id in ids[1:]:
        row = store.row(run_id)
        assert row["state"] == "cancelled" and row["started"] is None and "before it started" in row["error"]
        assert store.recorded_state(run_id)["state"] == "cancelled"
    assert store.row(ids[0])["state"] == "running" and store.cancel_queued([]) == []
