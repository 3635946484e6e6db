"""The run store under faults: a corrupt or lost index, a read-only home, a full disk, a locked index, relative paths.

The folders are the truth: every test checks that no run is hidden and that the user's files are kept. Mounts
(a small tmpfs, remounted read-only) need root with CAP_SYS_ADMIN; without it those tests are skipped.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from complab import engine
from complab.engine.store import RunStore, StoreError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)
QUICK = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
JOB = {"kind": "compress", "model": "demo:lenet300", "weights": None, "data": "digits", "input_size": None,
       "mean": None, "std": None, "plan": QUICK, "latency": False}


@pytest.fixture
def test_jobs(monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")


def finished_runs(root: Path) -> dict[str, str]:
    """Three runs that ended (succeeded with its files, failed, cancelled), made through the store; {id: state}."""
    store = RunStore(root)
    ids = {}
    for state in ("succeeded", "failed", "cancelled"):
        run_id = store.insert(JOB)
        store.update(run_id, state="running", started=time.time(), pid=None)
        folder = store.run_dir(run_id)
        metrics = None
        if state == "succeeded":
            # the fields every compression run's metrics.json has (compression/complab/runfolder.py checks them)
            metrics = {"compression_ratio": 12.5, "before": {"accuracy": 0.95, "fp32_bytes": 50},
                       "after": {"accuracy": 0.9, "compressed_bytes": 4}}
            (folder / "model.clab").write_bytes(b"CLAB")
            (folder / "metrics.json").write_text(json.dumps(metrics))
        store.append_log(run_id, f"[worker] {state}")
        assert store.finish(run_id, state, None if state == "succeeded" else f"{state} on purpose", metrics=metrics)
        ids[run_id] = state
    return ids


def checkpointed(root: Path) -> None:
    """Fold the WAL into index.sqlite, so corrupting the main file corrupts the data."""
    db = sqlite3.connect(root / "index.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def corrupt(root: Path, how: str) -> bytes:
    """Damage the index as a crash, a bad disk or a careless user would; returns what was there before."""
    index = root / "index.sqlite"
    checkpointed(root)
    before = index.read_bytes()
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    if how == "random":
        index.write_bytes(os.urandom(len(before)))
    elif how == "truncated":
        index.write_bytes(before[: len(before) // 2 + 100])
    elif how == "directory":
        index.unlink()
        index.mkdir()
        (index / "note.txt").write_text("a folder where the index should be")
    elif how == "empty":
        index.write_bytes(b"")
    return before


def cli(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "complab.cli", *args, "--home", str(home)], capture_output=True,
                          text=True, timeout=90, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT / "compression")})


@pytest.mark.parametrize("how", ["random", "truncated", "directory", "empty"])
def test_corrupt_index_is_kept_aside_and_rebuilt_from_the_folders(tmp_path, how):
    ids = finished_runs(tmp_path)
    stray = tmp_path / "runs" / "20200101-000000-abcdef"
    stray.mkdir()  # a folder with no job.json (made an hour ago, so not one being created): shown, not hidden
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    damaged = corrupt(tmp_path, how)
    rows = {r["id"]: r for r in engine.list_runs(root=tmp_path)}
    assert {run_id: rows[run_id]["state"] for run_id in ids} == ids  # every run, in the state it ended in
    assert rows["20200101-000000-abcdef"]["state"] == "failed"
    succeeded = next(rows[i] for i, state in ids.items() if state == "succeeded")
    assert succeeded["metrics"]["compression_ratio"] == 12.5 and succeeded["job"]["model"] == "demo:lenet300"
    failed = next(rows[i] for i, state in ids.items() if state == "failed")
    assert failed["error"] == "failed on purpose"
    aside = sorted(tmp_path.glob("index.sqlite.corrupt-*"))
    if how == "empty":
        assert not aside  # nothing to keep: the empty file is a valid, empty index that the folders refill
    else:
        assert len(aside) == 1
        kept = aside[0]
        if how == "directory":
            assert (kept / "note.txt").read_text() == "a folder where the index should be"
        else:
            assert kept.read_bytes() != damaged and len(kept.read_bytes()) > 0  # the damaged file, as it was
    assert (tmp_path / "index.sqlite").is_file()
    # the CLI lists them too (exit 0, no traceback), and cancel answers in one line
    out = cli("runs", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert all(run_id in out.stdout for run_id in ids) and "Traceback" not in out.stderr
    some_id = next(iter(ids))
    out = cli("cancel", some_id, home=tmp_path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr


def test_corrupt_index_found_mid_life_and_submit_cancel_work(tmp_path, test_jobs):
    ids = finished_runs(tmp_path)
    store = RunStore(tmp_path)  # opened while the index was fine
    corrupt(tmp_path, "random")
    assert {r["id"] for r in store.rows()} >= set(ids)
    run_id = engine.submit({"kind": "test-sleep", "seconds": 30}, root=tmp_path)
    engine.cancel(run_id, root=tmp_path)
    assert engine.wait(run_id, 60, root=tmp_path)["state"] == "cancelled"
    assert len(list(tmp_path.glob("index.sqlite.corrupt-*"))) == 1


def test_run_folder_state_survives_a_lost_index(tmp_path, test_jobs):
    """A queued run whose index vanished is queued again, and runs; a running one is reaped as any other."""
    store = RunStore(tmp_path)
    queued = store.insert({"kind": "test-sleep", "seconds": 0.2})
    orphan = store.insert({"kind": "test-sleep", "seconds": 0.2})
    store.update(orphan, state="running", started=time.time(), pid=2 ** 22 + 12345)
    for path in tmp_path.glob("index.sqlite*"):
        path.unlink()
    assert queued not in {r["id"] for r in engine.list_runs(root=tmp_path)}  # a submit may still be adding its row
    hour_ago = time.time() - 3600
    os.utime(tmp_path / "runs" / queued, (hour_ago, hour_ago))  # no submit takes that long: it is a run
    assert engine.wait(queued, 90, root=tmp_path)["state"] == "succeeded"
    row = engine.status(orphan, root=tmp_path)
    assert row["state"] == "failed" and "worker process died" in row["error"]


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {out.stderr.strip()}")


def unmount(path: Path) -> None:
    for _ in range(20):  # a worker may still hold a file open for a moment
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.25)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount_tmpfs(mount, "40m")
    yield mount
    unmount(mount)


def test_read_only_home_lists_runs_and_refuses_writes_in_one_line(small_disk, tmp_path, test_jobs, monkeypatch):
    home = small_disk / "home"
    ids = finished_runs(home)
    stranded = RunStore(home).insert({"kind": "test-sleep", "seconds": 1})
    RunStore(home).update(stranded, state="running", started=time.time(), pid=2 ** 22 + 12345)
    out = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot remount read-only: {out.stderr.strip()}")
    before = sorted(p.name for p in home.rglob("*"))
    rows = {r["id"]: r for r in engine.list_runs(root=home)}
    assert {run_id: rows[run_id]["state"] for run_id in ids} == ids
    assert rows[stranded]["state"] == "failed" and "worker process died" in rows[stranded]["error"]  # shown so
    assert engine.status(next(iter(ids)), root=home)["state"] in ids.values()
    with pytest.raises(StoreError, match="read-only") as info:
        engine.submit({"kind": "test-sleep", "seconds": 1}, root=home)
    assert info.value.reason == "readonly" and "\n" not in str(info.value)
    with pytest.raises(StoreError, match="read-only"):
        engine.cancel(stranded, root=home)
    out = cli("runs", home=home)
    assert out.returncode == 0 and all(run_id in out.stdout for run_id in ids), out.stderr
    out = cli("cancel", stranded, home=home)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "read-only" in out.stderr
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = app_page("runs")
    assert not at.exception, [e.value for e in at.exception]
    assert any("read-only" in w.value for w in at.warning)
    assert all(run_id in " ".join(m.value for m in at.markdown) for run_id in ids)
    assert sorted(p.name for p in home.rglob("*")) == before  # nothing written


def fill(path: Path) -> Path:
    """Grow a file until the disk is full; returns it (delete it to free the space). SQLite frees and takes pages
    as connections come and go, so a caller keeps calling it, like a download that goes on filling the disk."""
    filler = path / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with open(filler, "ab", buffering=0) as f:
        for _ in range(4096):
            try:
                f.write(chunk)
            except OSError:
                break
        for _ in range(4096):  # the last partial megabyte, in small pieces
            try:
                f.write(b"\0" * 4096)
            except OSError:
                break
    return filler


@pytest.mark.slow  # 13 s: a run on a filled tmpfs
def test_disk_full_mid_run_fails_saying_disk_full_never_stuck(small_disk, test_jobs):
    home = small_disk / "home"
    run_id = engine.submit({"kind": "test-sleep", "seconds": 40}, root=home)
    deadline = time.time() + 60
    while (engine.status(run_id, root=home)["progress"] or {}).get("stage") != "sleep":
        assert time.time() < deadline, engine.log_tail(run_id, root=home)
        time.sleep(0.2)
    deadline = time.time() + 60
    while (row := engine.status(run_id, root=home))["state"] not in engine.FINAL_STATES:  # never running, no process
        assert time.time() < deadline, engine.log_tail(run_id, root=home)
        filler = fill(small_disk)
        time.sleep(0.3)
    assert row["state"] == "failed" and row["error"].startswith("disk full"), row["error"]
    assert "SIGKILL" not in row["error"]
    with pytest.raises(StoreError, match="disk full") as info:  # one line naming the problem and the fix
        engine.submit({"kind": "test-sleep", "seconds": 1}, root=home)
    assert "free some space" in str(info.value) and "\n" not in str(info.value)
    assert [r["id"] for r in engine.list_runs(root=home)] == [run_id]  # the refused submit left nothing behind
    filler.unlink()
    row = engine.status(run_id, root=home)
    assert row["state"] == "failed" and row["error"].startswith("disk full")
    again = engine.submit({"kind": "test-sleep", "seconds": 0.2}, root=home)
    assert engine.wait(again, 60, root=home)["state"] == "succeeded"


def test_disk_full_with_the_dispatcher_gone_is_not_blamed_on_sigkill(tmp_path):
    """A worker that died on a full disk while no dispatcher watched: the next listing reads the log."""
    store = RunStore(tmp_path)
    run_id = store.insert(JOB)
    store.update(run_id, state="running", started=time.time(), pid=2 ** 22 + 12345)
    store.append_log(run_id, "sqlite3.OperationalError: disk I/O error\nOSError: [Errno 28] No space left on device")
    row = engine.status(run_id, root=tmp_path)
    assert row["state"] == "failed" and row["error"].startswith("disk full") and "SIGKILL" not in row["error"]


def test_locked_index_lists_and_refuses_submit_in_one_line(tmp_path, test_jobs, monkeypatch):
    ids = finished_runs(tmp_path)
    monkeypatch.setenv("COMPRESSION_LAB_BUSY_TIMEOUT", "1")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)"), str(tmp_path / "index.sqlite")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert {r["id"] for r in engine.list_runs(root=tmp_path)} == set(ids)  # reading is never blocked
        with pytest.raises(StoreError, match="locked by another process") as info:
            engine.submit({"kind": "test-sleep", "seconds": 0.1}, root=tmp_path)
        assert info.value.reason == "locked"
        assert {p.name for p in (tmp_path / "runs").iterdir()} == set(ids)  # nothing half-queued
    finally:
        holder.kill()
        holder.wait()
    run_id = engine.submit({"kind": "test-sleep", "seconds": 0.1}, root=tmp_path)
    assert engine.wait(run_id, 60, root=tmp_path)["state"] == "succeeded"


def test_home_that_is_a_file_says_so(tmp_path):
    home = tmp_path / "home"
    home.write_text("not a folder")
    with pytest.raises(StoreError, match="is not a folder"):
        engine.list_runs(root=home)
    out = cli("runs", home=home)
    assert out.returncode == 2 and "is not a folder" in out.stderr and "Traceback" not in out.stderr


def test_relative_paths_are_resolved_where_they_were_typed(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "pictures" / "zero").mkdir(parents=True)
    (work / "net.pt").write_bytes(b"")
    monkeypatch.chdir(work)
    job = {**JOB, "data": "imagefolder:pictures"}
    run_id = engine.submit(job, root=tmp_path / "home")
    engine.cancel(run_id, root=tmp_path / "home")
    stored = engine.status(run_id, root=tmp_path / "home")["job"]
    assert stored["data"] == f"imagefolder:{work / 'pictures'}"
    assert json.loads((tmp_path / "home" / "runs" / run_id / "job.json").read_text())["data"] == stored["data"]
    resolved = engine.absolute_paths({"model": "torchscript:net.pt", "weights": "w/net.pt", "data": "yolo:d/data.yaml"},
                                     cwd="/somewhere")
    assert resolved == {"model": "torchscript:/somewhere/net.pt", "weights": "/somewhere/w/net.pt",
                        "data": "yolo:/somewhere/d/data.yaml"}
    untouched = {"model": "detector:demo", "data": "shapes"}
    assert engine.absolute_paths(untouched) == untouched
    assert engine.absolute_paths({**JOB, "weights": None}) == {**JOB, "weights": None}
    # the CLI submits from another folder than the dispatcher's: the path still resolves
    recipe = work / "recipe.json"
    recipe.write_text(json.dumps(QUICK))
    out = cli("submit", "recipe.json", "--model", "demo:lenet300", "--data", "imagefolder:pictures",
              home=tmp_path / "home", cwd=work)
    assert out.returncode == 0, out.stderr
    cli_run = out.stdout.split()[0]
    engine.cancel(cli_run, root=tmp_path / "home")
    assert engine.status(cli_run, root=tmp_path / "home")["job"]["data"] == f"imagefolder:{work / 'pictures'}"
    shutil.rmtree(work / "pictures")


def app_page(name: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(f"pages/{name}.py")
    at.run()
    return at


def test_runs_and_compare_pages_show_store_errors_not_tracebacks(tmp_path, monkeypatch):
    home = tmp_path / "home"
    ids = finished_runs(home)
    corrupt(home, "random")
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = app_page("runs")
    assert not at.exception, [e.value for e in at.exception]
    shown = " ".join(m.value for m in at.markdown)
    assert all(run_id in shown for run_id in ids)  # listed from the folders
    broken = tmp_path / "broken"
    broken.write_text("not a folder")
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(broken))
    for name in ("runs", "compare"):
        at = app_page(name)
        assert not at.exception, [e.value for e in at.exception]
        assert any("is not a folder" in e.value for e in at.error), name


def test_submit_killed_half_way_leaves_no_half_made_run(tmp_path):
    """insert() writes the folder under a hidden staging name and renames it whole: a kill mid-write leaves only
    that hidden folder, never listed and removed after an hour."""
    ids = finished_runs(tmp_path)
    staging = tmp_path / "runs" / ".new-20200101-000000-abcdef"
    staging.mkdir()
    (staging / "job.json").write_text('{"kind": "comp')  # cut by the kill
    assert {r["id"] for r in engine.list_runs(root=tmp_path)} == set(ids)
    assert staging.is_dir()  # young: maybe a submit still writing it
    os.utime(staging, (time.time() - 7200, time.time() - 7200))
    assert {r["id"] for r in engine.list_runs(root=tmp_path)} == set(ids)
    assert not staging.exists()
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".new-")]  # none from real submits
