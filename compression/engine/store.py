"""The run store: an SQLite index plus one folder per run, shared safely by the app, CLI, dispatcher and workers.

    ROOT/index.sqlite              runs(id, kind, state, created, started, finished, pid, error, cancel,
                                   job, metrics, progress) and settings(key, value); WAL mode, every
                                   write one short transaction
    ROOT/runs/<id>/job.json        the whole job (compress runs also get plan.json)
    ROOT/runs/<id>/events.jsonl    append-only progress events (time, stage, progress, values)
    ROOT/runs/<id>/log.txt         the worker's output and log messages
    ROOT/runs/<id>/metrics.json, model.clab, sensitivity.json   results, written to a temporary name
                                   and renamed into place before the row says succeeded
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = ("succeeded", "failed", "cancelled")
RESULT_FILES = ("model.clab", "metrics.json", "sensitivity.json")
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
    started REAL, finished REAL, pid INTEGER, error TEXT, cancel REAL,
    job TEXT NOT NULL, metrics TEXT, progress TEXT
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, created);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def default_root() -> Path:
    """$COMPRESSION_LAB_HOME, else the per-user data folder."""
    if os.environ.get("COMPRESSION_LAB_HOME"):
        return Path(os.environ["COMPRESSION_LAB_HOME"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("compression-lab"))


def new_run_id() -> str:
    """Sortable by time to the second (ties are ordered by the `created` column), e.g. 20261123-081502-ab12cd."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def summary_metrics(metrics: dict | None) -> dict | None:
    """What the index keeps for fast listing: everything but the per-layer rows (those stay in metrics.json)."""
    if metrics is None:
        return None
    return {key: value for key, value in metrics.items() if key != "layers"}


class RunStore:
    """Thin, process-safe access to the index and the run folders."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_root()
        self.runs_dir = self.root / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "cache").mkdir(exist_ok=True)
        db = sqlite3.connect(self.root / "index.sqlite", timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file
            if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('runs', 'settings')").fetchone()[0] < 2:
                db.executescript(SCHEMA)  # only on a new file: DDL takes the write lock
        finally:
            db.close()

    @contextmanager
    def connect(self, immediate: bool = False):
        """One short transaction; `immediate` takes the write lock at once (claims, updates)."""
        db = sqlite3.connect(self.root / "index.sqlite", timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            yield db
            if db.in_transaction:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def insert(self, job: dict) -> str:
        """Create the run folder (job.json, plan.json, empty events and log), then the queued row."""
        for _ in range(20):
            run_id = new_run_id()
            try:
                self.run_dir(run_id).mkdir()
                break
            except FileExistsError:  # the same second and the same 24 random bits: draw again
                continue
        else:
            raise RuntimeError("could not allocate a run id")
        folder = self.run_dir(run_id)
        write_atomic(folder / "job.json", json.dumps(job, indent=2))
        if job.get("kind") == "compress":
            write_atomic(folder / "plan.json", json.dumps(job["plan"], indent=2))
        (folder / "events.jsonl").touch()
        (folder / "log.txt").touch()
        with self.connect(immediate=True) as db:
            db.execute("INSERT INTO runs(id, kind, state, created, job) VALUES (?, ?, 'queued', ?, ?)",
                       (run_id, job["kind"], time.time(), json.dumps(job)))
        return run_id

    def row(self, run_id: str) -> dict | None:
        with self.connect() as db:
            found = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return self._as_dict(found) if found else None

    def rows(self, kind: str | None = None, states: tuple[str, ...] | None = None) -> list[dict]:
        """Rows, newest first."""
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        with self.connect() as db:
            found = db.execute(query + " ORDER BY created DESC, id DESC", args).fetchall()
        return [self._as_dict(r) for r in found]

    def count(self, state: str) -> int:
        with self.connect() as db:
            return db.execute("SELECT COUNT(*) FROM runs WHERE state = ?", (state,)).fetchone()[0]

    @staticmethod
    def _as_dict(row: sqlite3.Row) -> dict:
        out = dict(row)
        for key in ("job", "metrics", "progress"):
            out[key] = json.loads(out[key]) if out.get(key) else ({} if key == "job" else None)
        return out

    def update(self, run_id: str, only_if_state: tuple[str, ...] | None = None, **values) -> bool:
        """Set columns; with only_if_state, only when the run is in one of those states. True if changed."""
        for key in ("metrics", "progress"):
            if key in values and not isinstance(values[key], str | None):
                values[key] = json.dumps(values[key])
        sets = ", ".join(f"{key} = ?" for key in values)
        query, args = f"UPDATE runs SET {sets} WHERE id = ?", [*values.values(), run_id]
        if only_if_state:
            query += f" AND state IN ({','.join('?' * len(only_if_state))})"
            args += list(only_if_state)
        with self.connect(immediate=True) as db:
            return db.execute(query, args).rowcount > 0

    def finish(self, run_id: str, state: str, error: str | None = None, metrics: dict | None = None) -> bool:
        """Move a running run to a final state. Failed and cancelled runs keep no results (only whole files
        ever exist, but a failed run's model file would be a result nobody measured)."""
        values = {"state": state, "finished": time.time(), "error": error}
        if metrics is not None:
            values["metrics"] = summary_metrics(metrics)
        changed = self.update(run_id, only_if_state=("running",), **values)
        if changed and state != "succeeded":
            self.discard_results(run_id)
        return changed

    def discard_results(self, run_id: str) -> None:
        folder = self.run_dir(run_id)
        for path in [*(folder / name for name in RESULT_FILES), *folder.glob(".*.tmp")]:
            path.unlink(missing_ok=True)

    def claim_next(self, max_workers: int) -> str | None:
        """Atomically move the oldest queued run to running if fewer than max_workers run."""
        with self.connect(immediate=True) as db:
            running = db.execute("SELECT COUNT(*) FROM runs WHERE state = 'running'").fetchone()[0]
            if running >= max_workers:
                return None
            found = db.execute("SELECT id FROM runs WHERE state = 'queued' ORDER BY created, id LIMIT 1").fetchone()
            if found is None:
                return None
            db.execute("UPDATE runs SET state = 'running', started = ?, pid = NULL WHERE id = ?",
                       (time.time(), found["id"]))
            return found["id"]

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        with self.connect() as db:
            found = db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return found["value"] if found else default

    def set_setting(self, key: str, value: str) -> None:
        with self.connect(immediate=True) as db:
            db.execute("INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                       (key, value, value))

    def max_workers(self) -> int:
        """$COMPRESSION_LAB_WORKERS, else the stored setting, else 1."""
        value = os.environ.get("COMPRESSION_LAB_WORKERS") or self.get_setting("max_workers", "1")
        try:
            return max(1, int(value))
        except ValueError:
            return 1

    def append_event(self, run_id: str, event: dict) -> None:
        with open(self.run_dir(run_id) / "events.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")  # one write of one line: appends from one process never interleave

    def append_log(self, run_id: str, message: str) -> None:
        with open(self.run_dir(run_id) / "log.txt", "a") as f:
            f.write(message.rstrip("\n") + "\n")

    def events(self, run_id: str) -> list[dict]:
        path = self.run_dir(run_id) / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: skip it
                continue
        return out

    def log_tail(self, run_id: str, n: int = 50) -> str:
        path = self.run_dir(run_id) / "log.txt"
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 300 * n))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.replace("\r", "\n").splitlines()[-n:])
