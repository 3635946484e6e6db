"""AppTest tests of every page (Streamlit's headless script runner; the engine runs real jobs in tmp dirs)."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def page(name: str) -> AppTest:
    at = app()
    at.run()
    at.switch_page(f"pages/{name}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_model_page_shows_measured_baseline(home):
    at = app()
    at.run()
    assert not at.exception
    labels = {m.label: m.value for m in at.metric}
    assert labels["Parameters"] == "431,080"  # demo:lenet5 by default
    assert "%" in labels["Test accuracy"]
    at.selectbox(key="demo_model").select("lenet300").run()
    labels = {m.label: m.value for m in at.metric}
    assert labels["Parameters"] == "266,610"
    assert at.dataframe[0].value["layer"].tolist() == ["fc1", "fc2", "fc3"]


def test_model_page_bad_folder_shows_error(home):
    at = app()
    at.run()
    at.radio(key="data_source").set_value("Local folder").run()
    at.text_input(key="data_folder").input("/no/such/folder").run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


def test_plan_page_estimate_moves_with_slider(home):
    at = page("plan")
    before = {m.label: m.value for m in at.metric}["Estimated file"]
    at.slider(key=next(s.key for s in at.slider if s.key.endswith("sp::fc1"))).set_value(0.95).run()
    after = {m.label: m.value for m in at.metric}["Estimated file"]
    assert before != after
    assert int(after.replace(",", "").split()[0]) < int(before.replace(",", "").split()[0])


def test_sensitivity_and_runs_and_compare_pages_empty_state(home):
    for name in ("sensitivity", "runs", "compare"):
        at = page(name)
        assert at.info, name


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory):
    """A data folder holding one finished sensitivity analysis and one finished run on demo:lenet5."""
    from complab import engine

    home = tmp_path_factory.mktemp("seeded")
    quick = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    base = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
    sens = engine.submit({"kind": "sensitivity", **base, "config": {"val_size": 120, "sparsities": [0.0, 0.5, 0.9],
                                                                     "n_clusters": [2, 8, 32], "seed": 0}}, root=home)
    run = engine.submit({"kind": "compress", **base, "plan": quick, "latency": False}, root=home)
    for run_id in (sens, run):
        assert engine.wait(run_id, 300, root=home)["state"] == "succeeded"
    return home, run


def seeded_page(name, home, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    return page(name)


def test_sensitivity_page_draws_the_report(seeded_home, monkeypatch):
    at = seeded_page("sensitivity", seeded_home[0], monkeypatch)
    assert not at.info
    assert any("Accuracy drop" in h.value for h in at.subheader)
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    assert len(charts) == 4  # sparsity, clusters, bits (issue 27), the heatmap
    assert charts[2]["layout"]["xaxis"]["title"]["text"] == "integer bits"
    for curves in charts[:3]:  # each layer's curve with its 95% band
        bands = [t for t in curves["data"] if t.get("fill") == "toself"]
        assert {t["name"] for t in bands} == {f"{layer} 95% band" for layer in ("conv1", "conv2", "fc1", "fc2")}
    heatmap = charts[3]["data"][0]
    assert heatmap["type"] == "heatmap" and heatmap["zmin"] == -heatmap["zmax"] and heatmap["zmid"] == 0
    # 120 validation images: one image is 0.8 points and the report says what that cannot resolve
    assert [w.value for w in at.warning if "validation images" in w.value] and all(
        w.value.startswith("120 validation images") for w in at.warning)
    assert "%" in at.metric[0].value and at.metric[0].value.count(".") == 1  # the formatter's 99.2%, not 0.9917


def test_sensitivity_page_warns_when_the_subset_cannot_resolve_its_drops(seeded_home, monkeypatch, tmp_path):
    import shutil

    from complab.ui.report import plain_markdown

    home = tmp_path / "home"
    shutil.copytree(seeded_home[0], home)
    path = next(home.glob("runs/*/sensitivity.json"))
    report = json.loads(path.read_text())
    message = "40 validation images resolve drops of 2.5 points or more: the drops shown are smaller (noise)"
    report["noise"] = {"val_images": 40, "step": 0.025, "floor": 0.05, "resolves": False, "message": message}
    path.write_text(json.dumps(report))
    at = seeded_page("sensitivity", home, monkeypatch)
    assert [w.value for w in at.warning] == [plain_markdown(message)]  # the same characters, no markup
    assert any("95% interval on 40 validation images" in c.value for c in at.caption)  # the noise's count


def test_plan_page_target_solver_moves_the_sliders(seeded_home, monkeypatch):
    at = seeded_page("plan", seeded_home[0], monkeypatch)
    sliders = {s.key: s.value for s in at.slider if "::sp::" in s.key}
    assert set(k.rsplit("::", 1)[1] for k in sliders) == {"conv1", "conv2", "fc1", "fc2"}
    at.number_input(key="plan_target_value").set_value(80.0).run()
    at.button(key="plan_apply").click().run()
    assert not at.exception
    after = {s.key: s.value for s in at.slider if "::sp::" in s.key}
    assert after != sliders
    note = next(c.value for c in at.caption if "Solver" in c.value)
    assert "predicted accuracy drop" in note
    ratio = float({m.label: m.value for m in at.metric}["Estimated ratio"].rstrip("x"))
    assert ratio >= 80 or "not reachable" in note


def test_runs_and_compare_pages_show_the_run(seeded_home, monkeypatch):
    home, run_id = seeded_home
    at = seeded_page("runs", home, monkeypatch)
    assert any(run_id in m.value for m in at.markdown)
    assert any(b.label == "Re-run" for b in at.button)
    at = seeded_page("compare", home, monkeypatch)
    table = at.dataframe[0].value
    assert run_id in table["run"].tolist()
    size = (home / "runs" / run_id / "model.clab").stat().st_size
    assert table.loc[table["run"] == run_id, "file bytes"].item() == f"{size:,}"  # separators: the formatter's
    assert len(at.get("plotly_chart")) == 8  # four Pareto tabs, the map, two waterfalls (file, layer), the histogram


def test_pages_reach_run_files_through_the_engine(seeded_home):
    """engine.run_file: the path of a file in a run's folder; never outside it, never for an unknown run."""
    from complab import engine
    from complab.errors import CompressionLabError

    home, run_id = seeded_home
    assert engine.run_file(run_id, "model.clab", root=home) == home / "runs" / run_id / "model.clab"
    for bad_id, name in (("..", "index.sqlite"), ("20200101-000000-abcdef", "model.clab"), (run_id, "../job.json"),
                         (run_id, ""), (f"{run_id}/..", "model.clab")):
        with pytest.raises(CompressionLabError):
            engine.run_file(bad_id, name, root=home)


def test_plan_page_quantizer_selector(home):
    """Gong et al.'s quantizers per layer: the selector moves the live estimate and bad shapes are refused."""
    at = page("plan")
    before = {m.label: m.value for m in at.metric}["Estimated file"]
    key = next(s.key for s in at.selectbox if s.key.endswith("::q::fc1"))
    at.selectbox(key=key).select("pq").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.selectbox(key=key.replace("::q::", "::k::")).value == "off"  # pq replaces clustering on fc1
    assert at.slider(key=key.replace("::q::", "::sp::")).value == 0.0  # and cannot keep pruned zeros
    after = {m.label: m.value for m in at.metric}["Estimated file"]
    assert after != before
    at.selectbox(key=key.replace("::q::", "::qk::")).select(1024).run()
    assert any("needs at least 1024 vectors" in e.value for e in at.error)


def vgg_plan_page() -> AppTest:
    """The plan page with the demo VGG active (it has convolutions whose channels can be removed)."""
    at = app()
    at.session_state["active"] = {"model": "demo:vgg_small", "weights": None, "data": "digits", "input_size": None,
                                  "mean": None, "std": None}
    at.run()
    at.switch_page("pages/plan.py")
    at.run()
    return at


def test_plan_page_channel_sliders(home):
    """Channels kept per convolution (demo VGG): the live estimate drops and the plan starts with the channels step."""
    at = vgg_plan_page()
    assert not at.exception, [e.value for e in at.exception]
    before = {m.label: m.value for m in at.metric}["Estimated file"]
    key = next(s.key for s in at.slider if s.key.endswith("::keep::features.21"))
    at.slider(key=key).set_value(64).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    after = {m.label: m.value for m in at.metric}["Estimated file"]
    assert int(after.split()[0].replace(",", "")) < int(before.split()[0].replace(",", ""))
    assert any("Channels removed" in c.value for c in at.caption)


def test_plan_page_channel_settings_follow_a_loaded_recipe(home):
    """load_channels (the recipe upload's hook) moves the channel sliders and GA/KD settings to the recipe's."""
    import complab.ui.channels as app_channels
    from complab.models.handle import load_model
    from complab.plan import Plan

    at = vgg_plan_page()
    key = next(s.key for s in at.slider if s.key.endswith("::keep::features.21"))
    prefix = key[: -len("keep::features.21")]
    # outside a running script: capture what load_channels writes into a plain dict
    state = {}
    recipe = Plan.from_json((ROOT / "assets" / "recipes" / "vgg_small_channels.json").read_text())
    with pytest.MonkeyPatch.context() as patch:  # the app runs in this process: patch only this call
        patch.setattr(app_channels, "st", type("FakeStreamlit", (), {"session_state": state}))
        patch.setattr(app_channels, "cached_layout",
                      lambda k, m, shape, task="classify": app_channels.channel_layout(m, shape, task))
        app_channels.load_channels(recipe, load_model("demo:vgg_small"), prefix.split("::")[1])
    assert state[prefix + "keep::features.21"] == 64 and state[prefix + "keep::features.0"] == 19
    assert state[prefix + "selection"] == "ga" and state[prefix + "kd"] is True and state[prefix + "kd_epochs"] == 4
    for name, value in state.items():
        at.session_state[name] = value
    at.run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert at.slider(key=key).value == 64


def test_uploads_are_kept_by_content_and_never_overwritten(home):
    from complab.ui.state import save_upload

    first = save_upload(b"weights", "../model.pt")
    assert first.parent == home / "uploads" and first.name.endswith("-model.pt") and first.read_bytes() == b"weights"
    assert save_upload(b"weights", "model.pt") == first
    assert save_upload(b"other", "model.pt") != first and first.read_bytes() == b"weights"


def test_compare_page_draws_a_sweep_as_one_curve(seeded_home, monkeypatch):
    """A sweep (here the seeded run's plan again, so its member is the reused run) is one line in the bytes plot,
    and the table names the sweep of each run."""
    from complab import engine

    home, run_id = seeded_home
    job = engine.status(run_id, root=home)["job"]
    sweep_id = engine.submit_sweep([job], root=home, axis="ratio", targets=["ratio:20"])
    member = engine.sweep_status(sweep_id, root=home)["members"][0]
    assert member["run"] == run_id and member["reused"]
    at = seeded_page("compare", home, monkeypatch)
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    curves = [trace for trace in figure["data"] if trace.get("name", "").startswith(f"sweep {sweep_id[-4:]}")]
    assert len(curves) == 1 and curves[0]["mode"] == "lines+markers" and curves[0]["text"] == [run_id]
    table = at.dataframe[0].value
    assert table.loc[table["run"] == run_id, "sweep"].item() == f"sweep {sweep_id[-4:]} (ratio 20)"


def test_plan_page_sweep_submits_one_group_of_solved_plans(seeded_home, monkeypatch):
    from complab import engine

    home, _ = seeded_home
    at = seeded_page("plan", home, monkeypatch)
    before = {r["id"] for r in engine.list_runs(root=home)}
    for key in ("plan_prune_epochs", "plan_cluster_epochs"):  # no fine-tuning: the runs take seconds
        at.number_input(key=key).set_value(0)
    at.number_input(key="plan_iterations").set_value(1)
    at.text_input(key="plan_sweep_targets::ratio").input("20, 40").run()
    at.button(key="plan_sweep_submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("queued: 2 runs" in s.value for s in at.success)
    sweep = engine.list_sweeps(root=home)[0]
    try:
        assert sweep["targets"] == ["ratio:20", "ratio:40"] and sweep["axis"] == "ratio"
        prunes = []  # (20x may be reached by weight sharing alone: the 40x plan prunes)
        for member in sweep["members"]:
            job = engine.status(member["run"], root=home)["job"]
            assert member["run"] not in before and "accuracy" in job["predicted"]
            assert job["plan"]["name"].startswith("my-plan-ratio-")
            prunes += [step for step in job["plan"]["steps"] if step["type"] == "prune"]
        assert prunes and all(step["iterations"] == 1 for step in prunes)
    finally:
        engine.cancel_sweep(sweep["id"], root=home)
        engine.wait_sweep(sweep["id"], 60, root=home)


def test_plan_page_search_starts_a_background_search(seeded_home, monkeypatch):
    import json
    import time

    from complab import engine

    home, _ = seeded_home
    at = seeded_page("plan", home, monkeypatch)
    for key in ("plan_prune_epochs", "plan_cluster_epochs"):
        at.number_input(key=key).set_value(0)
    at.selectbox(key="plan_sweep_axis").set_value("search").run()
    at.number_input(key="plan_search_budget").set_value(2)
    at.number_input(key="plan_search_batch").set_value(2)
    at.button(key="plan_sweep_submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Search started" in s.value for s in at.success)
    folder = next((home / "searches").iterdir())
    settings = json.loads((folder / "search.json").read_text())
    assert settings["budget"] == 2 and settings["prune_options"]["finetune_epochs"] == 0
    deadline = time.time() + 120  # the background search queues its first generation as one sweep
    while time.time() < deadline and not [s for s in engine.list_sweeps(root=home) if s["axis"] == "search"]:
        time.sleep(1)
    sweep = next(s for s in engine.list_sweeps(root=home) if s["axis"] == "search")
    engine.cancel_sweep(sweep["id"], root=home)
    engine.wait_sweep(sweep["id"], 60, root=home)


def test_plan_page_bias_clusters_setting(home):
    """The cluster step's bias_clusters: the setting moves the live estimate, goes into the plan, and a value the
    schema refuses is shown with the schema's message."""
    import re

    def estimated_bytes(at) -> int:
        caption = next(c.value for c in at.caption if c.value.startswith("Estimated file"))
        return int(re.match(r"Estimated file ([\d,]+) B", caption).group(1).replace(",", ""))

    at = page("plan")
    for layer in ("fc1", "fc2"):
        at.selectbox(key=next(s.key for s in at.selectbox if s.key.endswith(f"::k::{layer}"))).select(8).run()
    before = estimated_bytes(at)
    at.number_input(key="plan_bias_clusters").set_value(16).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert before - estimated_bytes(at) > 800  # 400 fp32 biases (1.6 KB) -> 16 shared values
    at.number_input(key="plan_bias_clusters").set_value(1).run()
    assert any("bias_clusters 1 is out of range" in e.value for e in at.error)
