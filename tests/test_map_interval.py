"""A detector's mAP carries its 95% bootstrap interval (issue 26): measured over the validator's own per-image stats,
checked in metrics.json, and said in the report's headline and verdict and on the Runs page."""

import pytest
import torch
from complab import runfolder
from complab.methods.prune import magnitude_mask
from complab.ui import report
from complab.ui.runs import change_from_original


@pytest.fixture(scope="module")
def damaged_scores(tmp_path_factory):
    """The demo detector with 60% of its weights zeroed (an mAP50 well inside 0..1, so its interval has a width)
    scored on 20 validation images, and the per-image stats its bootstrap saw."""
    from complab.data.shapes import write_dataset
    from complab.models import detector

    tmp = tmp_path_factory.mktemp("mapci")
    yaml = write_dataset(tmp / "shapes", train=0, val=20)
    work = detector.load_detector().clone()
    with torch.no_grad():
        for weight in work.prunable_layers().values():
            weight.mul_(magnitude_mask(weight, 0.6))
    seen = {}
    original = detector.map_intervals

    def spy(per_image, *args, **kwargs):
        seen["per_image"] = per_image
        return original(per_image, *args, **kwargs)

    detector.map_intervals = spy
    try:
        out = detector.evaluate_detector(work, yaml, workdir=tmp)
    finally:
        detector.map_intervals = original
    return out, seen["per_image"]


def test_bootstrap_over_captured_images_reproduces_the_validators_map(damaged_scores):
    from complab.models.detector import detection_map, map_intervals

    out, per_image = damaged_scores
    assert len(per_image) == out["images"] == 20
    map50, map50_95 = detection_map(per_image)  # the statistic on the full list, no resampling
    assert abs(map50 - out["map50"]) < 1e-6 and abs(map50_95 - out["map50_95"]) < 1e-6
    assert 0.05 < out["map50"] < 0.95  # the damage left a score with room on both sides
    for key, point in (("map50_interval", out["map50"]), ("map50_95_interval", out["map50_95"])):
        low, high = out[key]
        assert 0 <= low <= point <= high <= 1 and high - low > 0.01, (key, out[key], point)
    # the same seed gives the same interval; stats that do not reproduce the validator's mAP give none
    assert map_intervals(per_image, out["map50"], out["map50_95"]) == {
        key: out[key] for key in ("map50_interval", "map50_95_interval")}
    assert map_intervals(per_image, out["map50"] + 0.01, out["map50_95"]) == {}
    assert map_intervals(None, out["map50"], out["map50_95"]) == {}


def metrics_with(before_span, after_span, before=0.90, after=0.80, images=40) -> dict:
    sides = {"before": {"accuracy": before, "map50": before, "map50_95": before / 2, "fp32_bytes": 1000,
                        "images": images},
             "after": {"accuracy": after, "map50": after, "map50_95": after / 2, "compressed_bytes": 100,
                       "images": images}}
    for side, span in (("before", before_span), ("after", after_span)):
        if span is not None:
            sides[side]["map50_interval"] = span
            sides[side]["map50_95_interval"] = [span[0] / 2, span[1] / 2]
    return {**sides, "compression_ratio": 10.0, "task": "detect", "model": "detector:demo", "data": "shapes",
            "score_name": "mAP50"}


def test_check_metrics_accepts_good_intervals_and_refuses_damaged_ones():
    good = metrics_with([0.85, 0.94], [0.72, 0.87])
    checked, problem = runfolder.check_metrics(good, "compress")
    assert problem is None and checked["after"]["map50_interval"] == [0.72, 0.87]
    assert runfolder.check_metrics(metrics_with(None, None), "compress")[1] is None  # an older run
    for bad in ([0.9, 0.8], [0.1], [0.1, 0.2, 0.3], [-0.1, 0.5], [0.5, 1.5], ["0.1", 0.2], [0.1, float("nan")],
                [True, 0.5], "0.1-0.2", 0.5):
        metrics = metrics_with([0.85, 0.94], [0.72, 0.87])
        metrics["after"]["map50_95_interval"] = bad
        assert runfolder.check_metrics(metrics, "compress")[1] is not None, bad


def test_report_says_the_intervals_and_judges_the_change_by_them():
    apart = metrics_with([0.85, 0.94], [0.72, 0.87 - 0.03])
    text = report.headline(apart)
    assert "mAP50 0.900 (95% CI 0.850-0.940, bootstrap over 40 images) -> 0.800 (95% CI 0.720-0.840" in text
    verdict = report.verdict_sentence(apart)
    assert verdict.startswith("Verdict: compression costs 10.0 points of mAP50") and "do not overlap" in verdict
    overlapping = metrics_with([0.80, 0.96], [0.70, 0.88])
    assert report.verdict_sentence(overlapping).startswith("Verdict: mAP50 within noise (the 95% bootstrap")
    old = metrics_with(None, None)  # a run from before the field: the numbers alone, and says why no verdict
    assert "95% CI" not in report.headline(old)
    assert "did not record its mAP's bootstrap interval" in report.verdict_sentence(old)


def test_runs_page_greys_a_detector_change_inside_its_intervals():
    overlapping = change_from_original(metrics_with([0.80, 0.96], [0.70, 0.88]), boxes=True)
    assert overlapping["colour"] == "gray" and overlapping["noise"] == "within noise"
    assert overlapping["interval"] == "mAP50 0.800 (95% CI 0.700-0.880, bootstrap over 40 images)"
    apart = change_from_original(metrics_with([0.85, 0.94], [0.72, 0.84]), boxes=True)
    assert apart["colour"] == "red" and apart["noise"] == ""
    old = change_from_original(metrics_with(None, None), boxes=True)
    assert old["colour"] == "red" and old["interval"] == ""


def test_map_help_says_the_recorded_interval_or_nothing():
    from complab.ui.numbers import map_help

    side = metrics_with([0.85, 0.94], [0.72, 0.84])["after"]
    assert map_help(side) == "0.800 (95% CI 0.720-0.840, bootstrap over 40 images)"
    assert map_help(side, "map50_95") == "0.400 (95% CI 0.360-0.420, bootstrap over 40 images)"
    assert map_help({**side, "map50_interval": [0.9, 0.1]}) is None  # damaged: no interval rather than a wrong one
    assert map_help(metrics_with(None, None)["after"]) is None
