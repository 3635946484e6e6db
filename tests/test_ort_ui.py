"""Int runs and ONNX Runtime latency where people compare (issue 27, items 2 and 4): the Compare page puts int runs on
its fronts labelled by their bits and shows both latencies (PyTorch and ONNX Runtime, with the runtime's threads and
the CPU's int8 instruction set); a run without an ONNX Runtime figure says why in one line; the Runs page and the
HTML report carry the ONNX Runtime latency too.

The runs are real engine runs of demo:lenet5 with latency on (the int step, the compact file and ONNX Runtime's
paired latency as pipeline.compress measures them). Two cases cannot happen on this machine and are written into a
real run's metrics.json by `older` below: a run from before ONNX Runtime was measured (its ORT keys removed) and a
run where onnxruntime was missing (its ORT record says so, as complab.deploy writes it).
"""

import base64
import html
import json
import time
from pathlib import Path

import numpy as np
import pytest
from complab import engine, runfolder
from complab.analysis import latency
from complab.analysis.pareto import int_method, method_family, runs_table
from complab.engine.store import RunStore, summary_metrics
from complab.ui.numbers import latency_change, ms, speed
from complab.ui.report import ReportRun, plain_markdown, report_html
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
pytestmark = pytest.mark.timeout(600)
BASE = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
SYNTHETIC_ORT = {"version": "1.32.0", "threads": 2, "isa": "AVX512-VNNI", "provider": "CPUExecutionProvider",
                 "rounds": 40, "int8": True, "error": None}
MIXED = {"conv1": 8, "conv2": 4, "fc1": 2, "fc2": 8}
MISSING = {"version": None, "threads": 2, "isa": "AVX512-VNNI", "provider": None, "rounds": 0, "int8": False,
           "error": "onnxruntime is not installed: pip install onnxruntime"}


def plan(name: str, sparsity: float, k: int) -> dict:
    return {"schema_version": 1, "name": name, "seed": 0, "eval_split": "test", "steps": [
        {"type": "prune", "sparsity": {"_default": sparsity}, "iterations": 1, "finetune_epochs": 0, "lr": 0.001},
        {"type": "cluster", "n_clusters": {"_default": k}, "finetune_epochs": 0, "lr": 0.0002}]}


def int_plan(name: str, bits: dict, activation_bits: int) -> dict:
    return {"schema_version": 1, "name": name, "seed": 0, "eval_split": "test",
            "steps": [{"type": "int", "bits": bits, "activation_bits": activation_bits, "calibration_images": 64}]}


def weight_rows(metrics: dict) -> list[dict]:
    return [row for row in metrics["layers"] if row["name"].endswith(".weight") and len(row["shape"]) >= 2]


def older(home: Path, run_id: str, ort: dict | None) -> dict:
    """A real run's metrics.json (and its index row, as the engine writes it when a run finishes) as a run from
    before ONNX Runtime latency (`ort` None: no ORT keys) or one whose ONNX Runtime could not run (`ort`: its record,
    no figures) left it."""
    path = home / "runs" / run_id / "metrics.json"
    metrics = json.loads(path.read_text())
    for side in ("before", "after"):
        metrics[side].pop("ort_latency_ms", None)
    metrics.pop("ort", None)
    if ort is not None:
        metrics["ort"] = ort
    path.write_text(json.dumps(metrics))
    assert RunStore(home).update(run_id, metrics=summary_metrics(metrics))
    return metrics


@pytest.fixture(scope="module")
def ort_home(tmp_path_factory):
    """Four runs of demo:lenet5, latency measured: int8 with 8-bit activations (W8A8), mixed-precision weights
    (2-8 bits), and two prune+cluster runs made older: one from before ONNX Runtime latency, one without
    onnxruntime."""
    home = tmp_path_factory.mktemp("ort_ui")
    plans = {"int8-w8a8": int_plan("int8-w8a8", {"_default": 8}, 8), "mixed-bits": int_plan("mixed-bits", MIXED, 0),
             "old-run": plan("old-run", 0.8, 4), "no-ort": plan("no-ort", 0.7, 8)}
    ids = {}
    for name, recipe in plans.items():
        ids[name] = engine.submit({"kind": "compress", **BASE, "plan": recipe, "latency": True}, root=home)
        time.sleep(1.1)
    for run_id in ids.values():
        assert engine.wait(run_id, 500, root=home)["state"] == "succeeded"
    metrics = {name: json.loads((home / "runs" / run_id / "metrics.json").read_text()) for name, run_id in ids.items()}
    for name in ("int8-w8a8", "mixed-bits"):  # measured: both latencies, and how ONNX Runtime ran
        assert metrics[name]["ort"]["error"] is None and metrics[name]["after"]["ort_latency_ms"] > 0, metrics[name]
    assert metrics["int8-w8a8"]["ort"]["int8"] and not metrics["mixed-bits"]["ort"]["int8"]  # weights only: fp32
    metrics["old-run"] = older(home, ids["old-run"], None)
    metrics["no-ort"] = older(home, ids["no-ort"], MISSING)
    return home, ids, metrics


# ---- what an int run is called, and why a run has no ONNX Runtime figure ---------------------------------------

def test_an_int_run_is_named_by_its_bits_from_its_report_file_or_plan(ort_home):
    _, _, metrics = ort_home
    w8a8 = int_method(metrics["int8-w8a8"])
    assert w8a8["label"] == "int8 (W8A8)" and w8a8["family"] == "int8 (W8A8)" and w8a8["bits"] == [8]
    weights = {row["name"][:-7]: row["numel"] for row in weight_rows(metrics["mixed-bits"])}
    avg = sum(MIXED[layer] * n for layer, n in weights.items()) / sum(weights.values())  # over the weights
    said = int_method(metrics["mixed-bits"])
    assert said["label"] == f"mixed 2-8 bits, {avg:.1f} avg" and said["family"] == "mixed precision"
    assert said["avg_bits"] == pytest.approx(avg) and said["bits"] == [2, 4, 8] and said["activation_bits"] == 0
    # the same from the compact file's integer sections alone (a step report without its layers)
    from_file = {**metrics["mixed-bits"], "steps": {"int": {}}}
    assert [row["encoding"] for row in weight_rows(from_file)] == ["int"] * 4
    assert int_method(from_file)["label"] == said["label"]
    # neither: the plan's int step, resolved on the file's layers (patterns, the default, "off")
    bare = {**from_file, "layers": [{k: v for k, v in row.items() if k not in ("encoding", "layout")}
                                    for row in from_file["layers"]]}
    assert int_method(bare) == {"label": "int", "family": "int", "bits": [], "avg_bits": None, "activation_bits": 0}
    from_plan = int_method(bare, int_plan("p", {"_default": 4, "fc2": 8}, 8))
    assert from_plan["bits"] == [4, 8] and from_plan["label"].endswith(", A8")
    assert int_method(bare, int_plan("p", {"re:conv.*": 3, "_default": "off"}, 0))["label"] == "int3 (weights only)"
    # a report without weight counts: the plain mean over its layers
    unweighted = {"steps": {"int": {"layers": {layer: {"bits": b} for layer, b in MIXED.items()}}}}
    assert int_method(unweighted)["avg_bits"] == pytest.approx(sum(MIXED.values()) / len(MIXED))
    assert int_method(metrics["old-run"]) is None  # no int step
    assert method_family(["prune", "int"], w8a8) == "prune+int8 (W8A8)"
    assert method_family(["prune", "cluster"]) == "prune+cluster"


def test_a_run_without_an_onnx_runtime_figure_says_why_in_one_line(ort_home):
    _, _, metrics = ort_home
    old = latency.figures(metrics["old-run"])
    assert old["torch_after"] and old["ort_after"] is None and old["reason"] == latency.NOT_RECORDED
    missing = latency.figures(metrics["no-ort"])
    assert missing["reason"] == "no ONNX Runtime latency: onnxruntime is not installed: pip install onnxruntime"
    off = {**metrics["old-run"], "before": {k: v for k, v in metrics["old-run"]["before"].items() if k != "latency_ms"},
           "after": {k: v for k, v in metrics["old-run"]["after"].items() if k != "latency_ms"}}
    assert latency.figures(off)["reason"] == latency.LATENCY_OFF
    good = latency.figures(metrics["int8-w8a8"])
    m = metrics["int8-w8a8"]
    assert good["reason"] is None
    assert good["ort_times"] == pytest.approx(m["before"]["ort_latency_ms"] / m["after"]["ort_latency_ms"])
    version = ".".join(m["ort"]["version"].split(".")[:2])
    assert latency.ort_setting(good["ort"]) == f"ONNX Runtime {version}, 2 threads, {m['ort']['isa']} int8"
    assert latency.ort_setting(latency.figures(metrics["mixed-bits"])["ort"]).endswith(", 2 threads, float32")
    for reason in (old["reason"], missing["reason"], latency.LATENCY_OFF):
        assert "\n" not in reason and "Traceback" not in reason


def test_the_run_folder_check_refuses_a_damaged_ort_record(ort_home):
    _, _, metrics = ort_home
    good = {**metrics["int8-w8a8"], "ort": SYNTHETIC_ORT}
    for bad in ({**SYNTHETIC_ORT, "threads": "two"}, {**SYNTHETIC_ORT, "int8": "yes"},
                {**SYNTHETIC_ORT, "isa": "x" * 500}, ["AVX512"]):
        _, problem = runfolder.check_metrics({**good, "ort": bad}, "compress")
        assert problem is not None and str(problem).startswith("damaged: metrics.json: ort")
    bad_ms = {**good, "after": {**good["after"], "ort_latency_ms": -1}}
    assert "after.ort_latency_ms" in str(runfolder.check_metrics(bad_ms, "compress")[1])
    checked, problem = runfolder.check_metrics(good, "compress")
    assert problem is None and checked["ort"]["isa"] == "AVX512-VNNI"
    assert checked["after"]["ort_latency_ms"] == good["after"]["ort_latency_ms"]


# ---- the pages and the report ------------------------------------------------------------------------------------

def app(home: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def go(at: AppTest, name: str) -> AppTest:
    at.switch_page(f"pages/{name}.py")
    at.query_params.pop("run", None)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def values(array) -> list:
    """A plotly JSON array as a list (plotly writes numbers as base64 typed arrays: {"dtype", "bdata"})."""
    if isinstance(array, dict) and "bdata" in array:
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def ort_change(m: dict) -> str:
    return latency_change(m["before"]["ort_latency_ms"], m["after"]["ort_latency_ms"])


def test_compare_puts_int_runs_on_the_fronts_and_shows_both_latencies(ort_home, monkeypatch):
    home, ids, metrics = ort_home
    at = go(app(home, monkeypatch), "compare")
    table = at.dataframe[0].value.set_index("run")
    mixed_label = int_method(metrics["mixed-bits"])["label"]
    assert table.loc[ids["int8-w8a8"], "method"] == "int8 (W8A8)"
    assert table.loc[ids["mixed-bits"], "method"] == mixed_label
    assert table.loc[ids["old-run"], "method"] == "prune+cluster"
    m = metrics["int8-w8a8"]
    assert table.loc[ids["int8-w8a8"], "ONNX Runtime latency"] == ort_change(m)
    assert table.loc[ids["int8-w8a8"], "PyTorch latency"] == latency_change(m["before"]["latency_ms"],
                                                                             m["after"]["latency_ms"])
    assert table.loc[ids["old-run"], "ONNX Runtime latency"] == "not measured (an older run)"
    assert table.loc[ids["no-ort"], "ONNX Runtime latency"] == ("not measured (onnxruntime is not installed: pip "
                                                                "install onnxruntime)")
    # the ONNX Runtime front: int runs are points of their own series, labelled by their bits
    ort_front = next(c for c in charts(at) if c["layout"]["xaxis"]["title"]["text"].startswith("ONNX Runtime"))
    by_series = {trace["name"]: trace for trace in ort_front["data"] if trace.get("mode") == "markers"}
    assert {"int8 (W8A8)", "mixed precision"} <= set(by_series)
    assert values(by_series["int8 (W8A8)"]["x"]) == [m["after"]["ort_latency_ms"]]
    assert values(by_series["int8 (W8A8)"]["text"]) == [ids["int8-w8a8"]]
    assert by_series["mixed precision"]["customdata"][0][2] == mixed_label  # the hover names the bits
    assert "prune+cluster" not in by_series  # the older runs have no ONNX Runtime figure: not on this front
    torch_front = next(c for c in charts(at) if c["layout"]["xaxis"]["title"]["text"].startswith("PyTorch"))
    assert {"int8 (W8A8)", "mixed precision", "prune+cluster"} <= {t["name"] for t in torch_front["data"]}
    setting = latency.ort_setting(latency.ort_info(m))  # "ONNX Runtime 1.32, 2 threads, AVX512-VNNI int8"
    assert setting.startswith("ONNX Runtime 1.") and setting.endswith(f"2 threads, {m['ort']['isa']} int8")
    assert any(setting in c.value for c in at.caption)

    # the int8 run chosen: both latencies before -> after with the speed-up, the runtime's setting in a caption
    at.selectbox(key="compare_run").set_value(ids["int8-w8a8"]).run()
    assert not at.exception, [e.value for e in at.exception]
    said = " ".join(md.value for md in at.main.markdown)
    assert f"**ONNX Runtime** (CPU): {ort_change(m)}" in said
    assert f"**PyTorch** (eager, CPU): {latency_change(m['before']['latency_ms'], m['after']['latency_ms'])}" in said
    assert any(c.value.startswith(f"{setting}; batch 1") for c in at.caption)
    boxes = {metric.label: metric for metric in at.metric}
    ratio = m["before"]["ort_latency_ms"] / m["after"]["ort_latency_ms"]
    assert boxes["ONNX Runtime latency"].value == ms(m["after"]["ort_latency_ms"])
    assert boxes["ONNX Runtime latency"].delta == speed(ratio)
    assert boxes["PyTorch latency"].value == ms(m["after"]["latency_ms"])
    assert f"{speed(ratio)} in ONNX Runtime (int8, 2 threads, {m['ort']['isa']}" in said

    # an older run: its PyTorch figures, and one line on why there is no ONNX Runtime one
    at.selectbox(key="compare_run").set_value(ids["old-run"]).run()
    assert not at.exception, [e.value for e in at.exception]
    lines = [md.value for md in at.main.markdown if "ONNX Runtime**" in md.value]
    assert len(lines) == 1 and lines[0].splitlines()[-1].startswith("**ONNX Runtime**: no ONNX Runtime latency: "
                                                                    "this run finished before")
    assert "ONNX Runtime latency" not in {metric.label for metric in at.metric}
    at.selectbox(key="compare_run").set_value(ids["no-ort"]).run()
    assert any(md.value.endswith("**ONNX Runtime**: no ONNX Runtime latency: onnxruntime is not installed: pip "
                                 "install onnxruntime.") for md in at.main.markdown)


def test_runs_page_shows_the_onnx_runtime_latency_before_and_after(ort_home, monkeypatch):
    home, ids, metrics = ort_home
    at = go(app(home, monkeypatch), "runs")
    said = " ".join(md.value for md in at.markdown)
    for name in ("int8-w8a8", "mixed-bits"):  # escaped as text from a run folder
        assert plain_markdown(f"ONNX Runtime {ort_change(metrics[name])}") in said
    assert "ONNX Runtime: not measured \\(onnxruntime is not installed: pip install onnxruntime\\)" in said
    assert said.count("ONNX Runtime") == 3  # two measured, one that could not be: the older run says nothing here


def test_report_html_holds_both_latency_rows_and_the_onnx_runtime_headline(ort_home):
    home, ids, metrics = ort_home
    m = metrics["int8-w8a8"]
    chosen = [ReportRun.from_dir(home / "runs" / ids[name], ids[name]) for name in ("int8-w8a8", "old-run")]
    page = report_html(chosen)
    headline = page.split("id='headline'>", 1)[1].split("</p>", 1)[0]
    ratio = m["before"]["ort_latency_ms"] / m["after"]["ort_latency_ms"]
    assert f"{speed(ratio)} in ONNX Runtime (int8, 2 threads, {m['ort']['isa']}" in headline
    details = page.split("id='details'", 1)[1].split("</details>", 1)[0]
    setting = latency.ort_setting(latency.ort_info(m))
    assert (f"<th>ONNX Runtime latency</th><td>{html.escape(ort_change(m))}, batch 1; {setting}</td>" in details)
    torch_row = latency_change(m["before"]["latency_ms"], m["after"]["latency_ms"])
    assert f"<th>PyTorch latency</th><td>{html.escape(torch_row)}, batch 1, eager</td>" in details
    numbers = json.loads(page.split("id='numbers'>", 1)[1].split("</script>", 1)[0])
    assert numbers["ort_latency_ms_before"] == m["before"]["ort_latency_ms"]
    assert numbers["ort_latency_ms_after"] == m["after"]["ort_latency_ms"]
    assert "ONNX Runtime CPU latency, batch 1 (ms)" in page  # the ORT front
    runs = page.split("class=\"dataframe runs\"", 1)[1].split("</table>", 1)[0]
    assert "int8 (W8A8)" in runs and ms(m["after"]["ort_latency_ms"]) in runs
    # the older run chosen: the details row says why in one line; no ONNX Runtime clause in the headline
    old = report_html(chosen[::-1])
    assert "ONNX Runtime" not in old.split("id='headline'>", 1)[1].split("</p>", 1)[0]
    assert f"<th>ONNX Runtime latency</th><td>{latency.NOT_RECORDED}</td>" in old


def test_the_int_run_table_of_the_store(ort_home):
    home, ids, metrics = ort_home
    rows = runs_table(engine.list_runs(root=home, kind="compress")).set_index("run")
    assert rows.loc[ids["int8-w8a8"], "ort_latency_ms"] == metrics["int8-w8a8"]["after"]["ort_latency_ms"]
    assert rows.loc[ids["int8-w8a8"], "ort_setting"] == latency.ort_setting(latency.ort_info(metrics["int8-w8a8"]))
    assert rows.loc[ids["old-run"], "ort_reason"] == latency.NOT_RECORDED
    assert rows.loc[ids["mixed-bits"], "method"] == "mixed precision"
