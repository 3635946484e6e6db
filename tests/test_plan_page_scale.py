"""The plan page at 50-100 layers: number formatting, sparklines, layer groups and filters, the faster layer
statistics (same numbers as before), links that reopen an uploaded model, and the plan page itself on a
21-layer torchvision model (groups, bulk setter, hidden rows keep their values)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


# --- human(): big numbers a metric box can show ---------------------------------------------------------------

def test_human_keeps_small_numbers_exact_and_prefixes_big_ones():
    from complab.ui.numbers import human

    assert human(431_080) == "431,080"  # six digits fit: exact
    assert human(8_174_317_568) == "8.17 G"
    assert human(102_400_000, "B") == "102 MB"
    assert human(43_210, "B") == "43,210 B"
    assert human(999_999, exact_below=1e3) == "1 M"  # rounds up into the next prefix, never "1e+03 k"
    assert human(999_499, exact_below=1e3) == "999 k"
    assert human(-2.5e9) == "-2.5 G"
    assert human(0) == "0"
    assert human(1.5e15) == "1,500 T"


# --- sparklines -----------------------------------------------------------------------------------------------

REPORT = {"base_accuracy": 0.9, "layers": {
    "conv1": {"sparsity": {"0.5": 0.89, "0.1": 0.9, "0.9": 0.4}, "clusters": {"4": 0.7, "32": 0.9},
              "measured": {"sparsity": ["0.1", "0.9"]}},
    "fc": {"sparsity": {"0.5": 0.9}, "clusters": {}},
}}


def test_layer_curve_reads_points_in_order_and_which_were_measured():
    from complab.ui.sparkline import layer_curve

    curve = layer_curve(REPORT, "conv1")
    assert curve.xs == (0.1, 0.5, 0.9) and curve.accuracies == (0.9, 0.89, 0.4)
    assert curve.measured == (True, False, True)  # 0.5 was estimated
    clusters = layer_curve(REPORT, "conv1", "clusters")
    assert clusters.xs == (2.0, 5.0)  # log2(k)
    assert clusters.measured == (True, True)  # no list: every point measured
    assert layer_curve(REPORT, "fc", "clusters") is None
    assert layer_curve(REPORT, "nope") is None and layer_curve(None, "conv1") is None


def test_sparkline_marks_the_setting_and_hollow_estimated_points():
    from complab.ui.sparkline import accuracy_at, layer_curve, sparkline

    curve = layer_curve(REPORT, "conv1")
    svg = sparkline(curve, 0.7, width=100, height=20)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="measured"') == 2 and svg.count('class="estimated"') == 1
    assert 'fill="white"' in svg  # the estimated point is hollow
    marks = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="2.5"', svg)
    assert len(marks) == 1
    later = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)" r="2.5"', sparkline(curve, 0.9, width=100, height=20))
    assert float(later[0][0]) > float(marks[0][0])  # the marker moves right with the slider
    assert float(later[0][1]) > float(marks[0][1])  # and down: lower accuracy
    assert accuracy_at(curve, 0.7) == pytest.approx(0.645)
    assert "<script" not in sparkline(curve, None)
    assert 'r="2.5"' not in sparkline(curve, None)


# --- groups and filters ---------------------------------------------------------------------------------------

def test_layer_groups_follow_the_module_names():
    import torchvision
    from complab.metrics import weight_layers
    from complab.ui.plan_form import layer_groups

    resnet = list(weight_layers(torchvision.models.resnet50()))
    groups = layer_groups(resnet)
    assert list(groups) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert "layer2.1.conv2" in groups["layer2"] and sum(map(len, groups.values())) == len(resnet) == 54
    mobilenet = layer_groups(list(weight_layers(torchvision.models.mobilenet_v2())))
    assert "features.3-4" in mobilenet and max(map(len, mobilenet.values())) <= 24  # one huge "features" splits
    yolo_like = layer_groups([f"model.{i}.conv" for i in range(30)])  # small children share a group
    assert list(yolo_like)[:2] == ["model.0-3", "model.4-7"] and min(map(len, yolo_like.values())) >= 4
    assert sum(map(len, yolo_like.values())) == 30
    assert layer_groups(["conv1", "conv2", "fc1", "fc2"]) == {"all layers": ["conv1", "conv2", "fc1", "fc2"]}


def test_filter_layers_by_pattern_and_size():
    from complab.ui.plan_form import filter_layers

    layers = ["layer1.0.conv1", "layer3.1.conv2", "fc"]
    numel = {"layer1.0.conv1": 4096, "layer3.1.conv2": 589_824, "fc": 2_048_000}
    assert filter_layers(layers, "layer3|FC")[0] == ["layer3.1.conv2", "fc"]
    assert filter_layers(layers, "", 100_000, numel)[0] == ["layer3.1.conv2", "fc"]
    kept, problem = filter_layers(layers, "conv[", 0, numel)
    assert kept == [] and "not a regular expression" in problem


# --- the faster layer statistics give the same numbers ----------------------------------------------------------

def test_kept_mask_equals_a_stable_argsort_with_ties():
    from complab.analysis.estimate import _kept_mask

    rng = np.random.default_rng(0)
    values = rng.integers(-5, 6, 5000).astype(np.float32)  # many ties, exact zeros
    magnitudes = np.abs(values)
    sorted_abs = np.sort(magnitudes)
    for n_prune in (1, 700, 2500, 4999):
        expected = np.ones(values.size, dtype=bool)
        expected[np.argsort(magnitudes, kind="stable")[:n_prune]] = False
        assert np.array_equal(_kept_mask(magnitudes, sorted_abs, n_prune), expected)


def test_sorted_magnitudes_from_the_signed_sort():
    from complab.analysis.estimate import _sorted_magnitudes

    values = np.concatenate((np.random.default_rng(2).standard_normal(3001), [0.0, -0.0, 0.0, -1.5, 1.5]))
    values = values.astype(np.float32)
    merged = _sorted_magnitudes(np.sort(values))
    assert np.array_equal(merged, np.sort(np.abs(values))) and not np.signbit(merged).any()


def test_equal_count_bins_equal_array_split():
    from complab.analysis.estimate import _equal_count_bins

    values = np.sort(np.random.default_rng(1).standard_normal(10_007).astype(np.float32))
    centers, counts = _equal_count_bins(values, 2048)
    groups = np.array_split(values.astype(np.float64), 2048)
    assert np.array_equal(counts, [g.size for g in groups])
    assert np.allclose(centers, [g.mean() for g in groups], rtol=1e-12, atol=1e-15)


def test_flops_from_a_weightless_copy_match_the_real_forward():
    import torchvision
    from complab import metrics
    from complab.analysis.estimate import _layer_flops

    model = torchvision.models.resnet18(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _layer_flops(model, (3, 64, 64)) == metrics.layer_flops(model, (3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(8, 4)))  # cannot be copied: counted for real
    assert _layer_flops(scripted, (8,))[0] == metrics.layer_flops(scripted, (8,))[0] > 0


# --- links to an uploaded model ---------------------------------------------------------------------------------

def test_a_link_reopens_an_uploaded_state_dict_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    from complab.ui.state import link_params, save_upload, spec_from_link, uploads_folder

    folder = uploads_folder()
    path = save_upload(b"state dict bytes", "resnet18.pt")
    data = f"imagefolder:{tmp_path / 'home' / 'data' / 'val'}"  # links name folders under the data folder only
    spec = {"model": "torchvision:resnet18", "weights": str(path), "data": data,
            "input_size": 224, "mean": None, "std": None}
    params = link_params(spec, folder)
    assert params == {"model": f"upload:{path.name[:12]}", "arch": "resnet18", "data": data, "size": "224"}
    assert link_params({**spec, "data": "imagefolder:/data/val"}, folder) is None  # not a folder links may name
    assert spec_from_link(params, folder) == (spec, None)
    assert link_params({**spec, "weights": str(tmp_path / "elsewhere.pt")}, folder) is None  # not an upload
    assert link_params({**spec, "model": f"torchscript:{path}", "weights": None}, folder) is None
    assert link_params({"model": "detector:" + str(path), "weights": None, "data": "shapes", "trust": True},
                       folder) is None  # an Ultralytics pickle never goes into a link
    demo = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
    assert spec_from_link(link_params(demo, folder), folder) == (demo, None)

    outside = tmp_path / "secret.pt"
    outside.write_bytes(b"x")
    for bad in ("upload:../../secret", "upload:" + "a" * 12 + "/../x", f"upload:{path.name[:11]}"):
        linked, problem = spec_from_link({**params, "model": bad}, folder)
        assert linked is None and "not an upload name" in problem
    linked, problem = spec_from_link({**params, "model": "upload:0123456789ab"}, folder)
    assert linked is None and "does not have" in problem and "upload the file again" in problem
    linked, problem = spec_from_link({**params, "arch": "resnet18;rm"}, folder)
    assert linked is None and "architecture" in problem
    assert spec_from_link({}, folder) == (None, None)


def test_compress_job_carries_the_prediction_once_the_engine_knows_it(monkeypatch):
    from complab.engine import jobs
    from complab.ui.state import compress_job

    spec = {"model": "demo:lenet5", "data": "digits"}
    predicted = {"accuracy": 0.97, "drop": 0.01, "low": 0.0, "high": 0.01, "model": "additive"}
    monkeypatch.setattr(jobs, "JOB_KEYS", jobs.JOB_KEYS - {"predicted"})
    assert "predicted" not in compress_job(spec, {"steps": []}, predicted=predicted)
    monkeypatch.setattr(jobs, "JOB_KEYS", jobs.JOB_KEYS | {"predicted"})
    assert compress_job(spec, {"steps": []}, predicted=predicted)["predicted"] == predicted
    assert "predicted" not in compress_job(spec, {"steps": []})


# --- the page on a 21-layer torchvision model -------------------------------------------------------------------

@pytest.fixture
def resnet18_upload(tmp_path, monkeypatch):
    """A random-init ResNet-18 (10 classes) state dict kept as an upload in a fresh data folder, whose data/rgb
    holds an RGB image folder of 10 classes for it (the digits are grey: an RGB model does not fit them)."""
    import torchvision
    from PIL import Image

    for index in range(10):
        (tmp_path / "home" / "data" / "rgb" / f"c{index}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (20 * index, 100 * i, 50)).save(tmp_path / "home" / "data" / "rgb" /
                                                                        f"c{index}" / f"{i}.png")

    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    from complab.ui.state import save_upload

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    file = tmp_path / "resnet18.pt"
    torch.save(model.state_dict(), file)
    return save_upload(file.read_bytes(), "resnet18.pt")


def app_on(spec=None, query=None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    if spec is not None:
        at.session_state["active"] = spec
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.run()
    at.switch_page("pages/plan.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def sparsity_sliders(at) -> dict[str, float]:
    return {s.key.rsplit("::", 1)[1]: s.value for s in at.slider if "::sp::" in s.key}


@pytest.mark.timeout(600)
def test_plan_page_groups_bulk_setter_and_hidden_rows(resnet18_upload):
    rgb = f"imagefolder:{resnet18_upload.parents[1] / 'data' / 'rgb'}"
    at = app_on(query={"model": f"upload:{resnet18_upload.name[:12]}", "arch": "resnet18", "size": "32",
                       "data": rgb})
    assert at.session_state["active"]["weights"] == str(resnet18_upload)  # opened from the link
    shown = sparsity_sliders(at)
    assert set(shown) == {"layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2"}  # one group open
    assert not any("::q::" in s.key for s in at.selectbox)  # compact rows: no quantizer columns
    assert any("Predicted accuracy" in m.label for m in at.metric)
    assert any("run the sensitivity analysis" in c.value for c in at.caption)
    before = {m.label: m.value for m in at.metric}["Estimated file"]
    assert re.fullmatch(r"[\d.]+ MB", before), before  # 44 MB fp32 model: shown in MB

    key = next(s.key for s in at.slider if s.key.endswith("::sp::layer1.0.conv1"))
    at.slider(key=key).set_value(0.9).run()
    prefix = key[: -len("sp::layer1.0.conv1")]
    at.toggle(key=prefix + "open::layer1").set_value(False).run()
    at.toggle(key=prefix + "open::layer4").set_value(True).run()
    assert set(sparsity_sliders(at)) == {f"layer4.{b}.{c}" for b in (0, 1) for c in ("conv1", "conv2")} | {
        "layer4.0.downsample.0"}
    at.number_input(key=prefix + "bulk_sp::layer4").set_value(0.95).run()
    at.button(key=prefix + "bulk::layer4").click().run()
    assert set(sparsity_sliders(at).values()) == {0.95}
    after = {m.label: m.value for m in at.metric}["Estimated file"]
    assert float(after.split()[0]) < float(before.split()[0])  # layer4 holds most of the weights
    at.toggle(key=prefix + "open::layer1").set_value(True).run()
    assert sparsity_sliders(at)["layer1.0.conv1"] == 0.9  # its row was hidden, its value kept
    at.text_input(key="plan_filter").input("downsample").run()
    assert set(sparsity_sliders(at)) == {"layer4.0.downsample.0"}  # layer1 has no downsample
    assert not at.exception


def test_a_link_to_a_missing_upload_opens_the_demo_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    at = app_on(query={"model": "upload:0123456789ab", "arch": "resnet18", "size": "32", "data": "digits"})
    assert at.session_state["active"]["model"] == "demo:lenet5"
    assert any("does not have" in w.value for w in at.sidebar.warning)


@pytest.mark.timeout(600)
def test_fold_bn_checkbox_recomputes_the_detector_statistics(tmp_path, monkeypatch):
    """The estimate follows the fold-BN checkbox (its statistics are computed per choice). AppTest reruns the
    whole script, so this does not exercise the fragment: in a browser the page's st.rerun() does that."""
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    at = app_on({"model": "detector:demo", "weights": None, "data": "shapes", "input_size": None, "mean": None,
                 "std": None})
    folded = {m.label: m.value for m in at.metric}["Estimated file"]
    at.checkbox(key="plan_fold_bn").uncheck().run()
    assert not at.exception, [e.value for e in at.exception]
    unfolded = {m.label: m.value for m in at.metric}["Estimated file"]
    assert int(unfolded.split()[0].replace(",", "")) > int(folded.split()[0].replace(",", ""))  # BN kept: bigger


def test_layer_bytes_memo_answers_as_a_fresh_computation(lenet5):
    from complab.analysis.estimate import _layer_bytes, estimate, layer_bytes, model_stats

    stats = model_stats(lenet5)
    settings = {name: (0.8, 16) for name in stats.layers}
    first = estimate(stats, settings)
    assert all(len(layer.memo) == 1 for layer in stats.layers.values())
    again = estimate(stats, {**settings, "fc1": (0.9, 16)})  # one slider moved: one new answer, the rest reused
    assert sum(len(layer.memo) for layer in stats.layers.values()) == len(stats.layers) + 1
    assert again["per_layer_bytes"]["conv1"] == first["per_layer_bytes"]["conv1"]
    for layer in stats.layers.values():
        for (sparsity, k), size in layer.memo.items():
            assert size == _layer_bytes(layer, sparsity, k) == layer_bytes(layer, sparsity, k)
    fresh = estimate(model_stats(lenet5), {**settings, "fc1": (0.9, 16)})
    assert again["compressed_bytes"] == fresh["compressed_bytes"]
