"""Compare, its report button and presentation mode follow the active model and its best run on the front; the
lesson makes its model the active one (sidebar, Model, Compare follow it), presents on a projector, explains
weights vs parameters and shows no run id (issue 26)."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
from complab import engine
from complab.analysis import lesson
from complab.analysis.pareto import best_run, pareto_mask, runs_table
from complab.intervals import noise_floor
from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
pytestmark = pytest.mark.timeout(600)
BASE = {"weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}


# ---- the best run: on the front, the smallest within noise of the most accurate ------------------------------

def table(*rows) -> pd.DataFrame:
    """Rows of (run, bytes, accuracy, images) as runs_table writes them (one model)."""
    return pd.DataFrame([{"run": run, "model": "m", "task": "classify", "plan": run, "compressed_bytes": size,
                          "accuracy": acc, "images": images} for run, size, acc, images in rows])


def test_best_run_is_never_a_dominated_run():
    rows = table(("small-good", 1000, 0.95, None), ("big-worse", 5000, 0.90, None), ("huge-best", 9000, 0.97, None))
    best = best_run(rows)
    assert best["front"] == ["small-good", "huge-best"]  # big-worse: small-good is smaller and more accurate
    assert best["run"] == "huge-best" and best["tolerance"] == 0  # no split size: the most accurate front run
    for newest_first in (rows, rows.iloc[::-1]):
        assert best_run(newest_first)["run"] in best["front"]


def test_best_run_takes_the_smallest_file_within_noise_of_the_most_accurate():
    n = 360
    floor = noise_floor(0.97, n)
    rows = table(("tiny", 500, 0.97 - 2 * floor, n), ("small", 1000, 0.97 - floor / 2, n), ("big", 9000, 0.97, n))
    best = best_run(rows)
    assert best["run"] == "small" and best["best_run"] == "big"
    assert best["tolerance"] == pytest.approx(floor) and best["images"] == n
    # a difference larger than the noise floor is a measured difference: the more accurate file wins
    rows = table(("small", 1000, 0.97 - 1.5 * floor, n), ("big", 9000, 0.97, n))
    assert best_run(rows)["run"] == "big"


def test_best_run_of_a_detector_or_old_runs_judges_nothing_within_noise():
    rows = table(("small", 1000, 0.50, 40), ("big", 9000, 0.51, 40))
    assert best_run(rows)["run"] == "small"  # 1 point on 40 images is noise
    assert best_run(rows.assign(task="detect"))["run"] == "big"  # mAP has no Wilson interval here
    assert best_run(rows.assign(images=float("nan")))["run"] == "big"  # old runs: no split size recorded
    assert best_run(rows.iloc[:0]) is None


# ---- the app, on real runs ----------------------------------------------------------------------------------

def plan(name: str, sparsity: float, epochs: int, k: int) -> dict:
    return {"schema_version": 1, "name": name, "seed": 0, "eval_split": "test", "steps": [
        {"type": "prune", "sparsity": {"_default": sparsity}, "iterations": 1, "finetune_epochs": epochs,
         "lr": 0.001},
        {"type": "cluster", "n_clusters": {"_default": k}, "finetune_epochs": 0, "lr": 0.0002}]}


@pytest.fixture(scope="module")
def runs_home(tmp_path_factory):
    """Two runs of demo:lenet5, the newer one dominated (bigger file, lower accuracy), and one of demo:lenet300
    (which sorts first by name): what made Compare open on another model and on a dominated run."""
    home = tmp_path_factory.mktemp("compare_active")
    ids = {}
    for name, model, sparsity, epochs, k in (("small-good", "demo:lenet5", 0.8, 0, 2),  # 52 KB, 97.2% measured
                                             ("lenet300-run", "demo:lenet300", 0.9, 0, 16),
                                             ("big-worse", "demo:lenet5", 0.8, 0, 4)):  # 61 KB, 96.7% measured
        ids[name] = engine.submit({"kind": "compress", "model": model, **BASE, "plan": plan(name, sparsity, epochs, k),
                                   "latency": False}, root=home)
        time.sleep(1.1)  # distinct creation seconds: big-worse is the newest
    for run_id in ids.values():
        assert engine.wait(run_id, 300, root=home)["state"] == "succeeded"
    rows = runs_table(engine.list_runs(root=home, kind="compress"))
    lenet5 = rows[rows["model"] == "demo:lenet5"].set_index("run")
    good, worse = lenet5.loc[ids["small-good"]], lenet5.loc[ids["big-worse"]]
    assert (worse["compressed_bytes"] > good["compressed_bytes"] and worse["accuracy"] <= good["accuracy"]), \
        "the fixture needs big-worse dominated by small-good"
    assert engine.list_runs(root=home, kind="compress")[0]["id"] == ids["big-worse"]  # the newest
    return home, ids, rows


def app(home: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def go(at: AppTest, name: str, query: dict | None = None) -> AppTest:
    """Open a page as the browser's page links do: the query is dropped (AppTest would keep a page's run=ID)."""
    at.switch_page(f"pages/{name}.py")
    at.query_params.pop("run", None)
    if query:
        at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_compare_opens_on_the_active_model_and_its_best_run_and_reports_it(runs_home, monkeypatch):
    home, ids, rows = runs_home
    at = go(app(home, monkeypatch), "compare")
    assert at.selectbox(key="compare_model").value == "demo:lenet5"  # the active model, not the first by name
    lenet5 = rows[rows["model"] == "demo:lenet5"]
    expected = best_run(lenet5)["run"]
    front = set(lenet5[pareto_mask(list(lenet5["compressed_bytes"]), list(lenet5["accuracy"]))]["run"])
    assert expected == ids["small-good"] and ids["big-worse"] not in front
    assert at.selectbox(key="compare_run").value == expected  # not the newest (dominated) run
    said = " ".join(m.value for m in at.main.markdown)
    assert f"Showing **small-good** (run {expected})" in said and "accuracy-vs-bytes front" in said
    report = next(b for b in at.get("download_button") if b.proto.label.startswith("Download report"))
    assert "small-good first" in report.proto.label and f"report-{expected}.html" in report.proto.help
    # the table writes numbers as the formatter does: percent, counts with separators, changes in points
    shown = at.dataframe[0].value
    good = lenet5.set_index("run").loc[expected]
    row = shown.set_index("run").loc[expected]
    assert row["score"] == f"{100 * good['accuracy']:.1f}%" and row["file bytes"] == f"{good['compressed_bytes']:,}"
    assert row["on the front"] == "yes" and shown.set_index("run").loc[ids["big-worse"], "on the front"] == ""
    assert row["change"].endswith(" pts") or row["change"] == "no change"
    # the person picks another run: the headline and the report follow it
    at.selectbox(key="compare_run").set_value(ids["big-worse"]).run()
    report = next(b for b in at.get("download_button") if b.proto.label.startswith("Download report"))
    assert "big-worse first" in report.proto.label
    assert any("chosen here" in m.value for m in at.main.markdown)


def test_compare_says_when_the_active_model_has_no_runs(runs_home, monkeypatch):
    home, ids, _ = runs_home
    at = app(home, monkeypatch)
    at.selectbox(key="demo_model").select("vgg_small").run()
    go(at, "compare")
    assert any("has no finished compression run" in i.value and "VGG-style CNN \\(demo\\)" in i.value
               for i in at.info), [i.value for i in at.info]
    assert set(at.selectbox(key="compare_model").options) == {"LeNet-5 (demo)", "LeNet-300-100 (demo)"}
    at.selectbox(key="compare_model").set_value("demo:lenet5").run()
    assert at.selectbox(key="compare_run").value == ids["small-good"]


def test_presentation_follows_the_active_model_through_the_lesson(runs_home, monkeypatch):
    home, ids, rows = runs_home
    at = go(app(home, monkeypatch), "compare", {"present": "1"})
    assert at.title[0].value == "LeNet-5 (demo) · small-good"  # the active model's best run
    assert any("Showing **small-good**" in m.value for m in at.main.markdown)  # says which run and why
    at.button(key="present_exit").click().run()
    # the lesson makes LeNet-300-100 the active model: the sidebar says so, Model and Compare present it
    go(at, "lesson")
    assert at.sidebar.markdown[0].value.startswith("**LeNet-300-100 (demo)**")
    go(at, "model", {"present": "1"})
    assert at.title[0].value == "LeNet-300-100 (demo) on digits"
    labels = {m.label: m.value for m in at.main.metric}
    assert labels["Parameters"] == "266,610"
    layers = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert layers["data"][0]["y"] == ["fc1", "fc2", "fc3"] and layers["data"][0]["x"] == [235200, 30000, 1000]
    go(at, "compare", {"present": "1"})
    assert at.title[0].value == "LeNet-300-100 (demo) · lenet300-run"
    at.button(key="present_exit").click().run()
    # leaving the lesson: the sidebar offers the model from before, and takes it back
    go(at, "model")
    at.sidebar.button(key="back_from_lesson").click().run()
    assert "demo:lenet5" in at.sidebar.markdown[0].value
    assert {m.label: m.value for m in at.main.metric}["Parameters"] == "431,080"


def test_headline_metrics_use_the_formatter(runs_home, monkeypatch):
    home, ids, rows = runs_home
    at = go(app(home, monkeypatch), "compare", {"present": "1", "run": ids["small-good"]})
    metrics = {m.label: m for m in at.main.metric}
    good = rows.set_index("run").loc[ids["small-good"]]
    flops = metrics["FLOPs (zeros skipped)"]
    green = MetricProto.MetricColor.GREEN
    assert flops.delta.startswith("-") and flops.proto.color == green  # fewer FLOPs is better: green
    assert metrics["Compact file"].delta.startswith("-") and metrics["Compact file"].proto.color == green
    assert metrics["top-1 after"].value == f"{100 * good['accuracy']:.1f}%"
    # these runs did not measure latency: no box claims a speed
    assert not {"PyTorch latency", "ONNX Runtime latency"} & set(metrics)


def test_the_presentation_toggle_works_on_the_lesson_page(tmp_path, monkeypatch):
    monkeypatch.setenv(lesson.FAST_ENV, "1")
    at = go(app(tmp_path / "home", monkeypatch), "lesson")
    assert not any("display: none" in m.value for m in at.main.markdown)
    at.sidebar.toggle(key="present_toggle").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.query_params["present"] in ("1", ["1"])
    assert any("display: none" in m.value and "st-key-lesson_next_" in m.value for m in at.main.markdown)
    assert {"present_exit", "lesson_next_prune"} <= {b.key for b in at.main.button}
    assert json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["height"] >= 560  # drawn for a projector
    assert "demo:lenet300" in at.sidebar.markdown[0].value
    at.button(key="present_exit").click().run()
    assert "present" not in at.query_params and not any("display: none" in m.value for m in at.main.markdown)


def test_the_lesson_explains_weights_and_parameters_and_shows_no_run_id(tmp_path, monkeypatch):
    monkeypatch.setenv(lesson.FAST_ENV, "1")
    at = go(app(tmp_path / "home", monkeypatch), "lesson")
    text = " ".join(m.value for m in at.main.markdown)
    assert "266,610 parameters" in text and "266,200 weights" in text and "410 biases" in text
    at.button(key="lesson_next_prune").click().run()
    deadline = time.time() + 300
    while not any(m.label == "Accuracy after pruning" for m in at.metric):
        assert time.time() < deadline
        words = " ".join(e.proto.text for e in at.get("progress"))
        assert not any(run_id in words for run_id in at.session_state["lesson"]["runs"].values())
        time.sleep(1.0)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    runs = at.session_state["lesson"]["runs"]
    shown = [m.value for m in (*at.markdown, *at.caption, *at.error, *at.warning, *at.info)]
    shown += [f"{m.label} {m.value} {m.delta}" for m in at.metric]
    assert not [text for text in shown for run_id in runs.values() if run_id in text]
    assert any("Step 2 (prune): the run of the plan `lesson: prune" in c.value for c in at.caption)
    prune = next(m.value for m in at.markdown if m.value.startswith("Pruning"))
    assert "of the 266,200 weights" in prune and "the biases are kept" in prune


# ---- the projector's numbers and axes ------------------------------------------------------------------------

def _headline_script(metrics_json: str) -> None:
    import json as json_

    from complab.ui import present as present_

    present_.headline_metrics(json_.loads(metrics_json))


def headline_boxes(metrics: dict) -> tuple[dict, str]:
    at = AppTest.from_function(_headline_script, args=(json.dumps(metrics),), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return {m.label: m for m in at.metric}, " ".join(m.value for m in at.markdown)


def measured(latency_after: float, images: int | None = None, after_accuracy: float = 0.975) -> dict:
    side = {"images": images} if images else {}
    return {"model": "demo:lenet5", "data": "digits", "compression_ratio": 20.0,
            "before": {"accuracy": 0.98, "fp32_bytes": 1_000_000, "sparse_flops": 1_000_000, "latency_ms": 0.44,
                       **side},
            "after": {"accuracy": after_accuracy, "compressed_bytes": 50_000, "sparse_flops": 150_000,
                      "latency_ms": latency_after, **side}}


def test_headline_says_same_speed_colours_the_right_way_and_gives_the_interval():
    boxes, text = headline_boxes(measured(latency_after=0.45))  # 2% slower: noise
    green, grey = MetricProto.MetricColor.GREEN, MetricProto.MetricColor.GRAY
    assert boxes["PyTorch latency"].delta == "same speed" and boxes["PyTorch latency"].proto.color == grey
    assert boxes["FLOPs (zeros skipped)"].delta == "-85%" and boxes["FLOPs (zeros skipped)"].proto.color == green
    assert boxes["Compact file"].delta.startswith("-95%") and boxes["Compact file"].proto.color == green
    assert boxes["top-1 after"].value == "97.5%" and boxes["top-1 after"].delta == "-0.5 pts"
    assert "95% CI" not in text  # no split size recorded: no interval invented
    boxes, _ = headline_boxes(measured(latency_after=0.22))
    assert boxes["PyTorch latency"].delta == "2.0x faster" and boxes["PyTorch latency"].proto.color == green
    # with the split size: the interval is said, and a drop inside it is grey, not red
    boxes, text = headline_boxes(measured(latency_after=0.44, images=360))
    assert "97.5% (95% CI" in text and "360 test images" in text and "within noise" in text
    assert boxes["top-1 after"].proto.color == grey
    boxes, text = headline_boxes(measured(latency_after=0.44, images=360, after_accuracy=0.80))
    assert boxes["top-1 after"].proto.color == MetricProto.MetricColor.RED and "within noise" not in text


def test_a_cost_axis_of_near_equal_runs_is_not_zoomed_into_invented_precision():
    from complab.ui import present
    from complab.ui.compare import pareto

    rows = table(("a", 43_551, 0.97, None), ("b", 43_553, 0.96, None)).assign(
        method="prune+cluster", ratio=40.0, steps="prune+cluster", sweep="")
    fig = present.projector(pareto(rows, "compressed_bytes", "bytes", "a"))
    low, high = fig.layout.xaxis.range
    assert high - low >= 0.05 * 43_552  # padded around the value (figures.pad_flat_axis), not 43.551k-43.553k
    wide = table(("a", 10_000, 0.97, None), ("b", 40_000, 0.96, None)).assign(
        method="prune+cluster", ratio=40.0, steps="prune+cluster", sweep="")
    assert pareto(wide, "compressed_bytes", "bytes", "a").layout.xaxis.range is None  # plotly's own range
