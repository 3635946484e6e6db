"""The run store: an SQLite index plus one folder per run, shared safely by the app, CLI, dispatcher and workers.

    ROOT/index.sqlite              runs(id, kind, state, created, started, finished, pid, error, cancel,
                                   job, metrics, progress) and settings(key, value); WAL mode, every
                                   write one short transaction
    ROOT/runs/<id>/job.json        the whole job (compress runs also get plan.json)
    ROOT/runs/<id>/state.json      the row's state, times, pid, error and cancel, rewritten with every change
    ROOT/runs/<id>/events.jsonl    append-only progress events (time, stage, progress, values)
    ROOT/runs/<id>/log.txt         the worker's output and log messages (log.attempt2.txt: a Ray run's retry after its
                                   node died, protocol.log_name)
    ROOT/runs/<id>/metrics.json, model.clab, sensitivity.json   results, written to a temporary name
                                   and renamed into place before the row says succeeded
    ROOT/.index.lock               held (fcntl) while a process checks, moves aside or rebuilds the index
    ROOT/.submit.lock              held (fcntl) while a submission looks for a run with its content key, then queues
    ROOT/.space-reserve            1 MiB, deleted when the disk fills so the index can still record why runs failed
    ROOT/index.sqlite.corrupt-*    a corrupt index, moved aside (never deleted) before the folders rebuild it

The run folders are the truth; the index is a fast view of them. A folder the index does not know (a lost,
emptied or corrupt index) is added back from its files, a corrupt index is moved aside (kept, never
deleted) and rebuilt, and a read-only data folder is listed from the index and the folders without writing.
A full disk, a read-only folder or a locked index raise StoreError with a message naming the fix.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from complab import runfolder
from complab.engine.protocol import (
    EXIT_DISK_FULL,  # noqa: F401 - protocol's, still importable from here
    FINAL_STATES,
    GONE,
    RAY_ENV,
    RAY_LOCAL,
    RAY_SETTING,
    RECOVERED,
    STATES,
    log_name,
    log_names,
)
from complab.errors import CompressionLabError
from complab.paths import check_home, home, replace_atomically

RESULT_FILES = ("model.clab", "metrics.json", "sensitivity.json")
RECORDED = ("state", "created", "started", "finished", "pid", "error", "cancel")  # the columns state.json keeps
BUSY_TIMEOUT = 30.0  # seconds a write waits for another process's transaction ($COMPRESSION_LAB_BUSY_TIMEOUT)
RESERVE_BYTES = 1 << 20  # ROOT/.space-reserve: freed on a full disk so the index can still record the failure
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
    started REAL, finished REAL, pid INTEGER, error TEXT, cancel REAL,
    job TEXT NOT NULL, metrics TEXT, progress TEXT
);
CREATE INDEX IF NOT EXISTS runs_state ON runs(state, created);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_CHECKED: dict[tuple, str | None] = {}  # (path, size, mtime_ns, kind) -> runfolder's verdict on that run file
DISK_FULL_MARKERS = ("No space left on device", "database or disk is full", "[Errno 28]", "Disk quota exceeded",
                     "disk full")
# SQLite's primary result codes (https://sqlite.org/rescode.html)
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


class StoreError(CompressionLabError):
    """The data folder cannot be used as asked: its disk is full, it is read-only, the index is locked, or it
    cannot be read. `reason` is one of full, readonly, locked, io."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def busy_timeout() -> float:
    try:
        return float(os.environ.get("COMPRESSION_LAB_BUSY_TIMEOUT") or BUSY_TIMEOUT)
    except ValueError:
        return BUSY_TIMEOUT


def default_root() -> Path:
    """$COMPRESSION_LAB_HOME, else the per-user data folder (complab.paths.home)."""
    return home()


def new_run_id() -> str:
    """Sortable by time to the second (ties are ordered by the `created` column), e.g. 20261123-081502-ab12cd."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, data: str | bytes) -> None:
    """A run file written whole (complab.paths.replace_atomically); OSErrors reach problem() as they are."""
    replace_atomically(path, data)


def summary_metrics(metrics: dict | None) -> dict | None:
    """What the index keeps for fast listing: everything but the per-layer rows (those stay in metrics.json)."""
    if metrics is None:
        return None
    return {key: value for key, value in metrics.items() if key != "layers"}


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def problem(exc: BaseException) -> str | None:
    """What an exception says about the disk: full, readonly, locked, corrupt, io, or None (not a store problem)."""
    for item in _chain(exc):
        if isinstance(item, StoreError):
            return item.reason
        if isinstance(item, sqlite3.Error):
            code = (getattr(item, "sqlite_errorcode", None) or 0) & 0xFF
            text = str(item).lower()
            if code == _FULL or "disk is full" in text:
                return "full"
            if code == _READONLY or "readonly" in text:
                return "readonly"
            if code in (_BUSY, _LOCKED) or "locked" in text:
                return "locked"
            if code in (_CORRUPT, _NOTADB) or "not a database" in text or "malformed" in text:
                return "corrupt"
            return "io"
        if isinstance(item, OSError):
            if item.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                return "full"
            if item.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                return "readonly"
            if item.errno is not None:
                return "io"
        if any(marker in str(item) for marker in DISK_FULL_MARKERS[:4]):
            return "full"
    return None


def low_space(path: Path, margin: int = 4 * RESERVE_BYTES) -> bool:
    """True when the disk holding `path` has less than `margin` bytes free (how a full disk looks from outside)."""
    try:
        usage = shutil.disk_usage(path)
        return 0 < usage.total and usage.free < margin  # a kernel file system (/proc) has no size: not full
    except OSError:
        return False


class RunStore:
    """Thin, process-safe access to the index and the run folders."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = check_home(root if root else default_root())  # expanded; not /proc, /sys, /dev
        self.runs_dir = self.root / "runs"
        self.index = self.root / "index.sqlite"
        self.read_only = False
        try:
            if self.root.exists() and not self.root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(self.root))
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            (self.root / "cache").mkdir(exist_ok=True)
        except OSError as exc:
            if isinstance(exc, NotADirectoryError | FileExistsError):
                raise StoreError(f"the data folder {self.root} is not a folder: point --home / $COMPRESSION_LAB_HOME "
                                 "at a folder (it is created if missing)", "io") from exc
            if problem(exc) != "readonly":
                raise self.error(exc) from exc
            self.read_only = True
        if not self.read_only and not os.access(self.root, os.W_OK):
            self.read_only = True
        if not self.read_only:
            try:
                with self._index_lock():
                    self._open_index()
            except (OSError, StoreError) as exc:
                reason = problem(exc)
                if reason == "readonly":
                    self.read_only = True
                elif reason not in ("full", "locked") and not (reason == "io" and low_space(self.root)):
                    raise exc if isinstance(exc, StoreError) else self.error(exc) from exc
                # a full disk or a held check: the index is used as it is; reads work, writes say what is wrong
            self._keep_reserve()

    # --- errors ----------------------------------------------------------------------------------------------

    def error(self, exc: BaseException | str) -> StoreError:
        """A StoreError for `exc` (or a reason), its message naming the problem and the fix."""
        reason = exc if isinstance(exc, str) else (problem(exc) or "io")
        if reason == "io" and low_space(self.root):
            reason = "full"  # SQLite reports a shared-memory page it could not allocate as a disk I/O error
        where = "point --home / $COMPRESSION_LAB_HOME at another folder"
        if reason == "full":
            return StoreError(f"disk full: no space left on the disk holding the data folder {self.root}; free some "
                              f"space there (or {where}) and try again", "full")
        if reason == "readonly":
            return StoreError(f"the data folder {self.root} is read-only: runs can be listed but not submitted, "
                              f"cancelled or re-run; make it writable (or {where})", "readonly")
        if reason == "locked":
            return StoreError(f"the run index {self.index} is locked by another process (waited "
                              f"{busy_timeout():.0f} s): close whatever holds it open (an sqlite3 shell, a backup "
                              "tool) and try again", "locked")
        first_line = "" if isinstance(exc, str) else (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        detail = f" ({first_line})" if first_line else ""
        return StoreError(f"the data folder {self.root} could not be read or written{detail}: check the disk "
                          f"(or {where})", "io")

    # --- the index file ---------------------------------------------------------------------------------------

    def _flock(self, handle) -> None:
        """An exclusive fcntl lock on the open file, waiting at most the busy timeout, then StoreError."""
        deadline = time.time() + busy_timeout()
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.time() > deadline:
                    raise self.error("locked") from None
                time.sleep(0.02)

    @contextmanager
    def _index_lock(self):
        """ROOT/.index.lock (fcntl): one process at a time checks, moves aside and rebuilds the index. Waits at
        most the busy timeout (a stopped process holding it must not hang every listing): then StoreError."""
        with open(self.root / ".index.lock", "a+") as handle:
            self._flock(handle)
            yield

    @contextmanager
    def submit_lock(self):
        """ROOT/.submit.lock (fcntl), held while a submission looks for a run with its content key and, finding
        none, queues its own: two identical submissions at once become one run (sweeps.submit_or_reuse). Waits at
        most the busy timeout, then StoreError. A data folder where the lock cannot be made (read-only, full) is
        not locked: the submission itself then says what is wrong."""
        try:
            handle = open(self.root / ".submit.lock", "a+")  # noqa: SIM115 - closed below, after the body
        except OSError:
            handle = None
        if handle is None:
            yield
            return
        with handle:
            self._flock(handle)
            yield

    def _connect(self) -> sqlite3.Connection:
        if self.index.exists() and not self.index.is_file():
            # a directory (or a device) where the index should be: handled as a corrupt index
            raise sqlite3.DatabaseError(f"file is not a database: {self.index} is not a regular file")
        db = sqlite3.connect(self.index, timeout=busy_timeout(), isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout() * 1000)}")
        return db

    def _healthy(self) -> bool:
        """Open the index (creating it when missing) and check it; False when it is corrupt or not a file."""
        try:
            db = self._connect()
        except sqlite3.Error as exc:
            if problem(exc) == "corrupt":
                return False
            raise
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per database file
            if db.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                return False
            if db.execute("SELECT COUNT(*) FROM sqlite_master WHERE name IN ('runs', 'settings')").fetchone()[0] < 2:
                db.executescript(SCHEMA)  # a new (or emptied) file: DDL takes the write lock
            return True
        except sqlite3.Error as exc:
            if problem(exc) == "corrupt":
                return False
            raise
        finally:
            db.close()

    def _open_index(self) -> None:
        """Check the index, moving a corrupt one aside and starting a new one (the folders refill it)."""
        try:
            if self._healthy():
                return
            self._move_aside()
            if not self._healthy():
                raise self.error("io")
        except sqlite3.Error as exc:
            raise self.error(exc) from exc

    def _move_aside(self) -> Path:
        """Rename the index (and its -wal/-shm files) to index.sqlite.corrupt-TIME: kept for the user, never deleted."""
        aside = self.root / f"index.sqlite.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        os.replace(self.index, aside)
        for suffix in ("-wal", "-shm"):
            extra = Path(f"{self.index}{suffix}")
            if extra.exists():
                os.replace(extra, Path(f"{aside}{suffix}"))
        return aside

    def _recover(self) -> None:
        """A corrupt index found mid-operation: move it aside under the lock unless another process already did."""
        try:
            with self._index_lock():
                self._open_index()
        except OSError as exc:
            raise self.error(exc) from exc

    def _keep_reserve(self) -> None:
        """Keep ROOT/.space-reserve (1 MiB) while the disk has room, so a full disk can be recorded as such."""
        path = self.root / ".space-reserve"
        if path.exists() or low_space(self.root, 16 * RESERVE_BYTES):
            return
        try:
            write_atomic(path, bytes(RESERVE_BYTES))
        except OSError:
            pass

    def _release_reserve(self) -> bool:
        try:
            (self.root / ".space-reserve").unlink()
            return True
        except OSError:
            return False

    # --- transactions -------------------------------------------------------------------------------------------

    def _transaction(self, body: Callable[[sqlite3.Connection], object], write: bool = False):
        """body(db) in one short transaction (`write` takes the write lock at once). A corrupt index is moved aside
        and rebuilt, a full disk gets the space reserve back (once each); anything else raises StoreError."""
        if write and self.read_only:
            raise self.error("readonly")
        retried: set[str] = set()
        while True:
            try:
                db = self._connect()
                try:
                    db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    out = body(db)
                    db.execute("COMMIT")
                    return out
                except BaseException:
                    if db.in_transaction:
                        try:
                            db.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise
                finally:
                    db.close()
            except sqlite3.Error as exc:
                reason = problem(exc)
                if reason == "corrupt" and "corrupt" not in retried:
                    retried.add("corrupt")
                    self._recover()
                    self._import_folders()
                    continue
                if (reason == "full" or (reason == "io" and low_space(self.root))) and "full" not in retried:
                    retried.add("full")
                    if self._release_reserve():
                        continue
                raise self.error(exc) from exc

    def _read_only_rows(self) -> list[dict]:
        """The index's rows without writing anything (not even a lock or a -shm file), or [] if it cannot be read."""
        path = quote(str(self.index.resolve()))
        for params in ("mode=ro", "immutable=1"):
            try:
                db = sqlite3.connect(f"file:{path}?{params}", uri=True, timeout=busy_timeout())
                db.row_factory = sqlite3.Row
                try:
                    return [self._as_dict(r) for r in db.execute("SELECT * FROM runs").fetchall()]
                finally:
                    db.close()
            except sqlite3.Error:
                continue
        return []

    # --- run folders: the truth --------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def folder_ids(self) -> set[str]:
        try:
            return {entry.name for entry in os.scandir(self.runs_dir)
                    if entry.is_dir() and not entry.name.startswith(".")}
        except OSError:
            return set()

    def _write_record(self, run_id: str, record: dict) -> None:
        """ROOT/runs/<id>/state.json, best effort: the index has it too, and a full disk must not stop a run ending."""
        try:
            write_atomic(self.run_dir(run_id) / "state.json", json.dumps({k: record.get(k) for k in RECORDED}))
        except OSError:
            pass

    def folder_row(self, run_id: str) -> dict | None:
        """A row rebuilt from the run folder's files (None for a folder still being created by `insert`)."""
        folder = self.run_dir(run_id)
        try:
            age = time.time() - folder.stat().st_mtime
        except OSError:
            return None
        raw_job, damaged = runfolder.read_json(folder / "job.json")
        job = None
        if damaged is None:
            job, damaged = runfolder.check_job(raw_job)  # never with `trust`: it is never read from a file
        record, _ = runfolder.load(folder / "state.json")
        record = record or {}
        if record.get("state") in (None, "queued") and age < 2 * busy_timeout() + 10:
            # a submit may still be adding its row, or about to remove the folder because it could not (a locked
            # index): importing it now could leave a row whose folder is gone. Its row appears, or it goes, by then.
            return None
        kind = raw_job.get("kind") if isinstance(raw_job, dict) and raw_job.get("kind") in runfolder.JOB_KINDS \
            else None
        job = job or ({"kind": kind} if kind else {})
        events = self.events(run_id)
        metrics, metrics_damaged = (runfolder.load(folder / "metrics.json", kind=kind)
                                    if (folder / "metrics.json").is_file() else (None, None))
        has_results = (isinstance(metrics, dict) or metrics_damaged is not None) \
            and any((folder / name).is_file() for name in ("model.clab", "sensitivity.json"))
        state, error = record.get("state"), record.get("error")
        if state not in STATES:
            started = events or (folder / "log.txt").is_file() and (folder / "log.txt").stat().st_size > 0
            state, error = (("succeeded", None) if has_results else ("failed", RECOVERED) if started
                            else ("queued", None))
        if state == "succeeded" and not has_results:
            state, error = "failed", "the run's result files are missing from its folder; re-run it"
        if damaged is not None and damaged.endswith(": missing"):
            state, error = "failed", "the run folder has no readable job.json (interrupted while it was created)"
        elif damaged is not None:  # shown as damaged, never run: its job cannot be read as the engine wrote it
            state, error = ("failed" if state in ("queued", "running") else state), str(damaged)
        elif state == "succeeded" and metrics_damaged is not None:
            error = str(metrics_damaged)
        created = record.get("created")
        if not isinstance(created, int | float):
            try:
                created = time.mktime(time.strptime(run_id[:15], "%Y%m%d-%H%M%S"))
            except ValueError:
                created = folder.stat().st_mtime
        row = {"id": run_id, "kind": job.get("kind") or "unknown", "state": state, "created": created,
               "started": record.get("started"), "finished": record.get("finished"), "pid": record.get("pid"),
               "error": error, "cancel": record.get("cancel"), "job": job,
               "metrics": summary_metrics(metrics) if state == "succeeded" else None,
               "progress": events[-1] if events else None}
        if state in FINAL_STATES and not row["finished"]:
            row["finished"] = max(created, folder.stat().st_mtime)
        return row

    def _import_folders(self, only: set[str] | None = None) -> None:
        """Add to the index every run folder it does not list (never hide a run)."""
        if self.read_only:
            return
        if only is None:
            self._remove_stale_staging()
        on_disk = self.folder_ids() if only is None else only & self.folder_ids()
        if not on_disk:
            return
        known = self._transaction(lambda db: {r[0] for r in db.execute("SELECT id FROM runs")})
        rows = [row for run_id in sorted(on_disk - known) if (row := self.folder_row(run_id)) is not None]
        if not rows:
            return

        def body(db):
            for row in rows:
                db.execute("INSERT OR IGNORE INTO runs(id, kind, state, created, started, finished, pid, error, "
                           "cancel, job, metrics, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (*(row[k] for k in ("id", "kind", "state", "created", "started", "finished", "pid", "error",
                                               "cancel")),
                            json.dumps(row["job"]), json.dumps(row["metrics"]) if row["metrics"] else None,
                            json.dumps(row["progress"]) if row["progress"] else None))

        self._transaction(body, write=True)

    # --- runs ---------------------------------------------------------------------------------------------------

    def insert(self, job: dict) -> str:
        """Write the run folder whole (job.json, plan.json, empty events and log, state.json) under a hidden
        staging name, rename it into place, then add the queued row. A submit killed half-way leaves only a hidden
        .new-* folder (removed after an hour), never a half-made run; if the row cannot be written the folder is
        removed again, so a refused submit never runs later."""
        run_id, staging = self._new_staging()
        folder = self.run_dir(run_id)
        created = time.time()
        made = [staging]  # what to remove if this submit fails: only what it made
        try:
            write_atomic(staging / "job.json", json.dumps(job, indent=2))
            if job.get("kind") == "compress":
                write_atomic(staging / "plan.json", json.dumps(job["plan"], indent=2))
            (staging / "events.jsonl").touch()
            (staging / "log.txt").touch()
            write_atomic(staging / "state.json", json.dumps({"state": "queued", "created": created}))
            os.rename(staging, folder)  # whole, at once: the folder is the run
            made = [folder]
            self._transaction(lambda db: db.execute(
                "INSERT OR IGNORE INTO runs(id, kind, state, created, job) VALUES (?, ?, 'queued', ?, ?)",
                (run_id, job["kind"], created, json.dumps(job))), write=True)
        except BaseException as exc:
            for path in made:  # our own, just made: nothing of the user's is in it
                shutil.rmtree(path, ignore_errors=True)
            if isinstance(exc, OSError):
                raise self.error(exc) from exc
            raise
        return run_id

    def _new_staging(self) -> tuple[str, Path]:
        """A fresh run id and its hidden staging folder (made empty), after refusing a read-only or full store."""
        if self.read_only:
            raise self.error("readonly")
        if low_space(self.root, 2 * RESERVE_BYTES):  # a run needs room for its log and results: refuse it now
            raise self.error("full")
        try:
            for _ in range(20):
                run_id = new_run_id()
                staging = self.runs_dir / f".new-{run_id}"
                if self.run_dir(run_id).exists():
                    continue  # the same second and the same 24 random bits: draw again
                try:
                    staging.mkdir()
                    return run_id, staging
                except FileExistsError:
                    continue
            raise RuntimeError("could not allocate a run id")
        except OSError as exc:
            raise self.error(exc) from exc

    def insert_finished(self, job: dict, files: dict[str, bytes], metrics: dict, note: str) -> str:
        """Add a run that already succeeded elsewhere (the lesson's shipped results, checked by the caller): its
        folder written whole like insert's (job.json, `files` such as plan.json and model.clab, metrics.json,
        state.json "succeeded", `note` as its log), renamed into place, then its succeeded row. Never queued."""
        run_id, staging = self._new_staging()
        folder = self.run_dir(run_id)
        now = time.time()
        made = [staging]
        try:
            write_atomic(staging / "job.json", json.dumps(job, indent=2))
            for name, data in files.items():
                write_atomic(staging / name, data)
            write_atomic(staging / "metrics.json", json.dumps(metrics, indent=2))
            (staging / "events.jsonl").write_text(json.dumps({"time": now, "stage": "precomputed",
                                                              "progress": 1.0}) + "\n")
            (staging / "log.txt").write_text(note.rstrip() + "\n")
            write_atomic(staging / "state.json", json.dumps({"state": "succeeded", "created": now, "started": now,
                                                             "finished": now}))
            os.rename(staging, folder)
            made = [folder]
            self._transaction(lambda db: db.execute(
                "INSERT OR IGNORE INTO runs(id, kind, state, created, started, finished, job, metrics) "
                "VALUES (?, ?, 'succeeded', ?, ?, ?, ?, ?)",
                (run_id, job["kind"], now, now, now, json.dumps(job), json.dumps(summary_metrics(metrics)))),
                write=True)
        except BaseException as exc:
            for path in made:  # our own, just made
                shutil.rmtree(path, ignore_errors=True)
            if isinstance(exc, OSError):
                raise self.error(exc) from exc
            raise
        return run_id

    def _remove_stale_staging(self) -> None:
        """Hidden .new-* folders of submits killed half-way, more than an hour old (never a run: never listed)."""
        try:
            entries = [e for e in os.scandir(self.runs_dir) if e.name.startswith(".new-") and e.is_dir()]
        except OSError:
            return
        for entry in entries:
            try:
                if time.time() - entry.stat().st_mtime > 3600:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                continue

    def row(self, run_id: str) -> dict | None:
        if not self.read_only:
            try:
                query = "SELECT * FROM runs WHERE id = ?"
                found = self._transaction(lambda db: db.execute(query, (run_id,)).fetchone())
                if found is None and self.run_dir(run_id).is_dir():
                    self._import_folders({run_id})
                    found = self._transaction(lambda db: db.execute(query, (run_id,)).fetchone())
                return self._settle([self._as_dict(found)])[0] if found else None
            except StoreError:
                pass  # a full disk, a locked or unreadable index: read what can be read without writing
        found = next((r for r in self._unwritten_rows() if r["id"] == run_id), None)
        return self._settle([found])[0] if found else None

    def _file_problem(self, path: Path, kind: str | None = None) -> str | None:
        """runfolder's verdict on one run file (None: sound), read again only when its size or time changed."""
        try:
            info = path.stat()
        except FileNotFoundError:
            return runfolder.Damaged(f"damaged: {path.name}: missing")
        except OSError as exc:
            return runfolder.Damaged(f"damaged: {path.name}: cannot be read ({exc.strerror})")
        key = (str(path), info.st_size, info.st_mtime_ns, kind)
        if key not in _CHECKED:
            if len(_CHECKED) > 4096:
                _CHECKED.clear()
            _CHECKED[key] = runfolder.load(path, kind=kind)[1]
        return _CHECKED[key]

    def _damage(self, row: dict) -> dict:
        """Mark `row` damaged ("damaged": "damaged: <file>: <why>") when its folder's job.json, or a finished run's
        metrics.json or result file, no longer reads as the engine wrote it, or the index holds a malformed job or
        metrics; a damaged run's metrics are dropped, so nothing plots or reuses them."""
        folder = self.run_dir(row["id"])
        kind = row["kind"] if row["kind"] in runfolder.JOB_KINDS else None
        problem = self._file_problem(folder / "job.json")  # the folder's own file first: what the user can fix
        if not isinstance(row.get("job"), dict) or runfolder.check_job(row["job"])[1] is not None:
            problem = problem or (runfolder.check_job(row.get("job"))[1] if isinstance(row.get("job"), dict)
                                  else runfolder.Damaged("damaged: the index's job is not an object"))
            row["job"] = {"kind": kind} if kind else {}
        if row.get("progress") is not None and runfolder.check_event(row["progress"])[1] is not None:
            row["progress"] = None  # advisory: a malformed last event is dropped, not shown
        if row["state"] == "succeeded" and kind in ("compress", "sensitivity"):
            result = "model.clab" if kind == "compress" else "sensitivity.json"
            found = (self._file_problem(folder / "metrics.json", kind)
                     or (row.get("metrics") is not None and runfolder.check_metrics(row["metrics"], kind)[1])
                     or (None if (folder / result).is_file() else runfolder.Damaged(f"damaged: {result}: missing")))
            if found:
                problem = problem or found
                row["metrics"] = None
        if problem:
            row["damaged"] = str(problem)
            row["metrics"] = None  # nothing plots, reports or reuses a damaged run's numbers
        return row

    def _settle(self, rows: list[dict], listing: bool = False) -> list[dict]:
        """The rows as they are shown: each checked (_damage), and a row whose folder is gone shown failed with GONE
        (a running one also asked to cancel, so its worker stops). A full listing (`listing`, what `runs` and the
        Runs page show) records that mark in the index and drops a row it had already marked, so a gone run is
        shown once, then dropped; a single lookup or the dispatcher's filtered one only shows it. One folder never
        hides another: every check is per row and never raises."""
        now, out, marks, drops = time.time(), [], [], []
        for row in rows:
            if self.run_dir(row["id"]).is_dir():
                out.append(self._damage(row))
                continue
            if row.get("error") == GONE and row["state"] in FINAL_STATES:
                if listing:
                    drops.append(row["id"])
                    continue
            else:
                if listing:
                    marks.append(row["id"])
                row.update(state="failed", error=GONE, finished=row.get("finished") or now,
                           cancel=row.get("cancel") or (now if row["state"] == "running" else None))
            row["damaged"] = GONE
            out.append(row)
        if (marks or drops) and not self.read_only:
            def body(db):
                for run_id in marks:
                    db.execute("UPDATE runs SET state = 'failed', error = ?, finished = COALESCE(finished, ?), "
                               "cancel = CASE WHEN state = 'running' THEN COALESCE(cancel, ?) ELSE cancel END "
                               "WHERE id = ?", (GONE, now, now, run_id))
                for run_id in drops:
                    db.execute("DELETE FROM runs WHERE id = ? AND error = ?", (run_id, GONE))

            try:
                self._transaction(body, write=True)
            except StoreError:  # a full or locked index: shown as gone all the same, recorded by a later listing
                pass
        return out

    def _unwritten_rows(self) -> list[dict]:
        """Every run from the index (read-only) and the folders it lacks, without writing anything."""
        found = {r["id"]: r for r in self._read_only_rows()}
        for run_id in self.folder_ids() - set(found):
            if (row := self.folder_row(run_id)) is not None:
                found[run_id] = row
        return list(found.values())

    def rows(self, kind: str | None = None, states: tuple[str, ...] | None = None) -> list[dict]:
        """Rows, newest first; every run folder is listed, even one the index had lost. A read-only data folder,
        a full disk or an unreadable index are listed from what can be read, without writing."""
        if not self.read_only:
            try:
                rows = self._settle(self._indexed_rows(kind, states), listing=states is None)
                return [r for r in rows if not states or r["state"] in states]
            except StoreError:
                pass
        out = [r for r in self._settle(self._unwritten_rows())
               if (not kind or r["kind"] == kind) and (not states or r["state"] in states)]
        return sorted(out, key=lambda r: (r["created"], r["id"]), reverse=True)

    def _indexed_rows(self, kind: str | None, states: tuple[str, ...] | None) -> list[dict]:
        self._import_folders()
        query, args = "SELECT * FROM runs WHERE 1=1", []
        if kind:
            query += " AND kind = ?"
            args.append(kind)
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        found = self._transaction(lambda db: db.execute(query + " ORDER BY created DESC, id DESC", args).fetchall())
        return [self._as_dict(r) for r in found]

    def count(self, state: str) -> int:
        if self.read_only:
            return len(self.rows(states=(state,)))
        return self._transaction(lambda db: db.execute("SELECT COUNT(*) FROM runs WHERE state = ?",
                                                       (state,)).fetchone()[0])

    @staticmethod
    def _as_dict(row: sqlite3.Row) -> dict:
        out = dict(row)
        for key in ("job", "metrics", "progress"):
            try:
                out[key] = json.loads(out[key]) if out.get(key) else ({} if key == "job" else None)
            except ValueError:
                out[key] = {} if key == "job" else None
        return out

    def update(self, run_id: str, only_if_state: tuple[str, ...] | None = None, **values) -> bool:
        """Set columns; with only_if_state, only when the run is in one of those states. True if changed.
        A change of state, times, pid, error or cancel is also written to the folder's state.json."""
        for key in ("metrics", "progress"):
            if key in values and not isinstance(values[key], str | None):
                values[key] = json.dumps(values[key])
        sets = ", ".join(f"{key} = ?" for key in values)
        query, args = f"UPDATE runs SET {sets} WHERE id = ?", [*values.values(), run_id]
        if only_if_state:
            query += f" AND state IN ({','.join('?' * len(only_if_state))})"
            args += list(only_if_state)

        def body(db):
            changed = db.execute(query, args).rowcount > 0
            if changed and set(RECORDED) & set(values):  # written under the write lock: records never go back in time
                record = db.execute(f"SELECT {', '.join(RECORDED)} FROM runs WHERE id = ?", (run_id,)).fetchone()
                self._write_record(run_id, dict(record))
            return changed

        return self._transaction(body, write=True)

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

    def cancel_queued(self, run_ids: list[str], error: str = "cancelled before it started") -> list[str]:
        """Cancel every run of `run_ids` that is still queued, in one transaction, so the dispatcher cannot
        start one of them between two cancels. Returns the ids it cancelled."""
        def body(db):
            now, done = time.time(), []
            for run_id in run_ids:
                if db.execute("UPDATE runs SET state = 'cancelled', finished = ?, error = ? WHERE id = ? AND "
                              "state = 'queued'", (now, error, run_id)).rowcount:
                    record = db.execute(f"SELECT {', '.join(RECORDED)} FROM runs WHERE id = ?", (run_id,)).fetchone()
                    self._write_record(run_id, dict(record))
                    done.append(run_id)
            return done

        return self._transaction(body, write=True) if run_ids else []

    def discard_results(self, run_id: str) -> None:
        folder = self.run_dir(run_id)
        for path in [*(folder / name for name in RESULT_FILES), *folder.glob(".*.tmp")]:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass

    def recorded_state(self, run_id: str) -> dict:
        """The folder's state.json ({} when missing or unreadable)."""
        record, _ = runfolder.load(self.run_dir(run_id) / "state.json")
        return {key: value for key, value in record.items() if value is not None} if record else {}

    def refresh_records(self, rows: list[dict], within: float = 3600.0) -> None:
        """Rewrite the state.json of runs that ended in the last `within` seconds when it lags behind the index
        (its write failed on a full disk): once space returns, the folder tells the truth again."""
        if self.read_only:
            return
        recent = time.time() - within
        for row in rows:
            if row["state"] in FINAL_STATES and (row.get("finished") or 0) > recent \
                    and self.recorded_state(row["id"]).get("state") != row["state"]:
                self._write_record(row["id"], row)

    def claim_next(self, max_workers: int) -> str | None:
        """Atomically move the oldest queued run to running if fewer than max_workers run."""
        def body(db):
            running = db.execute("SELECT COUNT(*) FROM runs WHERE state = 'running'").fetchone()[0]
            if running >= max_workers:
                return None
            found = db.execute("SELECT id FROM runs WHERE state = 'queued' ORDER BY created, id LIMIT 1").fetchone()
            if found is None:
                return None
            db.execute("UPDATE runs SET state = 'running', started = ?, pid = NULL WHERE id = ?",
                       (time.time(), found["id"]))
            record = db.execute(f"SELECT {', '.join(RECORDED)} FROM runs WHERE id = ?", (found["id"],)).fetchone()
            self._write_record(found["id"], dict(record))
            return found["id"]

        return self._transaction(body, write=True)

    def get_setting(self, key: str, default: str | None = None) -> str | None:
        if self.read_only:
            return default
        found = self._transaction(lambda db: db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone())
        return found["value"] if found else default

    def set_setting(self, key: str, value: str) -> None:
        self._transaction(lambda db: db.execute(
            "INSERT INTO settings(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
            (key, value, value)), write=True)

    def max_workers(self) -> int:
        """$COMPRESSION_LAB_WORKERS, else the stored setting, else 1."""
        value = os.environ.get("COMPRESSION_LAB_WORKERS") or self.get_setting("max_workers", "1")
        try:
            return max(1, int(value))
        except ValueError:
            return 1

    def ray_address(self, strict: bool = False) -> str | None:
        """The Ray address runs go to: $COMPRESSION_LAB_RAY, else the stored setting; None for the local workers.
        An index that cannot be read counts as local, or (`strict`, the dispatcher's) raises its StoreError."""
        value = os.environ.get(RAY_ENV)
        if value is None:
            try:
                value = self.get_setting(RAY_SETTING)
            except CompressionLabError:
                if strict:
                    raise
                value = None
        value = (value or "").strip()
        return None if value.lower() in RAY_LOCAL else value

    def append_event(self, run_id: str, event: dict) -> None:
        with open(self.run_dir(run_id) / "events.jsonl", "a") as f:
            f.write(json.dumps(event) + "\n")  # one write of one line: appends from one process never interleave

    def append_log(self, run_id: str, message: str, attempt: int = 1) -> None:
        """Best effort: a full or read-only disk loses the line, never the state change it reports. `attempt`: the
        log of that attempt of the run (protocol.log_name: a Ray run retried after its node died)."""
        try:
            with open(self.run_dir(run_id) / log_name(attempt), "a") as f:
                f.write(message.rstrip("\n") + "\n")
        except OSError:
            pass

    def events(self, run_id: str) -> list[dict]:
        """The run's progress events, checked (runfolder.read_events: its tail; a cut, malformed or wrong line is
        skipped)."""
        return runfolder.read_events(self.run_dir(run_id) / "events.jsonl")

    def _file_tail(self, path: Path, n: int) -> list[str] | None:
        try:
            with runfolder.open_regular(path) as f:  # never a pipe (it would block) or a link out of the folder
                f.seek(0, os.SEEK_END)
                start = max(0, f.tell() - 300 * n)
                f.seek(start)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        lines = text.replace("\r", "\n").splitlines()
        if start and len(lines) > 1:  # the read began inside a line: show whole lines only
            lines = lines[1:]
        return lines[-n:]

    def log_tail(self, run_id: str, n: int = 50) -> str:
        """The last `n` lines of the run's log; a run retried after its Ray node died shows its attempts' logs in
        order, each retry's under a line naming its attempt and file (each attempt's log stays in its own file)."""
        lines: list[str] = []
        for attempt, name in enumerate(log_names(), start=1):
            tail = self._file_tail(self.run_dir(run_id) / name, n)
            if tail is None:
                continue
            if attempt > 1:
                tail = [f"--- attempt {attempt} ({name}) ---", *tail]
            lines += tail
        return "\n".join(lines[-n:])

    def says_disk_full(self, run_id: str) -> bool:
        """True when the run's log shows a full disk (ENOSPC, SQLite's 'database or disk is full')."""
        tail = self.log_tail(run_id, 80)
        return any(marker in tail for marker in DISK_FULL_MARKERS)
