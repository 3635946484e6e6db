"""The HTML report (`complab report`): self-contained, its numbers the runs' own, its bytes adding up."""

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from complab.cli import main
from complab.ui import numbers as fmt

ROOT = Path(__file__).resolve().parents[1]
DIGITS = {"model": "demo:lenet5", "weights": None, "data": "digits", "input_size": None, "mean": None, "std": None}
DETECTOR = {"model": "detector:demo", "weights": None, "data": "shapes", "input_size": None, "mean": None,
            "std": None}
DETECTOR_PLAN = {"schema_version": 1, "name": "det-report", "seed": 0, "eval_split": "val", "steps": [
    {"type": "prune", "sparsity": {"_default": 0.4}, "iterations": 1, "finetune_epochs": 0}]}


def quick_plan(n_clusters: int) -> dict:
    """assets/recipes/quick.json without fine-tuning (fast), with `n_clusters` shared values."""
    plan = json.loads((ROOT / "assets" / "recipes" / "quick.json").read_text())
    for step in plan["steps"]:
        step["finetune_epochs"] = 0
    plan["steps"][1]["n_clusters"] = {"_default": n_clusters}
    plan["name"] = f"quick-k{n_clusters}"
    return plan


@pytest.fixture(scope="module")
def classifier_home(tmp_path_factory):
    """Two finished LeNet-5 runs on digits (the first with CPU latency measured)."""
    from complab import engine

    home = tmp_path_factory.mktemp("report-home")
    ids = [engine.submit({"kind": "compress", **DIGITS, "plan": quick_plan(16), "latency": True}, root=home),
           engine.submit({"kind": "compress", **DIGITS, "plan": quick_plan(4), "latency": False}, root=home)]
    for run_id in ids:
        row = engine.wait(run_id, 300, root=home)
        assert row["state"] == "succeeded", row.get("error")
    return home, ids


@pytest.fixture(scope="module")
def classifier_report(classifier_home, tmp_path_factory):
    home, ids = classifier_home
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", *ids, "--home", str(home), "--out", str(out)]) == 0
    return out


class Resources(HTMLParser):
    """Every src/href of the page, the scripts' texts and the waterfall tables' numbers."""

    def __init__(self):
        super().__init__()
        self.links, self.scripts, self.waterfalls, self._script = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[key] for key in ("src", "href") if attrs.get(key)]
        if tag == "script":
            self._script = []
        if tag == "table" and "waterfall" in (attrs.get("class") or ""):
            self.waterfalls.append({"title": attrs["data-title"], "start": int(attrs["data-start"]),
                                    "end": int(attrs["data-end"]), "bars": []})
        if tag == "td" and attrs.get("data-bytes") is not None:
            self.waterfalls[-1]["bars"].append(int(attrs["data-bytes"]))

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append("".join(self._script))
            self._script = None


def parsed(path: Path) -> tuple[str, Resources]:
    text = path.read_text()
    parser = Resources()
    parser.feed(text)
    return text, parser


def test_classifier_report_is_self_contained_and_its_numbers_are_the_runs(classifier_home, classifier_report):
    home, ids = classifier_home
    text, page = parsed(classifier_report)
    # plotly.js inlined exactly once, nothing fetched from anywhere
    assert sum("plotly.js v" in script[:2000] for script in page.scripts) == 1
    assert not [link for link in page.links if re.match(r"\s*(https?:)?//", link)], page.links
    assert "cdn.plot.ly" not in " ".join(page.links) and "@import" not in text and "@font-face" not in text
    # the headline's numbers are the chosen (first) run's metrics.json
    metrics = json.loads((home / "runs" / ids[0] / "metrics.json").read_text())
    numbers = json.loads(next(s for s in page.scripts if '"compression_ratio"' in s and s.startswith("{")))
    assert numbers["run"] == ids[0]
    assert numbers["compression_ratio"] == metrics["compression_ratio"]
    assert numbers["compressed_bytes"] == metrics["after"]["compressed_bytes"]
    assert numbers["accuracy_after"] == metrics["after"]["accuracy"]
    headline = re.search(r"<p class='headline' id='headline'>(.*?)</p>", text).group(1)
    assert headline.startswith("LeNet-5 (demo) on digits: top-1 accuracy ")
    assert f"{metrics['compression_ratio']:.1f}x smaller file" in headline
    assert f"{metrics['after']['compressed_bytes']:,} bytes" in headline
    flops = metrics["before"]["sparse_flops"] / metrics["after"]["sparse_flops"]
    assert f"{flops:.1f}x fewer FLOPs" in headline
    assert f"{fmt.speed(metrics['before']['latency_ms'] / metrics['after']['latency_ms'])} on the CPU" in headline
    before, after = metrics["before"], metrics["after"]
    assert f"{fmt.percent(before['accuracy'])} " in headline
    assert f"{fmt.percent(after['accuracy'])} " in headline
    if after.get("images"):  # the split's size recorded: both intervals and the size
        assert f"(95% CI {fmt.interval(after['accuracy'], after['images'])})" in headline
        assert f"on {after['images']:,} test images" in headline
    else:  # an older run: no interval invented
        assert "size was not recorded" in headline and "95% CI" not in headline
    assert metrics["machine"]["platform"] not in headline and "torch" not in headline
    verdict = re.search(r"<p class='verdict' id='verdict'>(.*?)</p>", text).group(1)
    assert verdict.startswith("Verdict: ")
    said = fmt.verdict(before["accuracy"], before.get("images"), after["accuracy"], after.get("images"))
    assert said.split(" (")[0].split(" points")[0] in html.unescape(verdict)
    # the title names the model, never a digest or a local path; the platform strings are in the details
    for title in (re.search(r"<h1 id='title'>(.*?)</h1>", text).group(1), re.search(r"<title>(.*?)</title>",
                                                                                    text).group(1)):
        assert "LeNet-5 (demo)" in title and not re.search(r"[0-9a-f]{64}", title) and "/" not in title
    details = re.search(r"<details id='details'>(.*?)</details>", text).group(1)
    assert metrics["machine"]["platform"] in html.unescape(details) and metrics["machine"]["torch"] in details
    # the tables use the formatter: accuracy as a percent, counts with separators
    runs = re.search(r"<table[^>]*class=\"[^\"]*runs[^\"]*\"[^>]*>(.*?)</table>", text, re.S).group(1)
    assert f"<td>{fmt.percent(after['accuracy'])}</td>" in runs
    assert f"<td>{after['compressed_bytes']:,}</td>" in runs
    assert "test split of digits" in text and f"{metrics['machine']['cpus']} CPUs" in text
    # where the bytes went: every waterfall's bars add up to its end; each run's ends at its file's size
    assert len(page.waterfalls) >= 3
    for waterfall in page.waterfalls:
        assert waterfall["start"] + sum(waterfall["bars"]) == waterfall["end"], waterfall
    for run_id in ids:
        whole = next(w for w in page.waterfalls if w["title"] == f"run {run_id}")
        metrics = json.loads((home / "runs" / run_id / "metrics.json").read_text())
        assert whole["start"] == metrics["before"]["fp32_bytes"]
        assert whole["end"] == (home / "runs" / run_id / "model.clab").stat().st_size
    assert "fc1.weight" in text and "quick-k16" in text  # the per-layer table and the recipe
    assert "Detections" not in text


def test_waterfall_parts_come_from_the_files_sections(classifier_home):
    from complab.analysis import report

    home, ids = classifier_home
    rows = report.file_rows(home / "runs" / ids[1])
    waterfall = report.bytes_waterfall(rows, 1_000_000)
    assert waterfall.steps["header"] == rows[0]["bytes_total"]
    assert waterfall.steps["codebooks"] == sum(r["bytes_codebook"] for r in rows)
    assert sum(w.end for w in report.layer_waterfalls(rows)) + rows[0]["bytes_total"] == waterfall.end
    smaller = report.bytes_waterfall(rows, 1_000_000, params_removed=1000)  # a channels or fold_bn run
    assert smaller.steps["structure"] == -4000 and smaller.end == waterfall.end


def test_report_bad_input_exits_2_with_a_message(classifier_home, tmp_path, capsys, monkeypatch):
    from complab import engine

    home, ids = classifier_home
    out = tmp_path / "r.html"
    assert main(["report", "--home", str(home), "--out", str(out)]) == 2
    assert "no runs given" in capsys.readouterr().err
    assert main(["report", "20990101-000000-abcdef", "--home", str(home), "--out", str(out)]) == 2
    assert "no run '20990101-000000-abcdef'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere"), "--home", str(home), "--out", str(out)]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert main(["report", ids[0], "--home", str(home), "--out", str(tmp_path / "missing" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", ids[0], "--home", str(home), "--out", str(tmp_path / "r.txt")]) == 2
    assert ".html" in capsys.readouterr().err
    # a failed run and an unfinished one (the engine's test job kinds, in a data folder of their own)
    monkeypatch.setenv("COMPRESSION_LAB_TEST_JOBS", "1")
    other = tmp_path / "home"
    crash = engine.submit({"kind": "test-crash"}, root=other)
    assert engine.wait(crash, 120, root=other)["state"] == "failed"
    assert main(["report", crash, "--home", str(other), "--out", str(out)]) == 2
    assert f"run {crash} is failed" in capsys.readouterr().err
    waiting = engine.submit({"kind": "test-sleep", "seconds": 30}, root=other)
    assert main(["report", waiting, "--home", str(other), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"run {waiting} is queued" in err or f"run {waiting} is running" in err
    engine.cancel(waiting, root=other)
    assert not out.exists()


def test_pdf_without_chromium_says_so(classifier_home, tmp_path, capsys, monkeypatch):
    from complab.ui import report as html_report

    home, ids = classifier_home
    monkeypatch.setattr(html_report.shutil, "which", lambda name: None)
    assert main(["report", ids[1], "--home", str(home), "--out", str(tmp_path / "r.html"), "--pdf"]) == 2
    assert "--pdf needs Chromium" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()  # refused before anything was written


@pytest.mark.slow  # a detector run and its report (40 s at load 10)
def test_detector_report_has_the_image_grid(tmp_path, capsys):
    from complab import engine

    home = tmp_path / "home"
    run_id = engine.submit({"kind": "compress", **DETECTOR, "plan": DETECTOR_PLAN, "latency": False}, root=home)
    row = engine.wait(run_id, 300, root=home)
    assert row["state"] == "succeeded", row.get("error")
    run = home / "runs" / run_id
    out = tmp_path / "det.html"
    # the original detector comes from this command (a run folder never names the model to load): without it,
    # only the numbers; with it, both models' boxes
    assert main(["report", run_id, "--home", str(home), "--out", str(out)]) == 0
    assert "id='no-detections'" in out.read_text()
    assert main(["report", run_id, "--home", str(home), "--out", str(out), "--force", "--model", "detector:demo",
                 "--data", "shapes"]) == 0
    text, page = parsed(out)
    images = re.findall(r"<img alt='(original|compressed) [^']+' src='data:image/png;base64,", text)
    assert images.count("original") == images.count("compressed") == 4
    assert "Detections on validation images" in text
    numbers = json.loads(re.search(r"id='behaviour-numbers'>(.*?)</script>", text).group(1))  # the behaviour section
    assert numbers["task"] == "detect" and 0 <= numbers["map50_b"] <= 1 and "id='behaviour-images'" in text
    # a fresh run records its mAP's bootstrap intervals (models/detector.map_intervals): the headline says them
    assert re.search(r"mAP50 [0-9.]+ \(95% CI [0-9.]+-[0-9.]+, bootstrap over [0-9,]+ images\) -&gt; [0-9.]+ "
                     r"\(95% CI [0-9.]+-[0-9.]+, bootstrap over [0-9,]+ images\)", text), text[:3000]
    assert re.search(r"Verdict: [^<]*95% bootstrap intervals", text)
    for waterfall in page.waterfalls:
        assert waterfall["start"] + sum(waterfall["bars"]) == waterfall["end"]
    assert page.waterfalls[0]["end"] == (run / "model.clab").stat().st_size


def test_compare_page_draws_the_waterfall_and_offers_the_report(classifier_home, monkeypatch):
    from streamlit.testing.v1 import AppTest

    home, ids = classifier_home
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(home))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    waterfalls = [c for c in charts if c["data"] and c["data"][0]["type"] == "waterfall"]
    assert len(waterfalls) == 2  # the whole file and the chosen layer
    run_id = at.selectbox(key="compare_run").value
    whole = waterfalls[0]["data"][0]
    assert whole["y"][-1] == (home / "runs" / run_id / "model.clab").stat().st_size
    assert sum(whole["y"][:-1]) == whole["y"][-1]  # fp32 bytes + every part = the file
    assert any(button.proto.label.startswith("Download report") for button in at.get("download_button"))


UPLOADED = {"model": "torchvision:resnet18 (3fa9b1c2d4e5-pets.safetensors)", "data": "imagefolder:/home/ann/pets",
            "task": "classify", "eval_split": "test", "compression_ratio": 39.1,
            "before": {"accuracy": 0.925, "fp32_bytes": 44_786_000, "sparse_flops": 1.82e9, "latency_ms": 5.0,
                       "images": 40},
            "after": {"accuracy": 0.475, "compressed_bytes": 1_145_000, "sparse_flops": 2.7e8, "latency_ms": 4.9,
                      "images": 40},
            "machine": {"platform": "Linux-6.8.0-x86_64-with-glibc2.39", "cpus": 2, "torch": "2.5.1"}}


def test_headline_names_the_model_and_gives_scores_with_interval_size_and_verdict():
    from complab.analysis.report import model_name, provenance
    from complab.intervals import wilson
    from complab.ui.report import headline, verdict_sentence

    text = headline(UPLOADED)
    assert text.startswith("resnet18 (pets.safetensors) on image folder pets: ")
    assert "3fa9b1c2d4e5" not in text and "/home/ann" not in text
    low, high = wilson(0.475, 40)
    assert f"92.5% (95% CI 80.1-97.4%) -> 47.5% (95% CI {100 * low:.1f}-{100 * high:.1f}%) on 40 test images" in text
    assert "39.1x smaller file (44,786,000 -> 1,145,000 bytes)" in text
    assert "(-85%, zero weights skipped)" in text
    assert "same speed on the CPU (5.00 -> 4.90 ms)" in text  # 2% apart: not "1.0x faster"
    assert verdict_sentence(UPLOADED).startswith("Verdict: compression costs 45.0 points of top-1 accuracy (95% CI ")
    # one image of 40 is noise: said so
    within = {**UPLOADED, "after": {**UPLOADED["after"], "accuracy": 0.9}}
    assert verdict_sentence(within).startswith("Verdict: top-1 accuracy within noise (±")
    assert "on 40 test images" in verdict_sentence(within)
    # the platform in plain words, its exact strings left to the details
    where = provenance(UPLOADED, None)
    assert "a Linux computer (x86_64) with 2 CPUs" in where and "glibc" not in where
    uploaded = "torchscript:/home/ann/.local/share/complab/uploads/0123456789ab-net.pt"
    assert model_name(uploaded) == "net.pt (TorchScript)"
    assert model_name("demo:lenet300") == "LeNet-300-100 (demo)"


def test_headline_of_an_old_run_without_split_size_invents_no_interval():
    from complab.ui.report import headline, verdict_sentence

    old = {**UPLOADED, "before": {k: v for k, v in UPLOADED["before"].items() if k != "images"},
           "after": {k: v for k, v in UPLOADED["after"].items() if k != "images"}}
    text = headline(old)
    assert "95% CI" not in text and "92.5% -> 47.5% on the test split (its size was not recorded" in text
    assert verdict_sentence(old) == ("Verdict: compression costs 45.0 points of top-1 accuracy (test-set size not "
                                     "recorded, so its noise is unknown).")
