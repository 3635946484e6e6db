"""Per-layer integer bits everywhere the other methods are (issue 27, item 2): the sensitivity's bits axis (exact
and estimate), the int layer's size estimate against real files, the solver's mixed precision against uniform bits
at the same bytes, the predicted accuracy of int layers, sweeps over bits, and the Plan page's bits select."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch
from complab.analysis.estimate import estimate, int_quantizer, model_stats, plan_settings
from complab.analysis.grid import grid_weight
from complab.analysis.predict import predict
from complab.analysis.sensitivity import ExactScorer, SensitivityConfig, analyze
from complab.analysis.sensitivity_report import SensitivityReportError, check_report
from complab.analysis.solver import SOLVER_AXES, grids_from_report, solve
from complab.analysis.targets import average_bits_bytes, parse_targets, solve_target, target_plan
from complab.errors import CompressionLabError
from complab.methods.int_quant import dequantize, quantize_weight
from complab.methods.prune import magnitude_mask
from complab.models.compact_writer import Products, write_compact
from complab.steps.int_quant import IntStep
from complab.storage.int_section import IntWeights

GRID = {"sparsities": (0.0, 0.5, 0.9), "n_clusters": (4, 16), "bits": (8, 6, 4, 3, 2), "val_size": 256}


@pytest.fixture(scope="module")
def reports(lenet5, digits28):
    exact = analyze(lenet5, digits28, SensitivityConfig(**GRID)).to_dict()
    # bits are calibrated last (a budget too short for them borrows the sharing curve): the budget's first guess of a
    # point's cost, a forward timed on this loaded machine, is replaced by a small one so that the plan affords every
    # kind's points; the budget as measured (60 s) still stops it
    from complab.analysis import fisher

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fisher, "_time_forward", lambda *args: 1e-5)
        estimated = analyze(lenet5, digits28, SensitivityConfig(**GRID, mode="estimate",
                                                                calibration_seconds=60.0)).to_dict()
    return exact, estimated


@pytest.fixture(scope="module")
def stats(lenet5):
    return model_stats(lenet5)


def without_bits(report: dict) -> dict:
    old = copy.deepcopy(report)
    for row in old["layers"].values():
        row.pop("bits", None)
        for key in ("measured", "loss_increase"):
            if isinstance(row.get(key), dict):
                row[key].pop("bits", None)
    old["config"].pop("bits", None)
    return old


def test_bits_axis_is_measured_in_exact_mode(reports, lenet5, digits28):
    exact, _ = reports
    check_report(exact)
    for row in exact["layers"].values():
        assert set(row["bits"]) == {"8", "6", "4", "3", "2"}
    # a point of the axis is the score of the layer's weight quantized per channel, measured like the others
    scorer = ExactScorer(lenet5, digits28, SensitivityConfig(**GRID))
    original = scorer.layers["fc2"].detach().clone()
    quantized = grid_weight(original, "bits", 2)
    levels, scales = quantize_weight(original, 2, "channel", "mse")
    assert torch.equal(quantized, dequantize(levels, scales))
    assert set(torch.unique(levels).tolist()) <= {-1, 0, 1}
    assert scorer.score("fc2", quantized) == exact["layers"]["fc2"]["bits"]["2"]
    # 8 bits is within a couple of images of the original on every layer; 2 bits costs more than 8 somewhere
    base = exact["base_accuracy"]
    assert all(base - row["bits"]["8"] <= 2 / 256 for row in exact["layers"].values())


def test_bits_axis_is_estimated_with_measured_calibration_points(reports, lenet5, digits28):
    exact, estimated = reports
    check_report(estimated)
    assert estimated["config"]["mode"] == "estimate"
    for name, row in estimated["layers"].items():
        assert set(row["bits"]) == set(exact["layers"][name]["bits"])
        assert set(row["loss_increase"]["bits"]) == set(row["bits"])
        increases = [row["loss_increase"]["bits"][b] for b in ("8", "6", "4", "3", "2")]
        assert increases == sorted(increases) and increases[-1] > 0  # fewer bits, larger Fisher loss increase
    calibration = estimated["config"]["calibration"]
    assert "bits" in calibration
    measured = [(name, key) for name, row in estimated["layers"].items() for key in row["measured"].get("bits", [])]
    assert measured  # the bits curve is calibrated on points of its own
    scorer = ExactScorer(lenet5, digits28, SensitivityConfig(**{**GRID, "val_size": calibration["images"]},
                                                             bn_batches=calibration["bn_batches"]))
    name, key = measured[0]  # a measured point is the exact mode's score on the calibration images
    weight = grid_weight(scorer.layers[name].detach().clone(), "bits", int(key))
    assert scorer.score(name, weight) == estimated["layers"][name]["bits"][key]


def test_reports_without_the_bits_axis_keep_working(reports, stats):
    exact, _ = reports
    old = without_bits(exact)
    check_report(old)
    grids = grids_from_report(old)
    assert all(grid.bits == [] for grid in grids.values())
    solved = solve(stats, grids, "compressed_bytes", stats.fp32_bytes / 20, axes=SOLVER_AXES)
    assert solved["met"] and solved["bits"] == {}  # no widths to choose from: sharing and pruning only
    settings = {name: (0.0, None) for name in grids}
    prediction = predict(old, settings, {"fc1": int_quantizer(4)}, finetuned=False)
    assert prediction["unpredicted"] == ["fc1"]  # no bits curve: said, not guessed
    with pytest.raises(CompressionLabError, match="no bits curves"):
        solve_target(stats, old, "bits", 3)
    bad = copy.deepcopy(exact)
    bad["layers"]["fc1"]["bits"]["9"] = 0.5
    with pytest.raises(SensitivityReportError, match="integer width"):
        check_report(bad)


def int_file_bytes(handle, bits: int, sparsity: float) -> int:
    """The compact file of the model with every layer pruned at `sparsity` and stored as `bits`-bit integers."""
    work = handle.clone()
    ints = {}
    with torch.no_grad():
        for name, weight in work.prunable_layers().items():
            if sparsity:
                weight.mul_(magnitude_mask(weight, sparsity))
            levels, scales = quantize_weight(weight, bits, "channel", "mse")
            weight.copy_(dequantize(levels, scales).reshape(weight.shape))
            ints[f"{name}.weight"] = IntWeights(levels, scales, bits)
    with tempfile.TemporaryDirectory() as folder:
        return write_compact(work, Path(folder) / "int.clab", products=Products(int_weights=ints))


@pytest.mark.parametrize(("bits", "sparsity"), [(8, 0.0), (4, 0.0), (3, 0.0), (4, 0.7)])
def test_int_estimate_is_within_ten_percent_of_the_file(lenet5, stats, bits, sparsity):
    actual = int_file_bytes(lenet5, bits, sparsity)
    step = IntStep(bits={name: bits for name in stats.layers})
    settings, quantizers, _ = plan_settings([step], list(stats.layers))
    assert quantizers == {name: int_quantizer(bits) for name in stats.layers}  # the int step's encoding routed
    settings = {name: (sparsity, None) for name in settings}
    estimated = estimate(stats, settings, quantizers)["compressed_bytes"]
    # measured: within 3% (dense) and 3% (70% pruned) on LeNet-5 and the demo VGG at 2-8 bits
    assert abs(estimated / actual - 1) < 0.10, (estimated, actual)


def test_mixed_precision_beats_uniform_three_bits_at_its_bytes(reports, stats):
    for report in reports:
        uniform = solve_target(stats, report, "uniform", 3)
        mixed = solve_target(stats, report, "bits", 3)
        target = average_bits_bytes(stats, 3)
        assert uniform["compressed_bytes"] == round(target)
        assert mixed["met"] and mixed["compressed_bytes"] <= target
        assert set(mixed["bits"]) == set(stats.layers) and len(set(mixed["bits"].values())) > 1  # mixed widths
        assert all(k is None and s == 0.0 for s, k in mixed["settings"].values())  # integers only, no pruning

        def raw(solved, report=report):
            quantizers = {name: int_quantizer(b) for name, b in solved["bits"].items()}
            return predict(report, solved["settings"], quantizers, finetuned=False)

        assert raw(mixed)["accuracy"] > raw(uniform)["accuracy"]
        assert raw(mixed)["unpredicted"] == []
        plan = target_plan(stats, report, "bits", 3, int_options={"activation_bits": 8}).plan
        (step,) = plan.steps
        assert step.type == "int" and step.bits == mixed["bits"] and step.activation_bits == 8


def test_solver_chooses_bits_for_a_size_target_only_when_asked(reports, stats):
    exact, _ = reports
    grids = grids_from_report(exact)
    target = stats.fp32_bytes / 20
    default = solve(stats, grids, "compressed_bytes", target)
    assert default["bits"] == {}  # sparsity and clusters, as before the axis
    mixed = solve(stats, grids, "compressed_bytes", target, axes=SOLVER_AXES)
    assert mixed["met"] and mixed["compressed_bytes"] <= target
    for name, bits in mixed["bits"].items():
        assert mixed["settings"][name][1] is None  # an int layer is not also clustered
        assert bits in grids[name].bits
    quantizers = {name: int_quantizer(b) for name, b in mixed["bits"].items()}
    assert estimate(stats, mixed["settings"], quantizers)["compressed_bytes"] == mixed["compressed_bytes"]


def test_bit_targets_parse_and_sweep(reports, stats):
    from complab import service

    assert parse_targets("uniform:8,6,4,3") == ("uniform", [8.0, 6.0, 4.0, 3.0])
    assert parse_targets("bits:2,3.5") == ("bits", [2.0, 3.5])
    for bad in ("uniform:3.5", "bits:1", "uniform:9"):
        with pytest.raises(CompressionLabError):
            parse_targets(bad)
    spec = service.source_spec("demo:lenet5", data="digits")
    jobs, labels = service.plan_sweep(spec, stats, reports[0], "uniform", [8.0, 4.0], "mixed")
    assert labels == ["uniform:8", "uniform:4"]
    for job, bits in zip(jobs, (8, 4), strict=True):
        (step,) = job["plan"]["steps"]
        assert step["type"] == "int" and set(step["bits"].values()) == {bits}
        assert job["predicted"]["unpredicted"] == []


def test_plan_page_bits_select_moves_the_estimate(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/plan.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    key = next(s.key for s in at.selectbox if s.key.endswith("::b::fc1"))
    assert at.selectbox(key=key).value == "off"  # a new row is not integer (it is clustered by default)
    before = {m.label: m.value for m in at.metric}["Estimated file"]
    at.selectbox(key=key).select(2).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key=key.replace("::b::", "::k::")).value == "off"  # integers replace the clusters
    after = {m.label: m.value for m in at.metric}["Estimated file"]
    assert after != before
    at.selectbox(key=key).select(8).run()
    wider = {m.label: m.value for m in at.metric}["Estimated file"]

    def size(text):
        return int(text.replace(",", "").split()[0])

    assert size(wider) > size(after)  # 8 bits per weight of fc1 cost more than 2
