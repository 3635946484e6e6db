"""The target solver (hull walk) and the predicted accuracy, on the demo LeNet-300-100's real sensitivity report."""

from __future__ import annotations

import math

import pytest
from complab import engine, runfolder, sources
from complab.analysis.estimate import estimate, model_stats
from complab.analysis.pareto import prediction_error, runs_table
from complab.analysis.predict import (
    CALIBRATE_MIN_RUNS,
    PRIOR_C,
    calibration,
    history_from_runs,
    layer_drop,
    predict,
)
from complab.analysis.sensitivity import SensitivityConfig, analyze
from complab.analysis.solver import grids_from_report, solve
from complab.engine.jobs import validate
from complab.errors import CompressionLabError


@pytest.fixture(scope="module")
def lenet300():
    handle, data = sources.load({"model": "demo:lenet300", "data": "digits"})
    report = analyze(handle, data, SensitivityConfig(val_size=256)).to_dict()
    return handle, report, model_stats(handle), grids_from_report(report)


@pytest.mark.parametrize("ratio", [20.0, 50.0])
def test_solver_meets_a_ratio_the_single_step_greedy_could_not(lenet300, ratio):
    """The old one-grid-step greedy stopped at 31x on LeNet-300 (every layer shared at 2 values, where one more
    pruning step adds a positions stream): walking each layer's hull reaches 50x."""
    _, _, stats, grids = lenet300
    result = solve(stats, grids, "compressed_bytes", stats.fp32_bytes / ratio)
    assert result["met"]
    assert result["ratio"] >= ratio
    assert estimate(stats, result["settings"])["compressed_bytes"] <= stats.fp32_bytes / ratio
    if ratio >= 50:  # past what sharing at 2 values gives (31x): pruning too (20x may be reached by sharing alone)
        assert any(sparsity > 0 for sparsity, _ in result["settings"].values())


def test_solver_accuracy_budget_is_kept_and_grows_with_the_budget(lenet300):
    _, report, stats, grids = lenet300
    ratios = []
    for budget in (0.0, 0.01, 0.05):
        result = solve(stats, grids, "accuracy_drop", budget)
        assert result["predicted_drop"] <= budget + 1e-9
        # the solver's drop is the predictor's raw additive drop of the same settings
        assert predict(report, result["settings"])["raw_drop"] == pytest.approx(result["predicted_drop"], abs=1e-6)
        ratios.append(result["ratio"])
    assert ratios == sorted(ratios) and ratios[-1] > ratios[0]


def test_solver_flops_target_prunes_only(lenet300):
    _, _, stats, grids = lenet300
    result = solve(stats, grids, "sparse_flops", stats.flops / 3)
    assert result["met"] and result["sparse_flops"] <= stats.flops / 3


def test_layer_drop_reads_the_report_curves(lenet300):
    _, report, _, _ = lenet300
    base = report["base_accuracy"]
    row = report["layers"]["fc1"]
    for key, accuracy in row["sparsity"].items():  # at a grid point: the (monotone) measured drop
        assert layer_drop(report, "fc1", float(key), None) >= max(0.0, base - accuracy) - 1e-12
    assert layer_drop(report, "fc1", 0.0, None) == 0.0
    assert layer_drop(report, "nope", 0.5, 4) is None
    both = layer_drop(report, "fc1", 0.9, 2)
    assert both == pytest.approx(layer_drop(report, "fc1", 0.9, None) + layer_drop(report, "fc1", 0.0, 2))


def test_prediction_prior_and_calibration_from_history(lenet300):
    _, report, stats, grids = lenet300
    settings = solve(stats, grids, "compressed_bytes", stats.fp32_bytes / 50)["settings"]
    prior = predict(report, settings)
    raw_pts = 100 * prior["raw_drop"]
    assert prior["calibration"]["source"] == "demo runs"
    assert 100 * prior["drop"] == pytest.approx(PRIOR_C * math.sqrt(raw_pts))
    assert prior["low"] <= prior["drop"] <= prior["high"]
    assert prior["accuracy"] == pytest.approx(report["base_accuracy"] - prior["drop"])
    assert predict(report, settings, finetuned=False)["drop"] == pytest.approx(prior["raw_drop"])
    # a history of this model's runs that follows drop = 0.5 sqrt(raw): the refitted prediction follows it
    history = [(r, 0.5 * math.sqrt(r) + e) for r, e in ((1.0, 0.05), (4.0, -0.05), (9.0, 0.1), (16.0, 0.0))]
    assert calibration(history)["c"] == pytest.approx(0.5, abs=0.03)
    refit = predict(report, settings, history=history)
    assert refit["basis"] == "this model's runs" and refit["calibration"]["runs"] == 4 and refit["warning"] == ""
    assert 100 * refit["drop"] == pytest.approx(refit["calibration"]["c"] * math.sqrt(raw_pts))
    assert calibration(history[:CALIBRATE_MIN_RUNS - 1])["source"] == "demo runs"  # too few: the prior
    # a quantizer the analysis never measured is named, not guessed
    layer = next(iter(settings))
    vq = predict(report, settings, {layer: {"quantizer": "pq", "n_codewords": 16}})
    assert vq["unpredicted"] == [layer] and "not predicted" in vq["model"]


def test_prediction_rides_with_the_job_and_reaches_the_table(tmp_path):
    job = {"kind": "compress", "model": "demo:lenet300", "data": "digits",
           "plan": {"schema_version": 1, "steps": [{"type": "prune", "sparsity": {"_default": 0.5}}]},
           "predicted": {"accuracy": 0.97, "drop": 0.012, "low": 0.004, "high": 0.02, "raw_drop": 0.03,
                         "model": "additive", "calibration": {"c": 1.0}}}
    out = validate(job)
    assert out["predicted"] == {"accuracy": 0.97, "drop": 0.012, "low": 0.004, "high": 0.02, "raw_drop": 0.03,
                                "model": "additive"}
    noisy = {**job["predicted"], "accuracy_low": 0.95, "accuracy_high": 0.99, "basis": "demo runs",
             "warning": "40 validation images: ..."}
    kept = validate({**job, "predicted": noisy})["predicted"]
    assert {k: kept[k] for k in ("accuracy_low", "accuracy_high", "basis", "warning")} == \
        {"accuracy_low": 0.95, "accuracy_high": 0.99, "basis": "demo runs", "warning": "40 validation images: ..."}
    assert runfolder.check_job({**out, "predicted": kept})[0]["predicted"] == kept  # and the run folder's reader
    for bad in ({"drop": float("nan")}, {"drop": "x"}, [1, 2], {"high": True}, {"accuracy_low": float("inf")}):
        with pytest.raises(CompressionLabError, match="predicted"):
            validate({**job, "predicted": bad})
    run = {"id": "r1", "state": "succeeded", "job": out, "model": "demo:lenet300",
           "metrics": {"before": {"accuracy": 0.98, "fp32_bytes": 100}, "steps": {"prune": {}},
                       "after": {"accuracy": 0.965, "compressed_bytes": 10}, "compression_ratio": 10.0}}
    table = runs_table([run, {**run, "id": "r2", "job": {**out, "predicted": None}}])
    assert table.loc[0, "predicted_drop_pts"] == pytest.approx(1.2)
    assert math.isnan(table.loc[1, "predicted_drop_pts"])
    error = prediction_error(table)
    assert error["runs"] == 1 and error["mae_pts"] == pytest.approx(0.3) and error["within_range"] == 1.0
    assert history_from_runs([run]) == [(pytest.approx(3.0), pytest.approx(1.5))]
    assert history_from_runs([run], model="demo:lenet5") == []
    assert engine.absolute_paths(job)["predicted"] == job["predicted"]


def test_a_flat_sensitivity_curve_does_not_make_the_solver_overshoot_its_target():
    """A layer that loses nothing from 0 to 95% sparsity is one hull segment: without giving back the overshoot,
    every ratio target from 8x to 30x came back as the same ~32x plan (and a sweep drew one point)."""
    handle = sources.load_model({"model": "demo:lenet5"})
    stats = model_stats(handle)
    flat = {"sparsity": {str(s): 0.99 for s in (0.0, 0.5, 0.8, 0.9, 0.95)}, "clusters": {"4": 0.99, "16": 0.99}}
    report = {"base_accuracy": 0.99, "layers": {name: flat for name in handle.prunable_layers()}}
    grids = grids_from_report(report)
    reached = []
    for target in (10.0, 20.0, 40.0):  # (below ~8x: every layer is shared at the largest k first, by design)
        result = solve(stats, grids, "compressed_bytes", stats.fp32_bytes / target)
        ratio = stats.fp32_bytes / result["compressed_bytes"]
        assert result["met"] and result["predicted_drop"] == 0.0
        assert target <= ratio <= 1.6 * target, (target, ratio)
        reached.append(ratio)
    assert reached == sorted(reached) and len(set(reached)) == 3
