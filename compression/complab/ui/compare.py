"""The Compare page's choices and words: which model it opens on (the active one), which run (the best on the
accuracy-vs-bytes front, complab.analysis.pareto.best_run), and the run table as the formatter writes numbers."""

from __future__ import annotations

import math

import pandas as pd

from complab import service
from complab.analysis import latency
from complab.analysis.pareto import pareto_mask
from complab.models.tasks import finds_boxes
from complab.ui import figures
from complab.ui.numbers import count, interval, latency_change, percent, points
from complab.ui.report import plain_markdown


def active_model_name(runs: list[dict], table: pd.DataFrame, spec: dict) -> str | None:
    """The runs table's model name of the active model's runs (model, weights, data and input size as the spec's:
    complab.service.same_model), or None when the active model has no finished run."""
    if table.empty:
        return None
    ids = {run["id"] for run in runs if service.same_model(run.get("job") or {}, spec)}
    mine = table[table["run"].isin(ids)]
    return None if mine.empty else str(mine.iloc[0]["model"])


def model_options(models: list[str], active: str | None) -> tuple[list[str], int]:
    """(the models to choose from, the index to open on): the active model's first when it has runs."""
    if active in models:
        return [active] + [model for model in models if model != active], 0
    return list(models), 0


def run_options(rows: pd.DataFrame, best: dict | None) -> list[str]:
    """One model's run ids for the run picker: the chosen best run first, then smallest file first."""
    ordered = [str(run) for run in rows.sort_values("compressed_bytes")["run"]]
    if best is not None and best["run"] in ordered:
        ordered.remove(best["run"])
        ordered.insert(0, best["run"])
    return ordered


def _score(value: float, detector: bool) -> str:
    return f"{value:.3f}" if detector else percent(value)


def run_label(rows: pd.DataFrame, best: dict | None):
    """The run picker's format_func: plan, score, ratio, and which run is the best on the front or dominated."""
    by_run = rows.set_index("run")
    front = set(best["front"]) if best else set()

    def label(run_id: str) -> str:
        row = by_run.loc[run_id]
        detector = finds_boxes(str(row.get("task", "classify")))
        note = ("best on the front" if best and run_id == best["run"] else "on the front" if run_id in front
                else "dominated")
        ratio = row.get("ratio")
        ratio_text = f", {ratio:.1f}x smaller" if isinstance(ratio, float) and math.isfinite(ratio) else ""
        method = (f" · {row['method_label']}" if "int" in str(row.get("steps", "")).split("+")
                  and row.get("method_label") else "")
        return (f"{row['plan'] or run_id}{method}: {_score(float(row['accuracy']), detector)}{ratio_text} ({note}) · "
                f"{run_id}")

    return label


def choice_text(rows: pd.DataFrame, best: dict | None, run_id: str, hint: bool = True) -> str:
    """Which run the page shows and why, in one or two sentences of markdown (names read from run folders
    escaped); `hint` adds where to pick another (not on a projector, which has no picker)."""
    text = _choice_text(rows, best, run_id)
    return text + (" Pick another run above." if hint and best is not None and best["runs"] > 1 else "")


def _plan(rows: pd.DataFrame, run_id: str) -> str:
    return plain_markdown(rows.loc[rows["run"] == run_id, "plan"].iloc[0] or run_id)


def _choice_text(rows: pd.DataFrame, best: dict | None, run_id: str) -> str:
    row = rows[rows["run"] == run_id].iloc[0]
    name = f"**{_plan(rows, run_id)}** (run {run_id})"
    if best is None:
        return f"Showing {name}."
    detector = finds_boxes(str(row.get("task", "classify")))
    if run_id != best["run"]:
        return (f"Showing {name}, chosen here; the page opens on the best run on the accuracy-vs-bytes front, "
                f"{_plan(rows, best['run'])} (run {best['run']}).")
    front = len(best["front"])
    of = f"{front} of {best['runs']} run(s) of this model on the accuracy-vs-bytes front"
    accuracy = _score(best["accuracy"], detector)
    if best["runs"] == 1:
        return f"Showing {name}, this model's only finished run ({accuracy})."
    if front == 1:
        return (f"Showing {name}: the only one of this model's {best['runs']} runs on the accuracy-vs-bytes front "
                f"({accuracy}): every other run is dominated (another is smaller and at least as accurate).")
    if best["run"] == best["best_run"]:
        why = (f"no smaller front run is within noise of it (on {count(best['images'])} test images a difference "
               f"under {100 * best['tolerance']:.1f} points cannot be told from zero)" if best["tolerance"] else
               "these runs do not record the size of their test split, so a smaller file's lower score cannot "
               "be judged within noise")
        return f"Showing {name}: the most accurate ({accuracy}) of the {of}; {why}."
    return (f"Showing {name}: the smallest file of the {of} whose accuracy ({accuracy}) is within noise of the "
            f"most accurate one's ({_score(best['best_accuracy'], detector)}): on {count(best['images'])} test "
            f"images a difference under {100 * best['tolerance']:.1f} points cannot be told from zero. Dominated "
            "runs (another is smaller and at least as accurate) are never chosen.")


def pareto(rows: pd.DataFrame, cost: str, title: str, run_id: str, sweeps: list[dict] | None = None):
    """A front (figures.pareto_figure) with the shown run ringed and named by its plan in the legend."""
    fig = figures.pareto_figure(rows, cost, title, sweeps, highlight=run_id)
    for trace in fig.data:
        if trace.name == run_id:
            trace.name = f"shown: {rows.loc[rows['run'] == run_id, 'plan'].iloc[0] or run_id}"
    return fig


def display_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The run table as the page shows it: scores as percent (with their 95% interval where the split size is
    recorded), changes in points, counts with thousands separators, whether each run is on the front."""
    if rows.empty:
        return rows
    rows = rows.sort_values("compressed_bytes")
    front = pareto_mask(list(rows["compressed_bytes"]), list(rows["accuracy"]))
    detector = rows["task"].map(finds_boxes) if "task" in rows else pd.Series(False, index=rows.index)

    def images(value) -> int | None:
        try:
            return int(value) if value and not math.isnan(float(value)) else None
        except (TypeError, ValueError):
            return None

    def optional(value, fmt) -> str:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt(value)

    out = pd.DataFrame({
        "run": rows["run"],
        "plan": rows["plan"],
        "method": rows["method_label"] if "method_label" in rows else rows["method"],
        "sweep": rows["sweep"],
        "score": [_score(acc, det) for acc, det in zip(rows["accuracy"], detector, strict=True)],
        "95% interval": [interval(acc, images(n)) if not det else ""
                         for acc, n, det in zip(rows["accuracy"], rows.get("images", [None] * len(rows)), detector,
                                                strict=True)],
        "change": [points(after - before) for after, before in zip(rows["accuracy"], rows["accuracy_before"],
                                                                    strict=True)],
        "file bytes": [count(value) for value in rows["compressed_bytes"]],
        "ratio": [optional(value, lambda r: f"{r:.1f}x") for value in rows["ratio"]],
        "FLOPs (zeros skipped)": [optional(value, count) for value in rows["sparse_flops"]],
        "PyTorch latency": [latency_change(_number(before), _number(after))
                            for before, after in zip(rows.get("latency_before_ms", [None] * len(rows)),
                                                     rows["latency_ms"], strict=True)],
        "ONNX Runtime latency": [latency_change(_number(before), _number(after)) or _short_reason(reason)
                                 for before, after, reason in zip(
                                     rows.get("ort_latency_before_ms", [None] * len(rows)),
                                     rows.get("ort_latency_ms", [None] * len(rows)),
                                     rows.get("ort_reason", [None] * len(rows)), strict=True)],
        "weights kept": [f"{value:.1f}%" for value in rows["weights_kept_pct"]],
        "on the front": ["yes" if on else "" for on in front],
    })
    if rows["predicted_drop_pts"].notna().any():
        out["predicted change"] = [optional(value, lambda pts: points(-pts / 100))
                                   for value in rows["predicted_drop_pts"]]
    return out


def _number(value) -> float | None:
    """A table cell's number, or None (absent, NaN where old and new runs share a column)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _short_reason(reason) -> str:
    """A table cell's why-not: "not measured (old run)", "not measured (onnxruntime is not installed)"."""
    if not isinstance(reason, str) or not reason:
        return ""
    if reason == latency.NOT_RECORDED:
        return "not measured (an older run)"
    if reason == latency.LATENCY_OFF:
        return "not measured (latency off)"
    why = reason.removeprefix("no ONNX Runtime latency: ")
    return "not measured" if why == reason else f"not measured ({why[:80]})"


def latency_lines(metrics: dict) -> tuple[list[str], str]:
    """The shown run's two latencies, one markdown line each ("**PyTorch** (eager): 12.3 -> 10.1 ms (1.2x faster)",
    "**ONNX Runtime**: 8.00 -> 4.20 ms (1.9x faster)" or why it has none, one line), and the caption naming how each
    was measured (ONNX Runtime's version, threads and the CPU's int8 instruction set). Text from the run folder is
    escaped."""
    said = latency.figures(metrics)
    lines = []
    if said["torch_after"]:
        lines.append(f"**PyTorch** (eager, CPU): {latency_change(said['torch_before'], said['torch_after'])}")
    if said["reason"] is None:
        lines.append(f"**ONNX Runtime** (CPU): {latency_change(said['ort_before'], said['ort_after'])}")
        caption = (f"{plain_markdown(latency.ort_setting(said['ort']))}; batch 1, median of runs alternating "
                   "between the original and the compressed model (PyTorch eager measured the same way).")
    else:
        lines.append(f"**ONNX Runtime**: {plain_markdown(said['reason'])}.")
        caption = "Batch 1, the median of repeated passes on this run's CPU." if said["torch_after"] else ""
    return lines, caption
