"""The plan page's estimated "where the bytes went": its bars add up to the estimate's total, and after a real run
with the same plan each estimated part is close to the part the real file's sections count (report.bytes_waterfall).

Measured on demo:lenet5 with the quick recipe (prune 90% / 50%, 16 shared values, 3 + 1 fine-tuning epochs), estimate
vs real bytes per bar: pruned -1,541,800 both, codebooks 256 both, framing -3,181 both; indices -152,011 vs -152,041
(0.02%); section headers 158 vs 163; zstd (the biases, which fine-tuning changes) -220 vs -199; the positions stream
as coded (positions + entropy bars) 17,332 vs 18,745 (-7.5%; 0.0% with no fine-tuning). The split between those two
bars is the encoder's choice of field width, which it takes from the real gaps (pruned weights cluster): fixed-width
positions 33,195 estimated vs 53,477 real, so only their sum is compared. The file header 238 vs 640 (a run's meta
adds its plan and data reference); the file 48,273 vs 50,084 bytes (-3.6%). Tolerances below: those, with room.
"""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_plan():
    from complab.plan import Plan

    return Plan.from_json((ROOT / "assets" / "recipes" / "quick.json").read_text())


@pytest.fixture(scope="module")
def estimated(lenet5, quick_plan):
    from complab.analysis.estimate import estimate, estimated_waterfall, model_stats
    from complab.ui.plan_form import settings_from_plan

    stats = model_stats(lenet5)
    settings = settings_from_plan(quick_plan, list(lenet5.prunable_layers()))
    est = estimate(stats, settings)
    return est, estimated_waterfall(stats, settings, compressed_bytes=est["compressed_bytes"])


def test_estimated_bars_add_up_to_the_estimated_total(estimated):
    est, waterfall = estimated
    assert waterfall.title.startswith("Estimated")
    assert waterfall.start == est["fp32_bytes"]
    assert waterfall.end == est["compressed_bytes"]
    assert waterfall.start + sum(value for _, value in waterfall.bars()) == est["compressed_bytes"]


def test_estimated_bars_add_up_to_a_total_the_channel_section_changed(lenet5):
    from complab.analysis.estimate import estimate, estimated_waterfall, model_stats

    stats = model_stats(lenet5)
    settings = {name: (0.7, None) for name in stats.layers}  # sparse fp32 values: the zstd bar
    est = estimate(stats, settings)
    shown = est["compressed_bytes"] - 5_000  # e.g. channels removed: the difference is the "structure" bar
    waterfall = estimated_waterfall(stats, settings, compressed_bytes=shown)
    assert waterfall.start + sum(waterfall.steps.values()) == shown
    assert abs(waterfall.steps["structure"] + 5_000) <= 1


def test_shared_biases_are_a_bar_of_their_own_not_structure(lenet5):
    """bias_clusters changes the estimate's total through the biases: the waterfall counts that saving under the
    indices (values become indices and a codebook), with no 'structure' bar, and still adds up."""
    from complab.analysis.estimate import estimate, estimated_waterfall, model_stats

    stats = model_stats(lenet5)
    settings = {name: (0.9, 8) for name in stats.layers}
    plain, shared = estimate(stats, settings), estimate(stats, settings, bias_clusters=16)
    assert shared["compressed_bytes"] < plain["compressed_bytes"]  # LeNet-5's fc1 bias (500 values) is shared
    waterfall = estimated_waterfall(stats, settings, compressed_bytes=shared["compressed_bytes"], bias_clusters=16)
    assert waterfall.start + sum(waterfall.steps.values()) == shared["compressed_bytes"]
    assert waterfall.steps.get("structure", 0) == 0
    unshared = estimated_waterfall(stats, settings, compressed_bytes=plain["compressed_bytes"])
    saved = plain["compressed_bytes"] - shared["compressed_bytes"]
    assert abs((unshared.steps["indices"] - waterfall.steps["indices"]) - saved) <= 2


def test_estimated_parts_are_close_to_the_real_file(estimated, lenet5, digits28, quick_plan, tmp_path):
    from complab.analysis import report
    from complab.pipeline import compress

    est, waterfall = estimated
    result = compress(lenet5, quick_plan, digits28, tmp_path, latency=False)
    real = report.bytes_waterfall(report.file_rows(tmp_path), result.metrics["before"]["fp32_bytes"])
    guess = waterfall.steps
    assert real.start == waterfall.start
    print(json.dumps({"estimated": guess, "real": real.steps}))
    assert abs(guess.get("zstd", 0) - real.steps.get("zstd", 0)) <= 50  # the biases, fine-tuned by the run
    for key in ("pruned", "codebooks", "stored", "framing", "structure"):
        assert guess.get(key, 0) == real.steps.get(key, 0), key
    assert abs(guess["indices"] - real.steps["indices"]) <= 0.002 * abs(real.steps["indices"])
    assert abs(guess["sections"] - real.steps["sections"]) <= 20
    coded = guess["positions"] + guess["entropy"]  # the positions stream as coded
    assert abs(coded - (real.steps["positions"] + real.steps["entropy"])) <= 0.1 * coded
    assert 0 < real.steps["header"] - guess["header"] <= 1_000  # the run's plan and data reference
    assert abs(waterfall.end - real.end) <= 0.05 * real.end
