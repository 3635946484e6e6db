"""complab.service, the application layer both front ends call: jobs, a model's latest analysis, sweep plans."""

import json

import pytest
from complab import engine, service, sources
from complab.cli import main
from complab.errors import CompressionLabError
from complab.plan import Plan

pytestmark = pytest.mark.timeout(300)

LENET300 = service.source_spec("demo:lenet300", data="digits")
LENET5 = service.source_spec("demo:lenet5", data="digits")
TINY = {"val_size": 32, "sparsities": [0.0, 0.5, 0.9], "n_clusters": [4, 16], "bn_batches": 0, "mode": "exact"}


def test_jobs_carry_what_was_asked():
    spec = service.source_spec("torchvision:resnet18", "w.pt", "imagefolder:d", 64, (0.5, 0.5, 0.5), (0.2,) * 3,
                               trust=True)
    assert spec == {"model": "torchvision:resnet18", "weights": "w.pt", "data": "imagefolder:d", "input_size": 64,
                    "mean": [0.5] * 3, "std": [0.2] * 3, "trust": True}
    assert "trust" not in service.source_spec("demo:lenet5", data="digits")
    plan = Plan(name="p")
    job = service.compress_job(LENET300, plan, latency=False)
    assert job["kind"] == "compress" and job["plan"] == plan.to_dict() and job["latency"] is False
    assert "latency" not in service.compress_job(LENET300, plan.to_dict())  # the engine's default
    assert service.sensitivity_job(LENET300, TINY) == {"kind": "sensitivity", **LENET300, "config": TINY}


def test_analysis_settings_take_a_detectors_defaults_and_the_flags():
    from complab.models.detector import DETECT

    assert service.analysis_settings(sources.CLASSIFY) == {"mode": "exact"}  # auto before a model is loaded
    detector = service.analysis_settings(sources.DETECT, mode="estimate", seed=3, sparsities=(0.0, 0.5))
    assert DETECT.analysis_defaults
    assert detector == {**DETECT.analysis_defaults, "seed": 3, "sparsities": [0.0, 0.5], "mode": "estimate"}
    assert service.analysis_config(sources.CLASSIFY, val_size=7).val_size == 7
    with pytest.raises(CompressionLabError, match="val_size"):
        service.analysis_config(sources.CLASSIFY, val_size=0)
    with pytest.raises(TypeError):
        service.analysis_settings(sources.CLASSIFY, clusters=(4,))  # a typo is a bug of the caller, not a setting


def test_latest_analysis_is_this_models_newest_readable_one(tmp_path):
    first = engine.submit(service.sensitivity_job(LENET300, TINY), root=tmp_path)
    second = engine.submit(service.sensitivity_job(LENET300, {**TINY, "seed": 1}), root=tmp_path)
    assert engine.wait(second, 200, root=tmp_path)["state"] == "succeeded"
    assert engine.wait(first, 200, root=tmp_path)["state"] == "succeeded"
    newest = service.latest_analysis(LENET300, tmp_path)
    assert newest == json.loads(engine.run_file(second, "sensitivity.json", root=tmp_path).read_text())
    assert service.latest_analysis_run(LENET300, tmp_path)["id"] == second
    other = {**LENET300, "input_size": 32}  # another input size is another analysis
    assert service.latest_analysis(other, tmp_path) is None and service.latest_analysis_run(other, tmp_path) is None
    # a damaged newest report is said and skipped: the one before it is used
    engine.run_file(second, "sensitivity.json", root=tmp_path).write_text('{"base_accuracy": 2')
    said = []
    report = service.latest_analysis(LENET300, tmp_path, on_problem=said.append)
    assert report["config"]["seed"] == 0 and len(said) == 1 and second in said[0]
    # a report that is gone is skipped without a word (the run's row stays listed)
    engine.run_file(second, "sensitivity.json", root=tmp_path).unlink()
    said.clear()
    assert service.latest_analysis(LENET300, tmp_path, on_problem=said.append)["config"]["seed"] == 0 and not said


def test_plan_sweep_solves_each_target_with_its_prediction(lenet300, digits28):
    from complab.analysis.estimate import model_stats
    from complab.analysis.sensitivity import SensitivityConfig, analyze

    config = SensitivityConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY.items()})
    report = analyze(lenet300, digits28, config).to_dict()
    renamed = []

    def adjust(plan: Plan) -> Plan:
        renamed.append(plan.name)
        return Plan(plan.steps, name=plan.name + "-adjusted", seed=plan.seed, eval_split=plan.eval_split)

    jobs, labels = service.plan_sweep(LENET300, model_stats(lenet300), report, "ratio", [5.0, 10.0], "t", [],
                                      base=Plan((), seed=7), adjust=adjust, latency=False)
    assert labels == ["ratio:5", "ratio:10"] and len(renamed) == 2
    for job in jobs:
        plan = Plan.from_dict(job["plan"])
        assert plan.name.endswith("-adjusted") and plan.seed == 7 and job["latency"] is False
        assert 0 <= job["predicted"]["accuracy"] <= 1 and job["model"] == "demo:lenet300"
    assert jobs[0]["plan"] != jobs[1]["plan"]


def test_a_sweeps_own_analysis_that_fails_is_one_line(tmp_path, monkeypatch, capsys):
    """The analysis a sweep starts fails: exit 2, one line naming its run and where its log is; nothing queued."""
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")
    monkeypatch.setattr(service, "sensitivity_job", lambda spec, config: {"kind": "test-crash"})
    home = tmp_path / "home"
    code = main(["sweep", "--model", "demo:lenet300", "--data", "digits", "--targets", "ratio:5", "--home", str(home)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    [failed] = engine.list_runs(root=home)
    assert code == 2 and len(err) == 1 and failed["id"] in err[0] and "failed" in err[0], err
    assert "deliberate failure" in err[0] and "complab runs" in err[0]
    assert not engine.list_sweeps(root=home)


@pytest.mark.slow  # an analysis and a channels run in worker processes
def test_a_channel_pruned_runs_flips_trace_to_the_models_analysis(tmp_path):
    """Channels removed: no layer can be swapped into the original, so the behaviour diff's trace ranks the layers
    by the newest analysis of the run's model in the store (found by the service, not named by the run folder)."""
    plan = {"schema_version": 1, "name": "channels l1", "steps": [
        {"type": "channels", "selection": "l1", "keep_ratio": {"_default": 0.4}, "finetune_epochs": 0,
         "final_epochs": 0}]}
    run_id = engine.submit(service.compress_job(LENET5, plan, latency=False), root=tmp_path)
    assert engine.wait(run_id, 200, root=tmp_path)["state"] == "succeeded"
    assert service.analysis_of_run(run_id, tmp_path) is None  # no analysis yet
    original = sources.load(LENET5)
    without = service.behaviour_diff(run_id, root=tmp_path, original=original[0], data=original[1])
    assert without["trace"]["method"] is None and "sensitivity report" in without["trace"]["note"]
    analysis = engine.submit(service.sensitivity_job(LENET5, TINY), root=tmp_path)
    assert engine.wait(analysis, 200, root=tmp_path)["state"] == "succeeded"
    assert service.analysis_of_run(run_id, tmp_path) == service.latest_analysis(LENET5, tmp_path)
    assert service.analysis_of_run(str(engine.run_dir(run_id, root=tmp_path)), tmp_path) is None  # a folder: none
    diff = service.behaviour_diff(run_id, root=tmp_path, original=original[0], data=original[1])
    assert diff["trace"]["method"] == "sensitivity"
    assert {row["layer"] for row in diff["trace"]["layers"]} <= set(original[0].prunable_layers())
