"""Int runs and ONNX Runtime latency where people compare (issue 27, items 2 and 4): the Compare page puts int runs on
its fronts labelled by their bits and shows both latencies (PyTorch and ONNX Runtime, with the runtime's threads and
the CPU's int8 instruction set); a run without an ONNX Runtime figure says why in one line; the Runs page and the
HTML report carry the ONNX Runtime latency too.

The runs are real engine runs of demo:lenet5. Until the int step and the ONNX Runtime measurement land on this
branch, the int runs' and the latency fields of their metrics.json are written by the test (what those helpers
write, as the shared vocabulary defines it): `dress` below is that fabrication, and nothing else is.
"""

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
from complab import engine, runfolder
from complab.analysis import latency
from complab.analysis.pareto import int_method, method_family, runs_table
from complab.engine.store import RunStore, summary_metrics
from complab.ui.numbers import latency_change, ms
from complab.ui.report import ReportRun, report_html
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
pytestmark = pytest.mark.timeout(600)
BASE = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
ORT = {"version": "1.32.0", "threads": 2, "isa": "AVX512-VNNI", "provider": "CPUExecutionProvider", "rounds": 40,
       "int8": True, "error": None}


def plan(name: str, sparsity: float, k: int) -> dict:
    return {"schema_version": 1, "name": name, "seed": 0, "eval_split": "test", "steps": [
        {"type": "prune", "sparsity": {"_default": sparsity}, "iterations": 1, "finetune_epochs": 0, "lr": 0.001},
        {"type": "cluster", "n_clusters": {"_default": k}, "finetune_epochs": 0, "lr": 0.0002}]}


def int_plan(name: str, bits: dict, activation_bits: int) -> dict:
    return {"schema_version": 1, "name": name, "seed": 0, "eval_split": "test",
            "steps": [{"type": "int", "bits": bits, "activation_bits": activation_bits}]}


def weight_rows(metrics: dict) -> list[dict]:
    return [row for row in metrics["layers"] if row["name"].endswith(".weight") and len(row["shape"]) >= 2]


def dress(run_dir: Path, bits: dict | None, activation_bits: int, ort_ms: tuple[float, float] | None,
          ort: dict | None) -> dict:
    """Write into a finished run's metrics.json what the int step and the ONNX Runtime measurement record: the int
    step's report ({layer: bits} of its weight layers, with their weight counts, and the activation bits), the
    ONNX Runtime latencies and how it ran. `bits` None leaves the run's method as it is; `ort` None removes the ORT
    keys (an older run)."""
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    if bits is not None:
        weights = {row["name"][: -len(".weight")]: row["numel"] for row in weight_rows(metrics)}
        metrics["steps"] = {"int": {"activation_bits": activation_bits,
                                    "layers": {layer: {"bits": b, "weights": weights[layer]}
                                               for layer, b in bits.items()}}}
    for side in ("before", "after"):
        metrics[side].pop("ort_latency_ms", None)
    metrics.pop("ort", None)
    if ort is not None:
        metrics["ort"] = ort
    if ort_ms is not None:
        metrics["before"]["ort_latency_ms"], metrics["after"]["ort_latency_ms"] = ort_ms
    path.write_text(json.dumps(metrics))
    return metrics


@pytest.fixture(scope="module")
def ort_home(tmp_path_factory):
    """Four runs of demo:lenet5 with PyTorch latency measured: an int8 W8A8 run and a mixed-precision one (both
    with ONNX Runtime latency), a prune+cluster run from before ONNX Runtime was measured (no ORT keys), and one
    whose ONNX Runtime could not run (onnxruntime missing)."""
    home = tmp_path_factory.mktemp("ort_ui")
    ids = {}
    for name, sparsity, k in (("int8-w8a8", 0.5, 32), ("mixed-bits", 0.6, 16), ("old-run", 0.8, 4),
                              ("no-ort", 0.7, 8)):
        ids[name] = engine.submit({"kind": "compress", **BASE, "plan": plan(name, sparsity, k), "latency": True},
                                  root=home)
        time.sleep(1.1)
    for run_id in ids.values():
        assert engine.wait(run_id, 300, root=home)["state"] == "succeeded"
    runs = home / "runs"
    metrics = json.loads((runs / ids["int8-w8a8"] / "metrics.json").read_text())
    layers = [row["name"][: -len(".weight")] for row in weight_rows(metrics)]
    assert layers == ["conv1", "conv2", "fc1", "fc2"], layers
    mixed = {"conv1": 8, "conv2": 4, "fc1": 2, "fc2": 8}
    dressed = {"int8-w8a8": dress(runs / ids["int8-w8a8"], dict.fromkeys(layers, 8), 8, (0.80, 0.40), ORT),
               "mixed-bits": dress(runs / ids["mixed-bits"], mixed, 0, (0.80, 0.62), {**ORT, "int8": True}),
               "old-run": dress(runs / ids["old-run"], None, 0, None, None),
               "no-ort": dress(runs / ids["no-ort"], None, 0, None,
                               {"version": None, "threads": 2, "isa": "AVX512-VNNI", "provider": None,
                                "rounds": 0, "int8": False, "error": "onnxruntime is not installed"})}
    store = RunStore(home)  # the index keeps each finished run's metrics as the engine does when a run finishes
    for name, metrics in dressed.items():
        assert store.update(ids[name], metrics=summary_metrics(metrics))
    return home, ids, dressed, mixed


# ---- what an int run is called, and why a run has no ONNX Runtime figure ---------------------------------------

def test_an_int_run_is_named_by_its_bits_from_its_file_or_its_plan(ort_home):
    home, ids, dressed, mixed = ort_home
    w8a8 = int_method(dressed["int8-w8a8"])
    assert w8a8["label"] == "int8 (W8A8)" and w8a8["family"] == "int8 (W8A8)" and w8a8["bits"] == [8]
    weights = {row["name"][:-7]: row["numel"] for row in weight_rows(dressed["mixed-bits"])}
    avg = sum(mixed[layer] * n for layer, n in weights.items()) / sum(weights.values())
    said = int_method(dressed["mixed-bits"])
    assert said["label"] == f"mixed 2-8 bits, {avg:.1f} avg" and said["family"] == "mixed precision"
    assert said["avg_bits"] == pytest.approx(avg) and said["bits"] == [2, 4, 8]
    # the bits as the compact file's integer sections hold them (a report without its layers), weighted by weights
    rows = [{**row, "encoding": "int", "layout": {"bits": mixed[row["name"][:-7]], "scales": row["shape"][0]}}
            if row in weight_rows(dressed["mixed-bits"]) else row for row in dressed["mixed-bits"]["layers"]]
    from_file = {**dressed["mixed-bits"], "steps": {"int": {}}, "layers": rows}
    assert int_method(from_file)["label"] == said["label"]
    # neither: the plan's int step, resolved on the file's layers (patterns, the default, "off")
    bare = {**from_file, "layers": [{k: v for k, v in row.items() if k not in ("encoding", "layout")}
                                    for row in dressed["mixed-bits"]["layers"]]}
    assert int_method(bare) == {"label": "int", "family": "int", "bits": [], "avg_bits": None, "activation_bits": 0}
    from_plan = int_method(bare, int_plan("p", {"_default": 4, "fc2": 8}, 8))
    assert from_plan["bits"] == [4, 8] and from_plan["label"].endswith(", A8")
    assert int_method(bare, int_plan("p", {"re:conv.*": 3, "_default": "off"}, 0))["label"] == "int3 (weights only)"
    # a report without weight counts: the plain mean over its layers
    unweighted = {"steps": {"int": {"layers": {layer: {"bits": b} for layer, b in mixed.items()}}}}
    assert int_method(unweighted)["avg_bits"] == pytest.approx(sum(mixed.values()) / len(mixed))
    assert int_method(dressed["old-run"]) is None  # no int step
    assert method_family(["prune", "int"], w8a8) == "prune+int8 (W8A8)"
    assert method_family(["prune", "cluster"]) == "prune+cluster"


def test_a_run_without_an_onnx_runtime_figure_says_why_in_one_line(ort_home):
    _, _, dressed, _ = ort_home
    old = latency.figures(dressed["old-run"])
    assert old["torch_after"] and old["ort_after"] is None and old["reason"] == latency.NOT_RECORDED
    missing = latency.figures(dressed["no-ort"])
    assert missing["reason"] == "no ONNX Runtime latency: onnxruntime is not installed"
    off = {**dressed["old-run"], "before": {k: v for k, v in dressed["old-run"]["before"].items() if k != "latency_ms"},
           "after": {k: v for k, v in dressed["old-run"]["after"].items() if k != "latency_ms"}}
    assert latency.figures(off)["reason"] == latency.LATENCY_OFF
    good = latency.figures(dressed["int8-w8a8"])
    assert good["reason"] is None and good["ort_times"] == pytest.approx(2.0)
    assert latency.ort_setting(good["ort"]) == "ONNX Runtime 1.32, 2 threads, AVX512-VNNI int8"
    assert latency.ort_setting({**good["ort"], "int8": False}) == "ONNX Runtime 1.32, 2 threads, float32"
    for reason in (old["reason"], missing["reason"], latency.LATENCY_OFF):
        assert "\n" not in reason and "Traceback" not in reason


def test_the_run_folder_check_refuses_a_damaged_ort_record(ort_home):
    _, _, dressed, _ = ort_home
    for bad in ({**ORT, "threads": "two"}, {**ORT, "int8": "yes"}, {**ORT, "isa": "x" * 500}, ["AVX512"]):
        _, problem = runfolder.check_metrics({**dressed["int8-w8a8"], "ort": bad}, "compress")
        assert problem is not None and str(problem).startswith("damaged: metrics.json: ort")
    bad_ms = {**dressed["int8-w8a8"], "after": {**dressed["int8-w8a8"]["after"], "ort_latency_ms": -1}}
    assert "after.ort_latency_ms" in str(runfolder.check_metrics(bad_ms, "compress")[1])
    checked, problem = runfolder.check_metrics(dressed["int8-w8a8"], "compress")
    assert problem is None and checked["ort"]["isa"] == "AVX512-VNNI" and checked["after"]["ort_latency_ms"] == 0.40


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


def test_compare_puts_int_runs_on_the_fronts_and_shows_both_latencies(ort_home, monkeypatch):
    home, ids, dressed, _ = ort_home
    at = go(app(home, monkeypatch), "compare")
    table = at.dataframe[0].value.set_index("run")
    mixed_label = int_method(dressed["mixed-bits"])["label"]
    assert table.loc[ids["int8-w8a8"], "method"] == "int8 (W8A8)"
    assert table.loc[ids["mixed-bits"], "method"] == mixed_label
    assert table.loc[ids["old-run"], "method"] == "prune+cluster"
    m = dressed["int8-w8a8"]
    assert table.loc[ids["int8-w8a8"], "ONNX Runtime latency"] == "0.80 -> 0.40 ms (2.0x faster)"
    assert table.loc[ids["int8-w8a8"], "PyTorch latency"] == latency_change(m["before"]["latency_ms"],
                                                                             m["after"]["latency_ms"])
    assert table.loc[ids["old-run"], "ONNX Runtime latency"] == "not measured (an older run)"
    assert table.loc[ids["no-ort"], "ONNX Runtime latency"] == "not measured (onnxruntime is not installed)"
    # the ONNX Runtime front: int runs are points of their own series, labelled by their bits
    ort_front = next(c for c in charts(at) if c["layout"]["xaxis"]["title"]["text"].startswith("ONNX Runtime"))
    by_series = {trace["name"]: trace for trace in ort_front["data"] if trace.get("mode") == "markers"}
    assert {"int8 (W8A8)", "mixed precision"} <= set(by_series)
    assert values(by_series["int8 (W8A8)"]["x"]) == [0.40]
    assert values(by_series["int8 (W8A8)"]["text"]) == [ids["int8-w8a8"]]
    assert by_series["mixed precision"]["customdata"][0][2] == mixed_label  # the hover names the bits
    assert "prune+cluster" not in by_series  # the older runs have no ONNX Runtime figure: not on this front
    torch_front = next(c for c in charts(at) if c["layout"]["xaxis"]["title"]["text"].startswith("PyTorch"))
    assert {"int8 (W8A8)", "mixed precision", "prune+cluster"} <= {t["name"] for t in torch_front["data"]}
    assert any("ONNX Runtime 1.32, 2 threads, AVX512-VNNI int8" in c.value for c in at.caption)

    # the int8 run chosen: both latencies before -> after with the speed-up, the runtime's setting in a caption
    at.selectbox(key="compare_run").set_value(ids["int8-w8a8"]).run()
    assert not at.exception, [e.value for e in at.exception]
    said = " ".join(md.value for md in at.main.markdown)
    assert "**ONNX Runtime** (CPU): 0.80 -> 0.40 ms (2.0x faster)" in said
    assert f"**PyTorch** (eager, CPU): {latency_change(m['before']['latency_ms'], m['after']['latency_ms'])}" in said
    assert any(c.value.startswith("ONNX Runtime 1.32, 2 threads, AVX512-VNNI int8; batch 1") for c in at.caption)
    boxes = {metric.label: metric for metric in at.metric}
    assert boxes["ONNX Runtime latency"].value == ms(0.40) and boxes["ONNX Runtime latency"].delta == "2.0x faster"
    assert boxes["PyTorch latency"].value == ms(m["after"]["latency_ms"])
    assert "faster in ONNX Runtime (int8, 2 threads, AVX512-VNNI)" in said

    # an older run: its PyTorch figures, and one line on why there is no ONNX Runtime one
    at.selectbox(key="compare_run").set_value(ids["old-run"]).run()
    assert not at.exception, [e.value for e in at.exception]
    lines = [md.value for md in at.main.markdown if "ONNX Runtime**" in md.value]
    assert len(lines) == 1 and lines[0].splitlines()[-1].startswith("**ONNX Runtime**: no ONNX Runtime latency: "
                                                                    "this run finished before")
    assert "ONNX Runtime latency" not in {metric.label for metric in at.metric}
    at.selectbox(key="compare_run").set_value(ids["no-ort"]).run()
    assert any(md.value.endswith("**ONNX Runtime**: no ONNX Runtime latency: onnxruntime is not installed.")
               for md in at.main.markdown)


def test_runs_page_shows_the_onnx_runtime_latency_before_and_after(ort_home, monkeypatch):
    home, ids, _, _ = ort_home
    at = go(app(home, monkeypatch), "runs")
    said = " ".join(md.value for md in at.markdown)
    assert "ONNX Runtime 0.80 -\\> 0.40 ms \\(2.0x faster\\)" in said  # escaped as text from a run folder
    assert "ONNX Runtime: not measured \\(onnxruntime is not installed\\)" in said
    assert said.count("ONNX Runtime") == 3  # two measured, one that could not be: the older run says nothing here


def test_report_html_holds_both_latency_rows_and_the_onnx_runtime_headline(ort_home):
    home, ids, _, _ = ort_home
    chosen = [ReportRun.from_dir(home / "runs" / ids[name], ids[name]) for name in ("int8-w8a8", "old-run")]
    page = report_html(chosen)
    headline = page.split("id='headline'>", 1)[1].split("</p>", 1)[0]
    assert "2.0x faster in ONNX Runtime (int8, 2 threads, AVX512-VNNI)" in headline
    details = page.split("id='details'", 1)[1].split("</details>", 1)[0]
    assert "<th>ONNX Runtime latency</th><td>0.80 -&gt; 0.40 ms (2.0x faster), batch 1; ONNX Runtime 1.32, 2 " \
           "threads, AVX512-VNNI int8</td>" in details
    assert "<th>PyTorch latency</th>" in details
    numbers = json.loads(page.split("id='numbers'>", 1)[1].split("</script>", 1)[0])
    assert numbers["ort_latency_ms_before"] == 0.80 and numbers["ort_latency_ms_after"] == 0.40
    assert "ONNX Runtime CPU latency, batch 1 (ms)" in page  # the ORT front
    runs = page.split("class=\"dataframe runs\"", 1)[1].split("</table>", 1)[0]
    assert "int8 (W8A8)" in runs and "0.40 ms" in runs
    # the older run chosen: the details row says why in one line; no ONNX Runtime clause in the headline
    old = report_html(chosen[::-1])
    assert "ONNX Runtime" not in old.split("id='headline'>", 1)[1].split("</p>", 1)[0]
    assert f"<th>ONNX Runtime latency</th><td>{latency.NOT_RECORDED}</td>" in old


def test_the_int_run_table_of_the_store(ort_home):
    home, ids, _, _ = ort_home
    rows = runs_table(engine.list_runs(root=home, kind="compress")).set_index("run")
    assert rows.loc[ids["int8-w8a8"], "ort_latency_ms"] == 0.40
    assert rows.loc[ids["int8-w8a8"], "ort_setting"] == "ONNX Runtime 1.32, 2 threads, AVX512-VNNI int8"
    assert rows.loc[ids["old-run"], "ort_reason"] == latency.NOT_RECORDED
    assert rows.loc[ids["mixed-bits"], "method"] == "mixed precision"
