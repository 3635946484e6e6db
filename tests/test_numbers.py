"""The one number formatter (complab/ui/numbers.py): one test per rule the app and the report rely on."""

import pytest
from complab.intervals import difference, wilson
from complab.ui import numbers


def test_percent_with_its_interval_and_split_size():
    low, high = wilson(0.475, 40)
    assert numbers.percent(0.475) == "47.5%"
    assert numbers.interval(0.475, 40) == f"{100 * low:.1f}-{100 * high:.1f}%"
    assert numbers.score(0.475, 40) == f"47.5% (95% CI {100 * low:.1f}-{100 * high:.1f}%, 40 images)"
    assert numbers.score(0.475, 10_000).endswith("10,000 images)")
    assert numbers.score(0.475, None) == "47.5%"  # an old run without the split's size: no interval invented
    assert numbers.interval(0.475, None) == ""


def test_counts_have_thousands_separators():
    assert numbers.count(4816896) == "4,816,896"
    assert numbers.count(999) == "999"
    assert numbers.signed(-73493) == "-73,493"
    assert numbers.signed(1200) == "+1,200"
    assert numbers.human(431080) == "431,080"
    assert numbers.human(8.17e9, "FLOPs") == "8.17 GFLOPs"


def test_a_change_that_rounds_to_zero_is_no_change_not_minus_zero():
    assert numbers.points(-0.00001) == "no change"
    assert numbers.points(0.0004) == "no change"
    assert numbers.points(0.014) == "+1.4 pts"
    assert numbers.points(-0.003) == "-0.3 pts"
    assert "-0.0" not in numbers.points(-0.0004)
    assert numbers.change(1000, 1001) == "no change"
    assert numbers.change(1000, 150) == "-85%"
    assert numbers.change(100, 250) == "+150%"
    assert numbers.change(0, 10) == "-"


def test_a_speed_ratio_within_noise_of_one_is_same_speed():
    assert numbers.speed(1.0) == "same speed"
    assert numbers.speed(1.04) == "same speed"
    assert numbers.speed(0.96) == "same speed"
    assert numbers.speed(1.4) == "1.4x faster"
    assert numbers.speed(1 / 1.3) == "1.3x slower"
    assert numbers.speed(float("nan")) == "not measured"
    assert numbers.times(39.14) == "39.1x" and numbers.times(None) == "-"


@pytest.mark.parametrize(("metric", "before", "after", "meaning"), [
    ("flops", 1000, 150, "better"),  # -85% FLOPs is good: green
    ("sparse_flops", 1000, 150, "better"),
    ("compressed_bytes", 1000, 1200, "worse"),
    ("latency_ms", 2.0, 1.0, "better"),
    ("accuracy", 0.99, 0.97, "worse"),
    ("accuracy", 0.97, 0.99, "better"),
    ("accuracy", 0.99, 0.99, "same"),
])
def test_colours_mean_better_or_worse_whatever_the_sign(metric, before, after, meaning):
    assert numbers.tone(metric, after - before) == meaning
    assert numbers.change_colour(metric, before, after) == numbers.TONE_COLOURS[meaning]
    if meaning != "same":  # st.metric: "normal" draws a rise green, "inverse" draws a fall green
        expected = "normal" if numbers.HIGHER_IS_BETTER[metric] else "inverse"
        assert numbers.delta_color(metric, after - before) == expected
    else:
        assert numbers.delta_color(metric, after - before) == "off"


def test_colours_of_a_change_within_threshold_are_grey():
    assert numbers.delta_color("accuracy", 0.0004, threshold=0.0005) == "off"
    assert numbers.tone("flops", -3, threshold=5) == "same"
    assert numbers.change_colour("flops", 1000, 1001) == numbers.TONE_COLOURS["same"]  # "no change": grey


def test_verdict_within_noise_says_the_noise_and_the_split():
    # 40 images: 92.5% -> 90.0% is one image, far inside the noise
    text = numbers.verdict(0.925, 40, 0.90, 40)
    low, high = difference(0.925, 40, 0.90, 40)
    assert low < 0 < high
    assert text == f"within noise (±{100 * (high - low) / 2:.1f} pts on 40 test images)"


def test_verdict_costs_and_gains_points_when_the_interval_excludes_zero():
    cost = numbers.verdict(0.99, 10_000, 0.976, 10_000)
    low, high = difference(0.99, 10_000, 0.976, 10_000)
    assert low > 0
    assert cost.startswith("costs 1.4 points (95% CI ") and cost.endswith("pts on 10,000 test images)")
    assert f"{100 * low:.1f}-{100 * high:.1f}" in cost
    gain = numbers.verdict(0.90, 10_000, 0.92, 10_000)
    assert gain.startswith("gains 2.0 points (95% CI ")
    assert numbers.verdict(0.9, 500, 0.9, 1000).endswith("on 500 and 1,000 test images)")


def test_verdict_without_split_size_says_noise_is_unknown():
    assert numbers.verdict(0.99, None, 0.976, None) == \
        "costs 1.4 points (test-set size not recorded, so its noise is unknown)"
    assert numbers.verdict(0.99, None, 0.99, 0).startswith("no change (")
    # a change under a tenth of a point keeps two decimals: never "gains 0.0 points"
    assert numbers.verdict(0.9, None, 0.9008, None).startswith("gains 0.08 points")
