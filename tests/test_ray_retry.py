"""A Ray run whose node dies is retried once elsewhere, each attempt's log kept apart (no cluster: a scripted task).

The dispatcher's Ray side (ray_dispatch.RayRuns / RayRun) is driven as the dispatcher drives it, against a real run
store; only the Ray calls are replaced: the task is a scripted stream of the items ray_backend.run_job sends, and
ray.nodes() says which node is dead. tests/test_ray.py kills a real node's raylet.
"""

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from complab.engine import protocol, ray_backend, ray_dispatch  # noqa: E402
from complab.engine.store import RunStore  # noqa: E402

NODE_A = {"type": "node", "node_id": "a" * 56, "ip": "10.0.0.1", "pid": 101}
NODE_B = {"type": "node", "node_id": "b" * 56, "ip": "10.0.0.2", "pid": 202}
NODE_C = {"type": "node", "node_id": "c" * 56, "ip": "10.0.0.3", "pid": 303}


def _log(line):
    return {"type": "log", "line": line}


def _result(slept):
    return {"type": "result", "metrics": {"slept": slept}, "files": {}, "cache": {}}


class Stream:
    """One task's stream: `items`, then (`hang`) nothing until ray.cancel reaches it and then `late` (what a worker
    left behind on a dead node may still send), or `error` raised, or the end."""

    def __init__(self, items, hang=False, late=(), error=None):
        self.items, self.hang, self.late, self.error = list(items), hang, list(late), error
        self.cancelled = threading.Event()

    def __iter__(self):
        yield from self.items
        if self.hang:
            self.cancelled.wait(30)
            yield from self.late
        if self.error is not None:
            raise self.error


class FakeRemote:
    """remote_task(): each .remote() call starts the next scripted stream (one per attempt)."""

    def __init__(self, streams):
        self.streams, self.started = list(streams), []

    def options(self, **_):
        return self

    def remote(self, job, run_id, shipped, options):
        stream = self.streams[len(self.started)]
        self.started.append(stream)
        return stream


@pytest.fixture
def cluster(monkeypatch):
    """The Ray calls the driver makes, scripted: {"dead": node ids ray.nodes() reports dead, "cancels": [...]}."""
    state = {"dead": set(), "cancels": []}

    def cancel(ref, force=False):
        state["cancels"].append((ref, force))
        ref.cancelled.set()

    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.setattr(ray, "cancel", cancel)
    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": n["node_id"], "Alive": n["node_id"] not in state["dead"]}
                                               for n in (NODE_A, NODE_B, NODE_C)])
    monkeypatch.setattr(ray_backend, "connect", lambda addr: None)
    monkeypatch.setattr(ray_backend, "resources", lambda: {"nodes": 3, "cpus": 3, "gpus": 0})
    return state


def _start(tmp_path, monkeypatch, streams):
    store = RunStore(tmp_path / "home")
    run_id = store.insert({"kind": "test-sleep", "seconds": 1.0})
    assert store.claim_next(1) == run_id
    remote = FakeRemote(streams)
    monkeypatch.setattr(ray_dispatch, "remote_task", lambda: remote)
    runs = ray_dispatch.RayRuns("10.0.0.1:6379")
    runs.start(store, run_id)
    return store, run_id, runs, remote


def _until(check, runs, store, timeout=15.0):
    """Run the dispatcher's supervision passes until `check()` holds."""
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        runs.nodes_checked = 0.0  # look at the nodes on every pass
        runs.supervise(store)
        time.sleep(0.05)


def _logged(store, run_id, name, text):
    path = store.run_dir(run_id) / name
    return path.is_file() and text in path.read_text()


def test_a_run_whose_node_died_is_retried_once_elsewhere_with_its_own_log(tmp_path, monkeypatch, cluster):
    first = Stream([NODE_A, _log("attempt-one line")], hang=True,
                   late=[_log("late line from the dead node"), _result(99.0)])  # a worker left behind finishing
    second = Stream([NODE_B, _log("attempt-two line"), _result(1.0)])
    store, run_id, runs, remote = _start(tmp_path, monkeypatch, [first, second])
    _until(lambda: _logged(store, run_id, "log.txt", "attempt-one line"), runs, store)
    cluster["dead"].add(NODE_A["node_id"])
    _until(lambda: store.row(run_id)["state"] != "running", runs, store)

    row = store.row(run_id)
    assert row["state"] == "succeeded" and row["metrics"] == {"slept": 1.0}, row  # the retry's, not the late one
    assert remote.started == [first, second] and (first, True) in cluster["cancels"]
    one = (store.run_dir(run_id) / "log.txt").read_text()
    two = (store.run_dir(run_id) / protocol.log_name(2)).read_text()
    assert "started on Ray node 10.0.0.1" in one and "attempt-one line" in one
    assert "died" in one and "retrying once on another node: attempt 2 logs to log.attempt2.txt" in one
    assert "attempt-two line" not in one and "late line" not in one
    assert "started on Ray node 10.0.0.2" in two and "attempt-two line" in two and "attempt 2" in two
    assert "attempt-one line" not in two and "late line" not in two
    starts = [e for e in store.events(run_id) if e["stage"] == "start" and "node" in e["values"]]
    assert [(e["values"]["node"], e["values"]["attempt"]) for e in starts] == [("10.0.0.1", 1), ("10.0.0.2", 2)]
    assert any(e["stage"] == "retry" and e["values"]["attempt"] == 2 for e in store.events(run_id))
    tail = store.log_tail(run_id, 200)  # what the Runs page shows: both attempts, in order
    assert tail.index("attempt-one line") < tail.index("--- attempt 2 (log.attempt2.txt) ---") \
        < tail.index("attempt-two line")
    _until(lambda: run_id not in runs.ids(), runs, store)  # the dispatcher lets go of it once its thread ends
    assert store.row(run_id)["state"] == "succeeded"


def test_a_second_node_death_fails_the_run_naming_both_attempts_logs(tmp_path, monkeypatch, cluster):
    first = Stream([NODE_A, _log("attempt-one line")], hang=True)
    second = Stream([NODE_B, _log("attempt-two line")], hang=True, late=[_result(99.0)])
    spare = Stream([NODE_C, _result(1.0)])  # never started: one retry only
    store, run_id, runs, remote = _start(tmp_path, monkeypatch, [first, second, spare])
    _until(lambda: _logged(store, run_id, "log.txt", "attempt-one line"), runs, store)
    cluster["dead"].add(NODE_A["node_id"])
    _until(lambda: _logged(store, run_id, "log.attempt2.txt", "attempt-two line"), runs, store)
    cluster["dead"].add(NODE_B["node_id"])
    _until(lambda: store.row(run_id)["state"] != "running", runs, store)
    time.sleep(0.3)  # the second attempt's late result arrives after the run ended: dropped

    row = store.row(run_id)
    assert row["state"] == "failed" and row["metrics"] is None, row
    assert "Ray node 10.0.0.2" in row["error"] and "died" in row["error"] and "attempt 2" in row["error"]
    assert "log.txt, log.attempt2.txt" in row["error"] and "re-run" in row["error"]
    assert remote.started == [first, second] and run_id not in runs.ids()
    assert row["error"] in (store.run_dir(run_id) / "log.attempt2.txt").read_text()
    assert not (store.run_dir(run_id) / "metrics.json").exists()


def test_a_node_death_the_stream_reports_is_retried_too(tmp_path, monkeypatch, cluster):
    first = Stream([NODE_A, _log("attempt-one line")], error=ray.exceptions.NodeDiedError("node 10.0.0.1 died"))
    second = Stream([NODE_B, _result(1.0)])
    store, run_id, runs, remote = _start(tmp_path, monkeypatch, [first, second])
    _until(lambda: store.row(run_id)["state"] != "running", runs, store)
    assert store.row(run_id)["state"] == "succeeded" and remote.started == [first, second]
    assert "node 10.0.0.1 died" in (store.run_dir(run_id) / "log.txt").read_text()
    assert "started on Ray node 10.0.0.2" in (store.run_dir(run_id) / "log.attempt2.txt").read_text()


def test_a_run_cancelled_before_its_node_died_is_not_retried(tmp_path, monkeypatch, cluster):
    first = Stream([NODE_A, _log("attempt-one line")], hang=True)
    store, run_id, runs, remote = _start(tmp_path, monkeypatch, [first, Stream([NODE_B, _result(1.0)])])
    _until(lambda: _logged(store, run_id, "log.txt", "attempt-one line"), runs, store)
    store.update(run_id, cancel=time.time())
    runs.runs[run_id].node_died()  # as the supervision pass does when it sees the node dead
    row = store.row(run_id)
    assert row["state"] == "cancelled" and row["error"] == protocol.CANCELLED
    assert remote.started == [first] and not (store.run_dir(run_id) / "log.attempt2.txt").exists()


def test_the_retry_decision_and_the_log_names():
    assert protocol.retry_after_node_death(1, cancel_asked=False)
    assert not protocol.retry_after_node_death(2, cancel_asked=False)  # once only
    assert not protocol.retry_after_node_death(1, cancel_asked=True)  # a cancel is honoured, not retried
    assert protocol.log_names() == ("log.txt", "log.attempt2.txt")
    first = protocol.node_death_reason("Ray node 10.0.0.1 (aaaa)", 1)
    assert "Ray node 10.0.0.1 (aaaa) running this run died" in first and "attempt" not in first
