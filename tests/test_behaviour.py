"""The behaviour diff of two classifiers (analysis/behaviour.py): a planted change is found where it was planted."""

import json

import numpy as np
import pytest
import torch
from complab.analysis import behaviour
from complab.analysis.behaviour_cache import check_diff

PLANTED_CLASS = 3


@pytest.fixture(scope="module")
def digits(lenet5):
    from complab import sources

    return sources.load_data({"model": "demo:lenet5", "data": "digits"}, lenet5)


@pytest.fixture(scope="module")
def planted(lenet5):
    """The demo LeNet-5 with class 3's output bias pushed down by a lot: it never answers 3 again."""
    handle = lenet5.clone()
    with torch.no_grad():
        handle.model.fc2.bias[PLANTED_CLASS] -= 100.0
    return handle


@pytest.fixture(scope="module")
def planted_diff(lenet5, planted, digits):
    return behaviour.classifier_diff(lenet5, planted, digits)


def test_planted_bias_flips_exactly_that_class(planted_diff, digits):
    labels = np.array([int(digits.test[i][1]) for i in range(len(digits.test))])
    right_before = planted_diff["confusion_a"][PLANTED_CLASS][PLANTED_CLASS]
    assert right_before > 20  # the original gets most 3s right
    flipped = [item for item in planted_diff["gallery"] if item["kind"] == "right_to_wrong"]
    assert planted_diff["flips"]["right_to_wrong"] == right_before  # every 3 it got right, and nothing else
    assert {int(labels[item["index"]]) for item in flipped} == {PLANTED_CLASS}
    assert all(item["label"] == PLANTED_CLASS and item["top3_b"][0][0] != PLANTED_CLASS for item in flipped)
    noisy = [row["class"] for row in planted_diff["per_class"] if not row["within_noise"]]
    assert noisy == [PLANTED_CLASS]
    row = planted_diff["per_class"][PLANTED_CLASS]
    assert row["accuracy_b"] == 0.0 and row["diff_ci"][1] < 0
    assert planted_diff["trace"]["method"] == "ablation"
    assert planted_diff["trace"]["layers"][0]["layer"] == "fc2"
    assert planted_diff["trace"]["layers"][0]["share"] == 1.0
    assert check_diff(json.loads(json.dumps(planted_diff))) is not None  # JSON-able and passes its own schema


def test_gallery_sorted_by_confidence_in_a_wrong_answer(planted_diff):
    confidences = [item["confidence_wrong"] for item in planted_diff["gallery"]]
    assert confidences == sorted(confidences, reverse=True)
    for item in planted_diff["gallery"]:
        if item["kind"] == "right_to_wrong":
            assert item["confidence_wrong"] == pytest.approx(item["top3_b"][0][1])
        assert item["image_png_b64"].startswith("iVBORw0KGgo")  # a PNG's signature in base64


def test_flips_consistent_with_accuracies(planted_diff):
    flips, n = planted_diff["flips"], planted_diff["n"]
    net = (flips["wrong_to_right"] - flips["right_to_wrong"]) / n
    assert planted_diff["accuracy_b"] - planted_diff["accuracy_a"] == pytest.approx(net)
    assert flips["net_ci"][0] <= net <= flips["net_ci"][1]
    disagree = flips["right_to_wrong"] + flips["wrong_to_right"] + flips["wrong_to_other_wrong"]
    assert planted_diff["agreement"] == pytest.approx(1 - disagree / n)
    diff = np.array(planted_diff["confusion_diff"])
    assert (diff == np.array(planted_diff["confusion_b"]) - np.array(planted_diff["confusion_a"])).all()
    assert diff.sum() == 0 and diff[:, PLANTED_CLASS].sum() < 0  # fewer answers of 3, the images are the same


def test_identical_models_agree(lenet5, digits):
    diff = behaviour.classifier_diff(lenet5, lenet5.clone(), digits, gallery=5)
    assert diff["agreement"] == 1.0
    assert diff["flips"]["right_to_wrong"] == diff["flips"]["wrong_to_right"] == 0
    assert diff["flips"]["wrong_to_other_wrong"] == 0 and diff["gallery"] == []
    assert diff["calibration"]["ece_a"] == diff["calibration"]["ece_b"]
    assert all(row["within_noise"] and row["diff"] == 0 for row in diff["per_class"])
    assert diff["trace"]["method"] is None


def test_ece_matches_its_definition():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, size=200)
    ece, bins = behaviour.calibration(probs, labels)
    confidence, right = probs.max(1), probs.argmax(1) == labels
    expected = 0.0
    for low in np.arange(15) / 15:  # bins (low, low + 1/15]
        inside = (confidence > low) & (confidence <= low + 1 / 15)
        if inside.any():
            expected += inside.mean() * abs(right[inside].mean() - confidence[inside].mean())
    assert ece == pytest.approx(expected)
    assert sum(b["count"] for b in bins) == 200


def test_paired_interval_contains_the_difference_and_shrinks_with_n():
    right_a = np.array([True] * 90 + [False] * 10)
    right_b = right_a.copy()
    right_b[:5] = False  # five right -> wrong flips
    low, high = behaviour.paired_difference(right_a, right_b)
    assert low < -0.05 < high < 0
    big_low, big_high = behaviour.paired_difference(np.tile(right_a, 10), np.tile(right_b, 10))
    assert big_high - big_low < high - low


@pytest.fixture(scope="module")
def planted_file(planted, tmp_path_factory):
    path = tmp_path_factory.mktemp("planted") / "planted.clab"
    planted.save(path, {"data": "digits"})
    return path


def test_diff_files_decodes_the_file_and_caches(lenet5, planted_file, tmp_path):
    cache = tmp_path / "cache"
    first = behaviour.diff_files(planted_file, None, original=lenet5, cache_dir=cache)
    assert first["b"]["file"] == "planted.clab" and first["b"]["bytes"] == planted_file.stat().st_size
    assert first["a"]["label"] == "demo:lenet5" and first["a"]["file"] is None
    assert [row["class"] for row in first["per_class"] if not row["within_noise"]] == [PLANTED_CLASS]
    stored = list(cache.glob("*.json"))
    assert len(stored) == 1
    assert behaviour.diff_files(planted_file, None, original=lenet5, cache_dir=cache) == first  # a hit: same dict
    stored[0].write_text(stored[0].read_text().replace('"agreement": ', '"agreement": -'))  # damaged: recomputed
    again = behaviour.diff_files(planted_file, None, original=lenet5, cache_dir=cache)
    assert again["agreement"] == first["agreement"] and again["flips"] == first["flips"]
    assert json.loads(stored[0].read_text())["agreement"] == first["agreement"]  # and the cache file repaired


def test_diff_files_refuses_another_model(lenet300, planted_file):
    from complab.errors import CompressionLabError

    with pytest.raises(CompressionLabError, match="same model"):
        behaviour.diff_files(planted_file, None, original=lenet300)
    with pytest.raises(CompressionLabError, match="no original"):
        behaviour.diff_files(planted_file)


def test_detector_diff_finds_a_planted_class():
    """The demo detector with one class's score bias pushed down: that class's AP collapses, its boxes vanish."""
    from complab import sources

    original, shapes = sources.load({"model": "detector:demo", "data": "shapes"})
    planted = original.clone()
    head = planted.model.model[-1]
    with torch.no_grad():
        for branch in head.cv3:  # each scale's class-score convolution: one output per class
            branch[-1].bias[1] -= 50.0
    diff = behaviour.detector_diff(original, planted, shapes, n_images=4, ap_images=24)
    rows = {row["class"]: row for row in diff["per_class"]}
    assert rows[1]["ap50_a"] > 0.5 and rows[1]["ap50_b"] < 0.05
    assert all(rows[c]["ap50_b"] == pytest.approx(rows[c]["ap50_a"], abs=0.02) for c in rows if c != 1)
    assert len(diff["images"]) == 4 and all(row["new"] == 0 for row in diff["images"])
    changes = [row["change"] for row in diff["images"]]
    assert changes == sorted(changes, reverse=True)
    planted_boxes = sum(box[4] == 1 for row in diff["images"] for box in row["boxes_a"])
    assert planted_boxes > 0 and sum(row["vanished"] for row in diff["images"]) == planted_boxes
    assert not any(box[4] == 1 for row in diff["images"] for box in row["boxes_b"])
    # the boxes are those the Detections page finds on that image (detections.predict), in the image's pixels
    from complab.analysis.detections import predict
    from PIL import Image

    top = diff["images"][0]
    with Image.open(next(p for p in shapes.val_images() if p.name == top["path"])) as image:
        found = predict(original.model, image, original.imgsz)
    assert len(found) == len(top["boxes_a"])
    for box, row in zip(sorted(found, key=lambda b: b.xyxy), sorted(top["boxes_a"]), strict=True):
        assert np.allclose(box.xyxy, row[:4], atol=0.5) and box.cls == row[4]
    assert check_diff(json.loads(json.dumps(diff))) is not None


def test_fuzz_family_reads_damaged_caches_without_raising(tmp_path, monkeypatch):
    """The fuzz campaign's behaviour family: mutated cache files are ignored or read back sound, never raised."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fuzz_campaign as fc

    (tmp_path / "failures").mkdir()
    monkeypatch.setattr(fc, "WORK", tmp_path)
    fc._STATE["behaviour"] = fc._behaviour_setup()
    results = [fc.run_behaviour(index, 11, str(tmp_path / "failures")) for index in range(1, 301)]
    assert {outcome for outcome, _, _ in results} == {"ok"}
    details = [detail for _, detail, _ in results]
    assert any("read back" in d for d in details) and any("ignored" in d for d in details)


def test_trace_ranks_layers_by_the_sensitivity_report_when_architectures_differ(lenet5, digits):
    """Channel pruning changes the shapes: no ablation is possible, the report's predicted drops rank the layers."""
    from pathlib import Path

    from complab.analysis.behaviour_trace import trace_flips
    from complab.analysis.predict import layer_drop
    from complab.analysis.sensitivity_report import check_report

    layers = list(lenet5.prunable_layers())
    sparsities, clusters = [0.0, 0.5, 0.9], [256, 16, 4]
    report = check_report({"base_accuracy": 0.98, "config": {"sparsities": sparsities, "clusters": clusters},
                           "layers": {name: {"params": 1000, "sparsity": {str(s): round(0.98 - s * (i + 1) / 20, 4)
                                                                           for s in sparsities},
                                             "clusters": {str(k): 0.98 for k in clusters}}
                                      for i, name in enumerate(layers)}})
    after = lenet5.clone()
    after.model.fc2 = torch.nn.Linear(500, 10, bias=False)  # another architecture (a bias gone)
    plan = json.loads((Path(__file__).resolve().parents[1] / "assets" / "recipes" / "quick.json").read_text())
    after.file_meta = {"plan": plan}
    trace = trace_flips(lenet5, after, digits.test, np.array([0]), np.zeros(1, dtype=int), report)
    assert trace["method"] == "sensitivity"
    drops = [row["predicted_drop"] for row in trace["layers"]]
    assert drops == sorted(drops, reverse=True) and len(drops) == len(layers)
    settings = {"conv1": 0.9, "conv2": 0.9, "fc1": 0.9, "fc2": 0.5}  # quick.json: fc2 50%, the rest 90%
    for row in trace["layers"]:
        assert row["predicted_drop"] == pytest.approx(layer_drop(report, row["layer"], settings[row["layer"]], 16))
    assert trace["layers"][0]["layer"] == "fc1"  # the steepest curve at 90%
    no_report = trace_flips(lenet5, after, digits.test, np.array([0]), np.zeros(1, dtype=int), None)
    assert no_report["method"] is None and "sensitivity report" in no_report["note"]


def test_thumbnails_are_the_unnormalised_pixels_at_a_small_size():
    import base64
    import io

    from PIL import Image

    grey = torch.full((1, 8, 8), 0.0)
    grey[0, 0, 0] = 2.0  # (2.0 * 0.25 + 0.5) = 1.0: white; the rest 0.5: mid grey
    picture = Image.open(io.BytesIO(base64.b64decode(behaviour.thumbnail_png(grey, [0.5], [0.25]))))
    assert picture.size == (64, 64) and picture.getpixel((0, 0)) == 255 and picture.getpixel((63, 63)) == 128
    big = Image.open(io.BytesIO(base64.b64decode(behaviour.thumbnail_png(torch.rand(3, 224, 224), None, None))))
    assert big.size == (128, 128) and big.mode == "RGB"
