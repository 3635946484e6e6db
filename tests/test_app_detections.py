"""AppTest of the detector flow: the model page loads the demo detector, the Detections page compares a run."""

import json
import re
from pathlib import Path

import pytest
from complab.ui.numbers import ms
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
DETECTOR = {"model": "detector:demo", "weights": None, "data": "shapes", "input_size": None, "mean": None,
            "std": None}
QUICK = {"schema_version": 1, "name": "det-quick", "seed": 0, "eval_split": "val", "steps": [
    {"type": "prune", "sparsity": {"_default": 0.4}, "iterations": 1, "finetune_epochs": 0},
    {"type": "cluster", "n_clusters": {"_default": 64}, "finetune_epochs": 0}]}


@pytest.fixture(scope="module")
def detector_home(tmp_path_factory):
    """A data folder with one finished compression run of the demo detector (no fine-tuning: fast)."""
    from complab import engine

    home = tmp_path_factory.mktemp("det-home")
    run = engine.submit({"kind": "compress", **DETECTOR, "plan": QUICK, "latency": False}, root=home)
    row = engine.wait(run, 300, root=home)
    assert row["state"] == "succeeded", row.get("error")
    return home, run


def start(home, monkeypatch) -> AppTest:
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_model_page_loads_the_demo_detector(detector_home, monkeypatch):
    at = start(detector_home[0], monkeypatch)
    at.radio(key="model_source").set_value("Demo detector (YOLO)").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = {m.label: m.value for m in at.metric}
    assert float(labels["mAP50"]) > 0.9
    helps = {m.label: m.proto.help for m in at.metric}  # each mAP's 95% bootstrap interval over the val images
    assert re.fullmatch(r"0\.\d{3} \(95% CI 0\.\d{3}-[01]\.\d{3}, bootstrap over [0-9,]+ images\)", helps["mAP50"])
    assert helps["mAP50"].startswith(labels["mAP50"]) and helps["mAP50-95"].startswith(labels["mAP50-95"])
    assert labels["Parameters"] == "913,028"
    assert any("DFL" in c.value and "cv3.0.2" in c.value for c in at.caption)


def test_detections_page_shows_both_models_and_the_changes(detector_home, monkeypatch):
    home, run_id = detector_home
    at = start(home, monkeypatch)
    at.radio(key="model_source").set_value("Demo detector (YOLO)").run()
    at.switch_page("pages/detections.py").run()
    assert not at.exception, [e.value for e in at.exception]
    labels = {m.label: m.value for m in at.metric}
    metrics = json.loads((home / "runs" / run_id / "metrics.json").read_text())
    assert labels["Compact file bytes"] == f"{metrics['after']['compressed_bytes']:,}"
    assert labels["mAP50 compressed"] == f"{metrics['after']['map50']:.3f}"
    low, high = metrics["after"]["map50_interval"]  # the run recorded it: the box's help says it
    helps = {m.label: m.proto.help for m in at.metric}
    assert f"(95% CI {low:.3f}-{high:.3f}, bootstrap over {metrics['after']['images']} images)" in helps[
        "mAP50 compressed"]
    assert len(at.get("image")) == 2
    headers = [h.value for h in at.subheader]
    assert any(h.startswith("Original:") for h in headers) and any(h.startswith("Compressed:") for h in headers)
    assert any("vanished" in m.value and "appeared" in m.value for m in at.markdown)
    # a higher confidence threshold never shows more boxes
    count = int(next(h for h in headers if h.startswith("Original:")).split(":")[1].split()[0])
    at.slider(key="det_conf").set_value(0.9).run()
    headers = [h.value for h in at.subheader]
    assert int(next(h for h in headers if h.startswith("Original:")).split(":")[1].split()[0]) <= count
    at.slider(key="det_index").set_value(5).run()
    assert not at.exception


def test_detections_page_explains_what_to_do_for_a_classifier(tmp_path, monkeypatch):
    at = start(tmp_path / "home", monkeypatch)
    at.switch_page("pages/detections.py").run()
    assert any("classifier" in i.value for i in at.info)


def test_a_link_opens_the_demo_detector_but_never_an_uploaded_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["model"] = "detector:demo"
    at.query_params["data"] = "shapes"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "mAP50" in {m.label for m in at.metric}
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["model"] = f"detector:{tmp_path / 'evil.pt'}"
    at.query_params["data"] = "shapes"
    at.run()
    assert not at.exception
    assert "Test accuracy" in {m.label for m in at.metric}  # the default classifier, nothing else loaded


def test_plan_and_sensitivity_pages_work_for_the_detector(detector_home, monkeypatch):
    at = start(detector_home[0], monkeypatch)
    at.radio(key="model_source").set_value("Demo detector (YOLO)").run()
    at.switch_page("pages/plan.py").run()
    assert not at.exception, [e.value for e in at.exception]
    sliders = [s.key for s in at.slider if "::sp::" in s.key]
    assert any(k.endswith("::model.0.conv") for k in sliders)
    assert not any(".cv3.0.2" in k or ".dfl." in k for k in sliders)  # head predictions are never compressed
    assert "Estimated file" in {m.label for m in at.metric}
    assert at.checkbox(key="plan_fold_bn").value  # detectors fold batch norm after pruning by default
    assert at.number_input(key="plan_prune_ema").value == 0.0  # the prune step's weight average, off by default
    at.switch_page("pages/sensitivity.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="sens_val_size").value == 64


def test_compare_page_handles_a_detector_run(detector_home, monkeypatch):
    home, run_id = detector_home
    at = start(home, monkeypatch)
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    size = (home / "runs" / run_id / "model.clab").stat().st_size
    assert table.loc[table["run"] == run_id, "file bytes"].item() == f"{size:,}"
    assert any("mAP50" in c.value for c in at.caption)
    assert len(at.get("download_button")) == 5  # the report, .clab, recipe, a detector's TorchScript and ONNX


def test_pareto_axis_says_map_for_detector_runs():
    import pandas as pd
    from complab.ui.figures import pareto_figure

    table = pd.DataFrame([{"run": "a", "plan": "p", "method": "prune+cluster", "task": "detect", "accuracy": 0.98,
                           "compressed_bytes": 1000, "ratio": 10.0}])
    assert pareto_figure(table, "compressed_bytes", "bytes").layout.yaxis.title.text == "validation mAP50 (%)"
    table["task"] = "classify"
    assert pareto_figure(table, "compressed_bytes", "bytes").layout.yaxis.title.text == "test accuracy (%)"


def _key(at, kind: str, suffix: str) -> str:
    return next(w.key for w in getattr(at, kind) if w.key and w.key.endswith(suffix))


@pytest.mark.slow  # a detector channel-pruned through the page (41 s at load 3)
def test_plan_page_prunes_detector_channels_by_yolo_block(detector_home, monkeypatch):
    """The channels section traces the detector as the step does (C2f made prunable, head outputs whole): its
    sliders sit under their YOLO block, and a run of the plan it builds removes the channels the estimate said."""
    from complab import engine

    home, _ = detector_home
    at = start(home, monkeypatch)
    at.radio(key="model_source").set_value("Demo detector (YOLO)").run()
    at.switch_page("pages/plan.py").run()
    at.toggle(key=_key(at, "toggle", "::show")).set_value(True).run()  # a big model's section starts switched off
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    blocks = [m.value for m in at.markdown if m.value.startswith("**model.")]
    for block in ("**model.0 · Conv**", "**model.2 · C2f**", "**model.9 · SPPF**",
                  "**model.22 · Detect (box branch)**", "**model.22 · Detect (class branch)**"):
        assert block in blocks
    keys = [s.key for s in at.slider if "::keep::" in s.key]
    assert not any(".cv0." in k or ".dfl." in k or k.endswith((".cv2.0.2", ".cv3.0.2")) for k in keys)
    split = at.slider(key=_key(at, "slider", "::keep::model.4.cv1.conv"))  # the C2f's cv1: both halves, 2 x 16
    assert split.value == 32 and split.step == 2
    selection = at.selectbox(key=_key(at, "selectbox", "::selection"))
    assert selection.value == "l1"
    selection.set_value("ga").run()  # offered (the step decides at run time whether a detector can use it)
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    at.selectbox(key=selection.key).set_value("l1").run()
    split = at.slider(key=split.key)
    split.set_value(16).run()
    removed = next(c.value for c in at.caption if c.value.startswith("Channels removed"))
    estimated = int(removed.split(": ")[1].split()[0].replace(",", ""))
    # a cheap run: no fine-tuning anywhere, no distillation
    at.number_input(key=_key(at, "number_input", "::epochs")).set_value(0)
    at.toggle(key=_key(at, "toggle", "::kd")).set_value(False)
    for key in ("plan_prune_epochs", "plan_cluster_epochs"):
        at.number_input(key=key).set_value(0)
    at.number_input(key="plan_iterations").set_value(1).run()
    before = {r["id"] for r in engine.list_runs(root=home)}
    at.button(key="plan_launch").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    (run_id,) = {r["id"] for r in engine.list_runs(root=home)} - before
    plan = engine.status(run_id, root=home)["job"]["plan"]
    channels = next(step for step in plan["steps"] if step["type"] == "channels")
    assert channels["keep_ratio"] == {"model.4.cv1.conv": 0.5} and channels["selection"] == "l1"
    row = engine.wait(run_id, 600, root=home)
    assert row["state"] == "succeeded", row.get("error")
    metrics = json.loads((home / "runs" / run_id / "metrics.json").read_text())
    kept = {name: (v["channels"], v["kept"]) for name, v in metrics["steps"]["channels"]["layers"].items()}
    assert kept == {"model.4.cv0.conv": (16, 8), "model.4.cv1.conv": (16, 8)}  # both halves of the C2f's cv1
    assert metrics["before"]["prunable_weights"] - metrics["after"]["prunable_weights"] == estimated

    # the Detections page says what the channels step removed and shows the run's measured latencies
    at.switch_page("pages/detections.py").run()
    choose_run(at, run_id)
    assert not at.exception, [e.value for e in at.exception]
    said = next(m.value for m in at.markdown if "Channels removed" in m.value)
    assert "16 of 32 channels kept" in said
    assert f"{metrics['before']['params']:,} -> {metrics['after']['params']:,}" in said
    labels = {m.label: m.value for m in at.metric}
    assert labels["PyTorch latency original"] == ms(metrics["before"]["latency_ms"])
    assert labels["PyTorch latency compressed"] == ms(metrics["after"]["latency_ms"])


def choose_run(at, run_id: str) -> None:
    runs = at.selectbox(key="det_run")
    runs.select_index(next(i for i, label in enumerate(runs.options) if label.startswith(run_id))).run()


def test_detections_page_measures_latency_when_the_run_did_not(detector_home, monkeypatch):
    home, run_id = detector_home  # the fixture's run was submitted with latency off
    at = start(home, monkeypatch)
    at.radio(key="model_source").set_value("Demo detector (YOLO)").run()
    at.switch_page("pages/detections.py").run()
    choose_run(at, run_id)
    assert not {"PyTorch latency original", "ONNX Runtime original"} & {m.label for m in at.metric}
    assert not any("Channels removed" in m.value for m in at.markdown)  # a prune + cluster run removes none
    at.button(key="det_measure_latency").click().run()
    assert not at.exception, [e.value for e in at.exception]
    labels = {m.label: m.value for m in at.metric}
    assert labels["PyTorch latency original"].endswith(" ms") and labels["PyTorch latency compressed"].endswith(" ms")
    assert any("measured here with 1 torch thread" in c.value for c in at.caption)
    # and in ONNX Runtime, the runtime a detector ships in: both exported, timed paired (complab.deploy)
    assert labels["ONNX Runtime original"].endswith(" ms") and labels["ONNX Runtime compressed"].endswith(" ms")
    assert any(c.value.startswith("ONNX Runtime 1.") and "2 threads" in c.value and "measured here" in c.value
               for c in at.caption)
    at.slider(key="det_conf").set_value(0.5).run()  # the measurement stays on the page
    assert "PyTorch latency compressed" in {m.label for m in at.metric}


def test_a_detector_recipe_moves_the_channel_sliders():
    """load_channels (the recipe upload's hook) on a detector: a C2f's cv1 key sets its one slider (both halves)."""
    import copy

    import complab.ui.channels as app_channels
    from complab.models.detector import load_detector
    from complab.plan import ChannelStep, DistillStep, Plan

    recipe = Plan(steps=(ChannelStep(keep_ratio={"model.4.cv1.conv": 0.5, "model.9.cv2.conv": 0.25},
                                     selection="random"), DistillStep(features=2.5, feature_temperature=1.5)))
    state = {}
    with pytest.MonkeyPatch.context() as patch:  # outside a running script: capture what it writes
        patch.setattr(app_channels, "st", type("FakeStreamlit", (), {"session_state": state}))
        patch.setattr(app_channels, "cached_layout", lambda k, m, shape, task="classify": app_channels.channel_layout(
            copy.deepcopy(m), shape, task))
        app_channels.load_channels(recipe, load_detector(), "k")
    assert state["chan::k::keep::model.4.cv1.conv"] == 16 and state["chan::k::keep::model.9.cv2.conv"] == 32
    assert state["chan::k::keep::model.0.conv"] == 8 and state["chan::k::selection"] == "random"
    assert state["chan::k::kd_features"] == 2.5 and state["chan::k::kd_feature_temperature"] == 1.5


def test_detections_and_compare_in_presentation_mode_from_a_link(detector_home, monkeypatch):
    """A presenter's link (model, present, run, image): both detectors' images large, side by side, nothing to set;
    the Compare page's headline says mAP50 for a detector run."""
    home, run_id = detector_home
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    link = {"model": "detector:demo", "data": "shapes", "present": "1", "run": run_id, "image": "1"}
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params.update(link)
    at.run()
    at.switch_page("pages/detections.py")
    at.query_params.update(link)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.get("image")) == 2
    assert {"mAP50 original", "mAP50 compressed"} <= {m.label for m in at.main.metric}
    for kind in ("selectbox", "slider", "radio", "expander"):
        assert not getattr(at.main, kind), kind
    at.switch_page("pages/compare.py")
    at.query_params.update(link)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "mAP50 after" in {m.label for m in at.main.metric}
