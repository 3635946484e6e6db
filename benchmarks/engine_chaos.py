"""Engine under faults: runs with workers, the dispatcher and app-like clients SIGKILLed at random moments, a run
folder's disk filled, the SQLite index locked by another process, two clients submitting and cancelling at once.

    .venv/bin/python benchmarks/engine_chaos.py [--runs 20] [--seed 0] [--budget 420]

Everything happens in a temporary data folder with 2 workers. Two client processes (what two app sessions do:
submit, list, cancel) each submit half of the runs: demo:lenet300 on digits with a small plan (prune 90%, one
fine-tuning epoch; cluster k=16), a few seconds each. Meanwhile this script, every 1-3 s, picks one fault:
SIGKILL a running worker, the dispatcher or a client (restarted at once: it goes on with its quota), or hold
the index with BEGIN EXCLUSIVE from another process for 2-8 s (once for longer than the engine's 30 s busy
timeout, when the budget allows). One more run has its folder on a 3 MB tmpfs mounted by this script (root
with CAP_SYS_ADMIN; otherwise this fault is skipped and the JSON says why), filled up while it runs: it must
end `failed` saying "disk full". Last, a second data folder on a 24 MB tmpfs (index included) is filled while
a run works: the run must end saying disk full, listing must work while full, a submit must be refused in one
line (the JSON's home_disk_full). Two more faults treat run folders as a user (or a received copy) might: a
damaged folder (a finished run's metrics.json or job.json overwritten with garbage: wrong types, random bytes, a
cut file) must be listed as damaged ("damaged: <file>: <why>") with its numbers dropped, and a deleted folder
(rm -r of a running run's folder, or of a finished one's) must be listed as gone once (failed, never a ghost
`running` row or a raw FileNotFoundError), then dropped; neither may hide or lose any other run. No server is
started (nothing listens on any port).

Then it waits for every run to end and checks:
  lost              a submitted run missing from the listing or its folder, or a succeeded run whose
                    model.clab does not decode (complab.models.compact.load_compressed, as `eval` does)
                    or whose size differs from its metrics
  stuck             a run left `running` with no live worker (or `queued` with no dispatcher) after a listing
  damaged_hidden    a damaged run not listed, or listed without its "damaged: ..." mark (or with its numbers)
  deleted_shown_wrong  a listing after a folder was deleted that still shows that run not marked gone, or a
                    final listing that still holds it; the JSON's folder_faults counts both faults
  store_consistent  index rows == run folders, state.json == the row, succeeded runs have their results and
                    others none, PRAGMA integrity_check ok, no traceback in any client or the dispatcher log
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "compression"))

from complab import engine  # noqa: E402
from complab.engine.dispatcher import try_lock, worker_alive  # noqa: E402
from complab.engine.store import RunStore  # noqa: E402
from complab.errors import CompressionLabError  # noqa: E402

PLAN = {"schema_version": 1, "name": "engine-chaos", "seed": 0, "eval_split": "test", "steps": [
    {"type": "prune", "sparsity": {"_default": 0.9, "re:fc3": 0.5}, "iterations": 1, "finetune_epochs": 1},
    {"type": "cluster", "n_clusters": {"_default": 16}, "finetune_epochs": 0}]}
JOB = {"kind": "compress", "model": "demo:lenet300", "data": "digits", "plan": PLAN, "latency": False}
# the disk-fault run fine-tunes longer, so that its disk fills while it works
DISK_JOB = {**JOB, "plan": {**PLAN, "steps": [{**PLAN["steps"][0], "finetune_epochs": 4}, PLAN["steps"][1]]}}
DRAIN = 240.0  # seconds, at most, to let every run end after the faults stop
LONG_LOCK = 33.0  # seconds: a little past the engine's 30 s busy timeout


# --- the run-folder faults: a damaged folder, a deleted folder ------------------------------------------------

GARBAGE = (
    ("metrics.json", lambda text: text.replace('"accuracy": ', '"accuracy": "oops", "was": ', 1)),
    ("job.json", lambda text: json.dumps({**json.loads(text), "model": 5})),
    ("metrics.json", lambda text: text[: len(text) // 3]),  # cut short
    ("job.json", lambda text: os.urandom(200).decode("latin-1")),
)


class FolderFaults:
    """Damage a finished run's folder, or delete a run's folder (running, else finished); check what listings say."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.damaged: dict[str, str] = {}  # run id -> the file overwritten
        self.deleted: dict[str, str] = {}  # run id -> the state it was in when deleted
        self.shown_wrong: list[str] = []

    def damage(self, rng: random.Random, avoid: set[str]) -> bool:
        done = [r for r in RunStore(self.home).rows(states=("succeeded",))
                if r["id"] not in self.damaged and r["id"] not in avoid]
        if not done:
            return False
        run_id = rng.choice(done)["id"]
        name, change = GARBAGE[len(self.damaged) % len(GARBAGE)]
        path = self.home / "runs" / run_id / name
        path.write_bytes(change(path.read_text()).encode("utf-8", "surrogateescape"))
        self.damaged[run_id] = name
        return True

    def delete(self, rng: random.Random, avoid: set[str], finished_only: bool = False) -> bool:
        store = RunStore(self.home)
        running = [] if finished_only else [r for r in store.rows(states=("running",)) if r["id"] not in avoid]
        finished = [r for r in store.rows(states=("succeeded",)) if r["id"] not in avoid | set(self.damaged)]
        pool = running if running and (len(self.deleted) % 2 == 0 or not finished) else finished
        if not pool:
            return False
        row = rng.choice(pool)
        folder = self.home / "runs" / row["id"]
        for _ in range(5):  # a worker may add a file while rm -r walks the folder: remove until it is gone
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                break
            time.sleep(0.1)
        self.deleted[row["id"]] = row["state"]
        self.look()
        return True

    def look(self, final: bool = False) -> None:
        """A listing (what `runs` or the Runs page shows): a deleted run is marked gone, or already dropped."""
        from complab.engine.store import GONE

        rows = {row["id"]: row for row in engine.list_runs(root=self.home)}
        if final:  # a deleted running run's worker was asked to cancel: none may still work for it
            workers = set()
            for pid in processes(self.home, "worker"):
                try:
                    workers |= set(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0"))
                except OSError:
                    continue
            self.shown_wrong += [f"{run_id}: its worker still runs" for run_id in self.deleted if run_id in workers]
        for run_id in self.deleted:
            row = rows.get(run_id)
            if row is not None and (final or row.get("damaged") != GONE or row["state"] != "failed"
                                    or "FileNotFoundError" in (row.get("error") or "")):
                self.shown_wrong.append(f"{run_id}: listed as {row['state']} ({(row.get('error') or '')[:60]})"
                                        + (" in the final listing" if final else ""))

    def hidden(self, rows: dict) -> list[str]:
        """Damaged runs the final listing does not show as damaged (with their numbers dropped)."""
        out = []
        for run_id, name in self.damaged.items():
            row = rows.get(run_id)
            if row is None:
                out.append(f"{run_id}: damaged ({name}) and not listed")
            elif not (row.get("damaged") or "").startswith(f"damaged: {name}") or row.get("metrics") is not None:
                out.append(f"{run_id}: damaged ({name}) but listed as {row['state']}, {row.get('damaged')!r}")
        return out


# --- a client: one app session (its own process, so it can be SIGKILLed) ---------------------------------------

def read_lines(path: Path, key: str) -> list[str]:
    """The `key` values of a client's JSON lines (a line cut by a SIGKILL is skipped)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if key in record:
            out.append(record[key])
    return out


def client(home: Path, ids_file: Path, quota: int, seed: int, deadline: float) -> int:
    """Submit until `quota` runs are recorded in ids_file (one JSON line each), listing and sometimes cancelling."""
    rng = random.Random(seed)
    known = read_lines(ids_file, "submitted")
    with open(ids_file, "a") as out:
        out.write("\n")  # after a line cut by a kill, start a fresh one
        for _ in range(2000):  # bounded in count as well as in time
            if len(known) >= quota or time.time() > deadline:
                break
            action = rng.random()
            try:
                if action < 0.45:
                    run_id = engine.submit(JOB, root=home)
                    known.append(run_id)
                    out.write(json.dumps({"submitted": run_id}) + "\n")
                    out.flush()
                elif action < 0.9 or not known:
                    engine.list_runs(root=home)
                else:
                    run_id = rng.choice(known)
                    engine.cancel(run_id, root=home)
                    out.write(json.dumps({"cancelled": run_id}) + "\n")
                    out.flush()
            except CompressionLabError as exc:  # a locked index: the one-line message a user would see
                out.write(json.dumps({"error": str(exc)}) + "\n")
                out.flush()
            time.sleep(rng.uniform(0.2, 1.2))
    return 0


# --- the faults ----------------------------------------------------------------------------------------------

def processes(home: Path, module: str) -> list[int]:
    """Pids of this data folder's engine processes of one kind (dispatcher or worker), from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if f"complab.engine.{module}" in args and str(home) in args:
            out.append(int(name))
    return out


def kill(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except OSError:
        return False


def hold_lock(home: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the index's write lock (BEGIN EXCLUSIVE) for `seconds`."""
    code = ("import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], timeout=20, isolation_level=None); "
            "db.execute('BEGIN EXCLUSIVE'); print('held', flush=True); time.sleep(float(sys.argv[2])); "
            "db.execute('ROLLBACK')")
    return subprocess.Popen([sys.executable, "-c", code, str(home / "index.sqlite"), str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class DiskFault:
    """A run whose folder lives on a small tmpfs, filled up while the run works."""

    def __init__(self, home: Path) -> None:
        self.home, self.run_id, self.mount, self.skipped = home, None, None, None
        self.filler: Path | None = None

    def prepare(self) -> None:
        """Queue the run with no dispatcher able to start (we hold its lock), move its folder onto a tmpfs."""
        RunStore(self.home)
        lock = try_lock(self.home)
        try:
            self.run_id = engine.submit(DISK_JOB, root=self.home)  # the dispatcher it starts exits: the lock is ours
            folder = self.home / "runs" / self.run_id
            keep = Path(tempfile.mkdtemp(prefix="chaos-keep-"))
            shutil.copytree(folder, keep / "run")
            out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                self.skipped = f"could not mount a tmpfs ({out.stderr.strip() or 'not root'}): disk fault skipped"
                engine.cancel(self.run_id, root=self.home)
            else:
                self.mount = folder
                for path in (keep / "run").iterdir():
                    shutil.copy2(path, folder / path.name)
            shutil.rmtree(keep)
        finally:
            if lock is not None:
                lock.close()

    def watch(self, stop: threading.Event) -> None:
        """A thread: tick every 0.2 s until `stop` (bounded by the count too)."""
        for _ in range(20000):
            if stop.wait(0.2):
                return
            try:
                self.tick()
            except (OSError, CompressionLabError):
                continue

    def tick(self) -> None:
        """Once the run works (past its start), fill its disk, and keep it full until the run ends."""
        if self.mount is None:
            return
        row = RunStore(self.home).row(self.run_id)
        if row is not None and row["state"] in engine.FINAL_STATES and self.filler is not None:
            self.filler.unlink(missing_ok=True)  # the user frees space: the folder's state.json catches up
            self.filler = None
            return
        if row is None or row["state"] != "running" or not (row["progress"] or {}).get("progress"):
            return
        self.filler = fill(self.mount, 8)  # bounded: a 3 MB disk

    def result(self, rows: dict) -> dict:
        if self.skipped:
            return {"disk_fault": self.skipped}
        row = rows.get(self.run_id) or {}
        return {"disk_fault": "tmpfs of 3 MB on one run folder, filled mid-run", "disk_run_state": row.get("state"),
                "disk_run_says_disk_full": bool(row.get("error") and "disk full" in row["error"]),
                "disk_run_error": (row.get("error") or "")[:160]}

    def unmount(self) -> None:
        if self.mount is None:
            return
        for _ in range(20):
            if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode == 0:
                return
            time.sleep(0.5)
        subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)


def fill(path: Path, megabytes: int) -> Path:
    """Grow path/.filler until the disk is full (bounded: `megabytes` plus 4 MB in small pieces)."""
    filler = path / ".filler"
    with open(filler, "ab", buffering=0) as f:
        for size in [1 << 20] * megabytes + [4096] * 1024:
            try:
                if f.write(b"\0" * size) < size:
                    break
            except OSError:
                break
    return filler


def home_disk_full(work: Path, deadline: float) -> dict:
    """The whole data folder (index included) on a 24 MB tmpfs that fills while a run works: the run must end
    `failed` saying disk full (not `running` with no process, not SIGKILL), listing must go on working, a submit
    must be refused in one line, and once space returns the folder and the index agree."""
    mount = work / "small-home"
    mount.mkdir()
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return {"skipped": f"could not mount a tmpfs ({out.stderr.strip() or 'not root'})"}
    home = mount / "home"
    result: dict = {"runs": 1}
    try:
        run_id = engine.submit(DISK_JOB, root=home)
        row = engine.status(run_id, root=home)
        for _ in range(2000):  # bounded in count and in time
            if row["state"] in engine.FINAL_STATES or time.time() > deadline:
                break
            if row["state"] == "running" and (row["progress"] or {}).get("progress"):
                fill(mount, 32)  # SQLite frees and takes pages as connections come and go: keep it full
            time.sleep(0.2)
            row = engine.status(run_id, root=home)
        result.update({"state": row["state"], "says_disk_full": bool(row["error"] and "disk full" in row["error"]),
                       "error": (row["error"] or "")[:120]})
        try:
            engine.list_runs(root=home)
            result["lists_while_full"] = True
        except CompressionLabError as exc:
            result["lists_while_full"] = f"no: {exc}"
        try:
            engine.submit(JOB, root=home)
            result["submit_while_full"] = "accepted"
        except CompressionLabError as exc:
            result["submit_while_full"] = "refused: " + str(exc)[:80]
        (mount / ".filler").unlink(missing_ok=True)
        rows = engine.list_runs(root=home)
        recorded = RunStore(home).recorded_state(run_id).get("state")
        result["stuck"] = sum(r["state"] == "running" and not worker_alive(r["pid"], r["id"]) for r in rows)
        result["lost"] = int(run_id not in {r["id"] for r in rows})
        result["consistent"] = recorded == rows[0]["state"] and {r["id"] for r in rows} == {
            p.name for p in (home / "runs").iterdir()}
    finally:
        for module in ("worker", "dispatcher"):
            for pid in processes(home, module):
                kill(pid)
        for _ in range(20):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    return result


# --- the checks ----------------------------------------------------------------------------------------------

def decodes(path: Path) -> str | None:
    """None when the compact file decodes into a working model (as `complab eval` loads it), else why."""
    try:
        import torch
        from complab.models.compact import load_compressed

        handle = load_compressed(path)
        with torch.no_grad():
            out = handle.model(torch.zeros(1, *handle.input_shape))
        return None if out.shape[-1] == handle.num_classes else f"output shape {tuple(out.shape)}"
    except Exception as exc:  # noqa: BLE001 - any failure to decode is a lost result
        return f"{type(exc).__name__}: {exc}"


def check(home: Path, submitted: set[str], problems: list[str], folder_faults: FolderFaults | None = None) -> dict:
    index_ids = {r[0] for r in sqlite3.connect(home / "index.sqlite").execute("SELECT id FROM runs")}
    folders = {p.name for p in (home / "runs").iterdir() if p.is_dir()}
    missing_from_index = sorted(folders - index_ids)  # before a listing adds them back
    rows = {row["id"]: row for row in engine.list_runs(root=home)}
    store = RunStore(home)
    lost, stuck, consistent = 0, 0, True
    damaged = set(folder_faults.damaged) if folder_faults else set()
    deleted = set(folder_faults.deleted) if folder_faults else set()
    for run_id in sorted(submitted - deleted):  # a deleted run is checked by FolderFaults: gone, then dropped
        row, folder = rows.get(run_id), home / "runs" / run_id
        if row is None or not (folder / "job.json").is_file():
            lost += 1
            problems.append(f"{run_id}: vanished (row {row is not None}, folder {folder.is_dir()})")
            continue
        if row.get("damaged") and run_id in damaged:
            continue  # listed as damaged (FolderFaults.hidden checks how)
        if row["state"] == "succeeded":
            model = folder / "model.clab"
            why = decodes(model) if model.is_file() else "no model.clab"
            if why is None and row["metrics"]["after"]["compressed_bytes"] != model.stat().st_size:
                why = "compressed_bytes differs from the file size"
            if why:
                lost += 1
                problems.append(f"{run_id}: succeeded but {why}")
    for run_id, row in rows.items():
        if row["state"] == "running" and not worker_alive(row["pid"], run_id):
            stuck += 1
            problems.append(f"{run_id}: running with no worker (pid {row['pid']})")
        if row["state"] == "queued" and not processes(home, "dispatcher"):
            stuck += 1
            problems.append(f"{run_id}: queued with no dispatcher")
        recorded = store.recorded_state(run_id)
        if recorded.get("state") != row["state"]:
            consistent = False
            problems.append(f"{run_id}: state.json says {recorded.get('state')}, the index {row['state']}")
        if run_id in damaged:
            continue  # its files were overwritten on purpose
        results = {name for name in ("model.clab", "metrics.json") if (home / "runs" / run_id / name).is_file()}
        if row["state"] == "succeeded" and results != {"model.clab", "metrics.json"}:
            consistent = False
            problems.append(f"{run_id}: succeeded without {sorted({'model.clab', 'metrics.json'} - results)}")
        if row["state"] in ("failed", "cancelled") and results:
            consistent = False
            problems.append(f"{run_id}: {row['state']} but keeps {sorted(results)}")
    if set(rows) != folders:
        consistent = False
        problems.append(f"rows and folders differ: {sorted(set(rows) ^ folders)}")
    if missing_from_index:
        problems.append(f"folders the index lacked before the final listing: {missing_from_index}")
    integrity = sqlite3.connect(home / "index.sqlite").execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        consistent = False
        problems.append(f"integrity_check: {integrity}")
    states, reasons = {}, {}
    for row in rows.values():
        states[row["state"]] = states.get(row["state"], 0) + 1
        if row["state"] == "failed":  # each should be a fault this script caused: a kill or the full disk
            reason = (row["error"] or "")[:48]
            reasons[reason] = reasons.get(reason, 0) + 1
    return {"failure_reasons": reasons, "lost": lost, "stuck": stuck, "consistent": consistent, "rows": rows,
            "states": states, "index_missing_before_listing": len(missing_from_index)}


# --- the campaign --------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs the two clients submit between them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole campaign, at most")
    parser.add_argument("--client", nargs=5, metavar=("HOME", "IDS", "QUOTA", "SEED", "DEADLINE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        home, ids, quota, seed, deadline = args.client
        return client(Path(home), Path(ids), int(quota), int(seed), float(deadline))

    started = time.time()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="engine-chaos-"))
    home = work / "home"
    os.environ["COMPRESSION_LAB_CANCEL_GRACE"] = "5"  # the dispatcher's children inherit it
    engine.settings(home, max_workers=2)
    disk = DiskFault(home)
    disk.prepare()
    stop_disk = threading.Event()
    threading.Thread(target=disk.watch, args=(stop_disk,), daemon=True).start()
    chaos_until = started + max(60.0, args.budget - DRAIN - 60.0)
    quotas = [args.runs // 2, args.runs - args.runs // 2]
    clients: list[dict] = []
    for number, quota in enumerate(quotas):
        clients.append({"ids": work / f"client{number}.jsonl", "log": work / f"client{number}.log", "quota": quota,
                        "seed": args.seed * 100 + number, "proc": None, "starts": 0})

    def start(c: dict) -> None:
        c["starts"] += 1
        with open(c["log"], "a") as log:
            c["proc"] = subprocess.Popen(
                [sys.executable, __file__, "--client", str(home), str(c["ids"]), str(c["quota"]),
                 str(c["seed"] + 1000 * c["starts"]), str(chaos_until + 60.0)], stdout=log, stderr=subprocess.STDOUT,
                cwd=str(REPO))

    def submitted_by(c: dict) -> set[str]:
        return set(read_lines(c["ids"], "submitted"))

    for c in clients:
        start(c)
    kills = {"worker": 0, "dispatcher": 0, "client": 0, "damage": 0, "delete": 0}
    caps = {"worker": max(2, args.runs // 3), "dispatcher": 6, "client": 6, "damage": len(GARBAGE), "delete": 3}
    folder_faults = FolderFaults(home)
    seen: set[str] = set()  # every run id ever listed: a run whose client was killed before noting its id counts too
    locks = {"short": 0, "long": 0}
    holders: list[subprocess.Popen] = []
    long_lock_done = False
    locked_submit: dict = {}

    def submit_while_locked() -> None:
        """During the long hold: a submit must be refused in one line after the busy timeout, leaving nothing."""
        time.sleep(1.0)
        try:
            locked_submit["run"] = engine.submit(JOB, root=home)
            locked_submit["outcome"] = "accepted (the lock was let go in time)"
        except CompressionLabError as exc:
            locked_submit["outcome"] = "refused: " + str(exc)[:100]

    submitter = threading.Thread(target=submit_while_locked, daemon=True)
    problems: list[str] = []
    try:
        for _ in range(1000):  # the fault loop: bounded in count and in time
            now = time.time()
            for c in clients:  # a client that ended (quota met, or crashed) is restarted while it owes runs
                if c["proc"].poll() is not None and len(submitted_by(c)) < c["quota"] and now < chaos_until:
                    start(c)
            done_submitting = all(len(submitted_by(c)) >= c["quota"] for c in clients)
            if now > chaos_until or (done_submitting and not RunStore(home).count("running")
                                     and not RunStore(home).count("queued")):
                break
            seen |= {r["id"] for r in RunStore(home).rows()}
            fault = rng.choice(["worker", "worker", "dispatcher", "client", "lock", "damage", "delete"])
            if fault in caps and kills[fault] >= caps[fault]:
                pass
            elif fault == "worker":
                running = [r for r in RunStore(home).rows(states=("running",)) if r["pid"] and r["id"] != disk.run_id]
                if running and kill(rng.choice(running)["pid"]):
                    kills["worker"] += 1
            elif fault == "dispatcher":
                for pid in processes(home, "dispatcher"):
                    kills["dispatcher"] += kill(pid)
            elif fault == "damage":
                kills["damage"] += folder_faults.damage(rng, {disk.run_id})
            elif fault == "delete":
                kills["delete"] += folder_faults.delete(rng, {disk.run_id})
            elif fault == "client":
                live = [c for c in clients if c["proc"].poll() is None]
                if live:
                    victim = rng.choice(live)
                    kills["client"] += kill(victim["proc"].pid)
                    victim["proc"].wait()
            elif not any(h.poll() is None for h in holders):
                long_one = not long_lock_done and now + LONG_LOCK + DRAIN < started + args.budget - 30
                holders.append(hold_lock(home, LONG_LOCK if long_one else rng.uniform(2.0, 8.0)))
                if long_one:
                    submitter.start()
                locks["long" if long_one else "short"] += 1
                long_lock_done = long_lock_done or long_one
            time.sleep(rng.uniform(1.0, 3.0))
        # the drain: no more faults; a listing now and then (as an open Runs page would) until every run ends
        for c in clients:
            if c["proc"].poll() is None:
                c["proc"].wait(timeout=max(1.0, chaos_until + 90.0 - time.time()))
        drain_until = min(time.time() + DRAIN, started + args.budget - 90)
        for _ in range(1000):
            rows = engine.list_runs(root=home)
            # a client killed between writing a run's folder and its row leaves a queued folder that listings
            # take in once no submit can still be adding that row (store.py: twice the busy timeout); then it runs
            every_folder_listed = {p.name for p in (home / "runs").iterdir() if not p.name.startswith(".")} <= {
                r["id"] for r in rows}
            if (all(r["state"] in engine.FINAL_STATES for r in rows) and every_folder_listed) \
                    or time.time() > drain_until:
                break
            time.sleep(1.0)
        # each folder fault at least once on a finished run, even when the draw never picked it (runs have ended)
        while len(folder_faults.damaged) < 2 and folder_faults.damage(rng, {disk.run_id}):  # metrics.json, job.json
            kills["damage"] += 1
        if "succeeded" not in folder_faults.deleted.values():
            kills["delete"] += folder_faults.delete(rng, {disk.run_id}, finished_only=True)
        for h in holders:
            h.wait(timeout=60)
        if submitter.is_alive() or submitter.ident is not None:
            submitter.join(timeout=60)
        home_full = home_disk_full(work, min(time.time() + 120, started + args.budget - 10))
        submitted = set().union(seen, *(submitted_by(c) for c in clients)) | ({disk.run_id} if disk.run_id else set())
        submitted |= {locked_submit["run"]} if "run" in locked_submit else set()
        result = check(home, submitted, problems, folder_faults)
        folder_faults.look(final=True)
        hidden = folder_faults.hidden(result["rows"])
        problems += hidden + folder_faults.shown_wrong
        tracebacks = sum(c["log"].read_text().count("Traceback") for c in clients if c["log"].exists())
        dispatcher_log = home / "dispatcher.log"
        dispatcher_tracebacks = dispatcher_log.read_text().count("Traceback") if dispatcher_log.exists() else 0
        if tracebacks or dispatcher_tracebacks:
            problems.append(f"tracebacks: clients {tracebacks}, dispatcher log {dispatcher_tracebacks}")
        refused = sum(len(read_lines(c["ids"], "error")) for c in clients)
        out = {"runs": len(submitted) + home_full.get("runs", 0), "kills": sum(kills.values()),
               "kills_by_target": kills, "lock_holds": locks, "submits_refused_while_locked": refused,
               "submit_during_long_lock": locked_submit.get("outcome", "no long lock"),
               "lost": result["lost"] + home_full.get("lost", 0),
               "folder_faults": {"damaged": len(folder_faults.damaged), "deleted": len(folder_faults.deleted),
                                 "deleted_while": sorted(folder_faults.deleted.values())},
               "damaged_hidden": len(hidden), "deleted_shown_wrong": len(folder_faults.shown_wrong),
               "stuck": result["stuck"] + home_full.get("stuck", 0),
               "store_consistent": (result["consistent"] and home_full.get("consistent", True) and not tracebacks
                                    and not dispatcher_tracebacks),
               "states": result["states"], "failure_reasons": result["failure_reasons"],
               "index_missing_before_listing": result["index_missing_before_listing"],
               **disk.result(result["rows"]), "home_disk_full": home_full, "client_tracebacks": tracebacks,
               "dispatcher_tracebacks": dispatcher_tracebacks, "problems": problems[:12],
               "seconds": round(time.time() - started, 1)}
    finally:
        stop_disk.set()
        for c in clients:
            if c["proc"] is not None and c["proc"].poll() is None:
                kill(c["proc"].pid)
        for h in holders:
            if h.poll() is None:
                kill(h.pid)
        for module in ("worker", "dispatcher"):  # this campaign's own engine processes, by pid
            for pid in processes(home, module):
                kill(pid)
        disk.unmount()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out))
    return 0 if (out["lost"] == 0 and out["stuck"] == 0 and out["store_consistent"] and out["damaged_hidden"] == 0
                 and out["deleted_shown_wrong"] == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
