"""The dispatcher's side of the Ray backend: each claimed run driven as one Ray task, recorded in the local store.

A thread per run starts the task (ray_backend.run_job), writes what it sends into the run folder as a local
worker would (recording.Progress for events and the index row, log.txt, result files written whole, then the
final state), and records which node ran it. A run whose node dies is run once more on another node, its log
in log.attempt2.txt (protocol.log_name). The row's pid is the dispatcher's own: the run lives as long as this
process drives it (dispatcher.dispatcher_alive), and Ray ends the task if this process dies. Imports ray.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import ray
import ray.exceptions

from complab.engine import ray_backend
from complab.engine.protocol import (
    CANCEL_GRACE,
    CANCELLED,
    DISK_FULL,
    ITEM_CACHED,
    ITEM_CANCELLED,
    ITEM_ERROR,
    ITEM_LOG,
    ITEM_NODE,
    ITEM_PROGRESS,
    ITEM_RESULT,
    log_name,
    node_death_reason,
    retry_after_node_death,
)
from complab.engine.recording import Progress, disk_full, end_run
from complab.engine.store import RunStore, StoreError, write_atomic
from complab.errors import CompressionLabError, first_line

# What a Ray node sends back is untrusted (DESIGN.md, "Trust"): the names of result and cache files are checked here,
# the one place the driver writes them, so a node can never write or read outside the run's folder and ROOT/cache.
_RESULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # as the node side names them: no "/", no leading "."
_CACHE_NAME = re.compile(r"sensitivity-[0-9a-f]{20}\.json")
MAX_RESULT_FILES = 64
MAX_RESULT_BYTES = 4 << 30  # all of one run's result files together


def checked_files(files, pattern: re.Pattern = _RESULT_NAME, what: str = "result") -> dict[str, bytes]:
    """{name: bytes} a node sent, with every name a plain file name of `pattern` (no path, no '..'), every value
    bytes, and bounded count and size; anything else is a CompressionLabError naming what the node sent."""
    if not isinstance(files, dict) or len(files) > MAX_RESULT_FILES:
        raise CompressionLabError(f"the Ray node sent a malformed {what} file list; the run is failed (is every node "
                                  "running this Compression Lab version?)")
    total = 0
    for name, blob in files.items():
        if not isinstance(name, str) or not pattern.fullmatch(name) or name in (".", ".."):
            raise CompressionLabError(f"the Ray node sent a {what} file named {str(name)[:60]!r}, which is not a plain "
                                      "file name; nothing was written (is every node running this version?)")
        if not isinstance(blob, bytes | bytearray):
            raise CompressionLabError(f"the Ray node sent {what} file {name} as {type(blob).__name__}, not bytes")
        total += len(blob)
    if total > MAX_RESULT_BYTES:
        raise CompressionLabError(f"the Ray node sent {total:,} bytes of {what} files, over the "
                                  f"{MAX_RESULT_BYTES:,}-byte bound; nothing was written")
    return {name: bytes(blob) for name, blob in files.items()}


# a task's worker or node went away under it (WorkerCrashedError: out of memory, a raylet killed...)
SYSTEM_ERRORS = (ray.exceptions.WorkerCrashedError, ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError,
                 ray.exceptions.RaySystemError)
NODE_VERDICT_WAIT = 30.0  # seconds to wait, after a task's system error, for the cluster to say its node died
RESOURCES_EVERY = 5.0  # seconds between looks at the cluster's size (nodes join and leave)
NODES_EVERY = 2.0  # seconds between looks for dead nodes under running runs
_remote_task = None


def remote_task():
    """run_job as a Ray remote function (made once per process; ray.remote needs ray imported)."""
    global _remote_task
    if _remote_task is None:
        _remote_task = ray.remote(num_returns="streaming", max_retries=0)(ray_backend.run_job)
    return _remote_task


class RayRun:
    """One run as a Ray task, driven by a thread per attempt. A run whose node dies runs once more on another node
    (protocol.retry_after_node_death): the retry logs to a file of its own (protocol.log_name), its "start" event
    says which attempt it is, and anything the dead attempt's task still sends is dropped. A second death fails
    the run naming both attempts' logs."""

    def __init__(self, store: RunStore, run_id: str, cpus: int, gpus: float) -> None:
        self.store, self.run_id = store, run_id
        self.cpus, self.gpus = cpus, gpus
        self.attempt = 1
        self.generator = None
        self.node: dict = {}
        self.cancel_sent: float | None = None  # when ray.cancel was sent (force=True after the grace)
        self.forced = False
        self.lost = False  # its node was declared dead and no retry is left: the run is over, whatever still comes
        self.ended = False  # the run's final state is recorded
        self.lock = threading.RLock()  # a switch to the next attempt and the run's end never cross
        self.progress = Progress(store, run_id)
        self.thread = self._thread()

    def _thread(self) -> threading.Thread:
        return threading.Thread(target=self._drive, args=(self.attempt,), name=f"ray-{self.run_id}-{self.attempt}",
                                daemon=True)

    def current(self, attempt: int) -> bool:
        """Whether `attempt` is the one that speaks for the run (not replaced by a retry, the run not over)."""
        return attempt == self.attempt and not self.lost and not self.ended

    def _log(self, line: str, attempt: int | None = None) -> None:
        self.store.append_log(self.run_id, line, self.attempt if attempt is None else attempt)

    def _where(self) -> str:
        return f"Ray node {self.node['ip']} ({self.node['node_id'][:12]})" if self.node else "a Ray node"

    def _end(self, attempt: int, state: str, error: str | None = None, metrics: dict | None = None) -> bool:
        """Record the run's end for `attempt`, unless another attempt took over meanwhile (then False)."""
        with self.lock:
            if not self.current(attempt):
                return False
            self.ended = True
            return end_run(self.store, self.run_id, self.progress, state, error, metrics)

    def _drive(self, attempt: int) -> None:
        try:
            self._run(attempt)
        except BaseException as exc:  # noqa: BLE001 - never leave the run `running`: record why it ended
            if isinstance(exc, ray.exceptions.NodeDiedError):
                self.node_died(attempt, first_line(exc, 160))
                return
            if isinstance(exc, SYSTEM_ERRORS) and self.node:
                self._await_node_verdict(attempt)  # a raylet killed: its node is declared dead within seconds
            with self.lock:
                if not self.current(attempt):
                    return  # a retry took over, or the run already ended naming its dead node
                state, reason = self._failure(exc)
                self._log(f"[engine] {reason}", attempt)
                self._end(attempt, state, reason)

    def _await_node_verdict(self, attempt: int) -> None:
        """After a system error from the task: wait (at most NODE_VERDICT_WAIT) for the cluster to say whether the
        task's node died; a dead node is handled as such (retried once), a live one leaves the error as it is."""
        node_id, deadline = self.node.get("node_id"), time.time() + NODE_VERDICT_WAIT
        while self.current(attempt) and time.time() < deadline:
            try:
                dead = any(node["NodeID"] == node_id and not node.get("Alive") for node in ray.nodes())
            except Exception:  # noqa: BLE001 - the cluster cannot be asked: the error stands
                return
            if dead:
                self.node_died(attempt)
                return
            time.sleep(1.0)

    def _failure(self, exc: BaseException) -> tuple[str, str]:
        if self.cancel_sent is not None and isinstance(exc, ray.exceptions.TaskCancelledError):
            return "cancelled", CANCELLED
        if isinstance(exc, SYSTEM_ERRORS):
            return "failed", (f"the Ray worker running this run on {self._where()} died ({first_line(exc, 160)}; "
                              "out of memory?); the log is kept; re-run it")
        if isinstance(exc, CompressionLabError):
            return "failed", str(exc)
        if disk_full(exc, self.store.run_dir(self.run_id)):
            return "failed", DISK_FULL
        return "failed", f"{type(exc).__name__}: {first_line(exc, 300)} (Ray backend; see the log)"

    def _run(self, attempt: int) -> None:
        job = self.store.row(self.run_id)["job"]
        shipped = {root: ray.put(blob) for root, blob in ray_backend.pack(job).items()}
        options = {"cpus": self.cpus, "test_jobs": os.environ.get("COMPRESSION_LAB_TEST_JOBS") == "1",
                   "ship_mb": ray_backend.ship_limit_mb()}
        if job["kind"] == "sensitivity":  # the task names the report it would make; one already here is served
            options["cache_names"] = sorted(path.name for path in (self.store.root / "cache").glob("sensitivity-*"))
        if shipped:
            self._log(f"[engine] shipping {', '.join(shipped)} with the task", attempt)
        with self.lock:
            if not self.current(attempt):
                return
            self.generator = generator = remote_task().options(
                num_cpus=self.cpus, num_gpus=self.gpus, name=f"clab-{self.run_id}").remote(job, self.run_id,
                                                                                          shipped, options)
        for ref in generator:
            item = ray.get(ref)
            with self.lock:  # an item is taken whole by the attempt that speaks for the run, or dropped
                if not self.current(attempt):
                    return
                if item.get("type") == ITEM_CANCELLED:
                    break  # the job stopped at the cancel: recorded below
                if self._take(attempt, job, item):
                    return
        with self.lock:
            if not self.current(attempt):
                return
            # the stream ended without a result: the task was cancelled (ray.cancel ends it quietly)
            if self.cancel_sent:
                self._log(f"[engine] cancelled on {self._where()}; results discarded", attempt)
                self._end(attempt, "cancelled", CANCELLED)
            else:
                reason = f"the Ray task on {self._where()} ended without a result; re-run it"
                self._log(f"[engine] {reason}", attempt)
                self._end(attempt, "failed", reason)

    def _take(self, attempt: int, job: dict, item: dict) -> bool:
        """Handle one item the task sent (protocol: ITEM_*); True once the run has ended (or the stream is over)."""
        kind = item.get("type")
        if kind == ITEM_NODE:  # the first item of an attempt (never held back): which node runs it
            self.node = item
            again = f", attempt {attempt}" if attempt > 1 else ""
            self._log(f"[engine] run {self.run_id} ({job['kind']}) started on {self._where()}, pid {item['pid']}, "
                      f"{self.cpus} CPU(s), {self.gpus:g} GPU(s){again}", attempt)
            self.progress.mark("start", 0.0, {"node": item["ip"], "node_id": item["node_id"], "attempt": attempt})
        elif kind == ITEM_LOG:
            self._log(str(item["line"]), attempt)
        elif kind == ITEM_PROGRESS:
            self.progress(item["stage"], item["progress"], item.get("values"))
        elif kind == ITEM_CACHED:
            self._serve_cached(attempt, item["name"])
            return True
        elif kind == ITEM_ERROR:
            if item.get("traceback"):
                self._log(item["traceback"].rstrip(), attempt)
            reason = DISK_FULL if item.get("disk_full") else item["message"]
            self._log(f"[engine] failed on {self._where()}: {reason}", attempt)
            self._end(attempt, "failed", reason)
            return True
        elif kind == ITEM_RESULT:
            self._finish(attempt, item)
            return True
        return False

    def _finish(self, attempt: int, item: dict) -> None:
        """Result files whole into the run folder (metrics.json last), the cache files into ROOT/cache, then the row."""
        with self.lock:
            if not self.current(attempt):
                return
            folder = self.store.run_dir(self.run_id)
            try:
                files = checked_files(item.get("files"))
                cache = checked_files(item.get("cache", {}), _CACHE_NAME, "cache")
            except CompressionLabError as exc:
                self._log(f"[engine] {exc}", attempt)
                self._end(attempt, "failed", str(exc))
                return
            metrics = item.get("metrics")
            if not isinstance(metrics, dict):
                metrics = {}
            if "metrics.json" not in files:
                files["metrics.json"] = json.dumps(metrics, indent=2).encode()
            for name, blob in sorted(files.items(), key=lambda pair: pair[0] == "metrics.json"):
                write_atomic(folder / name, blob)
            for name, blob in cache.items():
                write_atomic(self.store.root / "cache" / name, blob)
            self._log(f"[engine] ran on {self._where()}; {len(files)} result file(s) received", attempt)
            if self._end(attempt, "succeeded", metrics=metrics):
                self._log("[worker] succeeded", attempt)
            elif (row := self.store.row(self.run_id)) and row["state"] != "succeeded":
                self.store.discard_results(self.run_id)  # it ended otherwise meanwhile (its end not recorded)

    def _serve_cached(self, attempt: int, name: str) -> None:
        """The report is in the app's cache (ROOT/cache/NAME): the run's result is a copy of it, as a local worker
        serves it."""
        if not isinstance(name, str) or not _CACHE_NAME.fullmatch(name):
            reason = f"the Ray node named cache file {str(name)[:60]!r}, which is not a sensitivity cache name"
            self._log(f"[engine] {reason}", attempt)
            self._end(attempt, "failed", reason)
            return
        blob = (self.store.root / "cache" / name).read_bytes()
        report = json.loads(blob)
        metrics = {"base_accuracy": report["base_accuracy"], "layers": len(report["layers"]), "cached": True}
        self._log(f"served from the cache ({name})", attempt)
        self._finish(attempt, {"metrics": metrics, "files": {"sensitivity.json": blob}, "cache": {}})

    def node_died(self, attempt: int | None = None, detail: str = "the cluster stopped hearing from it") -> None:
        """The node running `attempt` (default: the current one) was declared dead. The first time, the run starts
        again as a new task (Ray places it on a live node) in a new thread; after that, or when a cancel was asked,
        the run ends now, even if a worker process left behind there still sends results (Ray 2.60 lets one run on
        after its raylet is gone)."""
        with self.lock:
            attempt = self.attempt if attempt is None else attempt
            if not self.current(attempt):
                return
            where, old = self._where(), self.generator
            row = self.store.row(self.run_id)
            cancel_asked = self.cancel_sent is not None or bool(row and row["cancel"])
            self.progress.drop()
            if retry_after_node_death(attempt, cancel_asked):
                self.attempt = attempt + 1
                self.node, self.generator, self.cancel_sent, self.forced = {}, None, None, False
                self._log(f"[engine] the {where} running this run died ({detail}) during attempt {attempt}; "
                          f"retrying once on another node: attempt {self.attempt} logs to "
                          f"{log_name(self.attempt)}", attempt)
                self._log(f"[engine] attempt {self.attempt} of run {self.run_id}: the {where} running attempt "
                          f"{attempt} died ({detail}); its log is {log_name(attempt)}", self.attempt)
                self.progress.mark("retry", 0.0, {"attempt": self.attempt, "dead_node": where})
                thread = self._thread()
                thread.start()  # started before it is the run's thread: supervise never sees a thread not yet alive
                self.thread = thread
            else:
                self.lost = True
                state, reason = ("cancelled", CANCELLED) if cancel_asked else \
                    ("failed", node_death_reason(where, attempt, detail))
                if self.store.finish(self.run_id, state, reason):
                    self._log(f"[engine] {reason}", attempt)
        if old is not None:
            try:
                ray.cancel(old, force=True)
            except Exception:  # noqa: BLE001 - best effort: the node is gone
                pass

    def enforce_cancel(self) -> None:
        """Called by the dispatcher loop: a cancel flag on the row reaches the task; forced after the grace."""
        row = self.store.row(self.run_id)
        if not row or not row["cancel"] or self.generator is None:
            return
        if self.cancel_sent is None:
            self.cancel_sent = time.time()
            ray.cancel(self.generator)  # KeyboardInterrupt in the task: its job stops at its next check
        elif not self.forced and time.time() - self.cancel_sent > CANCEL_GRACE:
            self.forced = True
            ray.cancel(self.generator, force=True)  # kills the Ray worker process


class RayRuns:
    """The dispatcher's Ray backend (same interface as dispatcher.LocalWorkers)."""

    def __init__(self, addr: str) -> None:
        self.address = addr
        self.runs: dict[str, RayRun] = {}
        self.error: str | None = None
        self.seen = {"time": 0.0, "capacity": 1, "gpus": 0.0}
        self.nodes_checked = 0.0
        try:
            ray_backend.connect(addr)
        except CompressionLabError as exc:
            self.error = str(exc)
            print(f"[dispatcher] {exc}", flush=True)
        else:
            print(f"[dispatcher] Ray cluster at {addr}: {ray_backend.resources()}", flush=True)

    def ids(self) -> set[str]:
        return set(self.runs)

    def capacity(self, store: RunStore) -> int:
        """$COMPRESSION_LAB_WORKERS, else as many runs as the cluster's CPUs (and GPUs) hold at once."""
        chosen = store.max_workers() if os.environ.get("COMPRESSION_LAB_WORKERS") else None
        if self.error is not None:
            return chosen or 1  # each queued run is claimed and failed with the reason, not left waiting forever
        if time.time() - self.seen["time"] > RESOURCES_EVERY:  # also learns whether tasks ask for a GPU
            found = ray_backend.resources()
            gpus = ray_backend.task_gpus(found["gpus"])
            capacity = int(found["cpus"] // ray_backend.task_cpus())
            if gpus:
                capacity = min(capacity, int(found["gpus"] // gpus))
            self.seen = {"time": time.time(), "capacity": max(1, capacity), "gpus": gpus}
        return chosen or self.seen["capacity"]

    def start(self, store: RunStore, run_id: str) -> None:
        store.update(run_id, only_if_state=("running",), pid=os.getpid())
        if self.error is not None:
            if store.finish(run_id, "failed", self.error):
                store.append_log(run_id, f"[engine] {self.error}")
            return
        run = RayRun(store, run_id, ray_backend.task_cpus(), self.seen["gpus"])
        self.runs[run_id] = run
        run.thread.start()

    def _dead_nodes(self) -> set[str]:
        if not self.runs or time.time() - self.nodes_checked < NODES_EVERY:
            return set()
        self.nodes_checked = time.time()
        return {node["NodeID"] for node in ray.nodes() if not node.get("Alive")}

    def supervise(self, store: RunStore) -> None:
        dead = self._dead_nodes()
        for run_id, run in list(self.runs.items()):
            if run.node.get("node_id") in dead and not run.lost:
                run.node_died()
            if run.lost:
                del self.runs[run_id]  # its thread may wait on the task for long: it only drops what comes
                continue
            if run.thread.is_alive():
                try:
                    run.enforce_cancel()
                except (StoreError, ray.exceptions.RayError) as exc:
                    print(f"[dispatcher] cancelling {run_id}: {exc}", flush=True)
                continue
            with run.lock:  # a retry that is replacing the thread finishes doing so first
                if run.thread.is_alive():
                    continue
                row = store.row(run_id)
                if row and row["state"] == "running":  # the thread could not record the end: say so
                    reason = f"the Ray backend lost track of this run on {run._where()}; re-run it"
                    if store.finish(run_id, "failed", reason):
                        store.append_log(run_id, f"[engine] {reason}")
            del self.runs[run_id]
