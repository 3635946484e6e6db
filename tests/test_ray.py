"""The Ray backend on a real two-node Ray cluster (no mocks): runs land on both nodes, cancel, a node dying.

The cluster runs inside a private network and pid namespace (tests/ray_scenario.py under `unshare`), so Ray binds
to 127.0.0.1 only and everything it started dies with the namespace. Needs root and unshare (CI has both).
Select with `pytest -m ray`; about a minute on two cores.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from complab import engine
from complab.engine import ray_backend
from complab.errors import CompressionLabError

ROOT = Path(__file__).resolve().parents[1]


def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "the Ray cluster test makes a private network namespace with unshare, which needs root"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "the Ray cluster test needs unshare and ip (util-linux, iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install -e '.[ray]')"
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode:  # root without CAP_SYS_ADMIN (some containers)
        return f"unshare cannot make a private namespace here: {probe.stderr.strip()[:200]}"
    return None


@pytest.fixture(scope="session")
def scenario(tmp_path_factory):
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    out = tmp_path_factory.mktemp("ray")
    command = (f"ip link set lo up; exec {sys.executable} {ROOT / 'tests' / 'ray_scenario.py'} {out}")
    done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", "bash", "-c", command],
                          capture_output=True, text=True, timeout=420, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"scenario exited {done.returncode}:\n{done.stderr[-6000:]}"
    result = json.loads(lines[-1])
    if result.get("ray_temp"):
        shutil.rmtree(result["ray_temp"], ignore_errors=True)
    return result


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_runs_land_on_both_nodes_and_their_files_decode(scenario):
    from complab import sources

    runs = scenario["runs"]
    assert all(run["state"] == "succeeded" for run in runs.values()), runs
    assert {run["node"] for run in runs.values()} == set(scenario["nodes"]), "runs did not land on both nodes"
    home = Path(scenario["runs_home"])
    for run_id, run in runs.items():
        folder = home / "runs" / run_id
        assert f"started on Ray node 127.0.0.1 ({run['node'][:12]})" in (folder / "log.txt").read_text()
        events = engine.events(run_id, root=home)
        assert events[0]["values"]["node_id"] == run["node"]
        assert events[-1]["stage"] == "done" and events[-1]["progress"] == 1.0
        assert not list(folder.glob(".*.tmp"))
        if run["kind"] == "compress":
            metrics = json.loads((folder / "metrics.json").read_text())
            assert metrics["after"]["compressed_bytes"] == (folder / "model.clab").stat().st_size
            assert run["metrics"]["compression_ratio"] > 5
            if run_id != scenario["shipped_run"]:  # the shipped folder holds random pixels: no accuracy to reach
                assert metrics["after"]["accuracy"] > 0.5
            decoded = sources.load_file(folder / "model.clab")  # our decoder reads what came back whole
            assert decoded.model is not None
        else:
            report = json.loads((folder / "sensitivity.json").read_text())
            assert report["layers"] and run["metrics"]["cached"] is False
            cached = list((home / "cache").glob("sensitivity-*.json"))  # the cache lands where the app runs
            assert len(cached) == 1 and json.loads(cached[0].read_text()) == report
    # the report is cached under the key the app computes, and the same analysis again is served from it
    assert engine.cached_sensitivity(scenario["sensitivity_job"], root=home) is not None
    again = scenario["sensitivity_again"]
    assert again["state"] == "succeeded" and again["metrics"]["cached"] is True, again
    assert "served from the cache (sensitivity-" in again["log"]
    first = next(run_id for run_id, run in runs.items() if run["kind"] == "sensitivity")
    assert (home / "runs" / again["id"] / "sensitivity.json").read_bytes() == \
        (home / "runs" / first / "sensitivity.json").read_bytes()
    shipped = home / "runs" / scenario["shipped_run"] / "log.txt"
    assert f"shipping {Path(scenario['runs_home']).parent / 'images'} with the task" in shipped.read_text()
    assert scenario["engine_info"] == {"engine": "ray", "address": "127.0.0.1:6380", "nodes": 2, "cpus": 2, "gpus": 0}
    listed = scenario["runs_listed"]
    assert all(run_id in listed for run_id in [*runs, again["id"]]) and listed.count("succeeded") == len(runs) + 1


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_a_sweep_through_the_cli_lands_on_both_nodes_and_its_files_decode(scenario):
    from complab import engine, sources

    sweep = scenario["sweep"]
    home = Path(sweep["home"])
    members = sweep["members"]
    assert len(members) == 4 and all(m["state"] == "succeeded" and not m["reused"] for m in members), members
    assert {m["node"] for m in members} == set(scenario["nodes"]), "the sweep's runs did not land on both nodes"
    for member in members:
        path = engine.run_file(member["run"], "model.clab", root=home)
        assert path.stat().st_size == member["compressed_bytes"]
        assert sources.load_file(path).prunable_layers()
    assert [m["run"] for m in engine.sweep_status(sweep["id"], root=home)["members"]] == [m["run"] for m in members]


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_an_exact_sensitivity_analysis_is_split_across_the_cluster(scenario):
    split = scenario["split"]
    assert split["state"] == "succeeded", split
    assert split["parts"] == 2 and "sensitivity split into 2 parts" in split["log"], split
    assert split["same_as_whole"], "the merged report differs from the analysis measured in one piece"
    assert len(split["parts_nodes"]) == 2, split  # this task measured its group, the other part ran elsewhere


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_a_dataset_a_node_cannot_read_fails_the_run_there_at_once(scenario):
    rows = scenario["unreadable"]
    on_worker = [row for row in rows.values() if row["node"] == scenario["worker_node"]]
    elsewhere = [row for row in rows.values() if row["node"] != scenario["worker_node"]]
    assert len(on_worker) == 1 and len(elsewhere) == 1, rows
    assert on_worker[0]["state"] == "failed" and on_worker[0]["seconds"] < 30
    assert "not-on-the-second-node/images is not readable on Ray node 127.0.0.1: put it on storage every node " \
           "mounts at the same path, or keep what the job names under 0 MB" in on_worker[0]["error"]
    assert elsewhere[0]["state"] == "succeeded", elsewhere  # the head sees the folder: read there, not shipped


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_cancel_stops_the_running_task_and_queued_runs_never_start(scenario):
    running, *queued = scenario["cancel_order"]
    rows = scenario["cancel"]
    assert rows[running]["state"] == "cancelled" and rows[running]["error"] == "cancelled by the user"
    assert rows[running]["node"] is not None  # it was on a node when cancelled
    for run_id in queued:
        assert rows[run_id]["state"] == "cancelled" and rows[run_id]["started"] is None
        assert rows[run_id]["events"] == 0 and rows[run_id]["node"] is None
    assert scenario["cancel_seconds"] < 20
    assert scenario["cancel_cpus_free_after_s"] is not None, "the cancelled task kept its CPU"


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_a_killed_dispatcher_leaves_its_ray_run_failed_and_its_task_ended(scenario):
    owner = scenario["owner"]
    assert owner["state"] == "failed" and owner["error"].startswith("the dispatcher driving this Ray run died"), owner
    assert owner["cpus_back_s"] is not None, "Ray kept running the task of a dead dispatcher"
    assert owner["next_run"] == "succeeded"  # a new dispatcher took over


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_a_run_whose_node_died_is_retried_once_elsewhere_and_the_store_stays_consistent(scenario):
    victim, rows = scenario["death_victim"], scenario["death"]
    assert all(row["state"] == "succeeded" for row in rows.values()), rows  # the victim on its second attempt
    assert scenario["death_noticed_s"] < 30
    assert scenario["death_retry_node"] not in (None, scenario["worker_node"])  # elsewhere: on the head node
    home = Path(scenario["death_home"])
    first, second = (home / "runs" / victim / "log.txt").read_text(), (home / "runs" / victim / "log.attempt2.txt")
    assert f"Ray node 127.0.0.1 ({scenario['worker_node'][:12]}) running this run died" in first
    assert "retrying once on another node" in first and "attempt 2" in second.read_text()
    assert f"started on Ray node 127.0.0.1 ({scenario['death_retry_node'][:12]})" in second.read_text()
    assert (home / "runs" / victim / "metrics.json").exists()
    # a fresh process (the app after a restart, without Ray) lists every run as the folders record it
    listed = subprocess.run([sys.executable, "-m", "complab.cli", "runs", "--home", str(home)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COMPRESSION_LAB_RAY": "local"})
    assert listed.returncode == 0, listed.stderr
    for run_id, row in rows.items():
        line = next(line for line in listed.stdout.splitlines() if line.startswith(run_id))
        assert row["state"] in line
        assert json.loads((home / "runs" / run_id / "state.json").read_text())["state"] == row["state"]


# --- without a cluster ---------------------------------------------------------------------------------------

def test_importing_the_engine_does_not_import_ray():
    code = "import sys, complab.engine, complab.engine.dispatcher; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.stdout.strip() == "False", done.stderr


def test_the_address_comes_from_the_environment_or_the_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(ray_backend.ENV, raising=False)
    assert engine.settings(root=tmp_path)["ray_address"] is None
    assert engine.settings(root=tmp_path, ray_address="10.0.0.5:6379")["ray_address"] == "10.0.0.5:6379"
    monkeypatch.setenv(ray_backend.ENV, "local")
    assert engine.settings(root=tmp_path)["ray_address"] is None
    monkeypatch.delenv(ray_backend.ENV)
    assert engine.settings(root=tmp_path, ray_address="local")["ray_address"] is None
    with pytest.raises(CompressionLabError, match="not an address"):
        engine.settings(root=tmp_path, ray_address="a b; rm")
    assert engine.engine_info(tmp_path) == {"engine": "local", "workers": 1}


def test_small_files_travel_with_the_task_and_others_must_be_on_the_node(tmp_path):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "a.png").write_bytes(b"x" * 1000)
    job = {"kind": "compress", "model": "demo:lenet5", "data": f"imagefolder:{data}"}
    packed = ray_backend.pack(job)
    assert list(packed) == [str(data)]
    moved = ray_backend.localize(job, packed, tmp_path / "task", "10.0.0.7")
    assert moved["data"].startswith("imagefolder:") and moved["data"] != job["data"]
    assert (Path(moved["data"].split(":", 1)[1]) / "cat" / "a.png").read_bytes() == b"x" * 1000
    assert ray_backend.pack(job, limit_mb=0.0005) == {}  # over the limit: referenced by path
    gone = {**job, "data": f"imagefolder:{tmp_path / 'elsewhere'}"}
    with pytest.raises(CompressionLabError, match=r"dataset folder .*elsewhere is not readable on Ray node "
                                                  r"10\.0\.0\.7: put it on storage every node mounts"):
        ray_backend.localize(gone, {}, tmp_path / "task2", "10.0.0.7")


def test_an_unreachable_cluster_fails_queued_runs_at_once_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")
    monkeypatch.delenv(ray_backend.ENV, raising=False)
    engine.settings(root=tmp_path, ray_address="127.0.0.1:1")  # nothing listens there: refused at once
    run_id = engine.submit({"kind": "test-sleep", "seconds": 1}, root=tmp_path)
    row = engine.wait(run_id, 120, root=tmp_path)
    assert row["state"] == "failed"
    assert row["error"].startswith("cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused)")
    assert "--ray local" in row["error"] and row["error"] in engine.log_tail(run_id, root=tmp_path)


def test_the_sidebar_names_the_engine(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path))
    monkeypatch.delenv(ray_backend.ENV, raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert "Engine: local, 1 worker" in [c.value for c in at.sidebar.caption]
    engine.settings(root=tmp_path, ray_address="127.0.0.1:1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Engine: Ray at `127.0.0.1:1`" in [c.value for c in at.sidebar.caption]
    assert any("cannot reach the Ray cluster at 127.0.0.1:1" in w.value for w in at.sidebar.warning)


@pytest.mark.slow  # 8 s: two dispatchers in turn
def test_switching_the_engine_hands_the_queue_to_the_new_one(tmp_path, monkeypatch):
    """A local dispatcher that sees --ray ADDRESS stored finishes its own run and hands the queue over."""
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")
    monkeypatch.delenv(ray_backend.ENV, raising=False)
    first = engine.submit({"kind": "test-sleep", "seconds": 4}, root=tmp_path)
    second = engine.submit({"kind": "test-sleep", "seconds": 1}, root=tmp_path)  # one worker: it waits
    deadline = time.time() + 60
    while engine.status(first, root=tmp_path)["state"] != "running" and time.time() < deadline:
        time.sleep(0.2)
    engine.settings(root=tmp_path, ray_address="127.0.0.1:1")  # nothing listens there
    first_row, second_row = engine.wait(first, 120, root=tmp_path), engine.wait(second, 120, root=tmp_path)
    assert first_row["state"] == "succeeded" and "[worker] succeeded" in engine.log_tail(first, root=tmp_path)
    assert second_row["state"] == "failed" and "cannot reach the Ray cluster at 127.0.0.1:1" in second_row["error"]


def test_the_cli_ray_option_is_kept_in_the_data_folder(tmp_path, monkeypatch, capsys):
    from complab import cli

    monkeypatch.setenv(ray_backend.ENV, "unset-by-the-test")  # restored after the test: --ray sets it here
    assert cli.main(["--ray", "10.0.0.5:6379", "runs", "--home", str(tmp_path)]) == 0
    monkeypatch.delenv(ray_backend.ENV)
    assert engine.settings(root=tmp_path)["ray_address"] == "10.0.0.5:6379"
    assert cli.main(["--ray", "local", "runs", "--home", str(tmp_path)]) == 0
    monkeypatch.delenv(ray_backend.ENV)
    assert engine.settings(root=tmp_path)["ray_address"] is None


def test_a_task_asks_for_a_gpu_only_where_the_cluster_has_one(monkeypatch):
    monkeypatch.delenv("COMPRESSION_LAB_RAY_GPUS", raising=False)
    monkeypatch.delenv("COMPRESSION_LAB_RAY_CPUS", raising=False)
    assert ray_backend.task_gpus(0) == 0 and ray_backend.task_gpus(4) == 1 and ray_backend.task_cpus() == 1
    monkeypatch.setenv("COMPRESSION_LAB_RAY_GPUS", "0.5")  # two runs share each GPU
    monkeypatch.setenv("COMPRESSION_LAB_RAY_CPUS", "4")
    assert ray_backend.task_gpus(0) == 0 and ray_backend.task_gpus(4) == 0.5 and ray_backend.task_cpus() == 4


def test_the_app_takes_ray_after_a_double_dash(tmp_path, monkeypatch):
    """`streamlit run app.py -- --ray ADDRESS` stores the address for the dispatcher and the CLI to share."""
    from complab.ui import state
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path))
    monkeypatch.delenv(ray_backend.ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["app.py", "--ray", "127.0.0.1:1"])
    state.use_engine_args.clear()  # once per server process: this test is a new one
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert engine.settings(root=tmp_path)["ray_address"] == "127.0.0.1:1"
        assert "Engine: Ray at `127.0.0.1:1`" in [c.value for c in at.sidebar.caption]
    finally:
        state.use_engine_args.clear()
