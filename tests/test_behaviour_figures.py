"""The behaviour diff's words and figures (complab.ui.behaviour_figures) on a hand-made diff of the shared schema:
the numbers drawn are the diff's, noise is said, damaged thumbnails are refused. The same module on a real diff of
the demo models is tested in tests/test_behaviour_ui.py."""

import base64
import io

import pytest
from complab.ui import behaviour_figures as bf
from PIL import Image


def png_b64(colour: int = 128) -> str:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def hand_made_diff() -> dict:
    """Ten classes of 36 images; class 3 loses 12 images right -> wrong (beyond noise), class 5 loses one (noise),
    class 7 gains one wrong -> right."""
    per_class = []
    for cls in range(10):
        lost = {3: 12, 5: 1}.get(cls, 0)
        gained = 1 if cls == 7 else 0
        a = 35 / 36
        b = (35 - lost + gained) / 36
        per_class.append({"class": cls, "name": str(cls), "n": 36, "accuracy_a": a, "accuracy_b": b,
                          "ci_a": [a - 0.08, min(1.0, a + 0.02)], "ci_b": [max(0.0, b - 0.12), min(1.0, b + 0.03)],
                          "diff": b - a, "diff_ci": [b - a - 0.1, b - a + 0.05] if cls != 3 else [-0.5, -0.18],
                          "within_noise": cls != 3})
    confusion_diff = [[0] * 10 for _ in range(10)]
    confusion_diff[3][3], confusion_diff[3][8] = -12, 12
    confusion_diff[5][5], confusion_diff[5][6] = -1, 1
    confusion_diff[7][7], confusion_diff[7][1] = 1, -1
    bins = [{"lo": i / 15, "hi": (i + 1) / 15, "count_a": 0, "confidence_a": None, "accuracy_a": None,
             "count_b": 0, "confidence_b": None, "accuracy_b": None} for i in range(15)]
    bins[14].update(count_a=340, confidence_a=0.98, accuracy_a=0.97, count_b=300, confidence_b=0.97,
                    accuracy_b=0.95)
    bins[10].update(count_a=20, confidence_a=0.71, accuracy_a=0.60, count_b=60, confidence_b=0.70, accuracy_b=0.5)
    gallery = [{"index": 10 + i, "label": 3, "kind": "right_to_wrong", "top3_a": [[3, 0.97], [8, 0.02], [5, 0.01]],
                "top3_b": [[8, 0.9 - i / 100], [3, 0.05], [5, 0.01]], "confidence_wrong": 0.9 - i / 100,
                "image_png_b64": png_b64()} for i in range(12)]
    gallery.append({"index": 99, "label": 7, "kind": "wrong_to_right", "top3_a": [[1, 0.6], [7, 0.3], [2, 0.1]],
                    "top3_b": [[7, 0.55], [1, 0.4], [2, 0.05]], "confidence_wrong": 0.4, "image_png_b64": "!!"})
    return {"schema": "behaviour/1", "task": "classify", "split": "test", "n": 360, "seconds": 1.5,
            "a": {"label": "original", "file": None, "bytes": None, "sha256": "0" * 64},
            "b": {"label": "run 20261207-000000-ab12", "file": "model.clab", "bytes": 50_000, "sha256": "1" * 64},
            "accuracy_a": 350 / 360, "accuracy_b": 338 / 360, "agreement": 346 / 360, "agreement_ci": [0.935, 0.977],
            "flips": {"right_to_wrong": 13, "wrong_to_right": 1, "wrong_to_other_wrong": 0,
                      "right_to_wrong_ci": [0.02, 0.06], "wrong_to_right_ci": [0.0, 0.015], "net_ci": [-0.055, -0.012]},
            "per_class": per_class, "confusion_a": [[0] * 10] * 10, "confusion_b": [[0] * 10] * 10,
            "confusion_diff": confusion_diff, "calibration": {"ece_a": 0.012, "ece_b": 0.034, "bins": bins},
            "gallery": gallery,
            "trace": {"method": "ablation", "layers": [{"layer": "fc3", "flips_reproduced": 12, "share": 12 / 14},
                                                       {"layer": "conv1", "flips_reproduced": 1, "share": 1 / 14}],
                      "note": "each layer's decoded weights swapped into the original alone"}}


def test_summary_says_agreement_flips_and_whether_the_net_change_is_noise():
    diff = hand_made_diff()
    agreement, flips, accuracy = bf.summary(diff)
    assert "96.1%" in agreement and "93.5-97.7%" in agreement and "360 test images" in agreement
    assert flips.startswith("13 image(s) flipped right -> wrong, 1 wrong -> right")
    assert "net -3.3 pts" in flips and "-5.5 to -1.2 pts" in flips and flips.endswith("beyond noise.")
    assert "97.2% -> 93.9%" in accuracy and "0.012 -> 0.034" in accuracy
    diff["flips"]["net_ci"] = [-0.01, 0.004]
    assert bf.summary(diff)[1].endswith("within noise.")


def test_per_class_chart_dims_only_the_classes_within_noise_and_draws_the_intervals():
    diff = hand_made_diff()
    fig = bf.per_class_figure(diff)
    before, after = fig.data
    assert list(after.marker.opacity) == [1.0 if cls == 3 else 0.3 for cls in range(10)]
    assert after.y[3] == pytest.approx(100 * 23 / 36)
    low, high = diff["per_class"][3]["ci_b"]
    assert after.y[3] - after.error_y.arrayminus[3] == pytest.approx(100 * low)
    assert after.y[3] + after.error_y.array[3] == pytest.approx(100 * high)
    assert bf.noisy_classes(diff) == ["3"]


def test_confusion_difference_is_white_at_zero_with_counts_in_cells():
    fig = bf.confusion_figure(hand_made_diff())
    heat = fig.data[0]
    assert heat.zmid == 0 and heat.zmin == -12 and heat.zmax == 12
    assert heat.text[3][8] == "+12" and heat.text[3][3] == "-12" and heat.text[0][0] == ""


def test_reliability_diagram_has_the_diagonal_both_models_and_their_ece():
    fig = bf.reliability_figure(hand_made_diff())
    names = [trace.name for trace in fig.data]
    assert names[0] == "perfectly calibrated" and list(fig.data[0].x) == [0, 100]
    assert "ECE 0.012" in names[1] and "ECE 0.034" in names[2]
    assert list(fig.data[2].x) == pytest.approx([70.0, 97.0])  # the empty bins are not drawn


def test_trace_bars_are_the_layers_shares_largest_first():
    fig = bf.trace_figure(hand_made_diff())
    assert list(fig.data[0].y) == ["fc3", "conv1"] and fig.data[0].x[0] == pytest.approx(100 * 12 / 14)
    assert bf.trace_figure({**hand_made_diff(), "trace": {"method": None, "layers": [], "note": "x"}}) is None


def test_gallery_filters_by_kind_keeps_the_order_and_refuses_a_damaged_thumbnail():
    diff = hand_made_diff()
    assert [item["index"] for item in bf.gallery_items(diff, ("wrong_to_right",))] == [99]
    assert [item["index"] for item in bf.gallery_items(diff)][:3] == [10, 11, 12]
    assert bf.thumbnail(diff["gallery"][0]["image_png_b64"]).startswith(b"\x89PNG")
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="GIF")
    for bad in ("!!", "", None, 12, base64.b64encode(b"not a png").decode(), base64.b64encode(buffer.getvalue())
                .decode(), "A" * 10_000_000):
        assert bf.thumbnail(bad) is None
    caption = bf.gallery_caption(diff["gallery"][0], bf.class_names(diff), diff)
    assert caption.startswith("true 3 · right -> wrong") and "8 (90%)" in caption and "3 (97%)" in caption


def hand_made_detector_diff(names: list[str]) -> dict:
    return {"schema": "behaviour/1", "task": "detect", "split": "val", "n": 32, "seconds": 3.0,
            "a": {"label": "original"}, "b": {"label": "run x"}, "map50_a": 0.9, "map50_b": 0.8,
            "map50_95_a": 0.7, "map50_95_b": 0.6,
            "per_class": [{"class": i, "name": name, "ap50_a": 0.9, "ap50_b": 0.8 - i / 10, "ap50_95_a": 0.7,
                           "ap50_95_b": 0.6, "n_boxes": 10} for i, name in enumerate(["circle", "square"])],
            "images": [{"path": name, "vanished": 1, "new": 0, "moved": 0, "kept": 1, "change": 1.0,
                        "boxes_a": [[10, 10, 50, 50, 0, 0.9], [60, 60, 100, 100, 1, 0.8]],
                        "boxes_b": [[11, 10, 50, 51, 0, 0.85]]} for name in names]}


def test_detector_ap_bars_are_the_diffs_numbers():
    fig = bf.detector_ap_figure(hand_made_detector_diff([]))
    assert [trace.name.split(" ")[0] for trace in fig.data] == ["AP50", "AP50-95", "AP50", "AP50-95"]
    assert list(fig.data[2].y) == pytest.approx([0.8, 0.7])


def test_detector_images_are_drawn_only_when_the_active_data_holds_that_name():
    from complab.data.detection import load_detection_data
    from complab.ui.behaviour import detector_pairs

    data = load_detection_data("shapes")
    real = data.val_images()[3]
    diff = hand_made_detector_diff(["../../../etc/passwd", str(real), "nothere.png", real.name])
    drawn = detector_pairs(diff, data, 4)
    assert [name for name, *_ in drawn] == [real.name]  # a path or an unknown name from a cache file is skipped
    _, before, after, counts = drawn[0]
    assert counts == {"original": 2, "compressed": 1, "vanished": 1, "appeared": 0}
    assert before.size == after.size and before.size[0] >= 160
    assert detector_pairs(diff, None, 4) == []


def test_b_is_the_original_then_finished_runs_of_the_same_model_only():
    from complab.ui.behaviour import ORIGINAL, partners

    def run(run_id, model="demo:lenet5", **extra):
        return {"id": run_id, "state": "succeeded", "metrics": {"model": model}, **extra}

    runs = [run("shown"), run("same"), run("other-model", "demo:vgg_small"), run("damaged", damaged="bad json"),
            run("running", state="running"), {"id": "no-metrics", "state": "succeeded", "metrics": None}]
    assert partners("shown", runs, original_ok=True) == [ORIGINAL, "same"]
    assert partners("shown", runs, original_ok=False) == ["same"]
    assert partners("other-model", runs, original_ok=False) == []


def test_summary_says_which_way_the_calibration_errs():
    """An ECE says how far confidence is from accuracy, not which way: the summary says it from the bins."""
    diff = hand_made_diff()  # b: 300 images at 0.97 and 60 at 0.70: mean confidence 0.925 against 338/360 = 0.939
    assert bf.summary(diff)[2].endswith("under-confident).")  # 1.4 points apart: said
    assert "mean confidence 92.5% against its accuracy 93.9%" in bf.summary(diff)[2]
    diff["accuracy_b"] = 0.80
    assert bf.summary(diff)[2].endswith("over-confident).")
    diff["accuracy_b"] = 0.99
    assert bf.summary(diff)[2].endswith("under-confident).")
    diff["accuracy_b"] = 0.925
    assert "confident" not in bf.summary(diff)[2]  # within half a point: nothing to say
    diff["calibration"]["bins"] = []
    assert bf.summary(diff)[2].endswith(".")
