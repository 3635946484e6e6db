"""Pareto fronts over runs: which runs no other run beats on both accuracy and cost (bytes, FLOPs, latency)."""

from __future__ import annotations

import pandas as pd

from complab.analysis import latency
from complab.intervals import noise_floor


def pareto_mask(costs: list[float], accuracies: list[float]) -> list[bool]:
    """True for each point not dominated (another point with cost <= and accuracy >=, one strictly)."""
    points = list(zip(costs, accuracies, strict=True))
    mask = []
    for i, (cost, acc) in enumerate(points):
        dominated = any(
            (c <= cost and a >= acc) and (c < cost or a > acc) for j, (c, a) in enumerate(points) if j != i
        )
        mask.append(not dominated)
    return mask


def method_family(step_types: list[str], int_method: dict | None = None) -> str:
    """The Pareto series a run belongs to, from its plan's steps: an integer-quantized run by its bits
    (int_method's family: "int8 (W8A8)", "mixed precision"; with "prune+" or "channels+" before it when those steps
    ran too), vq (Gong et al.'s quantizers, with or without pruning), channels (Hu et al.'s channel pruning),
    prune+cluster (Deep Compression / the dynamical-clustering paper)."""
    if "int" in step_types:
        family = (int_method or {}).get("family") or "int"
        before = [step for step in ("prune", "channels") if step in step_types]
        return "+".join([*before, family])
    if "quantize" in step_types:
        return "vq"
    if "channels" in step_types:
        return "channels"
    if "prune" in step_types or "cluster" in step_types:
        return "prune+cluster"
    return "+".join(step_types) if step_types else "none"


def _bits(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 2 <= value <= 8 else None


def _int_layers_of_report(report: dict) -> list[tuple[int, int]]:
    """(bits, weights) of each layer the int step's report lists (metrics["steps"]["int"]["layers"]: {layer:
    {"bits", "weights"?}}); every weight count 1 unless the report gives them all (a plain mean over layers then)."""
    rows = report.get("layers") if isinstance(report.get("layers"), dict) else {}
    found = [(_bits(row.get("bits")), row.get("weights")) for row in rows.values() if isinstance(row, dict)]
    found = [(bits, weights) for bits, weights in found if bits is not None]
    if not all(isinstance(weights, int) and not isinstance(weights, bool) and weights > 0 for _, weights in found):
        return [(bits, 1) for bits, _ in found]
    return found


def _int_layers_of_file(metrics: dict) -> list[tuple[int, int]]:
    """(bits, weights) of each integer section of the run's compact file (metrics["layers"], as inspect read it)."""
    found = []
    for row in metrics.get("layers") or []:
        if not isinstance(row, dict) or row.get("encoding") != "int":
            continue
        bits = _bits(row["layout"].get("bits")) if isinstance(row.get("layout"), dict) else None
        numel = row.get("numel")
        if bits is not None and isinstance(numel, int):
            found.append((bits, max(0, numel)))
    return found


def _int_step(plan) -> object | None:
    """The plan's int step (complab.steps.int_quant.IntStep), or None (no int step, or a plan that does not load)."""
    from complab.errors import CompressionLabError
    from complab.plan import Plan

    if not isinstance(plan, dict):
        return None
    try:
        return next((step for step in Plan.from_dict(plan).steps if step.type == "int"), None)
    except (CompressionLabError, TypeError, ValueError, KeyError):
        return None


def _int_layers_of_plan(step, metrics: dict) -> list[tuple[int, int]]:
    """(bits, weights) of each weight layer the plan's int step quantizes, the layers named by metrics["layers"]
    (a weight tensor "<layer>.weight" of two or more dims); without them, the layers the step names exactly."""
    found = []
    for row in metrics.get("layers") or []:
        name, shape = (row.get("name"), row.get("shape")) if isinstance(row, dict) else (None, None)
        if not isinstance(name, str) or not name.endswith(".weight") or not isinstance(shape, list) or len(shape) < 2:
            continue
        settings = step.layer_settings(name[: -len(".weight")])
        if settings is not None:
            found.append((settings["bits"], row.get("numel") if isinstance(row.get("numel"), int) else 1))
    if not found:
        for layer in step.bits:
            settings = step.layer_settings(layer)
            if settings is not None:
                found.append((settings["bits"], 1))
    return found


def int_method(metrics: dict, plan: dict | None = None) -> dict | None:
    """What an integer-quantized run did, from its metrics and plan: {"label" ("int8 (W8A8)", "int4 (weights
    only)", "mixed 2-8 bits, 3.1 avg" (the average over the integer layers' weights where their counts are known,
    else over the layers), ", A8" after a mixed one with 8-bit activations), "family" (its Pareto series: the label
    of a uniform run, "mixed precision" (+ " A8") of a mixed one), "bits" (the widths used, smallest first),
    "avg_bits", "activation_bits"}; None for a run with no int step.

    The bits come from the int step's report (metrics["steps"]["int"]["layers"], kept in the run index), else the
    compact file's integer sections (metrics["layers"], what was stored), else the plan's int step resolved on the
    file's weight layers; the activation bits from the step's report (its "activation_bits"), else the plan."""
    steps = metrics.get("steps") if isinstance(metrics.get("steps"), dict) else {}
    if "int" not in steps:
        return None
    report = steps.get("int") if isinstance(steps.get("int"), dict) else {}
    step = _int_step(plan)
    layers = (_int_layers_of_report(report) or _int_layers_of_file(metrics)
              or (_int_layers_of_plan(step, metrics) if step is not None else []))
    activation_bits = report.get("activation_bits")
    if activation_bits not in (0, 8) or isinstance(activation_bits, bool):
        activation_bits = getattr(step, "activation_bits", 0) if step is not None else 0
    activations = activation_bits == 8
    if not layers:
        label = "int (A8)" if activations else "int"
        return {"label": label, "family": label, "bits": [], "avg_bits": None, "activation_bits": activation_bits}
    widths = sorted({bits for bits, _ in layers})
    weights = sum(numel for _, numel in layers)
    avg = (sum(bits * numel for bits, numel in layers) / weights if weights
           else sum(bits for bits, _ in layers) / len(layers))
    if len(widths) == 1:
        bits = widths[0]
        label = f"int{bits} (W{bits}A8)" if activations else f"int{bits} (weights only)"
        family = label
    else:
        label = f"mixed {widths[0]}-{widths[-1]} bits, {avg:.1f} avg" + (", A8" if activations else "")
        family = "mixed precision" + (" A8" if activations else "")
    return {"label": label, "family": family, "bits": widths, "avg_bits": avg, "activation_bits": activation_bits}


def _points(fraction) -> float | None:
    return None if fraction is None else 100 * float(fraction)


def prediction_error(table: pd.DataFrame) -> dict | None:
    """How far the predicted accuracy drops were from the measured ones (points), over the runs that carried one."""
    if table.empty or "predicted_drop_pts" not in table:
        return None
    rows = table.dropna(subset=["predicted_drop_pts"])
    if rows.empty:
        return None
    error = rows["accuracy_drop_pts"] - rows["predicted_drop_pts"]
    inside = ((rows["accuracy_drop_pts"] >= rows["predicted_low_pts"])
              & (rows["accuracy_drop_pts"] <= rows["predicted_high_pts"]))
    return {"runs": len(rows), "mae_pts": float(error.abs().mean()), "bias_pts": float(error.mean()),
            "within_range": float(inside.mean())}


def sweep_labels(sweeps: list[dict] | None) -> dict[str, str]:
    """{run id: the labels of the sweeps it belongs to, comma-separated} (a reused run can be in several)."""
    out: dict[str, list[str]] = {}
    for sweep in sweeps or []:
        for member in sweep.get("members") or []:
            labels = out.setdefault(member["run"], [])
            if sweep["label"] not in labels:
                labels.append(sweep["label"])
    return {run: ", ".join(labels) for run, labels in out.items()}


def sweep_curve(table: pd.DataFrame, sweep: dict, cost: str = "compressed_bytes") -> pd.DataFrame:
    """The rows of a sweep's finished members (each run once), sorted by `cost`: the sweep's curve so far."""
    if table.empty:
        return table
    runs = list(dict.fromkeys(member["run"] for member in sweep.get("members") or []))
    targets = {}
    for member in sweep.get("members") or []:
        targets.setdefault(member["run"], member["target"])
    rows = table[table["run"].isin(runs)].dropna(subset=[cost]).copy()
    rows["target"] = rows["run"].map(targets)
    return rows.sort_values(cost)


def runs_table(runs: list[dict], sweeps: list[dict] | None = None) -> pd.DataFrame:
    """One row per succeeded compression run with the measured figures the compare page plots (and the sweeps
    each belongs to, when `sweeps` (engine.list_sweeps()) is given)."""
    in_sweeps = sweep_labels(sweeps)
    rows = []
    for run in runs:
        m = run.get("metrics") or {}
        if run.get("state") != "succeeded" or "after" not in m:
            continue
        after, before = m["after"], m["before"]
        steps = m.get("steps", {})
        job = run.get("job") or {}
        integer = int_method(m, job.get("plan"))
        family = method_family(list(steps), integer)
        predicted = job.get("predicted") or {}
        said = latency.figures(m)
        rows.append({
            "run": run["id"],
            "model": m.get("model", run.get("model")),
            "task": m.get("task", "classify"),
            "plan": m.get("plan_name", ""),
            "method": family,
            # what the run did in words: an int run's bits ("int8 (W8A8)", "mixed 2-8 bits, 3.1 avg"), else its series
            "method_label": integer["label"] if integer else family,
            "steps": "+".join(steps) if steps else "none",
            "accuracy": after["accuracy"],
            "accuracy_before": before["accuracy"],
            # images of the split each score was measured on (None for runs from before it was recorded)
            "images": after.get("images"),
            "images_before": before.get("images"),
            "accuracy_drop_pts": 100 * (before["accuracy"] - after["accuracy"]),
            "compressed_bytes": after["compressed_bytes"],
            "fp32_bytes": before["fp32_bytes"],
            "ratio": m.get("compression_ratio"),
            "sparse_flops": after.get("sparse_flops"),
            "flops": after.get("flops"),
            "latency_ms": after.get("latency_ms"),
            "latency_before_ms": said["torch_before"],
            # ONNX Runtime, batch 1 (complab/deploy.py; None for runs from before it, or without onnxruntime)
            "ort_latency_ms": said["ort_after"],
            "ort_latency_before_ms": said["ort_before"],
            "ort_setting": latency.ort_setting(said["ort"]) if said["reason"] is None else None,
            "ort_reason": said["reason"],
            "weights_kept_pct": 100 * m.get("weights_kept", 1.0),
            # the plan page's prediction at launch (None for runs launched without one, e.g. from the CLI)
            "predicted_drop_pts": _points(predicted.get("drop")),
            "predicted_low_pts": _points(predicted.get("low")),
            "predicted_high_pts": _points(predicted.get("high")),
            "sweep": in_sweeps.get(run["id"], ""),
        })
    return pd.DataFrame(rows)


def best_run(table: pd.DataFrame, cost: str = "compressed_bytes") -> dict | None:
    """The run Compare opens on (its headline, downloads, report button and presentation view): a run on the
    accuracy-vs-`cost` Pareto front, never a dominated one, and of the front the smallest file whose accuracy is
    within noise of the most accurate front run's.

    Why not simply the most accurate run: on a sweep it is usually the least compressed, and a bigger file that
    scores higher by less than the split can resolve has bought nothing measurable. Runs of one model are scored
    on the same split, so the tolerance is the noise floor of the best accuracy on that split's n images
    (complab.intervals.noise_floor: the half width of its 95% interval, never under one image). Where n is not
    recorded (runs from before metrics.json carried it) or the score is not an accuracy (a detector's mAP has no
    Wilson interval), nothing can be called within noise: the most accurate front run is chosen (the smaller file
    on a tie).

    `table` holds one model's rows (runs_table). Returns None for an empty table, else {"run", "accuracy",
    "best_run", "best_accuracy", "tolerance" (fraction, 0 when not judged), "images" (n or None), "front" (the
    front's run ids, smallest file first), "runs" (how many rows were weighed)}."""
    if table.empty:
        return None
    rows = table.dropna(subset=[cost, "accuracy"])
    if rows.empty:
        return None
    rows = rows[pareto_mask(list(rows[cost]), list(rows["accuracy"]))].sort_values([cost, "accuracy"],
                                                                                  ascending=[True, False])
    top = rows.sort_values(["accuracy", cost], ascending=[False, True]).iloc[0]
    images = _count(top.get("images"))
    scored_as_accuracy = str(top.get("task", "classify")) == "classify"
    tolerance = noise_floor(float(top["accuracy"]), images) if images and scored_as_accuracy else 0.0
    chosen = rows[rows["accuracy"] >= float(top["accuracy"]) - tolerance - 1e-12].iloc[0]
    return {"run": str(chosen["run"]), "accuracy": float(chosen["accuracy"]), "best_run": str(top["run"]),
            "best_accuracy": float(top["accuracy"]), "tolerance": float(tolerance),
            "images": images if tolerance else None, "front": [str(run) for run in rows["run"]], "runs": len(table)}


def _count(value) -> int | None:
    """A recorded image count, or None (absent, NaN in a table of old and new runs, or not a positive number)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None
