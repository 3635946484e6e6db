"""`complab diff RUN_A [RUN_B]`: a finished run against the original or another run, as text and as JSON."""

import json
import shutil

import pytest
from complab.cli import main

# pruning alone, no fine-tuning: a real run in seconds whose answers differ from the original's on a few images
RECIPE = {"schema_version": 1, "name": "prune-only", "seed": 0, "eval_split": "test",
          "steps": [{"type": "prune", "sparsity": {"_default": 0.8}, "iterations": 1, "finetune_epochs": 0}]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    recipe = folder / "recipe.json"
    recipe.write_text(json.dumps(RECIPE))
    out = folder / "out"
    assert main(["run", str(recipe), "--model", "demo:lenet5", "--data", "digits", "--out", str(out),
                 "--no-latency"]) == 0
    return out


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_diff_against_the_demo_original(run_dir, home, capsys):
    assert main(["diff", str(run_dir), "--json", "--home", str(home)]) == 0
    diff = _json(capsys)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert diff["a"]["label"] == "demo:lenet5" and diff["b"]["label"] == run_dir.name
    assert diff["accuracy_a"] == pytest.approx(metrics["before"]["accuracy"])
    assert diff["accuracy_b"] == pytest.approx(metrics["after"]["accuracy"])  # the decoded file, as the run measured
    flips = diff["flips"]
    assert (flips["wrong_to_right"] - flips["right_to_wrong"]) == round((diff["accuracy_b"] - diff["accuracy_a"])
                                                                        * diff["n"])
    assert all("image_png_b64" not in item for item in diff["gallery"])
    assert len(list((home / "behaviour").glob("*.json"))) == 1  # cached under <home>/behaviour/
    assert main(["diff", str(run_dir), "--home", str(home)]) == 0
    text = capsys.readouterr().out
    assert "agreement" in text and "right->wrong" in text and "ECE" in text and "trace (" in text
    from complab.analysis.behaviour import calibration_direction

    found = calibration_direction(diff)  # which way the run's confidence errs, said beside its ECE when it errs
    assert (found is None) == ("confident" not in text)
    if found:
        assert found[2] in text and (found[0] < found[1]) == (found[2] == "under-confident")


def test_diff_eval_agree(run_dir, home, capsys):
    assert main(["eval", str(run_dir / "model.clab")]) == 0
    evaluated = _json(capsys)
    assert main(["diff", str(run_dir), "--json", "--images", "--home", str(home)]) == 0
    diff = _json(capsys)
    assert diff["accuracy_b"] == evaluated["accuracy"]
    assert all(item["image_png_b64"] for item in diff["gallery"])


def test_diff_two_runs(run_dir, home, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["diff", str(run_dir), str(copy), "--json", "--home", str(home)]) == 0
    diff = _json(capsys)
    assert diff["agreement"] == 1.0 and diff["flips"]["right_to_wrong"] == 0
    assert diff["a"]["sha256"] == diff["b"]["sha256"]


def test_diff_errors_exit_2(run_dir, home, tmp_path, capsys):
    assert main(["diff", "no-such-run", "--home", str(home)]) == 2
    assert "complab runs" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["diff", str(empty), "--home", str(home)]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert main(["diff", str(run_dir), str(run_dir), "--model", "demo:lenet5", "--home", str(home)]) == 2
    assert "drop" in capsys.readouterr().err
    assert main(["diff", str(run_dir), "--model", "demo:lenet300", "--home", str(home)]) == 2
    assert "same model" in capsys.readouterr().err


@pytest.mark.slow  # a real engine run in a worker process (40 s on the busy machine)
@pytest.mark.timeout(300)
def test_diff_by_run_id_of_the_engine(home, capsys):
    from complab import engine, service
    from complab.errors import CompressionLabError
    from complab.plan import Plan

    spec = service.source_spec("demo:lenet5", data="digits")
    run_id = engine.submit(service.compress_job(spec, Plan.from_dict(RECIPE), latency=False), root=home)
    assert engine.wait(run_id, 240, root=home)["state"] == "succeeded"
    assert main(["diff", run_id, "--json", "--home", str(home)]) == 0
    diff = _json(capsys)
    assert diff["b"]["label"] == run_id and diff["n"] == 360
    assert service.finished_model_file(run_id, home) == engine.run_file(run_id, "model.clab", root=home)
    with pytest.raises(CompressionLabError, match="no run"):
        service.finished_model_file("20990101-000000-abcdef", home)
