"""The behaviour diff where a person sees it, on two real runs of the demo LeNet-5: the Compare page's Behaviour
section (computed on the button, shown at once from the disk cache on the next visit, another run as B, errors as
one line), presentation mode, and the HTML report's section (its numbers the diff's own)."""

import json
import re
from pathlib import Path

import pytest
from complab import engine, service
from complab.cli import main
from complab.ui.behaviour_figures import summary
from complab.ui.behaviour_report import labelled
from complab.ui.report import plain_markdown
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180
DIGITS = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
pytestmark = pytest.mark.timeout(600)


def quick_plan(name: str, n_clusters: int) -> dict:
    """assets/recipes/quick.json without fine-tuning (fast), with `n_clusters` shared values: k=2 changes what the
    model answers on some images, k=16 hardly any."""
    plan = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    for step in plan["steps"]:
        step["finetune_epochs"] = 0
    plan["steps"][1]["n_clusters"] = {"_default": n_clusters}
    plan["name"] = name
    return plan


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A data folder with two finished LeNet-5 runs (k=2 first, k=16 second and newest)."""
    home = tmp_path_factory.mktemp("behaviour-ui")
    ids = [engine.submit({"kind": "compress", **DIGITS, "plan": quick_plan(name, k), "latency": False}, root=home)
           for name, k in (("coarse-k2", 2), ("fine-k16", 16))]
    for run_id in ids:
        row = engine.wait(run_id, 300, root=home)
        assert row["state"] == "succeeded", row.get("error")
    return home, ids


def compare_page(home: Path, monkeypatch, query: dict | None = None) -> AppTest:
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("pages/compare.py")
    if query:
        at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def behaviour_text(at: AppTest) -> str:
    return " ".join(md.value for md in at.main.markdown)


def original(home: Path):
    from complab import sources

    return sources.load(DIGITS)


def test_compare_computes_behaviour_on_the_button_and_shows_the_cached_pair_at_once(two_runs, monkeypatch):
    home, (coarse, fine) = two_runs
    at = compare_page(home, monkeypatch, {"run": coarse})
    assert at.selectbox(key="behaviour_other").value == "original"  # the active model is the run's model
    assert "agree on" not in behaviour_text(at)  # nothing computed before the button
    handle, data = original(home)
    assert service.behaviour_diff(coarse, None, root=home, original=handle, data=data, compute=False) is None
    at.button(key="behaviour_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    diff = service.behaviour_diff(coarse, None, root=home, original=handle, data=data)  # the cached pair
    said = behaviour_text(at)
    shown = labelled(diff, "the original", f"run {coarse}")
    for line in summary(shown):  # agreement, flips each way with the net change's interval, accuracies and ECE
        assert plain_markdown(line) in said
    assert f"agree on {100 * diff['agreement']:.1f}% of the 360 test images" in summary(shown)[0]
    assert f"{diff['flips']['right_to_wrong']} image(s) flipped right -> wrong" in summary(shown)[1]
    keys = {chart.key for chart in at.get("plotly_chart")}
    assert {"behaviour_per_class", "behaviour_confusion", "behaviour_reliability"} <= keys
    per_class = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == "behaviour_per_class")
    measured = [100 * row["accuracy_b"] for row in diff["per_class"]]
    assert per_class["data"][1]["y"] == pytest.approx(measured)
    assert len(at.get("image")) == len(diff["gallery"]) > 0  # every flipped image, as a thumbnail

    again = compare_page(home, monkeypatch, {"run": coarse})  # a new session: the disk cache, no button
    assert not [b for b in again.main.button if b.key == "behaviour_go"]
    assert plain_markdown(summary(shown)[0]) in behaviour_text(again)


def test_another_run_of_the_same_model_is_offered_as_b_and_errors_are_one_line(two_runs, monkeypatch):
    home, (coarse, fine) = two_runs
    at = compare_page(home, monkeypatch, {"run": coarse})
    assert list(at.selectbox(key="behaviour_other").options) == ["the original (the active model)", f"run {fine}"]
    at.selectbox(key="behaviour_other").set_value(fine).run()
    at.button(key="behaviour_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert plain_markdown(f"Run {fine} and run {coarse} agree on") in behaviour_text(at)

    def broken(*args, **kwargs):
        from complab.errors import CompressionLabError

        raise CompressionLabError("damaged: model.clab: planted for the test: choose another run")

    monkeypatch.setattr(service, "behaviour_diff", broken)
    shutil_cache = home / "behaviour"
    for path in shutil_cache.glob("*.json"):
        path.unlink()
    at = compare_page(home, monkeypatch, {"run": coarse})
    at.button(key="behaviour_go").click().run()
    assert not at.exception
    assert any("planted for the test" in error.value for error in at.error)


def test_presentation_mode_shows_the_behaviour_large(two_runs, monkeypatch):
    home, (coarse, _) = two_runs
    at = compare_page(home, monkeypatch, {"present": "1", "run": coarse})
    chart = next(c for c in at.get("plotly_chart") if c.key == "present_behaviour")
    spec = json.loads(chart.proto.spec)
    assert spec["layout"]["height"] >= 560  # drawn for a projector
    assert plain_markdown("The original and run") in behaviour_text(at)
    assert [b.key for b in at.main.button] == ["present_exit"]  # still nothing to press but the way out


def test_report_holds_the_behaviour_section_with_the_diffs_numbers(two_runs, tmp_path, capsys):
    home, (coarse, fine) = two_runs
    out = tmp_path / "report.html"
    assert main(["report", coarse, fine, "--home", str(home), "--out", str(out)]) == 0
    text = out.read_text()
    assert "<h2 id='behaviour'>Behaviour</h2>" in text
    numbers = json.loads(re.search(r"id='behaviour-numbers'>(.*?)</script>", text).group(1))
    handle, data = original(home)
    diff = service.behaviour_diff(coarse, None, root=home, original=handle, data=data)
    assert numbers["a"] == "the original" and numbers["b"] == f"run {coarse}"  # a built-in demo: the CLI loads it
    assert numbers["agreement"] == pytest.approx(diff["agreement"])
    assert numbers["right_to_wrong"] == diff["flips"]["right_to_wrong"]
    assert numbers["ece_b"] == pytest.approx(diff["calibration"]["ece_b"])
    thumbnails = re.findall(r"<img alt='flipped image \d+' src='data:image/png;base64,", text)
    assert len(thumbnails) == min(24, len(diff["gallery"]))
    section = text.split("<h2 id='behaviour'>", 1)[1].split("<h2", 1)[0]
    assert "<script src" not in section and not re.search(r"src=['\"](https?:)?//", section)  # offline
    assert section.count("class=\"plotly-graph-div\"") >= 3  # per-class, confusion difference, reliability


DETECTOR = {"model": "detector:demo", "weights": None, "data": "shapes", "input_size": None, "mean": None, "std": None}
DETECTOR_PLAN = {"schema_version": 1, "name": "det-behaviour", "seed": 0, "eval_split": "val", "steps": [
    {"type": "prune", "sparsity": {"_default": 0.4}, "iterations": 1, "finetune_epochs": 0}]}


@pytest.mark.slow  # a detector run (40 s) and its diff on 32 validation images (35 s) on a shared 2-core machine
def test_a_detector_runs_behaviour_is_its_ap_per_class_and_its_most_changed_images_drawn(tmp_path, monkeypatch):
    home = tmp_path / "home"
    run_id = engine.submit({"kind": "compress", **DETECTOR, "plan": DETECTOR_PLAN, "latency": False}, root=home)
    assert engine.wait(run_id, 600, root=home)["state"] == "succeeded"
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    at.radio(key="model_source").set_value("Demo detector (YOLO)").run()  # the original: the active model
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="behaviour_other").value == "original"
    at.button(key="behaviour_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    from complab import sources

    handle, data = sources.load(DETECTOR)
    diff = service.behaviour_diff(run_id, None, root=home, original=handle, data=data, compute=False)
    assert diff is not None and diff["task"] == "detect"  # the page's click left it in the cache
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key == "behaviour_ap")
    assert chart["data"][2]["y"] == pytest.approx([row["ap50_b"] for row in diff["per_class"]])
    assert plain_markdown(f"mAP50 {diff['map50_a']:.3f} -> {diff['map50_b']:.3f}") in behaviour_text(at)
    drawn = [row for row in diff["images"] if row.get("boxes_a") or row.get("boxes_b")][:4]
    assert len(at.get("image")) == 2 * len(drawn) > 0  # both models' boxes side by side, most changed first
