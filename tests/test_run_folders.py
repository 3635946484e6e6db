"""Received run folders are untrusted (issue 24, items 2, 3, 9, 13 and the metrics.json part of 14).

Each reproduction is rebuilt: a folder holding a real model.clab and metrics.json next to a pickled original.pt
whose __reduce__ runs a shell command and a job.json naming it with "trust": true; a metrics.json carrying markup;
a wrong type in metrics.json or job.json; a folder deleted under a run. Marker files show that nothing ran.
"""

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import pytest
from complab import runfolder
from complab.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
MARKUP = "</script><script>alert(1)</script>"
RECEIVED_ID = "20260101-000000-abcdef"


def quick_plan() -> dict:
    plan = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    for step in plan["steps"]:
        step["finetune_epochs"] = 0
    return plan


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A data folder with one finished LeNet-5 compression run: (home, run id)."""
    from complab import engine

    home = tmp_path_factory.mktemp("runfolders-home")
    run_id = engine.submit({"kind": "compress", **DIGITS, "plan": quick_plan(), "latency": False}, root=home)
    row = engine.wait(run_id, 300, root=home)
    assert row["state"] == "succeeded", row.get("error")
    return home, run_id


class Payload:
    """Unpickling this runs `command` (what a malicious original.pt does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def armed_folder(source: Path, folder: Path, marker: Path, task: str = "detect") -> Path:
    """A copy of a finished run folder (real model.clab and metrics.json) with a pickled original.pt that touches
    `marker` when loaded and a job.json naming it, relative to the folder, with "trust": true."""
    shutil.copytree(source, folder)
    (folder / "original.pt").write_bytes(pickle.dumps(Payload(f"touch {marker}")))
    pickle.loads((folder / "original.pt").read_bytes())  # the trap is armed: loading it runs the command
    assert marker.exists()
    marker.unlink()
    job = json.loads((folder / "job.json").read_text())
    job.update(model="detector:original.pt", data="shapes", trust=True)
    (folder / "job.json").write_text(json.dumps(job))
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics.update(task=task, score_name="mAP50" if task == "detect" else "top-1")
    if task == "detect":  # what a detector's metrics hold besides (Ultralytics' validator)
        for side in ("before", "after"):
            metrics[side].update(map50=metrics[side]["accuracy"], map50_95=metrics[side]["accuracy"] / 2)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


# --- items 2 and 3: a received folder's pickle never runs --------------------------------------------------------


def test_report_of_a_received_folder_never_loads_its_original(finished, tmp_path, monkeypatch, capsys):
    home, run_id = finished
    marker = tmp_path / "executed"
    folder = armed_folder(home / "runs" / run_id, tmp_path / "mailed", marker)
    monkeypatch.chdir(folder)  # the relative detector:original.pt resolves inside the folder, as mailed
    out = tmp_path / "report.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0, capsys.readouterr().err
    assert not marker.exists()
    text = out.read_text()
    assert "id='no-detections'" in text and "never loads a model named by the run folder" in text
    # by id too, once the folder is placed under the runs home (job.json's trust flag is never read)
    shutil.copytree(folder, home / "runs" / RECEIVED_ID)
    try:
        assert main(["report", RECEIVED_ID, "--home", str(home), "--out", str(out), "--force"]) == 0
        assert not marker.exists()
        assert "trust" not in runfolder.read_run_folder(home / "runs" / RECEIVED_ID)["job"]
    finally:
        shutil.rmtree(home / "runs" / RECEIVED_ID)


def test_compare_page_over_a_received_folder_runs_nothing(finished, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    home, run_id = finished
    marker = tmp_path / "executed"
    folder = armed_folder(home / "runs" / run_id, home / "runs" / RECEIVED_ID, marker, task="classify")
    try:
        monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
        monkeypatch.chdir(folder)
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        at.run()
        at.switch_page("pages/compare.py").run()
        assert not at.exception, [e.value for e in at.exception]
        at.selectbox(key="compare_run").select(RECEIVED_ID).run()  # opening the received run: no click needed before
        assert not at.exception, [e.value for e in at.exception]
        assert RECEIVED_ID in at.dataframe[0].value["run"].tolist()
        assert not marker.exists()
        # fronts, the map, both waterfalls, the histogram: from the file alone (the behaviour section's charts too,
        # when an earlier test's report left this file's diff against the original in the cache)
        assert len([c for c in at.get("plotly_chart") if not c.key.startswith("behaviour_")]) == 8
        # the report download builds without loading anything either
        report = next(b for b in at.get("download_button") if b.proto.label.startswith("Download report"))
        assert report is not None and not marker.exists()
    finally:
        shutil.rmtree(home / "runs" / RECEIVED_ID, ignore_errors=True)


def test_compare_report_loaders_headless_never_load_the_original(finished, tmp_path):
    """What the Compare page's download calls (load_report_runs + report_html), without Streamlit."""
    from complab.ui.report import load_report_runs, report_html

    home, run_id = finished
    marker = tmp_path / "executed"
    folder = armed_folder(home / "runs" / run_id, tmp_path / "received", marker)
    runs, left_out = load_report_runs([(folder, None), (home / "runs" / run_id, run_id)])
    assert [r.id for r in runs] == ["received", run_id] and left_out == []
    assert "trust" not in runs[0].job
    text = report_html(runs)
    assert "no-detections" in text and not marker.exists()


# --- item 9: JSON and text in the report's HTML are escaped ------------------------------------------------------


def test_report_escapes_json_and_text_from_the_folder(finished, tmp_path):
    from html.parser import HTMLParser

    home, run_id = finished
    folder = tmp_path / "r<img src=x onerror=alert(2)>"
    shutil.copytree(home / "runs" / run_id, folder)
    edit_json(folder / "metrics.json", lambda m: m.update(model=MARKUP, plan_name=MARKUP, data=MARKUP + "\u2028"))
    edit_json(folder / "plan.json", lambda p: p.update(name=MARKUP))
    out = tmp_path / "report.html"
    assert main(["report", str(folder), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<script>alert(1)" not in text and "onerror=alert(2)>" not in text

    class Scripts(HTMLParser):
        def __init__(self):
            super().__init__()
            self.numbers, self._in = None, False

        def handle_starttag(self, tag, attrs):
            self._in = tag == "script" and dict(attrs).get("id") == "numbers"

        def handle_data(self, data):
            if self._in:
                self.numbers, self._in = data, False

    parser = Scripts()
    parser.feed(text)
    assert json.loads(parser.numbers)["run"] == folder.name  # escaped, and the same value once parsed


def test_json_for_html_escapes_what_closes_a_script():
    from complab.ui.report import json_for_html

    value = {"a": MARKUP + "&\u2028\u2029", "b": [1, 2.5]}
    text = json_for_html(value)
    assert not any(char in text for char in "<>&\u2028\u2029")
    assert json.loads(text) == value


# --- item 13: one damaged or deleted folder never hides another ---------------------------------------------------


def damaged_copies(home: Path, run_id: str) -> dict[str, Path]:
    source = home / "runs" / run_id
    folders = {"oops": home / "runs" / "20260101-000001-aaaaaa", "model5": home / "runs" / "20260101-000002-bbbbbb"}
    for folder in folders.values():
        shutil.copytree(source, folder)
    edit_json(folders["oops"] / "metrics.json", lambda m: m["after"].update(accuracy="oops"))
    edit_json(folders["model5"] / "job.json", lambda j: j.update(model=5))
    return folders


def test_runs_lists_every_run_and_shows_damaged_ones(finished, tmp_path, capsys, monkeypatch):
    from streamlit.testing.v1 import AppTest

    home, run_id = finished
    folders = damaged_copies(home, run_id)
    try:
        assert main(["runs", "--home", str(home)]) == 0
        lines = capsys.readouterr().out.splitlines()
        good = next(line for line in lines if line.startswith(run_id))
        assert "succeeded" in good and "damaged" not in good
        oops = next(line for line in lines if line.startswith(folders["oops"].name))
        assert "damaged" in oops and 'after.accuracy is "oops", not a number' in oops
        model5 = next(line for line in lines if line.startswith(folders["model5"].name))
        assert "damaged" in model5 and "model is 5, not text" in model5
        monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
        for name in ("runs", "compare"):
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
            at.run()
            at.switch_page(f"pages/{name}.py").run()
            assert not at.exception, (name, [e.value for e in at.exception])
            shown = " ".join(m.value for m in [*at.markdown, *at.warning])
            assert "after.accuracy is" in shown.replace("\\", ""), name
            if name == "compare":  # the sound run is still compared
                assert at.dataframe[0].value["run"].tolist() == [run_id]
        # a damaged run is never reused for an identical job
        from complab.engine import list_runs
        from complab.engine.sweeps import finished_by_key

        rows = list_runs(root=home, kind="compress")
        assert set(finished_by_key(rows, "compress").values()) == {run_id}
    finally:
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)


def test_a_deleted_folder_is_shown_gone_then_dropped(finished, tmp_path, capsys):
    from complab import engine

    home, run_id = finished
    copy = home / "runs" / "20260101-000003-cccccc"
    shutil.copytree(home / "runs" / run_id, copy)
    ids = {row["id"] for row in engine.list_runs(root=home)}
    assert {run_id, copy.name} <= ids  # imported into the index
    shutil.rmtree(copy)
    assert main(["runs", "--home", str(home)]) == 0
    gone = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(copy.name))
    assert " gone " in gone and "run folder was deleted" in gone
    second = {row["id"] for row in engine.list_runs(root=home)}
    assert copy.name not in second and run_id in second  # dropped at the next listing; the others stay


def test_a_running_run_whose_folder_is_deleted_is_gone_not_a_ghost(tmp_path, monkeypatch):
    from complab import engine
    from complab.engine.store import GONE

    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")
    home = tmp_path / "home"
    keep = engine.submit({"kind": "test-sleep", "seconds": 0.2}, root=home)
    run_id = engine.submit({"kind": "test-sleep", "seconds": 60}, root=home)
    deadline = time.time() + 120
    while engine.status(run_id, root=home)["state"] != "running":
        assert time.time() < deadline, "the run never started"
        time.sleep(0.2)
    folder = home / "runs" / run_id
    for _ in range(20):  # its worker may add a file while rm -r walks the folder: as a user would, try again
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            break
        time.sleep(0.05)
    assert not folder.exists()
    row = next(row for row in engine.list_runs(root=home) if row["id"] == run_id)
    assert row["state"] == "failed" and row["error"] == GONE and row["damaged"] == GONE
    assert "FileNotFoundError" not in (row["error"] or "")
    time.sleep(1.5)  # the worker sees the cancel the mark asked for and stops; the row stays gone, then goes
    rows = {row["id"]: row for row in engine.list_runs(root=home)}
    assert run_id not in rows and keep in rows
    assert not (home / "runs" / run_id).exists()  # nothing made the folder again


# --- item 14 (metrics.json part): crafted metrics end in one line or a report marking the value damaged ----------

CRAFTED = {
    "accuracy is text": lambda m: m["after"].update(accuracy="oops"),
    "before is a list": lambda m: m.update(before=[]),
    "ratio is text": lambda m: m.update(compression_ratio="10x"),
    "ratio is zero": lambda m: m.update(compression_ratio=0),
    "no before": lambda m: m.pop("before"),
    "no compressed bytes": lambda m: m["after"].pop("compressed_bytes"),
    "machine is a number": lambda m: m.update(machine=5),
    "steps is a list": lambda m: m.update(steps=[1, 2]),
    "layers is a number": lambda m: m.update(layers=7),
    "model is a number": lambda m: m.update(model=5),
    "huge integer": lambda m: m["before"].update(fp32_bytes=10 ** 300),
    "negative bytes": lambda m: m["after"].update(compressed_bytes=-1),
    "fractional params": lambda m: m["after"].update(params=1.5),
    "task with markup": lambda m: m.update(task=MARKUP),
    "score name with markup": lambda m: m.update(score_name="![x](http://example.invalid/x.png)"),
    "deep steps": lambda m: m.update(steps={"prune": json.loads("[" * 200 + "]" * 200)}),
}
RAW = {
    "NaN accuracy": lambda text: text.replace('"accuracy": ', '"accuracy": NaN, "x": ', 1),
    "Infinity ratio": lambda text: text.replace('"compression_ratio": ', '"compression_ratio": Infinity, "y": ', 1),
    "not JSON": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "a list": lambda text: "[1, 2, 3]",
    "null": lambda text: "null",
    "very deep": lambda text: "[" * 100_000 + "]" * 100_000,
    "not UTF-8": lambda text: b"\xff\xfe{".decode("latin-1"),
}


@pytest.mark.parametrize("case", [*CRAFTED, *RAW])
def test_crafted_metrics_end_in_one_line(finished, tmp_path, capsys, case):
    home, run_id = finished
    folder = tmp_path / "crafted"
    shutil.copytree(home / "runs" / run_id, folder)
    path = folder / "metrics.json"
    if case in CRAFTED:
        edit_json(path, CRAFTED[case])
    else:
        path.write_bytes(RAW[case](path.read_text()).encode("latin-1" if case == "not UTF-8" else "utf-8"))
    out = tmp_path / "r.html"
    code = main(["report", str(folder), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "unexpected" not in err
    assert "damaged: metrics.json" in err or "not a compression run" in err, err
    assert not out.exists()


def test_a_huge_metrics_file_is_refused_before_it_is_read(finished, tmp_path, capsys):
    home, run_id = finished
    folder = tmp_path / "huge"
    shutil.copytree(home / "runs" / run_id, folder)
    with open(folder / "metrics.json", "r+b") as f:
        f.truncate(2 << 30)  # 2 GiB, sparse: reading it would take the memory
    assert main(["report", str(folder), "--out", str(tmp_path / "r.html")]) == 2
    assert "2,147,483,648 bytes, more than the 8,388,608 a run file may hold" in capsys.readouterr().err
    checked = runfolder.read_run_folder(folder)
    assert checked["metrics"] is None and checked["damaged"]["metrics.json"].startswith("damaged: metrics.json")


def test_a_damaged_second_run_is_left_out_of_the_report_and_named(finished, tmp_path, capsys):
    home, run_id = finished
    folder = tmp_path / "second"
    shutil.copytree(home / "runs" / run_id, folder)
    edit_json(folder / "metrics.json", lambda m: m["after"].update(accuracy="oops"))
    out = tmp_path / "r.html"
    assert main(["report", run_id, str(folder), "--home", str(home), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["runs"] == [run_id] and "after.accuracy" in result["left_out"][0]
    assert "id='left-out'" in out.read_text()


# --- the choke point itself ---------------------------------------------------------------------------------------


def test_read_run_folder_checks_every_file_and_never_raises(finished, tmp_path):
    home, run_id = finished
    sound = runfolder.read_run_folder(home / "runs" / run_id)
    assert sound["damaged"] == {} and sound["job"]["kind"] == "compress" and sound["metrics"]["after"]["accuracy"] > 0
    assert sound["state"]["state"] == "succeeded" and sound["files"]["model.clab"]
    folder = tmp_path / "garbage"
    shutil.copytree(home / "runs" / run_id, folder)
    (folder / "job.json").write_bytes(os.urandom(512))
    (folder / "state.json").write_text('{"state": "running", "pid": "x"}')
    (folder / "events.jsonl").write_text('{"progress": "a"}\nnot json\n{"progress": 0.5, "stage": "x"}\n[1]\n')
    checked = runfolder.read_run_folder(folder)
    assert set(checked["damaged"]) == {"job.json", "state.json"}
    assert all(problem.startswith("damaged: ") for problem in checked["damaged"].values())
    assert checked["events"] == [{"progress": 0.5, "stage": "x"}]  # bad lines skipped
    assert runfolder.read_run_folder(tmp_path / "nowhere")["damaged"]["folder"].endswith("the run folder is gone")


def test_pipes_and_links_in_a_folder_are_damaged_never_read(finished, tmp_path):
    """A named pipe would block the reader (the Streamlit server) and a link would read outside the folder."""
    import subprocess
    import sys

    from complab import engine

    home, run_id = finished
    folder = home / "runs" / "20260101-000004-dddddd"
    shutil.copytree(home / "runs" / run_id, folder)
    try:
        (folder / "job.json").unlink()
        os.mkfifo(folder / "job.json")
        (folder / "log.txt").unlink()
        os.mkfifo(folder / "log.txt")
        (folder / "events.jsonl").unlink()
        (folder / "events.jsonl").symlink_to("/dev/zero")
        out = subprocess.run([sys.executable, "-m", "complab.cli", "runs", "--home", str(home)],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "compression")})
        assert out.returncode == 0, out.stderr
        line = next(line for line in out.stdout.splitlines() if line.startswith(folder.name))
        assert "damaged: job.json: not a regular file" in line
        assert engine.log_tail(folder.name, root=home) == "" and engine.events(folder.name, root=home) == []
    finally:
        shutil.rmtree(folder, ignore_errors=True)
