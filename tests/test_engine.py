"""The engine with real worker processes: success, crash, SIGKILL, cancel, concurrency, cache, restart."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from compression import engine
from compression.errors import CompressionLabError

ROOT = Path(__file__).resolve().parents[1]
QUICK = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
pytestmark = pytest.mark.timeout(400)


def quick_job(**changes) -> dict:
    plan = json.loads(json.dumps(QUICK))
    plan["steps"][0].update(changes)
    return {"kind": "compress", "model": "demo:lenet300", "data": "digits", "plan": plan, "latency": False}


def long_job() -> dict:
    return quick_job(iterations=4, finetune_epochs=60)


def wait_until(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def snapshot(root: Path, skip: set[str]) -> dict:
    rows = {r["id"]: (r["state"], r["metrics"]) for r in engine.list_runs(root=root) if r["id"] not in skip}
    files = {}
    for run in (root / "runs").iterdir():
        if run.name in skip:
            continue
        for path in run.iterdir():
            files[f"{run.name}/{path.name}"] = path.read_bytes()
    return {"rows": rows, "files": files}


def test_submit_runs_to_success_and_survives_restart(tmp_path):
    run_id = engine.submit(quick_job(), root=tmp_path)
    row = engine.wait(run_id, 300, root=tmp_path)
    assert row["state"] == "succeeded", row["error"]
    folder = tmp_path / "runs" / run_id
    for name in ("job.json", "plan.json", "events.jsonl", "log.txt", "metrics.json", "model.clab"):
        assert (folder / name).is_file(), name
    events = engine.events(run_id, root=tmp_path)
    assert events[0]["progress"] == 0.0 and events[-1]["progress"] == 1.0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert row["metrics"]["after"]["compressed_bytes"] == (folder / "model.clab").stat().st_size
    assert metrics["after"]["accuracy"] == row["metrics"]["after"]["accuracy"]
    # a new process (the app restarted) sees the run and its results
    code = ("import json, sys; from compression import engine; "
            "print(json.dumps([(r['id'], r['state'], r['metrics']['compression_ratio']) "
            "for r in engine.list_runs(root=sys.argv[1])]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [[run_id, "succeeded", metrics["compression_ratio"]]]


def test_crash_is_failed_with_message_and_next_run_succeeds(tmp_path):
    weights = tmp_path / "w.pt"
    import torch
    import torchvision

    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=10).state_dict(), weights)
    bad = {**quick_job(), "model": "torchvision:resnet18", "weights": str(weights), "input_size": 32}
    bad_id = engine.submit(bad, root=tmp_path)  # valid at submit; the plan names fc layers a ResNet lacks
    good_id = engine.submit(quick_job(), root=tmp_path)
    bad_row = engine.wait(bad_id, 300, root=tmp_path)
    assert bad_row["state"] == "failed"
    assert "re:fc3|classifier|fc2" in bad_row["error"] and "matches no layer" in bad_row["error"]
    assert "Traceback" in engine.log_tail(bad_id, 200, root=tmp_path)
    assert engine.wait(good_id, 300, root=tmp_path)["state"] == "succeeded"


def test_sigkill_leaves_failed_and_next_run_succeeds_store_untouched(tmp_path):
    done = engine.submit(quick_job(), root=tmp_path)
    assert engine.wait(done, 300, root=tmp_path)["state"] == "succeeded"
    victim = engine.submit(long_job(), root=tmp_path)
    after = engine.submit(quick_job(), root=tmp_path)
    running = wait_until(lambda: (r := engine.status(victim, root=tmp_path))["state"] == "running"
                         and r["pid"] and r["progress"] and r["progress"]["progress"] > 0 and r)
    before = snapshot(tmp_path, {victim, after})
    os.kill(running["pid"], signal.SIGKILL)
    row = engine.wait(victim, 120, root=tmp_path)
    assert row["state"] == "failed"
    assert "SIGKILL" in row["error"]
    assert not (tmp_path / "runs" / victim / "model.clab").exists()
    assert engine.wait(after, 300, root=tmp_path)["state"] == "succeeded"
    assert snapshot(tmp_path, {victim, after}) == before


def test_cancel_queued_and_running(tmp_path):
    first = engine.submit(long_job(), root=tmp_path)
    second = engine.submit(quick_job(), root=tmp_path)
    wait_until(lambda: engine.status(first, root=tmp_path)["state"] == "running")
    engine.cancel(second, root=tmp_path)
    assert engine.status(second, root=tmp_path)["state"] == "cancelled"
    wait_until(lambda: (engine.status(first, root=tmp_path)["progress"] or {}).get("progress", 0) > 0)
    engine.cancel(first, root=tmp_path)
    row = engine.wait(first, 120, root=tmp_path)
    assert row["state"] == "cancelled"
    assert not (tmp_path / "runs" / first / "model.clab").exists()
    assert not (tmp_path / "runs" / first / "metrics.json").exists()


def test_two_clients_submit_concurrently(tmp_path):
    engine.set_max_workers(2, root=tmp_path)
    ids: list[str] = []

    def client():
        for _ in range(2):
            ids.append(engine.submit(quick_job(finetune_epochs=0), root=tmp_path))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 4
    for run_id in ids:
        assert engine.wait(run_id, 300, root=tmp_path)["state"] == "succeeded"


def test_sensitivity_job_and_cache(tmp_path):
    job = {"kind": "sensitivity", "model": "demo:lenet300", "data": "digits",
           "config": {"val_size": 100, "sparsities": [0.0, 0.5, 0.9], "n_clusters": [2, 16]}}
    first = engine.submit(job, root=tmp_path)
    assert engine.wait(first, 300, root=tmp_path)["state"] == "succeeded"
    report = json.loads((tmp_path / "runs" / first / "sensitivity.json").read_text())
    assert set(report["layers"]) == {"fc1", "fc2", "fc3"}
    assert set(report["layers"]["fc1"]["sparsity"]) == {"0.0", "0.5", "0.9"}
    assert report["layers"]["fc1"]["sparsity"]["0.0"] == report["base_accuracy"]
    second = engine.submit(job, root=tmp_path)
    assert engine.wait(second, 300, root=tmp_path)["state"] == "succeeded"
    assert "served from the cache" in engine.log_tail(second, root=tmp_path)
    assert json.loads((tmp_path / "runs" / second / "sensitivity.json").read_text()) == report


@pytest.mark.parametrize("job, message", [
    ({"kind": "train"}, "unknown job kind 'train'"),
    ({"kind": "compress", "model": "demo:nope", "data": "digits", "plan": QUICK}, "unknown demo model 'nope'"),
    ({"kind": "compress", "model": "demo:lenet5", "data": "digits", "plan": {"schema_version": 1, "steps": [
        {"type": "prune", "sparsity": 2}]}}, "sparsity 2 is out of range"),
    ({"kind": "compress", "model": "demo:lenet5", "data": "imagefolder:/no/such", "plan": QUICK}, "does not exist"),
])
def test_invalid_jobs_rejected_nothing_queued(tmp_path, job, message):
    with pytest.raises(CompressionLabError, match=None) as info:
        engine.submit(job, root=tmp_path)
    assert message in str(info.value)
    assert engine.list_runs(root=tmp_path) == []


def test_cli_submit_runs_cancel(tmp_path, capsys):
    from compression.cli import main

    recipe = ROOT / "assets" / "recipes" / "quick.json"
    home = str(tmp_path)
    assert main(["submit", str(recipe), "--model", "demo:lenet300", "--data", "digits", "--wait",
                 "--home", home]) == 0
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[-1])["state"] == "succeeded"
    assert main(["runs", "--home", home]) == 0
    assert out[0] in capsys.readouterr().out
    assert main(["cancel", "nope", "--home", home]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["submit", str(recipe), "--model", "demo:nope", "--data", "digits", "--home", home]) == 2
