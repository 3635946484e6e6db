"""Detectors through the whole pipeline: data refs, fine-tuning with masks, the compact file, mAP, jobs, CLI, boxes."""

import json

import pytest
import torch
from complab.errors import CompressionLabError, DataLoadError


@pytest.fixture(scope="module")
def small_yaml(tmp_path_factory):
    """A small shapes dataset (48 train / 24 val images) as a user's YOLO yaml."""
    from complab.data.shapes import ShapesConfig, write_dataset

    return write_dataset(tmp_path_factory.mktemp("small-shapes"), train=48, val=24, config=ShapesConfig(seed=7))


@pytest.fixture(scope="module")
def detector():
    from complab.models.detector import load_detector

    return load_detector()


@pytest.fixture(scope="module")
def compressed_run(detector, small_yaml, tmp_path_factory):
    from complab.data.detection import load_detection_data
    from complab.pipeline import compress
    from complab.plan import Plan

    plan = Plan.from_dict({"schema_version": 1, "name": "det-test", "seed": 0, "eval_split": "val", "steps": [
        {"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1, "finetune_epochs": 1, "lr": 0.0003},
        {"type": "cluster", "n_clusters": {"_default": 32}, "finetune_epochs": 1, "lr": 0.0001}]})
    data = load_detection_data(f"yolo:{small_yaml}")
    out = tmp_path_factory.mktemp("det-run")
    events = []
    result = compress(detector, plan, data, out, on_progress=lambda stage, f, v: events.append(stage), latency=False)
    return result, data, events


def test_detector_run_prunes_shares_and_measures_the_decoded_file(compressed_run, detector):
    result, data, events = compressed_run
    m = result.metrics
    assert m["task"] == "detect" and m["score_name"] == "mAP50"
    assert any(stage.startswith("prune round") for stage in events)
    assert "fine-tune shared values" in events
    # accuracy after = mAP50 of the model decoded from the file, equal to the in-memory compressed model's
    assert m["after"]["accuracy"] == m["after"]["map50"] == m["after"]["in_memory_accuracy"]
    assert 0.0 <= m["after"]["map50_95"] <= m["after"]["map50"] <= 1.0
    assert abs(m["weights_kept"] - 0.5) < 0.01
    assert m["after"]["compressed_bytes"] == result.path.stat().st_size
    assert m["compression_ratio"] > 3  # half the weights, 32 shared values; batch norm vectors stay raw
    # the head's prediction convolutions and DFL were never touched
    fused = result.handle.model
    for name in detector.skipped_layers():
        assert torch.count_nonzero(fused.get_submodule(name).weight) > 0
    for name, weight in result.handle.prunable_layers().items():
        assert len(torch.unique(weight[weight != 0])) <= 32, name


def test_decoded_detector_gives_the_same_boxes_as_the_in_memory_model(compressed_run):
    from complab.analysis.detections import predict
    from complab.models.detector import load_detector_file
    from PIL import Image

    result, data, _ = compressed_run
    again = load_detector_file(result.path)
    for path in data.val_images(limit=4):
        image = Image.open(path)
        a = predict(result.handle.model, image, 160, 0.1)
        b = predict(again.model, image, 160, 0.1)
        assert [(x.xyxy, x.cls, x.conf) for x in a] == [(x.xyxy, x.cls, x.conf) for x in b]


def test_fast_map_equals_ultralytics_validator(detector, small_yaml):
    from complab.data.detection import load_detection_data
    from complab.models.detection_metric import FastMap
    from complab.models.detector import evaluate_model

    data = load_detection_data(f"yolo:{small_yaml}")
    fast = FastMap(data, detector.imgsz)(detector.model)
    full = evaluate_model(detector.model, detector.imgsz, data.yaml_path)
    assert fast["map50"] == pytest.approx(full["map50"], abs=1e-6)
    assert fast["map50_95"] == pytest.approx(full["map50_95"], abs=1e-6)
    assert full["map50"] > 0.9


def test_detection_data_refs_fail_clearly(tmp_path, small_yaml):
    from complab.data.detection import load_detection_data

    with pytest.raises(DataLoadError, match="does not exist"):
        load_detection_data(f"yolo:{tmp_path}/missing.yaml")
    bad = tmp_path / "data.yaml"
    bad.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames: {{0: a}}\n")
    with pytest.raises(DataLoadError, match="never downloads"):
        load_detection_data(f"yolo:{bad}")
    with pytest.raises(DataLoadError, match="unknown detection dataset"):
        load_detection_data("coco")
    assert load_detection_data(f"yolo:{small_yaml}").num_classes == 4


def test_detector_jobs_check_trust_and_data(tmp_path, small_yaml):
    from complab.engine.jobs import validate

    plan = {"schema_version": 1, "steps": [{"type": "prune", "sparsity": 0.5}]}
    assert validate({"kind": "compress", "model": "detector:demo", "data": "shapes", "plan": plan})["trust"] is False
    weights = tmp_path / "yolo.pt"
    weights.write_bytes(b"not read")
    with pytest.raises(CompressionLabError, match="pickle that can run code"):
        validate({"kind": "compress", "model": f"detector:{weights}", "data": "shapes", "plan": plan})
    assert validate({"kind": "compress", "model": f"detector:{weights}", "trust": True, "data": f"yolo:{small_yaml}",
                     "plan": plan})["trust"] is True
    with pytest.raises(CompressionLabError, match="not a detection dataset"):
        validate({"kind": "compress", "model": "detector:demo", "data": "digits", "plan": plan})


def test_cli_refuses_an_untrusted_detector_and_evaluates_a_file(tmp_path, compressed_run, capsys):
    from complab.cli import main

    weights = tmp_path / "yolo.pt"
    weights.write_bytes(b"not read")
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"schema_version": 1, "steps": [{"type": "prune", "sparsity": 0.5}]}))
    assert main(["run", str(recipe), "--model", f"detector:{weights}", "--data", "shapes", "--out", str(tmp_path)]) == 2
    assert "--trust" in capsys.readouterr().err
    result, data, _ = compressed_run
    assert main(["eval", str(result.path), "--data", data.ref]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["map50"] == result.metrics["after"]["map50"]
    assert out["compressed_bytes"] == result.path.stat().st_size


def test_compare_marks_vanished_and_appeared_boxes():
    from complab.analysis.detections import Box, compare, counts

    original = [Box((0, 0, 10, 10), 0, 0.9), Box((20, 20, 30, 30), 1, 0.8), Box((40, 40, 50, 50), 2, 0.7)]
    compressed = [Box((1, 1, 10, 10), 0, 0.85), Box((20, 20, 30, 30), 2, 0.6), Box((60, 60, 70, 70), 1, 0.5)]
    compare(original, compressed)
    assert [b.status for b in original] == ["kept", "vanished", "vanished"]  # class 1 box: wrong class in copy
    assert [b.status for b in compressed] == ["kept", "appeared", "appeared"]
    assert counts(original, compressed) == {"original": 3, "compressed": 3, "vanished": 2, "appeared": 2}


@pytest.mark.slow  # detector distillation epochs (21 s at load 10)
def test_detector_distillation_loss_and_plan(detector, small_yaml, tmp_path):
    from complab.data.detection import load_detection_data
    from complab.methods.detect_train import _raw, detection_kd_loss
    from complab.pipeline import compress
    from complab.plan import Plan

    model = detector.model.eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 160, 160)
        teacher = _raw(model(x))
        noisy = {k: v + 0.5 * torch.randn_like(v) for k, v in teacher.items() if k in ("boxes", "scores")}
        same = detection_kd_loss(teacher, teacher, 2.0)
        assert detection_kd_loss(noisy, teacher, 2.0) > same
    plan = Plan.from_dict({"schema_version": 1, "name": "det-kd", "eval_split": "val", "steps": [
        {"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1, "finetune_epochs": 1},
        {"type": "distill", "temperature": 2.0, "alpha": 0.5, "epochs": 1}]})
    result = compress(detector, plan, load_detection_data(f"yolo:{small_yaml}"), tmp_path, latency=False)
    assert result.metrics["after"]["map50"] == result.metrics["after"]["in_memory_accuracy"]
    assert abs(result.metrics["weights_kept"] - 0.5) < 0.01  # the distill epochs kept the pruned zeros


@pytest.mark.slow  # mAP per layer and point (64 s at load 10)
def test_detector_sensitivity_measures_map_per_layer(detector, small_yaml):
    from complab.analysis.sensitivity import SensitivityConfig, analyze
    from complab.data.detection import load_detection_data

    data = load_detection_data(f"yolo:{small_yaml}")
    report = analyze(detector, data, SensitivityConfig(sparsities=(0.0, 0.95), n_clusters=(), bits=(4,), val_size=4))
    assert set(report.layers) == set(detector.prunable_layers())
    first = report.layers["model.0.conv"]
    assert first["sparsity"]["0.0"] == report.base_accuracy > 0.5  # mAP50 of the untouched model
    assert first["sparsity"]["0.95"] < report.base_accuracy  # the stem cannot lose 95% of its weights
    assert all(0.0 <= row["bits"]["4"] <= 1.0 for row in report.layers.values())  # the bits axis on a detector


@pytest.mark.parametrize("name", ["detector.json", "detector_vq.json", "detector_channels.json"])
def test_shipped_detector_recipes_fit_the_demo_detector(detector, name):
    from pathlib import Path

    from complab.plan import Plan, resolve_all

    recipe = Path(__file__).resolve().parents[1] / "assets" / "recipes" / name
    plan = Plan.from_json(recipe.read_text()).validate(list(detector.prunable_layers()))  # every pattern matches
    if name == "detector.json":
        sparsity = resolve_all(plan.steps[0].sparsity, list(detector.prunable_layers()))
        assert sparsity["model.7.conv"] == 0.9 and sparsity["model.0.conv"] == 0.65
    if name == "detector_channels.json":  # the GA over every channel group, the head's kept at 0.75
        from complab.methods.channels.detector import head_outputs
        from complab.methods.channels.graph import channel_groups, group_ratio
        from complab.models.yolo_prunable import make_prunable

        model = detector.clone().model
        make_prunable(model)
        steps = {step.type: step for step in plan.steps}
        assert list(steps) == ["channels", "prune", "distill", "fold_bn", "cluster"]
        assert steps["channels"].selection == "ga"
        ratios = {g.name: group_ratio(steps["channels"].keep_ratio, g)
                  for g in channel_groups(model, detector.input_shape, ignored=tuple(head_outputs(model)))}
        assert ratios["model.0.conv"] == 0.5 and ratios["model.22.cv2.0.0.conv"] == 0.75


@pytest.mark.slow  # a detector run with and without folding (45 s at load 10)
def test_fold_bn_step_shrinks_the_file_and_decodes_fused(detector, small_yaml, tmp_path):
    from complab.data.detection import load_detection_data
    from complab.errors import PlanError
    from complab.models.detector import is_fused, load_detector_file
    from complab.pipeline import compress
    from complab.plan import Plan

    steps = [{"type": "prune", "sparsity": {"_default": 0.5}, "iterations": 1, "finetune_epochs": 0},
             {"type": "fold_bn"},
             {"type": "cluster", "n_clusters": {"_default": 32}, "finetune_epochs": 0}]
    data = load_detection_data(f"yolo:{small_yaml}")
    folded = compress(detector, Plan.from_dict({"schema_version": 1, "eval_split": "val", "steps": steps}), data,
                      tmp_path / "folded", latency=False)
    plain = compress(detector, Plan.from_dict({"schema_version": 1, "eval_split": "val",
                                               "steps": [steps[0], steps[2]]}), data, tmp_path / "plain",
                     latency=False)
    assert is_fused(load_detector_file(folded.path).model) and not is_fused(detector.model)
    assert folded.metrics["after"]["map50"] == folded.metrics["after"]["in_memory_accuracy"]
    assert plain.path.stat().st_size - folded.path.stat().st_size > 20_000  # five BN vectors -> one bias
    assert abs(folded.metrics["after"]["map50"] - plain.metrics["after"]["map50"]) < 0.1
    with pytest.raises(PlanError, match="fold_bn must come after prune"):
        Plan.from_dict({"schema_version": 1, "steps": [steps[1], steps[0]]})


def test_fold_bn_is_refused_for_a_classifier(lenet5, digits28, tmp_path):
    from complab.errors import PlanError
    from complab.pipeline import compress
    from complab.plan import Plan

    plan = Plan.from_dict({"schema_version": 1, "steps": [{"type": "fold_bn"}]})
    with pytest.raises(PlanError, match="implemented for YOLO detectors"):
        compress(lenet5, plan, digits28, tmp_path, latency=False)


def test_changed_images_lists_the_most_changed_first(detector, small_yaml):
    from complab.analysis.detections import changed_images
    from complab.data.detection import load_detection_data
    from complab.methods.prune import magnitude_mask

    paths = load_detection_data(f"yolo:{small_yaml}").val_images(limit=6)
    same = changed_images(detector.model, detector.model, paths, 160)
    assert [row["changes"] for row in same] == [0] * 6 and [row["image"] for row in same] == list(range(6))
    broken = detector.clone()
    with torch.no_grad():
        for weight in broken.prunable_layers().values():
            weight.mul_(magnitude_mask(weight, 0.7))
    rows = changed_images(detector.model, broken.model, paths, 160)
    changes = [row["changes"] for row in rows]
    assert changes == sorted(changes, reverse=True) and changes[0] > 0
    assert all(row["changes"] == row["vanished"] + row["appeared"] for row in rows)
