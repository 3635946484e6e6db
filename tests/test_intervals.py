"""How sure a measured score is (complab/intervals.py), and what the sensitivity report, the solver and the
predictor make of it (issue 26: a 40-image validation split is noise, shown as signal)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from complab import intervals, runfolder
from complab.analysis.estimate import model_stats
from complab.analysis.predict import PRIOR_C, calibration, predict
from complab.analysis.sensitivity import SensitivityConfig, analyze, merge_reports
from complab.analysis.sensitivity_report import (
    SensitivityReportError,
    check_report,
    noise_of,
    report_noise,
)
from complab.analysis.solver import grids_from_report, noise_aware_drops, solve

# -- the intervals -------------------------------------------------------------------------------------------


def test_wilson_matches_known_values():
    low, high = intervals.wilson(0.925, 40)  # 37 of 40
    assert (round(100 * low, 1), round(100 * high, 1)) == (80.1, 97.4)
    # the closed forms at the edges: n / (n + z^2) and z^2 / (n + z^2)
    assert intervals.wilson(1.0, 40) == pytest.approx((40 / (40 + intervals.Z95 ** 2), 1.0))
    assert intervals.wilson(0.0, 10) == pytest.approx((0.0, intervals.Z95 ** 2 / (10 + intervals.Z95 ** 2)))
    assert intervals.wilson(0.5, 0) == (0.0, 1.0)
    # narrower with more images, always inside [0, 1] and around the estimate
    widths = [np.subtract(*intervals.wilson(0.9, n)[::-1]) for n in (10, 100, 1000)]
    assert widths == sorted(widths, reverse=True)


def test_newcombe_difference_matches_the_published_example():
    """Newcombe (1998), example (a): 56/70 against 48/80, method 10: 0.0524 to 0.3339."""
    low, high = intervals.difference(56 / 70, 70, 48 / 80, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    same = intervals.difference(0.9, 40, 0.9, 40)
    assert same[0] < 0 < same[1]  # no difference: the interval straddles zero


def test_noise_floor_is_the_half_width_and_never_below_one_image():
    low, high = intervals.wilson(0.925, 40)
    assert intervals.noise_floor(0.925, 40) == pytest.approx((high - low) / 2)
    assert round(100 * intervals.noise_floor(0.925, 40), 1) == 8.6
    assert intervals.noise_floor(1.0, 2) == 0.5  # the half-width (0.33) is less than one image
    assert intervals.noise_floor(0.9, 0) == 1.0
    assert intervals.noise_floor(0.98, 360) < intervals.noise_floor(0.98, 40)


def test_bootstrap_covers_the_true_score():
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for trial in range(40):
        per_image = list(rng.random(150) < 0.8)
        low, high = intervals.bootstrap(per_image, lambda items: float(np.mean(items)), rounds=300, seed=trial)
        hits += low <= 0.8 <= high
        widths.append(high - low)
        wilson = intervals.wilson(float(np.mean(per_image)), 150)
        assert abs((high - low) - (wilson[1] - wilson[0])) < 0.05  # the bootstrap of a mean ~ Wilson's width
    assert hits >= 34  # 95% intervals: at least 85% of 40 trials
    assert intervals.bootstrap([], len) == (0.0, 1.0)


# -- the sensitivity report's noise ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(lenet5, digits28):
    """LeNet-5's exact analysis on 40 validation images (one image = 2.5 points)."""
    return analyze(lenet5, digits28, SensitivityConfig(val_size=40)).to_dict()


def test_a_tiny_validation_split_says_what_it_cannot_resolve(tiny):
    noise = tiny["noise"]
    assert noise["val_images"] == 40 and noise["step"] == pytest.approx(0.025)
    assert noise["floor"] == pytest.approx(intervals.noise_floor(tiny["base_accuracy"], 40))
    assert noise["floor"] > 0.02
    largest = max(tiny["base_accuracy"] - a for row in tiny["layers"].values() for a in row["sparsity"].values())
    assert noise["resolves"] == (largest > noise["floor"])
    floor_text = f"{100 * noise['floor']:.1f}"
    assert noise["message"].startswith("40 validation images: one image is 2.5 points and drops under")
    assert f"{floor_text} points are within noise" in noise["message"] and "--val-size" in noise["message"]
    # the report's checked reader keeps it; a report written before it existed gets the same from its config
    assert check_report(tiny)["noise"] == noise
    old = {key: value for key, value in tiny.items() if key != "noise"}
    assert report_noise(old) == noise
    assert report_noise({**old, "config": {"val_size": 40}}) == noise  # older still: the size asked
    assert report_noise({**old, "config": {}}) == {}  # nothing known: nothing claimed
    for bad in ({"val_images": -1}, {**noise, "floor": float("nan")}, {**noise, "resolves": "yes"}, [1]):
        with pytest.raises(SensitivityReportError, match="noise"):
            check_report({**tiny, "noise": bad})
    # split by layer and merged, as the engine's workers do: the merged report says the same
    names = list(tiny["layers"])
    parts = [{**tiny, "layers": {n: tiny["layers"][n]}} for n in names]
    assert merge_reports(parts)["noise"] == noise


def test_a_large_split_that_resolves_its_drops_says_nothing():
    layers = {"fc": {"sparsity": {"0.5": 0.97, "0.9": 0.80}, "clusters": {}}}
    noise = noise_of(0.98, 359, layers)
    assert noise["resolves"] and noise["floor"] < 0.02 and noise["message"] == ""
    flat = noise_of(0.98, 359, {"fc": {"sparsity": {"0.9": 0.98}, "clusters": {}}})
    assert not flat["resolves"] and "more than the largest drop it measured" in flat["message"]


# -- the solver: a gain within noise is no gain, and an unresolved curve is not free ----------------------------

SPARSITIES = ("0.0", "0.5", "0.8", "0.9", "0.95")
CLUSTERS = ("256", "16", "4", "2")


def _report(handle, gains: bool) -> dict:
    """A 40-image report (base 92.5%) where every point is within noise of the base: with `gains`, the harsh
    points of the first layer score above the base (as the issue's ResNet-18 showed), else at the base."""
    layers = {}
    for index, name in enumerate(handle.prunable_layers()):
        sparsity = {key: 0.925 for key in SPARSITIES}
        if gains and index == 0:
            sparsity.update({"0.8": 1.0, "0.9": 0.975, "0.95": 1.0})
        clusters = {key: (0.95 if gains and index == 0 and key == "2" else 0.925) for key in CLUSTERS}
        layers[name] = {"sparsity": sparsity, "clusters": clusters}
    return {"base_accuracy": 0.925, "layers": layers, "config": {"val_images": 40}}


def test_noise_aware_drops():
    floor = 0.086
    assert noise_aware_drops([0.0, -0.05, -0.075, 0.0], 0.0) == [0.0, 0.0, 0.0, 0.0]  # gains are zero
    ramp = noise_aware_drops([0.0, -0.05, -0.075, 0.0], floor)  # unresolved: not measured zero
    assert ramp[1] == 0.0 and ramp[-1] == pytest.approx(0.5 * floor) and ramp == sorted(ramp)
    resolved = noise_aware_drops([0.0, 0.0, 0.025, 0.0, 0.3], floor)
    assert resolved[-1] == 0.3 and resolved[1:4] == sorted(resolved[1:4]) and resolved[3] < 0.5 * floor
    assert noise_aware_drops([0.0, 0.01, 0.0], 0.0) == [0.0, 0.01, 0.01]  # no noise: the measured, monotone


def test_the_solver_never_plans_on_a_gain_within_noise(lenet5):
    stats = model_stats(lenet5)
    with_gains, flat = _report(lenet5, True), _report(lenet5, False)
    for kind, target in (("compressed_bytes", stats.fp32_bytes / 30), ("accuracy_drop", 0.01),
                         ("accuracy_drop", 0.05)):
        chosen = solve(stats, grids_from_report(with_gains), kind, target)
        same = solve(stats, grids_from_report(flat), kind, target)
        assert chosen["settings"] == same["settings"], kind  # the gains changed nothing
        assert chosen["predicted_drop"] == pytest.approx(same["predicted_drop"])
    # a one-point budget on curves that resolve nothing: not every layer at 95% sparsity and 2 values
    budget = solve(stats, grids_from_report(with_gains), "accuracy_drop", 0.01)
    assert budget["predicted_drop"] <= 0.01 + 1e-9
    assert set(budget["settings"].values()) != {(0.95, 2)}


def test_a_plan_on_unresolved_curves_is_not_promised_no_loss(lenet5):
    report = _report(lenet5, True)
    harshest = {name: (0.95, 2) for name in lenet5.prunable_layers()}
    prediction = predict(report, harshest, test_images=360)
    floor = intervals.noise_floor(0.925, 40)
    assert prediction["raw_drop"] > 0 and prediction["drop"] > 0.01
    assert prediction["accuracy"] < 0.925
    # the range holds the noise: the drop could be far larger than predicted
    assert prediction["accuracy_low"] < prediction["accuracy"] - floor
    assert 0.0 <= prediction["accuracy_low"] <= prediction["accuracy"] <= prediction["accuracy_high"] <= 1.0
    assert "within noise" in prediction["warning"]
    # the solver's drop and the predictor's raw drop read the same noise-aware curves
    planned = solve(model_stats(lenet5), grids_from_report(report), "compressed_bytes",
                    model_stats(lenet5).fp32_bytes / 30)
    assert predict(report, planned["settings"])["raw_drop"] == pytest.approx(planned["predicted_drop"], abs=1e-9)


# -- the predictor: a range within [0, 100] that holds the noise; a degenerate refit refused --------------------


@pytest.mark.parametrize("base", [0.02, 0.5, 0.925, 1.0])
def test_the_range_stays_within_0_and_100(lenet5, base):
    names = list(lenet5.prunable_layers())
    report = {"base_accuracy": base, "config": {"val_images": 40},
              "layers": {n: {"sparsity": {"0.0": base, "0.5": base, "0.95": max(0.0, base - 0.6)},
                             "clusters": {"2": max(0.0, base - 0.3), "256": base}} for n in names}}
    degenerate = [(0.0, 44.4), (0.0, 40.0), (0.0, 47.5), (0.0, 45.0)]
    for settings in ({n: (0.95, 2) for n in names}, {n: (0.0, 256) for n in names}, {names[0]: (0.5, None)}):
        for history in (None, degenerate):
            p = predict(report, settings, history=history, test_images=40)
            for key in ("accuracy", "accuracy_low", "accuracy_high"):
                assert 0.0 <= p[key] <= 1.0, (key, p)
            assert p["accuracy_low"] <= p["accuracy"] <= p["accuracy_high"]
            assert p["low"] <= p["drop"] <= p["high"]
            assert p["accuracy_low"] == pytest.approx(base - p["high"])
            assert p["accuracy_high"] == pytest.approx(base - p["low"])


def test_the_refit_refuses_a_degenerate_history():
    # the issue's four runs: every raw drop 0 (gains within noise), measured 40-48 points
    issue = [(0.0, 44.4), (0.0, 40.0), (0.0, 47.5), (0.0, 45.0)]
    recovered = [(r, 0.0) for r in (1.0, 4.0, 9.0, 16.0)]  # c = 0, the edge of its grid
    for history, why in ((issue, "distinct"), (recovered, "edge")):
        cal = calibration(history)
        assert cal["source"] == "demo runs" and cal["c"] == pytest.approx(PRIOR_C)
        assert "do not support a fit" in cal["warning"] and why in cal["warning"]
    report = {"base_accuracy": 0.98, "config": {"val_images": 1000},
              "layers": {"fc": {"sparsity": {"0.0": 0.98, "0.5": 0.97, "0.9": 0.9}, "clusters": {}}}}
    shown = predict(report, {"fc": (0.5, None)}, history=recovered, test_images=1000)
    assert shown["basis"] == "demo runs" and "do not support a fit" in shown["warning"]
    assert "0.00 x" not in shown["model"]
    fine = predict(report, {"fc": (0.5, None)}, test_images=1000)
    assert fine["basis"] == "demo runs" and fine["warning"] == ""
    nothing = predict(report, {"fc": (0.5, None)}, {"fc": {"quantizer": "pq", "n_codewords": 16}})
    assert nothing["basis"] == "none" and "nothing is predicted" in nothing["warning"]


def test_the_range_includes_the_measurement_noise():
    report = {"base_accuracy": 0.98, "config": {"val_images": 40},
              "layers": {"fc": {"sparsity": {"0.0": 0.98, "0.5": 0.98, "0.9": 0.9}, "clusters": {}}}}
    small = predict(report, {"fc": (0.5, None)}, test_images=40)
    large = predict({**report, "config": {"val_images": 5000}}, {"fc": (0.5, None)}, test_images=5000)
    below_small = small["accuracy"] - small["accuracy_low"]
    below_large = large["accuracy"] - large["accuracy_low"]
    # the base measured on 40 images and the run on 40 more: the range reaches below by more than that noise
    assert below_small >= math.hypot(intervals.noise_floor(0.98, 40), intervals.noise_floor(small["accuracy"], 40))
    assert below_small > 3 * below_large
    # the test split's own Wilson half-width is inside the range
    low, high = intervals.wilson(large["accuracy"], 5000)
    assert below_large >= large["accuracy"] - low


# -- the split size travels with the metrics ------------------------------------------------------------------


def test_measure_records_the_images_and_check_metrics_accepts_them(lenet5, digits28):
    measured = lenet5.measure(digits28, "test", latency=False)
    assert measured["images"] == len(digits28.test)
    low, high = intervals.wilson(measured["accuracy"], measured["images"])
    assert low < measured["accuracy"] <= high
    metrics = {"before": {"accuracy": 0.98, "fp32_bytes": 100, "images": 360},
               "after": {"accuracy": 0.97, "compressed_bytes": 10, "images": 360}, "compression_ratio": 10.0}
    checked, problem = runfolder.check_metrics(metrics, "compress")
    assert problem is None and checked["after"]["images"] == 360
    old = {**metrics, "before": {"accuracy": 0.98, "fp32_bytes": 100}}  # a run from before the field
    assert runfolder.check_metrics(old, "compress")[1] is None
    for bad in (-1, 2.5, True, "40", 10**12):
        _, problem = runfolder.check_metrics({**metrics, "after": {**metrics["after"], "images": bad}}, "compress")
        assert problem is not None, bad
    assert math.isfinite(measured["accuracy"])
