"""engine.submit_or_reuse: one job asked for twice runs once (the lesson page's steps); failures run afresh."""

import pytest
from complab import engine

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def test_jobs(monkeypatch):
    """The engine's test-only job kinds (the dispatcher and workers inherit the environment)."""
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")


@pytest.mark.slow  # 12 s: three engine runs; test_reuse_keys keeps what a key covers
def test_an_active_or_finished_run_is_reused_and_a_failed_one_is_not(tmp_path, test_jobs):
    job = {"kind": "test-sleep", "seconds": 1.0}
    first, reused = engine.submit_or_reuse(job, root=tmp_path)
    assert not reused
    again, reused = engine.submit_or_reuse(job, root=tmp_path)  # still queued or running: the same run
    assert (again, reused) == (first, True)
    assert engine.wait(first, 60, root=tmp_path)["state"] == "succeeded"
    assert engine.submit_or_reuse(job, root=tmp_path) == (first, True)  # finished: found by its content key
    other, reused = engine.submit_or_reuse({"kind": "test-sleep", "seconds": 0.5}, root=tmp_path)
    assert other != first and not reused  # another job is another run
    crash = {"kind": "test-crash"}
    failed, _ = engine.submit_or_reuse(crash, root=tmp_path)
    assert engine.wait(failed, 60, root=tmp_path)["state"] == "failed"
    retry, reused = engine.submit_or_reuse(crash, root=tmp_path)
    assert retry != failed and not reused
    engine.wait(retry, 60, root=tmp_path)
    assert len(engine.list_runs(root=tmp_path)) == 4
