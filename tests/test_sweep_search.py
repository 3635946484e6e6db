"""`sweep --search`: NSGA-II proposes per-layer plans, measured as runs of one sweep (real engine, real Optuna)."""

import json
from pathlib import Path

import pytest
from complab import engine
from complab.cli import main
from complab.errors import CompressionLabError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


@pytest.mark.slow  # an analysis and two generations of runs (35 s at load 10)
def test_search_runs_generations_as_one_sweep_and_returns_its_measured_front(tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["analyze", "--model", "demo:lenet5", "--data", "digits", "--sparsities", "0,0.5,0.8,0.95",
                 "--clusters", "4,16", "--val-size", "128", "--out", str(report)]) == 0
    base = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    base["steps"][0]["finetune_epochs"] = 0  # no fine-tuning: the search's bookkeeping is what is tested
    base["steps"][1]["finetune_epochs"] = 0
    (tmp_path / "base.json").write_text(json.dumps(base))
    home = tmp_path / "home"
    args = ["sweep", "--model", "demo:lenet5", "--data", "digits", "--search", "4", "--batch", "2",
            "--sensitivity", str(report), "--base-recipe", str(tmp_path / "base.json"), "--no-latency",
            "--home", str(home), "--timeout", "200"]
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["evaluated"] == 4 and result["generations"] == 2 and result["failed"] == 0
    assert "generation 2: 4 of 4 runs measured" in captured.err
    sweep = engine.sweep_status(result["sweep"], root=home)
    assert [m["target"] for m in sweep["members"]] == ["search:1", "search:2", "search:3", "search:4"]
    assert sweep["axis"] == "search" and all(m["state"] == "succeeded" for m in sweep["members"])
    # the front is the measured non-dominated set: no member is both smaller and more accurate than a front point
    measured = {m["run"]: (m["metrics"]["after"]["compressed_bytes"], m["metrics"]["after"]["accuracy"])
                for m in sweep["members"]}
    assert result["front"]
    for point in result["front"]:
        assert measured[point["run"]] == (point["compressed_bytes"], pytest.approx(point["accuracy"]))
        assert not any(b < point["compressed_bytes"] and a > point["accuracy"] for b, a in measured.values())
    # the first generation starts on the solver's front: at least 5x smaller than fp32
    first = sweep["members"][0]["metrics"]
    assert first["compression_ratio"] >= 4


@pytest.mark.parametrize(("flags", "message"), [(["--search", "1"], "budget"), (["--search", "4", "--batch", "1"],
                                                                                  "batch")])
def test_bad_search_settings_exit_2(tmp_path, capsys, flags, message):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"base_accuracy": 0.9, "layers": {"conv1": {"sparsity": {"0.5": 0.9},
                                                                             "clusters": {"4": 0.9}}}, "config": {}}))
    assert main(["sweep", "--model", "demo:lenet5", "--data", "digits", *flags, "--sensitivity", str(report),
                 "--home", str(tmp_path / "home")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # 16 s: a search of real runs; the quick loop keeps the CLI search tests
def test_a_background_search_from_the_app_runs_as_one_sweep_and_logs_its_front(tmp_path):
    """What the Plan page's Sweep > search starts: a detached process; the app only watches the sweep."""
    import time

    from complab.engine import search

    report = {"base_accuracy": 0.98, "config": {}, "layers": {
        name: {"sparsity": {"0.0": 0.98, "0.5": 0.98, "0.9": 0.97}, "clusters": {"4": 0.97, "16": 0.98}}
        for name in ("conv1", "conv2", "fc1", "fc2")}}
    home = tmp_path / "home"
    with pytest.raises(CompressionLabError, match="budget"):
        search.start({"model": "demo:lenet5", "data": "digits"}, report, 1, root=home)
    folder = search.start({"model": "demo:lenet5", "data": "digits"}, report, 2, 2, root=home, name="bg",
                          prune_options={"finetune_epochs": 0}, cluster_options={"finetune_epochs": 0},
                          latency=False)
    deadline = time.time() + 180
    while time.time() < deadline and '"front"' not in (folder / "log.txt").read_text():
        time.sleep(1)
    log = (folder / "log.txt").read_text()
    result = json.loads(log.strip().splitlines()[-1])
    sweep = engine.sweep_status(result["sweep"], root=home)
    assert sweep["axis"] == "search" and len(sweep["members"]) == 2
    assert all(m["state"] == "succeeded" for m in sweep["members"]) and result["front"]
