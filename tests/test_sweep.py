"""Sweeps with the real engine: a group of runs, cancelled as a whole, a failed member, reuse by content key, CLI."""

import json
import time
from pathlib import Path

import pytest
from complab import engine
from complab.analysis.targets import parse_targets
from complab.cli import main
from complab.errors import CompressionLabError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def test_jobs(monkeypatch):
    """The engine's test-only job kinds (the dispatcher and workers inherit the environment)."""
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")


def sleep(seconds: float) -> dict:
    return {"kind": "test-sleep", "seconds": seconds}


def test_cancel_sweep_stops_the_running_member_and_no_queued_one_starts(tmp_path, test_jobs):
    sweep_id = engine.submit_sweep([sleep(60), sleep(61), sleep(62)], root=tmp_path, axis="seconds",
                                   targets=["seconds:60", "seconds:61", "seconds:62"])
    sweep = engine.sweep_status(sweep_id, root=tmp_path)
    assert [m["target"] for m in sweep["members"]] == ["seconds:60", "seconds:61", "seconds:62"]
    assert sweep["active"] and sweep["label"] == f"sweep {sweep_id[-4:]} (seconds 60-62)"
    first = sweep["members"][0]["run"]
    deadline = time.time() + 60
    while engine.status(first, root=tmp_path)["state"] != "running":
        assert time.time() < deadline, "the first member never started"
        time.sleep(0.2)
    assert sorted(engine.cancel_sweep(sweep_id, root=tmp_path)) == sorted(m["run"] for m in sweep["members"])
    done = engine.wait_sweep(sweep_id, 60, root=tmp_path)
    assert [m["state"] for m in done["members"]] == ["cancelled"] * 3 and not done["active"]
    for member in done["members"][1:]:  # cancelled while queued: never started
        assert engine.status(member["run"], root=tmp_path)["started"] is None
    # the job carries its membership, so the group survives a lost sweep file
    (tmp_path / "sweeps" / f"{sweep_id}.json").unlink()
    rebuilt = engine.sweep_status(sweep_id, root=tmp_path)
    assert [m["run"] for m in rebuilt["members"]] == [m["run"] for m in sweep["members"]]
    assert rebuilt["targets"] == ["seconds:60", "seconds:61", "seconds:62"]


@pytest.mark.slow  # 9 s: a sweep of real runs
def test_a_failed_member_does_not_stop_the_others_and_reuse_skips_finished_work(tmp_path, test_jobs):
    jobs = [sleep(0.1), {"kind": "test-crash"}, sleep(0.2)]
    sweep_id = engine.submit_sweep(jobs, root=tmp_path)
    done = engine.wait_sweep(sweep_id, 120, root=tmp_path)
    assert [m["state"] for m in done["members"]] == ["succeeded", "failed", "succeeded"]
    assert "deliberate failure" in done["members"][1]["error"]
    runs_before = {r["id"] for r in engine.list_runs(root=tmp_path)}
    # the same plans again: the succeeded ones are reused, the failed one runs again
    again = engine.submit_sweep(jobs, root=tmp_path)
    members = engine.sweep_status(again, root=tmp_path)["members"]
    assert [m["reused"] for m in members] == [True, False, True]
    assert members[0]["run"] == done["members"][0]["run"] and members[2]["run"] == done["members"][2]["run"]
    assert members[1]["run"] not in runs_before
    assert len(engine.list_runs(root=tmp_path)) == len(runs_before) + 1
    engine.wait_sweep(again, 60, root=tmp_path)
    assert [s["id"] for s in engine.list_sweeps(root=tmp_path)] == [again, sweep_id]
    # a bad job queues nothing
    with pytest.raises(CompressionLabError):
        engine.submit_sweep([sleep(0.1), {"kind": "no-such-kind"}], root=tmp_path)
    assert len(engine.list_runs(root=tmp_path)) == len(runs_before) + 1
    # a sweep tag that is not short data is refused
    with pytest.raises(CompressionLabError, match="sweep id"):
        engine.submit({**sleep(0.1), "sweep": {"id": "../x", "index": 0, "target": "t"}}, root=tmp_path)


def test_content_key_covers_what_a_run_computes_only():
    base = {"kind": "compress", "model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None,
            "mean": None, "std": None, "plan": {"name": "a", "steps": []}, "latency": False}
    key = engine.content_key(base)
    assert engine.content_key({**base, "predicted": {"drop": 0.1}, "sweep": {"id": "x", "index": 0}}) == key
    assert engine.content_key({**base, "plan": {"name": "b", "steps": []}}) == key  # a plan's name is a label
    assert engine.content_key({**base, "data": "imagefolder:/x"}) != key
    assert engine.content_key({**base, "latency": True}) != key


@pytest.mark.parametrize("text, message", [
    ("ratio:0", "out of range"), ("ratio:1", "out of range"), ("accuracy:-1", "out of range"),
    ("size:10", "AXIS:V1"), ("ratio:", "no values"), ("ratio:ten", "not a number"), ("ratio:nan", "out of range"),
    ("ratio:" + ",".join(str(v) for v in range(2, 60)), "at most 50"),
])
def test_bad_targets_are_refused_with_one_line(text, message, tmp_path, capsys):
    with pytest.raises(CompressionLabError, match=message):
        parse_targets(text)
    code = main(["sweep", "--model", "demo:lenet5", "--data", "digits", "--targets", text, "--home", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_parse_targets():
    assert parse_targets("ratio:10,20,40,80") == ("ratio", [10.0, 20.0, 40.0, 80.0])
    assert parse_targets(" Accuracy:0.5, 1,2,1 ") == ("accuracy", [0.5, 1.0, 2.0])
    assert parse_targets("accuracy:0") == ("accuracy", [0.0])


@pytest.mark.slow  # four engine runs and their reuse (76 s at load 10)
def test_cli_sweep_of_ratio_targets_runs_reuses_and_decodes(tmp_path, capsys):
    from complab import sources

    report = tmp_path / "r.json"
    # a grid fine enough that the three targets solve to three plans (LeNet-5 loses nothing to most points)
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", "--sparsities", "0,0.5,0.8,0.9,0.95,0.98",
                 "--clusters", "2,4,16", "--out", str(report)]) == 0
    base = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    base["steps"][0]["finetune_epochs"] = 1  # tiny fine-tuning: seconds per run
    base["steps"][1]["finetune_epochs"] = 0
    (tmp_path / "base.json").write_text(json.dumps(base))
    home = tmp_path / "home"
    args = ["sweep", "--model", "demo:lenet5", "--data", "digits", "--targets", "ratio:20,40,80",
            "--sensitivity", str(report), "--base-recipe", str(tmp_path / "base.json"), "--no-latency",
            "--home", str(home)]
    capsys.readouterr()
    assert main([*args, "--wait", "--timeout", "200"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    members = out["members"]
    assert [m["target"] for m in members] == ["ratio:20", "ratio:40", "ratio:80"]
    assert all(m["state"] == "succeeded" and not m["reused"] for m in members), members
    ratios = [m["ratio"] for m in members]
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1], ratios
    for member in members:
        path = engine.run_file(member["run"], "model.clab", root=home)
        assert path.stat().st_size == member["compressed_bytes"]
        assert sources.load_file(path).prunable_layers()  # the file decodes into a working model
        job = engine.status(member["run"], root=home)["job"]
        assert job["sweep"]["target"] == member["target"] and "accuracy" in job["predicted"]
    runs = {r["id"] for r in engine.list_runs(root=home)}
    # the identical sweep again: every member reused, nothing new queued
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [m["run"] for m in again["members"]] == [m["run"] for m in members]
    assert all(m["reused"] for m in again["members"])
    assert {r["id"] for r in engine.list_runs(root=home)} == runs
    assert main(["sweeps", "--home", str(home)]) == 0
    listing = capsys.readouterr().out
    assert out["sweep"] in listing and again["sweep"] in listing


def test_cli_sweep_of_recipes_and_cancel_sweep(tmp_path, capsys):
    quick = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    quick["steps"][0]["finetune_epochs"] = 0
    quick["steps"][1]["finetune_epochs"] = 0
    slow = json.loads(json.dumps(quick))
    slow["steps"][0]["finetune_epochs"] = 3  # the first member is still running when the sweep is cancelled
    plans = [{**slow, "name": "a"}, {**quick, "name": "b", "seed": 1}]
    recipes = tmp_path / "plans.json"
    home = str(tmp_path / "home")
    base = ["sweep", "--model", "demo:lenet5", "--data", "digits", "--no-latency", "--home", home, "--recipes"]
    recipes.write_text(json.dumps([plans[0], {"steps": [{"type": "prune", "sparsity": {"_default": 2}}]}]))
    assert main([*base, str(recipes)]) == 2
    assert "recipe 2 of" in capsys.readouterr().err
    assert not engine.list_runs(root=home)
    recipes.write_text(json.dumps(plans))
    assert main([*base, str(recipes)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["axis"] == "plans" and [m["target"] for m in out["members"]] == ["a", "b"]
    assert main(["cancel-sweep", out["sweep"], "--home", home]) == 0
    assert "cancelled" in capsys.readouterr().out
    done = engine.wait_sweep(out["sweep"], 120, root=home)
    first, second = done["members"]
    assert first["state"] in ("cancelled", "succeeded") and second["state"] == "cancelled"
    if first["state"] == "cancelled":  # the cancel came while the first ran: the queued second never started
        assert engine.status(second["run"], root=home)["started"] is None
    assert main(["cancel-sweep", "no-such-sweep", "--home", home]) == 2


def test_cli_sweep_of_targets_runs_the_analysis_itself_then_reuses_it(tmp_path, capsys):
    """No report and none in the store: the sweep runs the default analysis as an engine run (one line on stderr
    says so), solves the targets on it and queues them; a second sweep finds that analysis and runs none."""
    from complab import service

    home = tmp_path / "home"
    args = ["sweep", "--model", "demo:lenet300", "--data", "digits", "--targets", "ratio:5,10", "--no-latency",
            "--home", str(home)]
    assert main(args) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    said = [line for line in captured.err.splitlines() if "no sensitivity analysis" in line]
    assert len(said) == 1 and "running one" in said[0], captured.err
    analyses = engine.list_runs(root=home, kind="sensitivity")
    assert len(analyses) == 1 and analyses[0]["state"] == "succeeded" and analyses[0]["id"] in said[0]
    first = json.loads(captured.out.strip().splitlines()[-1])
    assert [m["target"] for m in first["members"]] == ["ratio:5", "ratio:10"]
    # the analysis the sweep ran is the model's latest, for the app as for the CLI
    spec = service.source_spec("demo:lenet300", data="digits")
    assert service.latest_analysis_run(spec, home)["id"] == analyses[0]["id"]
    assert set(service.latest_analysis(spec, home)["layers"]) == {"fc1", "fc2", "fc3"}
    # again: the analysis is found, not run (no message, no new run); the members are the same plans, reused
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "no sensitivity analysis" not in captured.err
    assert [r["id"] for r in engine.list_runs(root=home, kind="sensitivity")] == [analyses[0]["id"]]
    again = json.loads(captured.out.strip().splitlines()[-1])
    assert [m["run"] for m in again["members"]] == [m["run"] for m in first["members"]]
    assert all(m["reused"] for m in again["members"])
    engine.cancel_sweep(first["sweep"], root=home)
    engine.wait_sweep(first["sweep"], 120, root=home)
