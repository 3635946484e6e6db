"""The self-contained HTML report on finished runs (the CLI's `report` and the Compare page's "Download report").

One file that opens offline: Plotly's JavaScript inlined once (the first figure carries it, the others
reuse it), images as data: URIs, no fonts or scripts fetched from anywhere. Its content comes from
compression/complab/analysis/report.py; this module only draws it. It imports plotly but never Streamlit, so the
command line can use it without starting a Streamlit runtime.
"""

from __future__ import annotations

import base64
import html
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from complab import runfolder
from complab.analysis import latency, report
from complab.analysis.pareto import runs_table
from complab.errors import CompressionLabError
from complab.models.tasks import task_kind
from complab.ui import figures, numbers
from complab.ui.behaviour_report import behaviour_block, report_diff  # noqa: F401 - report_diff: for the CLI

PDF_TIMEOUT_S = 120
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
N_DETECTION_IMAGES = 4
LAYER_WATERFALLS = 3  # the largest layers drawn as their own waterfall (the table has them all)

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:2em;border-bottom:1px solid #ddd}
.headline{font-size:1.35em;font-weight:600;margin:.6em 0} .small{color:#555;font-size:.9em}
.verdict{font-size:1.2em;margin:.4em 0 .8em 0} details{margin:.5em 0} details td{text-align:left}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0} td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right} th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
.grid{display:grid;grid-template-columns:repeat(4,1fr);gap:8px;align-items:start} .grid img{max-width:100%}
@media print{.plotly-graph-div{break-inside:avoid}}
"""


def json_for_html(value) -> str:
    """JSON that is safe inside HTML (a <script> block or an attribute): <, >, & and the line separators U+2028 and
    U+2029 as \\u escapes, so no string in it can close the element or start markup. JSON.parse reads it back as
    the same value."""
    text = json.dumps(value, allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def plain_markdown(text: str) -> str:
    """Text read from a run folder, shown by Streamlit's markdown (st.error, st.warning, st.markdown) as the same
    characters: markdown's special characters backslash-escaped (no link, image, HTML or emphasis can be made by a
    file; - . : stay as they are, harmless inside a line), control characters replaced."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return "".join("\\" + ch if ch in "\\`*_{}[]()<>#!|~$" else ch for ch in text)


class DamagedRun(CompressionLabError):
    """A run folder whose metrics.json, state.json or model.clab cannot be read as the engine wrote them."""


@dataclass
class ReportRun:
    """What the report reads of one finished compression run: its metrics.json and plan (checked by
    complab/runfolder.py) and its compact file, decoded by our own parser. Nothing in the folder names a model
    to build: job.json is read (checked, without `trust`) only for the plan page's prediction at launch."""

    id: str
    dir: Path
    metrics: dict
    plan: dict | str
    job: dict | None  # the checked job (never used to build a model); None for a `complab run --out` folder
    finished: float | None

    @classmethod
    def from_dir(cls, run_dir: Path, run_id: str | None = None) -> ReportRun:
        """A run folder (the engine's runs/<id>/ or a `complab run --out` folder) that finished; else
        CompressionLabError (DamagedRun for a damaged file) naming what is missing or damaged, in one line."""
        run_dir = Path(run_dir)
        name = run_id or run_dir.name
        if (run_dir / "state.json").is_file():
            state, problem = runfolder.load(run_dir / "state.json")
            if problem:
                raise DamagedRun(f"run {name} cannot be reported: {problem}")
        else:
            state = {"state": "succeeded"}
        if state.get("state") != "succeeded":
            reason = f" ({str(state['error']).splitlines()[0][:200]})" if state.get("error") else ""
            raise CompressionLabError(f"run {name} is {state.get('state')}{reason}: a report needs finished runs; "
                                      "list them with `complab runs`")
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file() or not (run_dir / "model.clab").is_file():
            raise CompressionLabError(f"{run_dir} holds no metrics.json and model.clab: give a finished compression "
                                      "run's id or folder")
        raw, problem = runfolder.read_json(metrics_file)
        if problem is None and not (isinstance(raw, dict) and "after" in raw):
            raise CompressionLabError(f"run {name} is not a compression run (its metrics have no 'after')")
        metrics, problem = (None, problem) if problem else runfolder.check_metrics(raw, "compress")
        if problem:
            raise DamagedRun(f"run {name} cannot be reported: {problem}")
        job = None
        if (run_dir / "job.json").is_file():
            job, problem = runfolder.load(run_dir / "job.json")  # for `predicted` only; a damaged one is left out
            job = job if problem is None else {}
        plan = None
        if (run_dir / "plan.json").is_file():
            plan, problem = runfolder.read_json(run_dir / "plan.json")
            plan = plan if problem is None and isinstance(plan, dict) else None
        if plan is None:  # a `complab run --out` folder: the plan is in the compact file's metadata
            try:
                plan = report.file_meta(run_dir).get("plan") or {}
            except CompressionLabError as exc:
                raise DamagedRun(f"run {name} cannot be reported: {exc}") from None
        if not isinstance(plan, dict | str):
            plan = {}
        finished = state.get("finished")
        if finished is None:
            try:
                finished = metrics_file.stat().st_mtime
            except OSError:
                finished = None
        return cls(name, run_dir, metrics, plan, job, finished)


def load_report_runs(folders: list[tuple[Path, str | None]]) -> tuple[list[ReportRun], list[str]]:
    """ReportRun.from_dir of each (folder, run id), the first (the chosen run) required; a later damaged one is
    left out and named in the second list (report_html's left_out). Headless: what the Compare page's download
    and `complab report` read of run folders."""
    runs, left_out = [], []
    for folder, run_id in folders:
        try:
            runs.append(ReportRun.from_dir(folder, run_id))
        except DamagedRun as exc:
            if not runs:
                raise
            left_out.append(str(exc))
    return runs, left_out


def _scores(n: dict) -> str:
    """"top-1 accuracy 99.1% (95% CI 98.9-99.3%) -> 98.9% (95% CI 98.6-99.1%) on 10,000 test images"; a detector's
    mAP or a run without its split's size: the two numbers alone, the size said when known."""
    before, after = n["score_before"], n["score_after"]
    images = n["images_after"] or n["images_before"]
    if n["has_interval"]:
        same = n["images_before"] == n["images_after"]
        where = (f"on {numbers.count(images)} {n['split']} images" if same else
                 f"on {numbers.count(n['images_before'])} and {numbers.count(n['images_after'])} {n['split']} images")
        return (f"{n['score_label']} {numbers.percent(before)} (95% CI {numbers.interval(before, n['images_before'])})"
                f" -> {numbers.percent(after)} (95% CI {numbers.interval(after, n['images_after'])}) {where}")
    span_before, span_after = n.get("map_spans") or (None, None)
    if span_before and span_after:  # a detector run that recorded its mAP's bootstrap intervals
        return (f"{n['score_label']} {numbers.map_score(before, span_before, n['images_before'])} -> "
                f"{numbers.map_score(after, span_after, n['images_after'])}")
    size = (f"on {numbers.count(images)} {n['split']} images" if images else
            f"on the {n['split']} split (its size was not recorded, so no interval)")
    if n["score_name"] == "top-1":
        return f"{n['score_label']} {numbers.percent(before)} -> {numbers.percent(after)} {size}"
    return f"{n['score_label']} {before:.3f} -> {after:.3f} {size}"


def headline(metrics: dict) -> str:
    """The report's headline, one sentence from the measured numbers (a clause only where the run measured it):
    the model and data by name, the score before -> after with its 95% interval and the split's size, the file's
    size, FLOPs and speed. Its verdict is `verdict_sentence`."""
    n = report.headline_numbers(metrics)
    clauses = [_scores(n),
               f"{numbers.times(n['ratio'])} smaller file ({numbers.count(n['fp32_bytes'])} -> "
               f"{numbers.count(n['compressed_bytes'])} bytes)"]
    if n["flops_times"]:
        clauses.append(f"{numbers.times(n['flops_times'])} fewer FLOPs "
                       f"({numbers.change(n['flops_before'], n['flops_after'])}, zero weights skipped)")
    if n["speed_times"]:
        said = numbers.speed(n["speed_times"])
        where = "on the CPU in PyTorch" if n["ort_times"] else "on the CPU"
        clauses.append(f"{said} {where} ({n['latency_before']:.2f} -> {n['latency_after']:.2f} ms)"
                       if said == "same speed" else f"{said} {where}")
    if n["ort_times"]:  # the runtime a model is deployed with: "1.9x faster in ONNX Runtime (int8, 2 threads, ...)"
        said = numbers.speed(n["ort_times"])
        clauses.append(f"{said} in ONNX Runtime ({latency.headline_words(n['ort'])}"
                       + (f"; {n['ort_before']:.2f} -> {n['ort_after']:.2f} ms)" if said == "same speed" else ")"))
    return f"{n['model']} on {n['data']}: " + "; ".join(clauses) + "."


def verdict_sentence(metrics: dict) -> str:
    """One sentence of verdict on the score's change: "Verdict: top-1 accuracy within noise (±0.4 pts on 10,000
    test images).", "Verdict: compression costs 1.4 points of top-1 accuracy (95% CI ...)."."""
    n = report.headline_numbers(metrics)
    unknown = ("no interval: this run did not record its mAP's bootstrap interval" if n["score_name"] != "top-1"
               else "test-set size not recorded, so its noise is unknown")
    span_before, span_after = n.get("map_spans") or (None, None)
    if span_before and span_after:  # a detector: its two bootstrap intervals overlap or not (conservative)
        said = numbers.map_verdict(n["score_before"], span_before, n["score_after"], span_after,
                                   n["images_after"] or n["images_before"], n["split"])
    else:
        said = numbers.verdict(n["score_before"], n["images_before"] if n["has_interval"] else None,
                               n["score_after"], n["images_after"] if n["has_interval"] else None, n["split"],
                               unknown)
    score = n["score_label"]
    if said.startswith(("costs", "gains")):
        word, rest = said.split(" ", 1)
        points, _, tail = rest.partition(" points")
        return f"Verdict: compression {word} {points} points of {score}{tail}."
    if said.startswith("no change"):
        return f"Verdict: no change in {score}{said[len('no change'):]}."
    return f"Verdict: {score} {said}."


def machine_details(metrics: dict, run: ReportRun) -> str:
    """The machine's exact strings (platform, torch) and the run's id, in a details section: the headline says the
    machine in plain words."""
    machine = metrics.get("machine") or {}
    said = latency.figures(metrics)
    torch_row = (numbers.latency_change(said["torch_before"], said["torch_after"]) + ", batch 1, eager"
                 if said["torch_after"] else "not measured")
    ort_row = (f"{numbers.latency_change(said['ort_before'], said['ort_after'])}, batch 1; "
               f"{latency.ort_setting(said['ort'])}" if said["reason"] is None else said["reason"])
    rows = [("run", run.id), ("platform", machine.get("platform")), ("CPUs", machine.get("cpus")),
            ("torch", machine.get("torch")), ("PyTorch latency", torch_row), ("ONNX Runtime latency", ort_row),
            ("seconds", metrics.get("seconds"))]
    cells = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"
                    for key, value in rows if value is not None)
    return f"<details id='details'><summary>Measured on (details)</summary><table>{cells}</table></details>"


def runs_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The runs table as the report shows it: the formatter's accuracy, points, counts, ratios and milliseconds."""
    out = pd.DataFrame({"run": table["run"], "plan": table["plan"], "steps": table["steps"]})
    out["accuracy"] = [numbers.percent(v) for v in table["accuracy"]]
    out["change"] = [numbers.points(-v / 100) for v in table["accuracy_drop_pts"]]
    out["compressed bytes"] = [numbers.count(v) for v in table["compressed_bytes"]]
    out["ratio"] = [numbers.times(v) for v in table["ratio"]]
    if "sparse_flops" in table and table["sparse_flops"].notna().any():
        out["FLOPs"] = ["" if pd.isna(v) else numbers.human(v) for v in table["sparse_flops"]]
    if "latency_ms" in table and table["latency_ms"].notna().any():
        out["PyTorch latency"] = ["" if pd.isna(v) else numbers.ms(v) for v in table["latency_ms"]]
    if "ort_latency_ms" in table and table["ort_latency_ms"].notna().any():
        out["ONNX Runtime latency"] = ["" if pd.isna(v) else numbers.ms(v) for v in table["ort_latency_ms"]]
    if "method_label" in table:
        out.insert(2, "method", table["method_label"])
    return out


def layer_rows(rows: list[dict]) -> pd.DataFrame:
    """The per-layer table with counts separated and sparsity as a percent."""
    frame = pd.DataFrame(report.layer_table(rows))
    if frame.empty:
        return frame
    for column in ("weights", "fp32 bytes", "file bytes"):
        frame[column] = [numbers.count(v) for v in frame[column]]
    frame["sparsity"] = ["" if v is None or pd.isna(v) else numbers.percent(v) for v in frame["sparsity"]]
    frame["bits per weight"] = ["" if v is None or pd.isna(v) else f"{v:.2f}" for v in frame["bits per weight"]]
    return frame


def _png_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(rows: list[dict] | pd.DataFrame, css_class: str = "") -> str:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return frame.to_html(index=False, border=0, classes=css_class or None, na_rep="", escape=True)


class _Figures:
    """Each figure as a <div>; the first one carries plotly.js, inlined (never a CDN link)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig) -> str:
        self.count += 1
        return fig.to_html(full_html=False, include_plotlyjs=self.count == 1, config={"displaylogo": False},
                           div_id=f"figure-{self.count}")


def _waterfall_block(draw: _Figures, waterfall: report.Waterfall) -> str:
    """The waterfall figure and its numbers (a table the reader, and the tests, can add up)."""
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td data-bytes='{value}'>{numbers.signed(value)}</td></tr>"
                   for label, value in waterfall.bars())
    return (draw(figures.bytes_waterfall(waterfall))
            + f"<table class='waterfall' data-title='{html.escape(waterfall.title)}' data-start='{waterfall.start}'"
              f" data-end='{waterfall.end}'><tr><th>part</th><th>bytes</th></tr>"
              f"<tr><td>fp32 model</td><td>{waterfall.start:,}</td></tr>{rows}"
              f"<tr><th>compact file</th><th>{waterfall.end:,}</th></tr></table>")


def _detections_block(run: ReportRun, original=None) -> str:
    """Both detectors' boxes on a few validation images, when the person gave the original detector (and its data)
    in this command or session; a run folder never names a model to load."""
    if original is None or not report.original_matches(original[0], run.metrics):
        model = html.escape(str(run.metrics.get("model") or "the original detector"))
        return ("<h2>Detections on validation images</h2><p class='small' id='no-detections'>The original detector "
                f"was not given, so only the numbers are shown: to draw both models' boxes side by side, give it "
                f"(<code>complab report RUN --model {model} --data DATA</code>, or make it the active model "
                "on the Model page). A report never loads a model named by the run folder.</p>")
    pairs = report.detection_grid(run.dir, original[0], original[1], N_DETECTION_IMAGES)
    cells = []
    for pair in pairs:
        c = pair.counts
        cells.append(
            f"<div><img alt='original {html.escape(pair.file)}' src='{_png_uri(pair.original)}'>"
            f"<div class='small'>original: {c['original']} boxes, {c['vanished']} vanished (red)</div></div>"
            f"<div><img alt='compressed {html.escape(pair.file)}' src='{_png_uri(pair.compressed)}'>"
            f"<div class='small'>compressed: {c['compressed']} boxes, {c['appeared']} new (pink)</div></div>")
    return ("<h2>Detections on validation images</h2><p class='small'>The first validation images: the original "
            "detector (left) and the model decoded from the compact file (right), confidence >= 0.25. A box is "
            "matched when the class agrees and IoU >= 0.5; red on the left vanished, pink on the right is new.</p>"
            f"<div class='grid detections'>{''.join(cells)}</div>")


def _plan_text(plan) -> str:
    """The recipe as indented JSON (a plan the file's metadata kept as text is shown as it is)."""
    return plan if isinstance(plan, str) else json.dumps(plan, indent=2)


def report_html(runs: list[ReportRun], generated: str = "", original=None, left_out: list[str] | None = None,
                behaviour: dict | str | None = None) -> str:
    """The whole report for `runs` (the first one is the chosen run: its headline, bytes and table).

    original: (handle, data) of the original model the person gave in this command or session, for a detector's
    side-by-side boxes (drawn only when its label is the run's model); never built from a run folder.
    left_out: one line per run left out of the report (damaged), shown under the headline.
    behaviour: the chosen run's behaviour diff (complab.ui.behaviour_report.report_diff: a diff dict, or the one
    line why there is none) for the "Behaviour" section; None leaves the section out."""
    if not runs:
        raise CompressionLabError("no runs to report on: give at least one finished run id or folder")
    draw = _Figures()
    chosen = runs[0]
    m = chosen.metrics
    name = report.model_name(m.get("model"))
    parts = [f"<h1 id='title'>Compression report: {html.escape(name)}</h1>",
             f"<p class='small'>run {html.escape(chosen.id)}</p>",
             f"<p class='headline' id='headline'>{html.escape(headline(m))}</p>",
             f"<p class='verdict' id='verdict'>{html.escape(verdict_sentence(m))}</p>",
             f"<p class='small' id='provenance'>{html.escape(report.provenance(m, chosen.finished))}"
             f"{' Report written ' + html.escape(generated) + '.' if generated else ''}</p>",
             machine_details(m, chosen)]
    numbers = {"run": chosen.id, "compression_ratio": m["compression_ratio"],
               "fp32_bytes": m["before"]["fp32_bytes"], "compressed_bytes": m["after"]["compressed_bytes"],
               "accuracy_before": m["before"]["accuracy"], "accuracy_after": m["after"]["accuracy"],
               "sparse_flops_before": m["before"].get("sparse_flops"),
               "sparse_flops_after": m["after"].get("sparse_flops"),
               "latency_ms_before": m["before"].get("latency_ms"), "latency_ms_after": m["after"].get("latency_ms"),
               "ort_latency_ms_before": m["before"].get("ort_latency_ms"),
               "ort_latency_ms_after": m["after"].get("ort_latency_ms")}
    parts.append(f"<script type='application/json' id='numbers'>{json_for_html(numbers)}</script>")
    if left_out:
        parts.append("<p class='small' id='left-out'>Left out of this report: "
                     + "; ".join(html.escape(line) for line in left_out) + "</p>")
    table = runs_table([{"id": r.id, "state": "succeeded", "metrics": r.metrics,
                         "job": {"plan": r.plan if isinstance(r.plan, dict) else None, **(r.job or {})}} for r in runs])
    parts.append("<h2>Accuracy against cost</h2><p class='small'>Every run given; the chosen run ringed; dimmed "
                 "points are dominated by a run both smaller (cheaper) and at least as accurate.</p>")
    for cost, title in (("compressed_bytes", "compressed bytes (file on disk)"),
                        ("sparse_flops", "FLOPs (zero weights skipped)"),
                        ("latency_ms", "PyTorch CPU latency, batch 1 (ms)"),
                        ("ort_latency_ms", "ONNX Runtime CPU latency, batch 1 (ms)")):
        if table[cost].notna().any():
            parts.append(draw(figures.pareto_figure(table, cost, title, highlight=chosen.id)))
    parts.append(_table(runs_rows(table), "runs"))
    if behaviour is not None:
        parts.append(behaviour_block(behaviour, draw, json_for_html))
    parts.append("<h2>Where the bytes went</h2><p class='small'>From the fp32 model (torch.save of its fp32 state "
                 "dict) to the compact file, part by part, as the file's own sections count them (`complab "
                 "inspect`): green bars are bytes saved, red bars bytes the compact file adds; they add up to the "
                 "file size exactly.</p>")
    for run in runs:
        try:
            rows = report.file_rows(run.dir)
        except CompressionLabError as exc:  # the chosen run damaged: one line; another: noted where its bars were
            if run is chosen:
                raise
            parts.append(f"<p class='small damaged'>run {html.escape(run.id)}: {html.escape(str(exc))}</p>")
            continue
        whole = report.bytes_waterfall(rows, run.metrics["before"]["fp32_bytes"], f"run {run.id}",
                                       report.params_removed(run.metrics))
        parts.append(_waterfall_block(draw, whole))
        if run is chosen:
            parts.append("<h3>Largest layers</h3>")
            for layer in report.layer_waterfalls(rows, LAYER_WATERFALLS):
                parts.append(_waterfall_block(draw, layer))
            parts.append("<h2>Per-layer table</h2>" + _table(layer_rows(rows), "layers"))
    parts.append(f"<h2>The plan (recipe)</h2><pre id='recipe'>{html.escape(_plan_text(chosen.plan))}</pre>")
    if task_kind(m.get("task")).finds_boxes:
        parts.append(_detections_block(chosen, original))
    title = html.escape(f"Compression report: {name}, run {chosen.id}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def chromium() -> str | None:
    """The headless Chromium to print with, if one is installed."""
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium to print with; CompressionLabError saying what to do when none is installed."""
    browser = chromium()
    if browser is None:
        raise CompressionLabError("--pdf needs Chromium and none is installed (looked for "
                                  f"{', '.join(CHROMIUM)}): open the HTML report in a browser and print it to PDF")
    return browser


def print_pdf(html_path: Path, pdf_path: Path, timeout: float = PDF_TIMEOUT_S) -> None:
    """Print the HTML file to PDF with headless Chromium (CompressionLabError when there is none or it fails)."""
    browser = require_chromium()
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
               f"--print-to-pdf={Path(pdf_path).resolve()}", Path(html_path).resolve().as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CompressionLabError(f"Chromium did not print {pdf_path} within {timeout:.0f} s: print the HTML report "
                                  "from a browser instead") from None
    if done.returncode != 0 or not Path(pdf_path).is_file():
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no message"]
        raise CompressionLabError(f"Chromium could not print {pdf_path} ({tail[0][:200]}): print the HTML report "
                                  "from a browser instead")
