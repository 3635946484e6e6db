"""The estimate-mode sensitivity (analysis/fisher.py): agrees with the exact mode, reports measured points as
measured, stays within its calibration budget's rules, cancels, runs on a detector, rejects bad settings."""

import math

import pytest
import torch
from complab.analysis.sensitivity import ExactScorer, SensitivityConfig, analyze
from complab.errors import CompressionLabError
from scipy.stats import spearmanr

GRID = {"sparsities": (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95), "n_clusters": (2, 4, 8, 16, 64)}


@pytest.fixture(scope="module")
def lenet300_reports(lenet300, digits28):
    exact = analyze(lenet300, digits28, SensitivityConfig(**GRID)).to_dict()
    estimate = analyze(lenet300, digits28, SensitivityConfig(**GRID, mode="estimate")).to_dict()
    return exact, estimate


def drops(report):
    base = report["base_accuracy"]
    return {(layer, kind, key): base - score for layer, row in report["layers"].items()
            for kind in ("sparsity", "clusters") for key, score in row[kind].items()}


def test_estimate_ranks_points_like_the_exact_mode(lenet300_reports):
    exact, estimate = lenet300_reports
    exact_drops, estimate_drops = drops(exact), drops(estimate)
    assert set(exact_drops) == set(estimate_drops)
    keys = sorted(exact_drops)
    rho = spearmanr([exact_drops[k] for k in keys], [estimate_drops[k] for k in keys]).statistic
    # measured 0.93 on this grid (all points; the benchmark reports estimated-only figures as well)
    assert rho > 0.85
    measured = {(layer, kind, key) for layer, row in estimate["layers"].items()
                for kind in ("sparsity", "clusters") for key in row["measured"][kind]}
    assert len(measured) < len(keys) / 2  # most points were estimated, not measured
    # every estimated point within 10 points of the exact drop (measured: at most ~5)
    assert max(abs(exact_drops[k] - estimate_drops[k]) for k in keys) < 0.10


def test_report_shape_and_measured_points_are_exact_scores(lenet300, digits28, lenet300_reports):
    _, estimate = lenet300_reports
    config = estimate["config"]
    assert config["mode"] == "estimate"
    calibration = config["calibration"]
    assert calibration["points"] >= 3 and calibration["images"] > 0
    assert config["gradients"]["images"] > 0
    scorer = ExactScorer(lenet300, digits28, SensitivityConfig(**GRID, val_size=calibration["images"],
                                                               bn_batches=calibration["bn_batches"]))
    assert scorer.base == estimate["base_accuracy"]
    from complab.analysis.sensitivity import grid_weight

    checked = 0
    for layer, row in estimate["layers"].items():
        assert set(row["loss_increase"]["sparsity"]) == set(row["sparsity"])
        assert row["loss_increase"]["sparsity"]["0.0"] == 0.0
        # loss increase grows with sparsity (more weights zeroed, Fisher >= 0)
        increases = [row["loss_increase"]["sparsity"][str(s)] for s in GRID["sparsities"]]
        assert increases == sorted(increases)
        original = scorer.layers[layer].detach().clone()
        for kind in ("sparsity", "clusters", "bits"):  # bits: issue 27's axis, calibrated on points of its own
            for key in row["measured"].get(kind, []):
                value = float(key) if kind == "sparsity" else int(key)
                assert row[kind][key] == scorer.score(layer, grid_weight(original, kind, value, 0)), (layer, key)
                checked += 1
    assert checked >= calibration["points"]


def test_estimate_mode_progress_has_eta_and_cancel_stops_it(lenet300, digits28):
    from complab.methods.context import Cancelled

    events = []

    def progress(stage, fraction, values):
        events.append((stage, fraction, dict(values)))

    analyze(lenet300, digits28, SensitivityConfig(sparsities=(0.0, 0.9), n_clusters=(4,), mode="estimate",
                                                  val_size=128), on_progress=progress)
    stages = [values["stage"] for _, _, values in events]
    assert {"gradients", "estimate", "calibration"} <= set(stages)
    assert all(stage == "sensitivity" and 0 <= f <= 1 and values["eta_s"] >= 0 for stage, f, values in events)
    assert events[-1][2]["eta_s"] == 0
    for when in ("gradients", "calibration"):  # a cancel in either stage stops the analysis
        seen = []

        def cancel(when=when, seen=seen):
            return when in seen

        def watch(stage, fraction, values, seen=seen):
            seen.append(values["stage"])

        with pytest.raises(Cancelled):
            analyze(lenet300, digits28, SensitivityConfig(sparsities=(0.0, 0.5, 0.9), n_clusters=(4,),
                                                          mode="estimate", val_size=128),
                    on_progress=watch, cancel_requested=cancel)
        assert seen[-1] == when


def test_calibration_budget_shrinks_images_then_points():
    from complab.analysis.fisher import MIN_CALIBRATION_IMAGES, MIN_CALIBRATION_POINTS, _calibration_plan

    # plenty of time: all images, all batch-norm batches, POINTS_PER_LAYER per layer
    images, batches, points = _calibration_plan(0.001, 512, 4, True, 10, 90.0)
    assert (images, batches) == (512, 4) and points == 50
    # a ResNet-50 on two loaded cores (0.3 s per image), 54 layers, 90 s: one batch-norm batch, fewer images
    images, batches, points = _calibration_plan(0.3, 512, 4, True, 54, 90.0)
    assert batches == 1 and images <= 128 and points >= MIN_CALIBRATION_POINTS
    assert images * 0.3 + points * 0.3 * (images + 64) <= 90.0 or points == MIN_CALIBRATION_POINTS
    images, _, points = _calibration_plan(5.0, 512, 4, True, 54, 90.0)  # hopeless: the floors
    assert images == MIN_CALIBRATION_IMAGES and points == MIN_CALIBRATION_POINTS


def test_large_layer_clustering_is_fitted_on_a_sample():
    from complab.analysis.fisher import KMEANS_SAMPLE, estimate_weight
    from complab.analysis.sensitivity import grid_weight

    torch.manual_seed(0)
    weight = torch.randn(KMEANS_SAMPLE * 2)
    sampled = estimate_weight(weight, "clusters", 16, 0)
    assert len(torch.unique(sampled)) == 16
    exact = grid_weight(weight, "clusters", 16, 0)
    error_sampled = float(((sampled - weight) ** 2).sum())
    error_exact = float(((exact - weight) ** 2).sum())
    assert error_sampled <= 1.02 * error_exact  # the sampled codebook is nearly as good


def test_default_mode_rule(lenet5):
    import torchvision
    from complab.analysis.fisher import ESTIMATE_ABOVE_COST, analysis_cost, default_mode
    from complab.models.handle import ModelHandle

    assert default_mode(lenet5) == "exact" and analysis_cost(lenet5) < ESTIMATE_ABOVE_COST
    resnet = ModelHandle(torchvision.models.resnet18(), {"kind": "test"}, (3, 224, 224), 1000, "resnet18")
    assert default_mode(resnet) == "estimate"


@pytest.mark.parametrize(("config", "message"), [
    ({"mode": "fast"}, "mode"),
    ({"mode": "estimate", "calibration_seconds": -1}, "calibration_seconds"),
    ({"calibration_seconds": "a lot"}, "calibration_seconds"),
])
def test_bad_mode_settings_are_rejected(config, message):
    from complab.engine.jobs import validate

    with pytest.raises(CompressionLabError, match=message):
        validate({"kind": "sensitivity", "model": "demo:lenet300", "data": "digits", "config": config})
    assert validate({"kind": "sensitivity", "model": "demo:lenet300", "data": "digits",
                     "config": {"mode": "estimate"}})["config"]["mode"] == "estimate"


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    from complab.data.shapes import ShapesConfig, write_dataset

    return write_dataset(tmp_path_factory.mktemp("shapes-estimate"), train=32, val=16, config=ShapesConfig(seed=7))


@pytest.mark.slow  # ~40 s on two loaded cores: per-image detection-loss gradients and mAP points
def test_detector_estimate_mode_uses_the_detection_loss(small_shapes):
    from complab.data.detection import load_detection_data
    from complab.models.detector import load_detector

    detector = load_detector()
    data = load_detection_data(f"yolo:{small_shapes}")
    report = analyze(detector, data, SensitivityConfig(sparsities=(0.0, 0.5, 0.95), n_clusters=(4,), bits=(),
                                                       val_size=8, mode="estimate", calibration_seconds=5)).to_dict()
    assert set(report["layers"]) == set(detector.prunable_layers())
    assert report["config"]["gradients"]["loss"].startswith("detection")
    assert 0.0 < report["base_accuracy"] <= 1.0
    measured = 0
    silent = report["config"]["gradients"]["no_gradient_layers"]
    assert len(silent) <= 6  # (measured: the two stride-32 box-branch convolutions, no object assigned there)
    for name, row in report["layers"].items():
        assert row["sparsity"]["0.0"] == report["base_accuracy"]
        if name not in silent:
            assert row["loss_increase"]["sparsity"]["0.95"] > row["loss_increase"]["sparsity"]["0.5"] > 0, name
        assert all(0.0 <= v <= 1.0 and math.isfinite(v) for kind in ("sparsity", "clusters")
                   for v in row[kind].values())
        measured += len(row["measured"]["sparsity"]) - 1 + len(row["measured"]["clusters"])
    assert measured == report["config"]["calibration"]["points"] >= 2


def test_both_modes_reports_pass_the_checked_reader(lenet300_reports):
    """The one reader the pages, the CLI and the solver use accepts what analyze writes in either mode (an estimate
    report's per-point loss_increase object included) and still refuses a non-finite loss increase."""
    import json

    from complab.analysis.sensitivity_report import SensitivityReportError, check_report, parse_report

    for report in lenet300_reports:
        checked = check_report(json.loads(json.dumps(report)))
        assert set(checked["layers"]) == set(report["layers"])
    _, estimate = lenet300_reports
    layer = next(iter(estimate["layers"]))
    bad = json.loads(json.dumps(estimate))
    bad["layers"][layer]["loss_increase"]["sparsity"]["0.5"] = "NaN"
    with pytest.raises(SensitivityReportError, match="loss_increase"):
        check_report(bad)
    with pytest.raises(SensitivityReportError):
        parse_report(json.dumps(bad).replace('"NaN"', "NaN").encode())
